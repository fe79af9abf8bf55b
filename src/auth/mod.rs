//! Who the client is: credentials checked against the snapshot, the username's modifiers
//! parsed, the network checked. Password checks are constant-time; argon2 hashes are
//! verified off the executor thread once and then cached per core.

pub mod guard;
pub mod username;

use crate::accounts::{Directory, Record};
use crate::config::{Password, Plan, Snapshot};
use crate::error::ProxyError;
use ahash::AHashMap;
use std::cell::RefCell;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// An authenticated client: its account and the modifiers it asked for (owned, so the
/// identity can outlive the buffer the username came from).
#[derive(Debug, Clone)]
pub struct Identity {
    pub account: String,
    /// The account's plan as it was at login.
    pub plan: Arc<Plan>,
    /// Index into the snapshot's networks: the listener's network.
    pub network: usize,
    pub country: Option<String>,
    pub state: Option<String>,
    pub city: Option<String>,
    pub session: Option<String>,
    pub ttl: Option<String>,
}

/// Per-core cache of argon2-verified passwords, so a hash costs one KDF per core, not one
/// per connection. Keyed by account; an entry is valid only for the hash it was checked
/// against, so a reload that changes the hash re-verifies.
#[derive(Default)]
pub struct CredCache {
    verified: RefCell<AHashMap<String, (String, Vec<u8>)>>,
}

const CRED_CACHE_MAX: usize = 16_384;

impl CredCache {
    fn hit(&self, account: &str, phc: &str, password: &[u8]) -> bool {
        match self.verified.borrow().get(account) {
            Some((h, p)) => h == phc && bool::from(p.as_slice().ct_eq(password)),
            None => false,
        }
    }

    fn insert(&self, account: &str, phc: &str, password: &[u8]) {
        let mut map = self.verified.borrow_mut();
        if map.len() >= CRED_CACHE_MAX {
            map.clear();
        }
        map.insert(account.to_owned(), (phc.to_owned(), password.to_owned()));
    }
}

/// Whether `password` is the one `stored` describes (blocking: an argon2 hash costs tens
/// of milliseconds; run it off any event loop). Constant-time for plain passwords.
pub fn password_matches(stored: &Password, password: &[u8]) -> bool {
    match stored {
        Password::Plain(p) => bool::from(p.as_slice().ct_eq(password)),
        Password::Argon2(phc) => verify_argon2(phc, password),
    }
}

fn verify_argon2(phc: &str, password: &[u8]) -> bool {
    use argon2::PasswordVerifier;
    match argon2::PasswordHash::new(phc) {
        Ok(hash) => argon2::Argon2::default()
            .verify_password(password, &hash)
            .is_ok(),
        Err(_) => false,
    }
}

/// Check username and password for a connection that arrived on `network`: the file's
/// accounts first, then the store's (`accounts`).
///
/// Errors are all 407 (`AuthFailed`): the reason is for the log, never for the client.
pub async fn authenticate(
    snap: &Snapshot,
    accounts: &Directory,
    cache: &CredCache,
    network: usize,
    user: &[u8],
    password: &[u8],
) -> Result<Identity, ProxyError> {
    let user =
        std::str::from_utf8(user).map_err(|_| ProxyError::AuthFailed("username not UTF-8"))?;
    let parsed = username::parse(user).map_err(|e| match e {
        username::GrammarError::UnknownKey => ProxyError::AuthFailed("unknown modifier key"),
        username::GrammarError::RepeatedKey => ProxyError::AuthFailed("repeated modifier key"),
        username::GrammarError::DanglingKey => ProxyError::AuthFailed("modifier without value"),
        username::GrammarError::EmptyValue => ProxyError::AuthFailed("empty modifier value"),
        username::GrammarError::BadSession => ProxyError::AuthFailed("malformed session id"),
    })?;
    if let Some(account) = snap.accounts.get(parsed.account) {
        verify(&account.name, &account.password, cache, password).await?;
        return identity(snap, Facts::file(snap, account), network, &parsed.mods);
    }
    let record = accounts
        .get(parsed.account)
        .ok_or(ProxyError::AuthFailed("unknown account"))?;
    verify(&record.name, &record.password, cache, password).await?;
    identity(
        snap,
        Facts::store(snap, accounts, &record),
        network,
        &parsed.mods,
    )
}

/// What a login checks of an account, wherever it is defined.
struct Facts<'a> {
    name: &'a str,
    /// Whether it may use network `i` (of the snapshot).
    networks: Networks<'a>,
    enabled: bool,
    expires: Option<jiff::Timestamp>,
    /// `None`: its plan is not defined (a store account whose plan was removed).
    plan: Option<Arc<Plan>>,
}

enum Networks<'a> {
    Indexes(&'a [usize]),
    Names(&'a [Arc<str>]),
}

impl<'a> Facts<'a> {
    fn file(snap: &Snapshot, a: &'a crate::config::Account) -> Facts<'a> {
        Facts {
            name: &a.name,
            networks: Networks::Indexes(&a.networks),
            enabled: true,
            expires: a.expires,
            plan: snap.plans.get(a.plan).cloned(),
        }
    }

    fn store(snap: &Snapshot, accounts: &Directory, r: &'a Record) -> Facts<'a> {
        Facts {
            name: &r.name,
            networks: Networks::Names(&r.networks),
            enabled: r.enabled,
            expires: r.expires,
            plan: plan_named(snap, accounts, &r.plan),
        }
    }

    fn may_use(&self, snap: &Snapshot, network: usize) -> bool {
        match self.networks {
            Networks::Indexes(ix) => ix.contains(&network),
            Networks::Names(names) => snap
                .networks
                .get(network)
                .is_some_and(|n| names.iter().any(|x| **x == *n.name)),
        }
    }
}

/// A plan by name: the file's, then the store's.
pub fn plan_named(snap: &Snapshot, accounts: &Directory, name: &str) -> Option<Arc<Plan>> {
    snap.plan_named(name)
        .cloned()
        .or_else(|| accounts.plan(name))
}

/// The plan account `name` is on now (`None`: no such account, or its plan is gone).
pub fn plan_of(snap: &Snapshot, accounts: &Directory, name: &str) -> Option<Arc<Plan>> {
    match snap.accounts.get(name) {
        Some(a) => snap.plans.get(a.plan).cloned(),
        None => plan_named(snap, accounts, &accounts.get(name)?.plan),
    }
}

/// Where a login happens: the configuration, this core's cache, the shared guard, and the
/// client (its listener's network and its address).
pub struct Gate<'a> {
    pub snap: &'a Snapshot,
    pub accounts: &'a Directory,
    pub cache: &'a CredCache,
    pub guard: &'a guard::AuthGuard,
    pub network: usize,
    pub peer: Option<std::net::SocketAddr>,
}

/// Authenticate with the password-guessing guard around it ([`guard`]): a credential that
/// already failed from this address is refused without a check; a slowed address waits for
/// its check slot; failures count towards slowing the address.
pub async fn login(gate: &Gate<'_>, user: &[u8], password: &[u8]) -> Result<Identity, ProxyError> {
    let Gate {
        snap,
        accounts,
        cache,
        guard,
        network,
        peer,
    } = *gate;
    let sec = &snap.security;
    let policy = guard::Policy {
        failures: sec.auth_failures,
        window: sec.auth_window.0,
        block: sec.auth_block.0,
        delay: sec.auth_delay.0,
    };
    let ip = peer.map(|p| p.ip());
    // The snapshot's address and the store's change count stand for the accounts'
    // generation: a credential that failed is checked again once either changed.
    let generation =
        (snap as *const Snapshot as usize) ^ (accounts.generation() as usize).rotate_left(17);
    let fp = guard.fingerprint(user, password, network, generation);
    if let Some(ip) = ip {
        match guard.admit(ip, fp, &policy, std::time::Instant::now()) {
            guard::Admit::Check => {}
            guard::Admit::After(wait) => glommio::timer::sleep(wait).await,
            guard::Admit::KnownBad => {
                return Err(ProxyError::AuthFailed("credentials that already failed"))
            }
            guard::Admit::Busy => {
                glommio::timer::sleep(sec.auth_delay.0).await;
                return Err(ProxyError::AuthFailed(
                    "address slowed after repeated failures",
                ));
            }
        }
    }
    let res = authenticate(snap, accounts, cache, network, user, password).await;
    if let (Err(ProxyError::AuthFailed(_)), Some(ip)) = (&res, ip) {
        if guard.failure(ip, fp, &policy, std::time::Instant::now()) {
            tracing::warn!(peer = %ip, block = ?sec.auth_block.0, "repeated authentication failures: address slowed");
        }
    }
    res
}

/// A client without credentials whose address is allow-listed (`allow_ips`) for an account:
/// `None` when it is not; the identity (or why it may not use this network) otherwise.
pub fn by_address(
    snap: &Snapshot,
    accounts: &Directory,
    network: usize,
    peer: Option<std::net::SocketAddr>,
) -> Option<Result<Identity, ProxyError>> {
    let ip = peer?.ip();
    let mods = username::Modifiers::default();
    if let Some(account) = snap.account_for_ip(ip) {
        return Some(identity(snap, Facts::file(snap, account), network, &mods));
    }
    let record = accounts.account_for_ip(ip)?;
    Some(identity(
        snap,
        Facts::store(snap, accounts, &record),
        network,
        &mods,
    ))
}

async fn verify(
    name: &str,
    stored: &Password,
    cache: &CredCache,
    password: &[u8],
) -> Result<(), ProxyError> {
    let ok = match stored {
        Password::Plain(p) => bool::from(p.as_slice().ct_eq(password)),
        Password::Argon2(phc) => {
            if cache.hit(name, phc, password) {
                true
            } else {
                let (phc2, pw) = (phc.clone(), password.to_vec());
                let ok = glommio::executor()
                    .spawn_blocking(move || verify_argon2(&phc2, &pw))
                    .await;
                if ok {
                    cache.insert(name, phc, password);
                }
                ok
            }
        }
    };
    if !ok {
        return Err(ProxyError::AuthFailed("wrong password"));
    }
    Ok(())
}

fn identity(
    snap: &Snapshot,
    account: Facts<'_>,
    network: usize,
    mods: &username::Modifiers<'_>,
) -> Result<Identity, ProxyError> {
    if !account.may_use(snap, network) {
        return Err(ProxyError::AuthFailed("account may not use this network"));
    }
    // After the password check (or the allow-listed address): a guesser learns nothing.
    // Not an authentication failure: the address is not slowed for it.
    if !account.enabled {
        return Err(ProxyError::AccountDisabled);
    }
    if account
        .expires
        .is_some_and(|t| crate::util::wall_now() >= t)
    {
        return Err(ProxyError::AccountExpired);
    }
    let Some(plan) = account.plan else {
        tracing::error!(account = %account.name, "the account's plan is not defined; refusing it");
        return Err(ProxyError::Unavailable("the account's plan is not defined"));
    };
    let net = &snap.networks[network];
    if mods.targets() && !net.targeting {
        return Err(ProxyError::AuthFailed(
            "targeting on a network without targeting",
        ));
    }
    let own = |v: Option<&str>| v.map(str::to_owned);
    Ok(Identity {
        account: account.name.to_owned(),
        plan,
        network,
        country: own(mods.country),
        state: own(mods.state),
        city: own(mods.city),
        session: own(mods.session),
        ttl: own(mods.ttl),
    })
}

impl Identity {
    /// The session TTL in minutes, checked against the network's range (455 otherwise).
    /// `None` when the username asks for no stickiness.
    pub fn ttl_minutes(&self, snap: &Snapshot) -> Result<Option<u32>, ProxyError> {
        let net = &snap.networks[self.network];
        match (&self.ttl, &self.session) {
            (None, None) => Ok(None),
            (None, Some(_)) => Ok(Some(net.ttl_default)),
            (Some(t), _) => {
                // Digits only: "+5", " 5" and "5.0" are not minutes.
                if t.is_empty() || t.len() > 9 || !t.bytes().all(|c| c.is_ascii_digit()) {
                    return Err(ProxyError::InvalidTtl);
                }
                let n: u32 = t.parse().map_err(|_| ProxyError::InvalidTtl)?;
                if (net.ttl_min..=net.ttl_max).contains(&n) {
                    Ok(Some(n))
                } else {
                    Err(ProxyError::InvalidTtl)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argon2_verification() {
        use argon2::password_hash::{PasswordHasher, SaltString};
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        let phc = argon2::Argon2::default()
            .hash_password(b"s3cret", &salt)
            .unwrap()
            .to_string();
        assert!(verify_argon2(&phc, b"s3cret"));
        assert!(!verify_argon2(&phc, b"wrong"));
        let cache = CredCache::default();
        assert!(!cache.hit("a", &phc, b"s3cret"));
        cache.insert("a", &phc, b"s3cret");
        assert!(cache.hit("a", &phc, b"s3cret"));
        assert!(!cache.hit("a", &phc, b"other"));
        assert!(!cache.hit("a", "$argon2id$changed", b"s3cret"));
    }
}
