//! Who the client is: credentials checked against the snapshot, the username's modifiers
//! parsed, the network checked. Password checks are constant-time; argon2 hashes are
//! verified off the executor thread once and then cached per core.

pub mod guard;
pub mod username;

use crate::config::{Password, Snapshot};
use crate::error::ProxyError;
use ahash::AHashMap;
use std::cell::RefCell;
use subtle::ConstantTimeEq;

/// An authenticated client: its account and the modifiers it asked for (owned, so the
/// identity can outlive the buffer the username came from).
#[derive(Debug, Clone)]
pub struct Identity {
    pub account: String,
    /// The account's id in the world it was authenticated in (its usage there).
    pub account_id: usize,
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

fn verify_argon2(phc: &str, password: &[u8]) -> bool {
    use argon2::PasswordVerifier;
    match argon2::PasswordHash::new(phc) {
        Ok(hash) => argon2::Argon2::default()
            .verify_password(password, &hash)
            .is_ok(),
        Err(_) => false,
    }
}

/// Check username and password for a connection that arrived on `network`.
///
/// Errors are all 407 (`AuthFailed`): the reason is for the log, never for the client.
pub async fn authenticate(
    snap: &Snapshot,
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
    let account = snap
        .accounts
        .get(parsed.account)
        .ok_or(ProxyError::AuthFailed("unknown account"))?;
    verify(account, cache, password).await?;
    identity(snap, account, network, &parsed.mods)
}

/// Where a login happens: the configuration, this core's cache, the shared guard, and the
/// client (its listener's network and its address).
pub struct Gate<'a> {
    pub snap: &'a Snapshot,
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
    // The snapshot's address stands for the configuration generation.
    let fp = guard.fingerprint(user, password, network, snap as *const Snapshot as usize);
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
    let res = authenticate(snap, cache, network, user, password).await;
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
    network: usize,
    peer: Option<std::net::SocketAddr>,
) -> Option<Result<Identity, ProxyError>> {
    let account = snap.account_for_ip(peer?.ip())?;
    Some(identity(
        snap,
        account,
        network,
        &username::Modifiers::default(),
    ))
}

async fn verify(
    account: &crate::config::Account,
    cache: &CredCache,
    password: &[u8],
) -> Result<(), ProxyError> {
    let ok = match &account.password {
        Password::Plain(p) => bool::from(p.as_slice().ct_eq(password)),
        Password::Argon2(phc) => {
            if cache.hit(&account.name, phc, password) {
                true
            } else {
                let (phc2, pw) = (phc.clone(), password.to_vec());
                let ok = glommio::executor()
                    .spawn_blocking(move || verify_argon2(&phc2, &pw))
                    .await;
                if ok {
                    cache.insert(&account.name, phc, password);
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
    account: &crate::config::Account,
    network: usize,
    mods: &username::Modifiers<'_>,
) -> Result<Identity, ProxyError> {
    if !account.may_use(network) {
        return Err(ProxyError::AuthFailed("account may not use this network"));
    }
    // After the password check (or the allow-listed address): a guesser learns nothing.
    // Not an authentication failure: the address is not slowed for it.
    if account.expired(crate::util::wall_now()) {
        return Err(ProxyError::AccountExpired);
    }
    let net = &snap.networks[network];
    if mods.targets() && !net.targeting {
        return Err(ProxyError::AuthFailed(
            "targeting on a network without targeting",
        ));
    }
    let own = |v: Option<&str>| v.map(str::to_owned);
    Ok(Identity {
        account: account.name.clone(),
        account_id: account.id,
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
