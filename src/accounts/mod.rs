//! Accounts and plans that live outside the configuration file: created, changed and
//! deleted through the accounts API (`admin::api`) or `tollgate account …`, kept in the
//! embedded store ([`store`]) and served from the [`Directory`] every core reads.
//!
//! Accounts of the file stay in the configuration ([`crate::config::Snapshot`]); the API
//! reports them read-only. A login looks the name up in the file's accounts, then here: two
//! hash lookups, whatever the number of accounts.
//!
//! Memory: an account here is one [`Record`] (its name, its argon2 hash and interned plan
//! and network names), a few hundred bytes; its live usage is created on first use and
//! dropped when idle (`plan::Ledger`).

pub mod store;

use crate::config::{Password, Plan};
use ahash::{AHashMap, RandomState};
use arc_swap::ArcSwap;
use parking_lot::RwLock;
use std::borrow::Borrow;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// An account of the store, as logins read it. Immutable: a change publishes a new one.
#[derive(Debug)]
pub struct Record {
    pub name: Box<str>,
    /// Always an argon2id hash for accounts made through the API.
    pub password: Password,
    /// The plan's name (a plan of the store or of the file), interned.
    pub plan: Arc<str>,
    /// The networks' names (of the file), interned.
    pub networks: Arc<[Arc<str>]>,
    pub allow_ips: Box<[ipnet::IpNet]>,
    pub enabled: bool,
    pub expires: Option<jiff::Timestamp>,
}

impl Record {
    pub fn may_use(&self, network: &str) -> bool {
        self.networks.iter().any(|n| &**n == network)
    }
}

/// A record in a set keyed by its own name (no second copy of the name).
#[derive(Debug, Clone)]
struct ByName(Arc<Record>);

impl PartialEq for ByName {
    fn eq(&self, other: &Self) -> bool {
        self.0.name == other.0.name
    }
}
impl Eq for ByName {}
impl Hash for ByName {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (*self.0.name).hash(state)
    }
}
impl Borrow<str> for ByName {
    fn borrow(&self) -> &str {
        &self.0.name
    }
}

const SHARDS: usize = 64;

type Shard = RwLock<std::collections::HashSet<ByName, RandomState>>;

/// Every store account and plan, shared by all cores. Reads take one shard's read lock;
/// a change takes its shard's write lock and bumps [`Directory::generation`].
pub struct Directory {
    hasher: RandomState,
    shards: Box<[Shard]>,
    len: AtomicUsize,
    plans: RwLock<AHashMap<Box<str>, Arc<Plan>>>,
    /// `allow_ips` of the store's accounts (client network → account), rebuilt when one
    /// changes.
    ip_rules: ArcSwap<Vec<(ipnet::IpNet, Arc<str>)>>,
    /// Interned plan and network-list names.
    names: parking_lot::Mutex<Interned>,
    generation: AtomicU64,
}

#[derive(Default)]
struct Interned {
    plans: std::collections::HashSet<Arc<str>>,
    networks: std::collections::HashSet<Arc<[Arc<str>]>>,
    network: std::collections::HashSet<Arc<str>>,
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Directory({} accounts)", self.len())
    }
}

impl Default for Directory {
    fn default() -> Self {
        Directory {
            hasher: RandomState::new(),
            shards: (0..SHARDS)
                .map(|_| RwLock::new(std::collections::HashSet::with_hasher(RandomState::new())))
                .collect(),
            len: AtomicUsize::new(0),
            plans: RwLock::new(AHashMap::new()),
            ip_rules: ArcSwap::from_pointee(Vec::new()),
            names: parking_lot::Mutex::new(Interned::default()),
            generation: AtomicU64::new(0),
        }
    }
}

impl Directory {
    fn shard(&self, name: &str) -> &Shard {
        &self.shards[(self.hasher.hash_one(name) as usize) % SHARDS]
    }

    /// The account named `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Record>> {
        self.shard(name).read().get(name).map(|r| r.0.clone())
    }

    /// Store accounts held now.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Changes so far: part of what a failed credential is remembered under, so that a
    /// password set after a failure is checked again.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Interned copies of a plan name and a network list, shared by every record using them.
    pub fn intern(&self, plan: &str, networks: &[String]) -> (Arc<str>, Arc<[Arc<str>]>) {
        let mut n = self.names.lock();
        let plan = match n.plans.get(plan) {
            Some(p) => p.clone(),
            None => {
                let p: Arc<str> = Arc::from(plan);
                n.plans.insert(p.clone());
                p
            }
        };
        let list: Vec<Arc<str>> = networks
            .iter()
            .map(|name| match n.network.get(name.as_str()) {
                Some(x) => x.clone(),
                None => {
                    let x: Arc<str> = Arc::from(name.as_str());
                    n.network.insert(x.clone());
                    x
                }
            })
            .collect();
        let list: Arc<[Arc<str>]> = match n.networks.get(list.as_slice()) {
            Some(l) => l.clone(),
            None => {
                let l: Arc<[Arc<str>]> = Arc::from(list);
                n.networks.insert(l.clone());
                l
            }
        };
        (plan, list)
    }

    /// Add or replace an account; returns the one it replaced.
    pub fn put(&self, record: Record) -> Option<Arc<Record>> {
        let record = Arc::new(record);
        let old = self
            .shard(&record.name)
            .write()
            .replace(ByName(record.clone()));
        if old.is_none() {
            self.len.fetch_add(1, Ordering::Relaxed);
        }
        if !record.allow_ips.is_empty() || old.as_ref().is_some_and(|o| !o.0.allow_ips.is_empty()) {
            self.set_rules(&record.name, &record.allow_ips);
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
        old.map(|o| o.0)
    }

    /// Add many accounts at once (start-up); the address rules are built once at the end.
    pub fn put_all(&self, records: impl IntoIterator<Item = Arc<Record>>) {
        for r in records {
            let r = ByName(r);
            if self.shard(&r.0.name).write().replace(r).is_none() {
                self.len.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.rebuild_rules();
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Remove an account; returns it.
    pub fn remove(&self, name: &str) -> Option<Arc<Record>> {
        let old = self.shard(name).write().take(name)?;
        self.len.fetch_sub(1, Ordering::Relaxed);
        if !old.0.allow_ips.is_empty() {
            self.set_rules(name, &[]);
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
        Some(old.0)
    }

    /// Replace one account's address rules: a copy of the rules, not a scan of every
    /// account (a write through the API stays cheap with a million of them).
    fn set_rules(&self, name: &str, nets: &[ipnet::IpNet]) {
        let name: Arc<str> = Arc::from(name);
        self.ip_rules.rcu(|old| {
            let mut rules: Vec<(ipnet::IpNet, Arc<str>)> =
                old.iter().filter(|(_, n)| *n != name).cloned().collect();
            rules.extend(nets.iter().map(|net| (*net, name.clone())));
            rules
        });
    }

    /// Build every account's address rules again (start-up, a full resync).
    fn rebuild_rules(&self) {
        let mut rules = Vec::new();
        for shard in self.shards.iter() {
            for r in shard.read().iter() {
                for net in r.0.allow_ips.iter() {
                    rules.push((*net, Arc::from(&*r.0.name)));
                }
            }
        }
        self.ip_rules.store(Arc::new(rules));
    }

    /// The store account a client address is allow-listed for (most specific wins).
    pub fn account_for_ip(&self, ip: IpAddr) -> Option<Arc<Record>> {
        let rules = self.ip_rules.load();
        let (_, name) = rules
            .iter()
            .filter(|(net, _)| net.contains(&ip))
            .max_by_key(|(net, _)| net.prefix_len())?;
        self.get(name)
    }

    /// A plan of the store.
    pub fn plan(&self, name: &str) -> Option<Arc<Plan>> {
        self.plans.read().get(name).cloned()
    }

    pub fn put_plan(&self, plan: Plan) -> Option<Arc<Plan>> {
        let old = self
            .plans
            .write()
            .insert(plan.name.clone().into_boxed_str(), Arc::new(plan));
        self.generation.fetch_add(1, Ordering::AcqRel);
        old
    }

    pub fn remove_plan(&self, name: &str) -> Option<Arc<Plan>> {
        let old = self.plans.write().remove(name);
        self.generation.fetch_add(1, Ordering::AcqRel);
        old
    }

    /// Every plan of the store, by name.
    pub fn plans(&self) -> Vec<Arc<Plan>> {
        let mut v: Vec<Arc<Plan>> = self.plans.read().values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Make the directory hold exactly `plans` and `records` (a full resync); returns the
    /// names of the accounts it dropped.
    pub fn replace_all(&self, plans: Vec<Plan>, records: Vec<Arc<Record>>) -> Vec<String> {
        let keep: std::collections::HashSet<&str> = records.iter().map(|r| &*r.name).collect();
        let plan_names: std::collections::HashSet<String> =
            plans.iter().map(|p| p.name.clone()).collect();
        {
            let mut map = self.plans.write();
            map.retain(|n, _| plan_names.contains(&**n));
            for p in plans {
                map.insert(p.name.clone().into_boxed_str(), Arc::new(p));
            }
        }
        let mut dropped = Vec::new();
        for shard in self.shards.iter() {
            shard.write().retain(|r| {
                let k = keep.contains(&*r.0.name);
                if !k {
                    dropped.push(r.0.name.to_string());
                }
                k
            });
        }
        self.len.fetch_sub(dropped.len(), Ordering::Relaxed);
        drop(keep);
        self.put_all(records);
        dropped
    }
}

/// A stored account as logins read it (its values checked again: the store may have been
/// written by another version or by hand).
pub fn record_from(dir: &Directory, row: store::AccountRow) -> Result<Record, String> {
    crate::config::check_account_name(&row.name).map_err(|e| format!("name: {e}"))?;
    let allow_ips = row
        .allow_ips
        .iter()
        .map(|c| crate::config::allow_ip("allow_ips", c))
        .collect::<Result<Vec<_>, _>>()?;
    let expires = row
        .expires
        .as_deref()
        .map(crate::config::parse_expires)
        .transpose()
        .map_err(|e| format!("expires: {e}"))?;
    let (plan, networks) = dir.intern(&row.plan, &row.networks);
    let mut hash = row.password_hash;
    hash.shrink_to_fit();
    Ok(Record {
        name: row.name.into_boxed_str(),
        password: Password::Argon2(hash),
        plan,
        networks,
        allow_ips: allow_ips.into_boxed_slice(),
        enabled: row.enabled,
        expires,
    })
}

/// A stored plan as admissions read it.
pub fn plan_from(row: &store::PlanRow) -> Result<Plan, String> {
    Ok(Plan {
        name: row.name.clone(),
        bandwidth: row.bandwidth,
        threads: row.threads.max(1),
        speed: row.speed,
        period: crate::config::parse_period(&row.period).map_err(|e| format!("period: {e}"))?,
    })
}

/// Fill `dir` from the store (start-up): every plan, then every account. A row that no
/// longer validates is skipped with a warning, never served half-read.
pub fn load(dir: &Directory, store: &mut dyn store::AccountSource) -> Result<Vec<String>, String> {
    let mut plans = Vec::new();
    for p in store.plans()? {
        match plan_from(&p) {
            Ok(plan) => plans.push(plan),
            Err(e) => tracing::warn!(plan = %p.name, error = %e, "stored plan skipped"),
        }
    }
    // Streamed: each row becomes its record as it is read, so a million accounts never
    // sit in memory twice.
    let mut records = Vec::new();
    store.each_account(&mut |row| {
        let name = row.name.clone();
        match record_from(dir, row) {
            Ok(r) => records.push(Arc::new(r)),
            Err(e) => tracing::warn!(account = %name, error = %e, "stored account skipped"),
        }
    })?;
    let dropped = dir.replace_all(plans, records);
    release_freed_memory();
    Ok(dropped)
}

/// Hand the allocator's freed pages back to the system (after a full load, whose
/// transient buffers would otherwise stay in the process's resident set).
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; it is safe to call at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(d: &Directory, name: &str, ips: &[&str]) -> Record {
        let (plan, networks) = d.intern("p", &["n".to_string()]);
        Record {
            name: name.into(),
            password: Password::Argon2("$argon2id$x".into()),
            plan,
            networks,
            allow_ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
            enabled: true,
            expires: None,
        }
    }

    #[test]
    fn put_get_remove_and_address_rules() {
        let d = Directory::default();
        let g0 = d.generation();
        assert!(d.put(rec(&d, "a", &[])).is_none());
        assert!(d
            .put(rec(&d, "b", &["10.0.0.0/8", "10.1.0.0/16"]))
            .is_none());
        assert!(d.put(rec(&d, "c", &["10.1.2.0/24"])).is_none());
        assert_eq!(d.len(), 3);
        assert!(d.generation() > g0);
        assert_eq!(&*d.get("a").unwrap().name, "a");
        assert!(Arc::ptr_eq(
            &d.get("a").unwrap().plan,
            &d.get("b").unwrap().plan
        ));
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(&*d.account_for_ip(ip("10.1.2.3")).unwrap().name, "c");
        assert_eq!(&*d.account_for_ip(ip("10.1.3.3")).unwrap().name, "b");
        assert!(d.account_for_ip(ip("192.0.2.1")).is_none());
        assert!(d.put(rec(&d, "c", &[])).is_some());
        assert_eq!(d.len(), 3);
        assert_eq!(&*d.account_for_ip(ip("10.1.2.3")).unwrap().name, "b");
        assert!(d.remove("b").is_some());
        assert!(d.account_for_ip(ip("10.1.2.3")).is_none());
        assert!(d.remove("b").is_none());
        assert_eq!(d.len(), 2);
    }
}
