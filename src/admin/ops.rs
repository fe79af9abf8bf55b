//! The account and plan operations behind both the accounts API and `tollgate account …` /
//! `tollgate plan …`: the bodies they take, how each field is checked (an error names the
//! field), and the write to the store. One implementation, two front ends.

use crate::accounts::store::{AccountRow, AccountSource, PlanRow};
use crate::config::{self, Snapshot};
use serde::{Deserialize, Deserializer};

/// Where this configuration's API accounts live: Redis with `[cluster]`, else the
/// embedded store under `state_dir`.
pub fn open_source(snap: &Snapshot) -> Result<Box<dyn AccountSource>, String> {
    match &snap.cluster {
        Some(c) => Ok(Box::new(crate::cluster::accounts::RedisAccounts::open(c)?)),
        None => Ok(Box::new(crate::accounts::store::AccountStore::open(
            &snap.server.state_dir,
        )?)),
    }
}

/// Where this configuration's error records live: Redis with `[cluster]`, else the
/// embedded store.
pub fn open_trail(snap: &Snapshot) -> Result<Box<dyn crate::support::TrailStore>, String> {
    match &snap.cluster {
        Some(c) => Ok(Box::new(crate::cluster::trail::RedisTrail::open(c)?)),
        None => Ok(Box::new(crate::support::SqliteTrail::open(
            &snap.server.state_dir,
        )?)),
    }
}

/// A refused operation: its HTTP status, what to tell the caller, and the field at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpError {
    pub status: u16,
    pub message: String,
    pub field: Option<String>,
}

impl OpError {
    pub fn bad(field: &str, message: impl Into<String>) -> OpError {
        OpError {
            status: 400,
            message: format!("{field}: {}", message.into()),
            field: Some(field.to_owned()),
        }
    }

    pub fn not_found(what: &str, name: &str) -> OpError {
        OpError {
            status: 404,
            message: format!("no {what} named {name:?}"),
            field: None,
        }
    }

    pub fn conflict(message: impl Into<String>) -> OpError {
        OpError {
            status: 409,
            message: message.into(),
            field: None,
        }
    }

    pub fn store(e: String) -> OpError {
        tracing::error!(error = %e, "account store");
        OpError {
            status: 503,
            message: "the account store is unavailable".into(),
            field: None,
        }
    }
}

impl std::fmt::Display for OpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// A size given as a string with a unit (`"5GiB"`, as in the config) or a byte count.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum SizeValue {
    Bytes(u64),
    Text(String),
}

impl SizeValue {
    pub fn bytes(&self, field: &str) -> Result<u64, OpError> {
        match self {
            SizeValue::Bytes(n) => Ok(*n),
            SizeValue::Text(t) => config::parse_size(t).map_err(|e| OpError::bad(field, e)),
        }
    }
}

/// `null` kept apart from a missing field (PATCH: `"expires": null` clears it).
fn some_or_null<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// A plan's fields (PUT: `bandwidth` and `threads` required; PATCH: any).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanBody {
    pub bandwidth: Option<SizeValue>,
    pub threads: Option<u32>,
    pub period: Option<String>,
    /// `null` or absent: no speed limit.
    #[serde(default, deserialize_with = "some_or_null")]
    pub speed: Option<Option<String>>,
}

impl PlanBody {
    /// The fields it sets, for the audit line.
    pub fn fields(&self) -> String {
        let set = [
            ("bandwidth", self.bandwidth.is_some()),
            ("threads", self.threads.is_some()),
            ("period", self.period.is_some()),
            ("speed", self.speed.is_some()),
        ];
        set.iter()
            .filter(|(_, s)| *s)
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// An account's fields (PUT: `password`, `plan` and `networks` required; PATCH: any).
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountBody {
    pub password: Option<String>,
    /// An argon2 PHC string made by the caller, instead of `password` (no hashing here).
    pub password_hash: Option<String>,
    pub plan: Option<String>,
    pub networks: Option<Vec<String>>,
    pub allow_ips: Option<Vec<String>>,
    pub enabled: Option<bool>,
    #[serde(default, deserialize_with = "some_or_null")]
    pub expires: Option<Option<String>>,
}

impl std::fmt::Debug for AccountBody {
    // Never print the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountBody")
            .field("password", &self.password.as_ref().map(|_| ".."))
            .field("password_hash", &self.password_hash.as_ref().map(|_| ".."))
            .field("plan", &self.plan)
            .field("networks", &self.networks)
            .field("allow_ips", &self.allow_ips)
            .field("enabled", &self.enabled)
            .field("expires", &self.expires)
            .finish()
    }
}

impl AccountBody {
    /// The fields it sets, for the audit line (names only, never values).
    pub fn fields(&self) -> String {
        let mut f = Vec::new();
        for (name, set) in [
            ("password", self.password.is_some()),
            ("password_hash", self.password_hash.is_some()),
            ("plan", self.plan.is_some()),
            ("networks", self.networks.is_some()),
            ("allow_ips", self.allow_ips.is_some()),
            ("enabled", self.enabled.is_some()),
            ("expires", self.expires.is_some()),
        ] {
            if set {
                f.push(name);
            }
        }
        f.join(",")
    }
}

/// Whether a PUT replaces the whole thing or a PATCH changes some fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    Put,
    Patch,
}

/// A plan name the API may write: not one of the file's.
fn writable_plan(snap: &Snapshot, name: &str) -> Result<(), OpError> {
    if name.is_empty() || name.len() > 255 || name.chars().any(|c| c.is_control()) {
        return Err(OpError::bad(
            "name",
            "must be 1 to 255 bytes, no control characters",
        ));
    }
    if snap.plan_named(name).is_some() {
        return Err(OpError::conflict(format!(
            "plan {name:?} is defined in the configuration file: read-only here"
        )));
    }
    Ok(())
}

/// Check a plan body against what is stored: the row to write, and whether it is new.
pub fn plan_row(
    snap: &Snapshot,
    store: &mut dyn AccountSource,
    name: &str,
    body: &PlanBody,
    how: Write,
) -> Result<(PlanRow, bool), OpError> {
    writable_plan(snap, name)?;
    let old = store.get_plan(name).map_err(OpError::store)?;
    if how == Write::Patch && old.is_none() {
        return Err(OpError::not_found("plan", name));
    }
    let base = match (how, &old) {
        (Write::Patch, Some(o)) => o.clone(),
        _ => PlanRow {
            name: name.to_owned(),
            bandwidth: 0,
            threads: 0,
            speed: 0,
            period: "none".into(),
        },
    };
    let mut row = base;
    match (&body.bandwidth, how) {
        (Some(b), _) => row.bandwidth = b.bytes("bandwidth")?,
        (None, Write::Put) => return Err(OpError::bad("bandwidth", "required")),
        (None, Write::Patch) => {}
    }
    match (body.threads, how) {
        (Some(0), _) => return Err(OpError::bad("threads", "must be at least 1")),
        (Some(t), _) => row.threads = t,
        (None, Write::Put) => return Err(OpError::bad("threads", "required")),
        (None, Write::Patch) => {}
    }
    if let Some(p) = &body.period {
        config::parse_period(p).map_err(|e| OpError::bad("period", e))?;
        row.period = p.clone();
    }
    match &body.speed {
        Some(Some(v)) => {
            row.speed = config::parse_speed(v).map_err(|e| OpError::bad("speed", e))?
        }
        Some(None) => row.speed = 0,
        None => {}
    }
    Ok((row, old.is_none()))
}

/// Hash a password given to the API as argon2id (the crate's default parameters, a random
/// salt). The plaintext is never stored, logged or returned.
pub fn hash_password(password: &str) -> Result<String, OpError> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    if password.is_empty() || password.len() > 255 {
        return Err(OpError::bad(
            "password",
            "must be 1 to 255 bytes (the SOCKS5 limit)",
        ));
    }
    let mut salt = [0u8; 16];
    getrandom::getrandom(&mut salt).map_err(|e| OpError::store(format!("no randomness: {e}")))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| OpError::store(e.to_string()))?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| OpError::store(format!("hashing: {e}")))
}

/// Check an account body against the file and the store: the row to write (its
/// `password_hash` is `hashed`, or the stored one when the body sets no password), and
/// whether the account is new.
pub fn account_row(
    snap: &Snapshot,
    store: &mut dyn AccountSource,
    name: &str,
    body: &AccountBody,
    hashed: Option<String>,
    how: Write,
) -> Result<(AccountRow, bool), OpError> {
    config::check_account_name(name).map_err(|e| OpError::bad("name", e))?;
    if snap.accounts.contains_key(name) {
        return Err(OpError::conflict(format!(
            "account {name:?} is defined in the configuration file: read-only here"
        )));
    }
    let old = store.get(name).map_err(OpError::store)?;
    let mut row = match (how, &old) {
        (Write::Patch, None) => return Err(OpError::not_found("account", name)),
        (Write::Patch, Some(o)) => o.clone(),
        (Write::Put, _) => AccountRow {
            name: name.to_owned(),
            password_hash: String::new(),
            plan: String::new(),
            networks: Vec::new(),
            allow_ips: Vec::new(),
            enabled: true,
            expires: None,
        },
    };
    match (hashed, how) {
        (Some(h), _) => row.password_hash = h,
        (None, Write::Put) => return Err(OpError::bad("password", "required")),
        (None, Write::Patch) => {}
    }
    match (&body.plan, how) {
        (Some(p), _) => {
            let known = snap.plan_named(p).is_some()
                || store.get_plan(p).map_err(OpError::store)?.is_some();
            if !known {
                return Err(OpError::bad("plan", format!("{p:?} is not defined")));
            }
            row.plan = p.clone();
        }
        (None, Write::Put) => return Err(OpError::bad("plan", "required")),
        (None, Write::Patch) => {}
    }
    match (&body.networks, how) {
        (Some(nets), _) => {
            if nets.is_empty() {
                return Err(OpError::bad("networks", "list at least one network"));
            }
            let mut list: Vec<String> = Vec::with_capacity(nets.len());
            for n in nets {
                if snap.network_index(n).is_none() {
                    let defined: Vec<&str> =
                        snap.networks.iter().map(|n| n.name.as_str()).collect();
                    return Err(OpError::bad(
                        "networks",
                        format!(
                            "{n:?} is not defined; defined networks: {}",
                            defined.join(", ")
                        ),
                    ));
                }
                if !list.contains(n) {
                    list.push(n.clone());
                }
            }
            row.networks = list;
        }
        (None, Write::Put) => return Err(OpError::bad("networks", "required")),
        (None, Write::Patch) => {}
    }
    if let Some(ips) = &body.allow_ips {
        let mut list = Vec::with_capacity(ips.len());
        for cidr in ips {
            let net = config::allow_ip("allow_ips", cidr).map_err(|_| {
                OpError::bad("allow_ips", format!("{cidr:?} is not an address or CIDR"))
            })?;
            if let Some((_, other)) = snap.ip_rules.iter().find(|(n, _)| *n == net) {
                return Err(OpError::bad(
                    "allow_ips",
                    format!("{net} is already allowed for {other:?}"),
                ));
            }
            let text = net.to_string();
            if let Some(other) = store.allowed_for(&text).map_err(OpError::store)? {
                if other != name {
                    return Err(OpError::bad(
                        "allow_ips",
                        format!("{net} is already allowed for {other:?}"),
                    ));
                }
            }
            if !list.contains(&text) {
                list.push(text);
            }
        }
        row.allow_ips = list;
    }
    if let Some(e) = body.enabled {
        row.enabled = e;
    }
    match &body.expires {
        Some(Some(t)) => {
            let ts = config::parse_expires(t).map_err(|e| OpError::bad("expires", e))?;
            row.expires = Some(ts.to_string());
        }
        Some(None) => row.expires = None,
        None if how == Write::Put => row.expires = None,
        None => {}
    }
    Ok((row, old.is_none()))
}

/// Refuse to delete a plan that accounts still use.
pub fn plan_deletable(
    snap: &Snapshot,
    store: &mut dyn AccountSource,
    name: &str,
) -> Result<(), OpError> {
    writable_plan(snap, name)?;
    let n = store.count_on_plan(name).map_err(OpError::store)?;
    if n > 0 {
        return Err(OpError::conflict(format!(
            "plan {name:?} is used by {n} account(s): move them to another plan first"
        )));
    }
    Ok(())
}

/// Refuse to delete or change an account of the file.
pub fn account_writable(snap: &Snapshot, name: &str) -> Result<(), OpError> {
    if snap.accounts.contains_key(name) {
        return Err(OpError::conflict(format!(
            "account {name:?} is defined in the configuration file: read-only here"
        )));
    }
    Ok(())
}

/// One account of a listing: the file's (read-only) or the store's.
pub enum Listed<'a> {
    File(&'a crate::config::Account),
    Store(AccountRow),
}

impl Listed<'_> {
    pub fn name(&self) -> &str {
        match self {
            Listed::File(a) => &a.name,
            Listed::Store(r) => &r.name,
        }
    }
}

/// A page of accounts by name, the file's and the store's merged: names starting with
/// `prefix`, after `after`, at most `limit`; and the `after` of the next page (`None` on
/// the last). A store account shadowed by the file's is listed once, as the file's.
pub fn list_page<'a>(
    snap: &'a Snapshot,
    store: &mut dyn AccountSource,
    prefix: &str,
    after: &str,
    limit: usize,
) -> Result<(Vec<Listed<'a>>, Option<String>), OpError> {
    let mut file: Vec<&crate::config::Account> = snap
        .accounts
        .values()
        .filter(|a| a.name.as_str() > after && a.name.starts_with(prefix))
        .collect();
    file.sort_by(|a, b| a.name.cmp(&b.name));
    file.truncate(limit + 1);
    let stored = store
        .search(prefix, after, limit + 1)
        .map_err(OpError::store)?;
    let mut out: Vec<Listed<'a>> = Vec::with_capacity(limit + 1);
    let mut file = file.into_iter().peekable();
    let mut stored = stored.into_iter().peekable();
    while out.len() <= limit {
        let take_file = match (file.peek(), stored.peek()) {
            (Some(f), Some(s)) => f.name <= s.name,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => break,
        };
        if take_file {
            if let Some(f) = file.next() {
                out.push(Listed::File(f));
            }
        } else if let Some(s) = stored.next() {
            if !snap.accounts.contains_key(&s.name) {
                out.push(Listed::Store(s));
            }
        }
    }
    let more = out.len() > limit;
    out.truncate(limit);
    let next = if more {
        out.last().map(|l| l.name().to_owned())
    } else {
        None
    };
    Ok((out, next))
}
