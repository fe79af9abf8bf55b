//! The validated, immutable view of the configuration that connections read.

use super::{
    ClusterSection, DnsSection, File, LogSection, RoutingSection, SecuritySection, ServerSection,
};
use crate::auth::username::KEYS;
use crate::plan::ledger::AccountState;
use crate::route::{geo, ExitIndex, Health};
use ahash::AHashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// Everything a connection needs to know, validated. Published through `ArcSwap`; a
/// connection loads it once and uses it for its whole life.
#[derive(Debug)]
pub struct Snapshot {
    pub server: ServerSection,
    pub admin: Option<SocketAddr>,
    /// `[admin] per_account_metrics`.
    pub per_account_metrics: bool,
    pub log: LogSection,
    pub dns: DnsSection,
    pub routing: RoutingSection,
    pub security: SecuritySection,
    pub listeners: Vec<Listener>,
    pub networks: Vec<Network>,
    pub exits: Vec<Exit>,
    /// Exits by targeting, for routing.
    pub index: ExitIndex,
    pub exit_by_name: AHashMap<String, usize>,
    pub plans: Vec<Plan>,
    pub accounts: AHashMap<String, Account>,
    /// `allow_ips` of every account: client network → account name.
    pub ip_rules: Vec<(ipnet::IpNet, String)>,
    /// `[cluster]`: shared state in Redis; `None` = single node. Read at start only.
    pub cluster: Option<ClusterSection>,
}

#[derive(Debug, Clone)]
pub struct Listener {
    pub listen: SocketAddr,
    /// Index into [`Snapshot::networks`].
    pub network: usize,
}

#[derive(Debug, Clone)]
pub struct Network {
    pub name: String,
    pub targeting: bool,
    pub ttl_min: u32,
    pub ttl_max: u32,
    pub ttl_default: u32,
}

#[derive(Debug, Clone)]
pub struct Exit {
    pub name: String,
    /// Index into [`Snapshot::networks`].
    pub network: usize,
    pub kind: ExitKind,
    pub country: Option<String>,
    pub state: Option<String>,
    pub city: Option<String>,
    /// Failure counting and benching, shared by all cores.
    pub health: Arc<Health>,
}

#[derive(Debug, Clone)]
pub enum ExitKind {
    /// Connect from this host, optionally bound to a local source address.
    Direct { source_ip: Option<IpAddr> },
    /// Chain through an upstream SOCKS5 proxy.
    Socks5(Upstream),
    /// Chain through an upstream HTTP proxy (CONNECT).
    Http(Upstream),
}

/// An upstream proxy from an exit's `url`.
#[derive(Clone)]
pub struct Upstream {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for Upstream {
    // Never print the upstream's password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub name: String,
    pub bandwidth: u64,
    pub threads: u32,
}

#[derive(Clone)]
pub enum Password {
    Plain(Vec<u8>),
    /// A PHC string (`$argon2id$...`), parsed at load time.
    Argon2(String),
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Password::Plain(_) => "Plain(..)",
            Password::Argon2(_) => "Argon2(..)",
        })
    }
}

#[derive(Debug, Clone)]
pub struct Account {
    pub name: String,
    pub password: Password,
    /// Index into [`Snapshot::plans`].
    pub plan: usize,
    /// Indexes into [`Snapshot::networks`].
    pub networks: Vec<usize>,
    /// Live counters (slots, bytes). Fresh from [`Snapshot::build`]; the plan ledger
    /// replaces it with the account's persistent state before the snapshot serves.
    pub state: Arc<AccountState>,
}

impl Account {
    pub fn may_use(&self, network: usize) -> bool {
        self.networks.contains(&network)
    }
}

fn names<'a>(it: impl Iterator<Item = &'a str>) -> String {
    let v: Vec<_> = it.map(|n| format!("{n:?}")).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

fn find(names_: &[&str], wanted: &str) -> Option<usize> {
    names_.iter().position(|n| *n == wanted)
}

impl Snapshot {
    /// Validate a parsed file. The error names the section, the entry and the key.
    pub fn build(f: File) -> Result<Snapshot, String> {
        let s = &f.server;
        if s.workers > 4096 {
            return Err(format!(
                "[server] workers = {}: at most 4096 executors",
                s.workers
            ));
        }
        for (key, d) in [
            ("usage_flush", s.usage_flush),
            ("handshake_timeout", s.handshake_timeout),
            ("connect_timeout", s.connect_timeout),
            ("idle_timeout", s.idle_timeout),
        ] {
            if d.0.is_zero() {
                return Err(format!("[server] {key}: must be greater than 0s"));
            }
        }
        if s.max_header_size.0 < 1024 || s.max_header_size.0 > 1 << 20 {
            return Err("[server] max_header_size: must be between 1KiB and 1MiB".into());
        }
        if s.spin_before_park.0 > std::time::Duration::from_millis(10) {
            return Err("[server] spin_before_park: at most 10ms".into());
        }
        if s.max_connections_per_worker == 0 {
            return Err("[server] max_connections_per_worker: must be at least 1".into());
        }
        let admin = match &f.admin {
            Some(a) => Some(a.listen.parse::<SocketAddr>().map_err(|_| {
                format!(
                    "[admin] listen = {:?}: not an IP:port address (e.g. \"127.0.0.1:9090\")",
                    a.listen
                )
            })?),
            None => None,
        };
        if let Some(a) = admin {
            not_v4_mapped(a).map_err(|e| format!("[admin] listen: {e}"))?;
        }
        if !matches!(f.log.format.as_str(), "human" | "json") {
            return Err(format!(
                "[log] format = {:?}: must be \"human\" or \"json\"",
                f.log.format
            ));
        }
        // Filter directives are ASCII; tracing-subscriber's parser panics on some non-ASCII
        // input (found by fuzzing), so it never sees any.
        if !f.log.level.is_ascii()
            || !valid_levels(&f.log.level)
            || tracing_subscriber::EnvFilter::try_new(&f.log.level).is_err()
        {
            return Err(format!(
                "[log] level = {:?}: not a level; use one of {} (or directives such as \"info,tollgate=debug\")",
                f.log.level,
                LEVELS.join(", ")
            ));
        }
        if f.security.auth_failures == 0 {
            return Err("[security] auth_failures: must be at least 1".into());
        }
        if f.routing.bench_after == 0 {
            return Err("[routing] bench_after: must be at least 1".into());
        }
        if f.routing.retries > super::MAX_RETRIES {
            return Err(format!("[routing] retries: at most {}", super::MAX_RETRIES));
        }
        if f.routing.max_sessions == 0 {
            return Err("[routing] max_sessions: must be at least 1".into());
        }
        if f.routing.max_sessions_per_account == 0 {
            return Err("[routing] max_sessions_per_account: must be at least 1".into());
        }
        if f.dns.resolver_threads == 0 || f.dns.resolver_threads > 64 {
            return Err("[dns] resolver_threads: must be between 1 and 64".into());
        }

        let networks = build_networks(&f)?;
        let net_names: Vec<&str> = networks.iter().map(|n| n.name.as_str()).collect();
        let listeners = build_listeners(&f, &net_names, admin)?;
        let exits = build_exits(&f, &net_names)?;

        let mut plans = Vec::with_capacity(f.plans.len());
        for (i, p) in f.plans.iter().enumerate() {
            let at = format!("[[plan]] #{} (name = {:?})", i + 1, p.name);
            if p.name.is_empty() {
                return Err(format!("[[plan]] #{}: name must not be empty", i + 1));
            }
            if plans.iter().any(|q: &Plan| q.name == p.name) {
                return Err(format!("{at}: name: duplicate plan"));
            }
            if p.threads == 0 {
                return Err(format!("{at}: threads: must be at least 1"));
            }
            plans.push(Plan {
                name: p.name.clone(),
                bandwidth: p.bandwidth.0,
                threads: p.threads,
            });
        }
        let plan_names: Vec<&str> = plans.iter().map(|p| p.name.as_str()).collect();

        let mut accounts = AHashMap::with_capacity(f.users.len());
        let mut ip_rules: Vec<(ipnet::IpNet, String)> = Vec::new();
        for (i, u) in f.users.iter().enumerate() {
            for cidr in &u.allow_ips {
                let at = format!("[[user]] #{} (name = {:?}): allow_ips", i + 1, u.name);
                let net: ipnet::IpNet = match cidr.parse::<ipnet::IpNet>() {
                    Ok(n) => n.trunc(),
                    Err(_) => match cidr.parse::<IpAddr>() {
                        Ok(ip) => ipnet::IpNet::from(ip),
                        Err(_) => {
                            return Err(format!(
                                "{at}: {cidr:?} is not an address or CIDR (e.g. \"203.0.113.0/24\")"
                            ))
                        }
                    },
                };
                if let Some((_, other)) = ip_rules.iter().find(|(n, _)| *n == net) {
                    return Err(format!("{at}: {net} is already allowed for {other:?}"));
                }
                ip_rules.push((net, u.name.clone()));
            }
            let account = build_account(i, u, &plan_names, &net_names)?;
            if accounts.contains_key(&account.name) {
                return Err(format!(
                    "[[user]] #{} (name = {:?}): name: duplicate user",
                    i + 1,
                    u.name
                ));
            }
            accounts.insert(account.name.clone(), account);
        }

        let cluster = f.cluster.map(ClusterSection::validate).transpose()?;
        let index = ExitIndex::build(&exits);
        let exit_by_name = exits
            .iter()
            .enumerate()
            .map(|(i, e)| (e.name.clone(), i))
            .collect();
        Ok(Snapshot {
            per_account_metrics: f.admin.as_ref().is_none_or(|a| a.per_account_metrics),
            server: f.server,
            admin,
            log: f.log,
            dns: f.dns,
            routing: f.routing,
            security: f.security,
            listeners,
            networks,
            exits,
            index,
            exit_by_name,
            plans,
            accounts,
            ip_rules,
            cluster,
        })
    }

    /// The account a client address is allow-listed for (most specific network wins).
    pub fn account_for_ip(&self, ip: IpAddr) -> Option<&Account> {
        self.ip_rules
            .iter()
            .filter(|(net, _)| net.contains(&ip))
            .max_by_key(|(net, _)| net.prefix_len())
            .and_then(|(_, name)| self.accounts.get(name))
    }

    /// Keep the health (failure counts, bench) of exits that survive a reload.
    pub fn inherit_health(&mut self, old: &Snapshot) {
        for e in &mut self.exits {
            if let Some(&i) = old.exit_by_name.get(&e.name) {
                e.health = old.exits[i].health.clone();
            }
        }
    }

    /// Index of a network by name.
    pub fn network_index(&self, name: &str) -> Option<usize> {
        self.networks.iter().position(|n| n.name == name)
    }
}

fn build_networks(f: &File) -> Result<Vec<Network>, String> {
    let mut out: Vec<Network> = Vec::with_capacity(f.networks.len());
    for (i, n) in f.networks.iter().enumerate() {
        let at = format!("[[network]] #{} (name = {:?})", i + 1, n.name);
        if n.name.is_empty() {
            return Err(format!("[[network]] #{}: name must not be empty", i + 1));
        }
        if out.iter().any(|m| m.name == n.name) {
            return Err(format!("{at}: name: duplicate network"));
        }
        if n.ttl_min == 0 {
            return Err(format!("{at}: ttl_min: must be at least 1 (minutes)"));
        }
        if n.ttl_min > n.ttl_max {
            return Err(format!(
                "{at}: ttl_max = {} is below ttl_min = {}",
                n.ttl_max, n.ttl_min
            ));
        }
        if !(n.ttl_min..=n.ttl_max).contains(&n.ttl_default) {
            return Err(format!(
                "{at}: ttl_default = {} is outside [ttl_min, ttl_max] = [{}, {}]",
                n.ttl_default, n.ttl_min, n.ttl_max
            ));
        }
        out.push(Network {
            name: n.name.clone(),
            targeting: n.targeting,
            ttl_min: n.ttl_min,
            ttl_max: n.ttl_max,
            ttl_default: n.ttl_default,
        });
    }
    Ok(out)
}

fn build_listeners(
    f: &File,
    net_names: &[&str],
    admin: Option<SocketAddr>,
) -> Result<Vec<Listener>, String> {
    if f.listeners.is_empty() {
        return Err("[[listener]]: at least one listener is required".into());
    }
    let mut out: Vec<Listener> = Vec::with_capacity(f.listeners.len());
    for (i, l) in f.listeners.iter().enumerate() {
        let at = format!("[[listener]] #{} (listen = {:?})", i + 1, l.listen);
        let listen: SocketAddr = l.listen.parse().map_err(|_| {
            format!("{at}: listen: not an IP:port address (e.g. \"127.0.0.1:13337\")")
        })?;
        not_v4_mapped(listen).map_err(|e| format!("{at}: listen: {e}"))?;
        let network = find(net_names, &l.network).ok_or_else(|| {
            format!(
                "{at}: network = {:?} is not defined; defined networks: {}",
                l.network,
                names(net_names.iter().copied())
            )
        })?;
        let others = out.iter().map(|o| o.listen).chain(admin);
        for other in others {
            if collides(listen, other) {
                return Err(format!(
                    "{at}: listen: collides with {other} (same port on an overlapping address)"
                ));
            }
        }
        out.push(Listener { listen, network });
    }
    Ok(out)
}

/// An IPv4-mapped IPv6 address (`[::ffff:a.b.c.d]`) cannot be bound as a listener: say so,
/// and what to write instead, rather than failing at start with "address in use".
fn not_v4_mapped(addr: SocketAddr) -> Result<(), String> {
    match addr {
        SocketAddr::V6(a) => match a.ip().to_ipv4_mapped() {
            Some(v4) => Err(format!(
                "{addr} is an IPv4-mapped IPv6 address, which cannot be listened on; write {v4}:{} instead (or [::]:{} for every address)",
                a.port(),
                a.port()
            )),
            None => Ok(()),
        },
        SocketAddr::V4(_) => Ok(()),
    }
}

/// `[log] level` names: a directive without `=` must be one of these.
const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// Each comma-separated directive is a level, or `target=level`: tracing would take
/// `warning` as a target name and silently drop every line.
fn valid_levels(spec: &str) -> bool {
    spec.split(',').all(|d| {
        let level = d.rsplit_once('=').map_or(d, |(_, l)| l).trim();
        LEVELS.iter().any(|l| l.eq_ignore_ascii_case(level))
    })
}

/// Two listen addresses collide when they share a non-zero port and their addresses overlap
/// (equal, or one of them the wildcard of the same family).
fn collides(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() == 0 || a.port() != b.port() || a.is_ipv4() != b.is_ipv4() {
        return false;
    }
    a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified()
}

fn tag(at: &str, key: &str, v: &Option<String>) -> Result<Option<String>, String> {
    match v {
        None => Ok(None),
        Some(s) if s.is_empty() || !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => {
            Err(format!(
                "{at}: {key} = {s:?}: use letters, digits or '_' only (e.g. \"losangeles\")"
            ))
        }
        Some(s) => Ok(Some(s.to_ascii_lowercase())),
    }
}

fn build_exits(f: &File, net_names: &[&str]) -> Result<Vec<Exit>, String> {
    let mut out: Vec<Exit> = Vec::with_capacity(f.exits.len());
    for (i, e) in f.exits.iter().enumerate() {
        let name = e.name.clone().unwrap_or_else(|| format!("exit-{}", i + 1));
        let at = format!("[[exit]] #{} ({name})", i + 1);
        if out.iter().any(|x| x.name == name) {
            return Err(format!("{at}: name: duplicate exit name"));
        }
        let network = find(net_names, &e.network).ok_or_else(|| {
            format!(
                "{at}: network = {:?} is not defined; defined networks: {}",
                e.network,
                names(net_names.iter().copied())
            )
        })?;
        let kind = match e.kind.as_str() {
            "direct" => {
                if e.url.is_some() {
                    return Err(format!("{at}: url: only socks5 and http exits take a url"));
                }
                let source_ip = match &e.source_ip {
                    None => None,
                    Some(s) => Some(
                        s.parse::<IpAddr>()
                            .map_err(|_| format!("{at}: source_ip = {s:?}: not an IP address"))?,
                    ),
                };
                ExitKind::Direct { source_ip }
            }
            "socks5" | "http" => {
                if e.source_ip.is_some() {
                    return Err(format!(
                        "{at}: source_ip: only direct exits take a source_ip"
                    ));
                }
                let url = e
                    .url
                    .as_deref()
                    .ok_or_else(|| format!("{at}: url: required for kind = {:?}", e.kind))?;
                let up = parse_upstream_url(url, &e.kind).map_err(|m| format!("{at}: url: {m}"))?;
                if e.kind == "socks5" {
                    ExitKind::Socks5(up)
                } else {
                    ExitKind::Http(up)
                }
            }
            other => {
                return Err(format!(
                    "{at}: kind = {other:?}: must be \"direct\", \"socks5\" or \"http\""
                ))
            }
        };
        let country = tag(&at, "country", &e.country)?;
        let state = tag(&at, "state", &e.state)?;
        let city = tag(&at, "city", &e.city)?;
        if let Some(c) = &country {
            if !geo::is_country(c) {
                return Err(format!(
                    "{at}: country = {c:?}: not an ISO 3166-1 alpha-2 code (e.g. \"us\")"
                ));
            }
        }
        if let Some(st) = &state {
            let Some(c) = &country else {
                return Err(format!("{at}: state: needs a country tag too"));
            };
            if !geo::is_state(c, st) {
                return Err(format!(
                    "{at}: state = {st:?}: not an ISO 3166-2 subdivision of {c:?} (e.g. \"ca\" for US-CA)"
                ));
            }
        }
        if city.as_deref() == Some("ran") {
            return Err(format!(
                "{at}: city: \"ran\" is reserved (it means a random city)"
            ));
        }
        if city.is_some() && country.is_none() {
            return Err(format!("{at}: city: needs a country tag too"));
        }
        out.push(Exit {
            name,
            network,
            kind,
            country,
            state,
            city,
            health: Arc::new(Health::default()),
        });
    }
    Ok(out)
}

fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("bad %-escape in credentials")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "credentials are not UTF-8".to_string())
}

/// `scheme://[user[:pass]@]host:port` with `scheme` matching the exit kind.
pub fn parse_upstream_url(url: &str, kind: &str) -> Result<Upstream, String> {
    let rest = url
        .strip_prefix(kind)
        .and_then(|r| r.strip_prefix("://"))
        .ok_or_else(|| format!("must start with \"{kind}://\""))?;
    let (creds, hostport) = match rest.rsplit_once('@') {
        Some((c, h)) => (Some(c), h),
        None => (None, rest),
    };
    let hostport = hostport.trim_end_matches('/');
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, p) = v6.split_once("]:").ok_or("expected [ipv6]:port")?;
        (h.to_string(), p)
    } else {
        let (h, p) = hostport.rsplit_once(':').ok_or("expected host:port")?;
        (h.to_string(), p)
    };
    if host.is_empty() {
        return Err("host is empty".into());
    }
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or("port must be 1-65535")?;
    let (username, password) = match creds {
        None => (None, None),
        Some(c) => {
            let (u, p) = match c.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (c, None),
            };
            (Some(percent_decode(u)?), p.map(percent_decode).transpose()?)
        }
    };
    if kind == "socks5" {
        for v in [&username, &password].into_iter().flatten() {
            if v.len() > 255 {
                return Err("SOCKS5 credentials are at most 255 bytes each".into());
            }
        }
    }
    Ok(Upstream {
        host,
        port,
        username,
        password,
    })
}

fn build_account(
    i: usize,
    u: &super::UserSection,
    plan_names: &[&str],
    net_names: &[&str],
) -> Result<Account, String> {
    let at = format!("[[user]] #{} (name = {:?})", i + 1, u.name);
    if u.name.is_empty() || u.name.len() > 255 {
        return Err(format!("{at}: name: must be 1 to 255 bytes"));
    }
    if u.name.contains(':') || u.name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!(
            "{at}: name: must not contain ':', spaces or control characters"
        ));
    }
    if let Some(key) = KEYS
        .iter()
        .find(|k| u.name.contains(&format!("-{k}-")) || u.name.ends_with(&format!("-{k}")))
    {
        return Err(format!(
            "{at}: name: contains the modifier key \"-{key}\", so it could not be addressed"
        ));
    }
    let password = match (&u.password, &u.password_hash) {
        (Some(_), Some(_)) => {
            return Err(format!(
                "{at}: set either password or password_hash, not both"
            ))
        }
        (None, None) => return Err(format!("{at}: password or password_hash is required")),
        (Some(p), None) => {
            if p.len() > 255 {
                return Err(format!("{at}: password: at most 255 bytes (SOCKS5 limit)"));
            }
            Password::Plain(p.as_bytes().to_vec())
        }
        (None, Some(h)) => {
            let parsed = argon2::PasswordHash::new(h)
                .map_err(|e| format!("{at}: password_hash: not a PHC hash string ({e})"))?;
            if !parsed.algorithm.as_str().starts_with("argon2") {
                return Err(format!(
                    "{at}: password_hash: only argon2 hashes are supported"
                ));
            }
            // The whole string, so that no account is configured that can never log in.
            if parsed.salt.is_none() || parsed.hash.is_none() {
                return Err(format!(
                    "{at}: password_hash: incomplete, needs $argon2id$v=19$m=…,t=…,p=…$<salt>$<hash> (make one with `argon2` or Python's argon2-cffi)"
                ));
            }
            argon2::Params::try_from(&parsed)
                .map_err(|e| format!("{at}: password_hash: bad argon2 parameters ({e})"))?;
            Password::Argon2(h.clone())
        }
    };
    let plan = find(plan_names, &u.plan).ok_or_else(|| {
        format!(
            "{at}: plan = {:?} is not defined; defined plans: {}",
            u.plan,
            names(plan_names.iter().copied())
        )
    })?;
    if u.networks.is_empty() {
        return Err(format!("{at}: networks: list at least one network"));
    }
    let mut networks = Vec::with_capacity(u.networks.len());
    for n in &u.networks {
        let idx = find(net_names, n).ok_or_else(|| {
            format!(
                "{at}: networks: {n:?} is not defined; defined networks: {}",
                names(net_names.iter().copied())
            )
        })?;
        if !networks.contains(&idx) {
            networks.push(idx);
        }
    }
    Ok(Account {
        name: u.name.clone(),
        password,
        plan,
        networks,
        state: Arc::new(AccountState::default()),
    })
}

#[cfg(test)]
mod tests {
    use super::super::parse;

    const BASE: &str = r#"
[[listener]]
listen = "127.0.0.1:0"
network = "res"
[[network]]
name = "res"
targeting = true
[[exit]]
network = "res"
kind = "direct"
[[plan]]
name = "p"
bandwidth = "1GiB"
threads = 5
[[user]]
name = "alice"
password = "pw"
plan = "p"
networks = ["res"]
"#;

    fn err(extra: &str) -> String {
        parse(&format!("{BASE}{extra}")).unwrap_err()
    }

    #[test]
    fn base_is_valid() {
        let s = parse(BASE).unwrap();
        assert_eq!(s.accounts["alice"].plan, 0);
        assert_eq!(s.plans[0].bandwidth, 1 << 30);
    }

    #[test]
    fn errors_name_the_key() {
        let cases: &[(&str, &str)] = &[
            (
                "[[user]]\nname=\"bob\"\npassword=\"x\"\nplan=\"gold\"\nnetworks=[\"res\"]\n",
                "[[user]] #2 (name = \"bob\"): plan = \"gold\" is not defined; defined plans: \"p\"",
            ),
            (
                "[[user]]\nname=\"alice\"\npassword=\"x\"\nplan=\"p\"\nnetworks=[\"res\"]\n",
                "[[user]] #2 (name = \"alice\"): name: duplicate user",
            ),
            (
                "[[user]]\nname=\"bob\"\npassword=\"x\"\nplan=\"p\"\nnetworks=[\"dc\"]\n",
                "networks: \"dc\" is not defined",
            ),
            (
                "[[listener]]\nlisten=\"127.0.0.1:0\"\nnetwork=\"nope\"\n",
                "[[listener]] #2 (listen = \"127.0.0.1:0\"): network = \"nope\" is not defined",
            ),
            (
                "[[plan]]\nname=\"q\"\nbandwidth=\"10XB\"\nthreads=1\n",
                "unknown unit",
            ),
            (
                "[server]\nspin_before_park = \"1s\"\n",
                "[server] spin_before_park: at most 10ms",
            ),
            (
                "[cluster]\nredis = \"redis://127.0.0.1/0\"\nnode = \"gw 1\"\n",
                "[cluster] node = \"gw 1\"",
            ),
            (
                "[[exit]]\nnetwork=\"res\"\nkind=\"ftp\"\n",
                "[[exit]] #2 (exit-2): kind = \"ftp\"",
            ),
            (
                "[[exit]]\nnetwork=\"res\"\nkind=\"socks5\"\nurl=\"http://h:1\"\n",
                "url: must start with \"socks5://\"",
            ),
            (
                "[[user]]\nname=\"bob-country-x\"\npassword=\"x\"\nplan=\"p\"\nnetworks=[\"res\"]\n",
                "contains the modifier key",
            ),
            (
                "[[exit]]\nnetwork=\"res\"\nkind=\"direct\"\ncountry=\"zz\"\n",
                "[[exit]] #2 (exit-2): country = \"zz\": not an ISO 3166-1 alpha-2 code",
            ),
            (
                "[[exit]]\nnetwork=\"res\"\nkind=\"direct\"\ncountry=\"de\"\nstate=\"ca\"\n",
                "state = \"ca\": not an ISO 3166-2 subdivision of \"de\"",
            ),
            (
                "[routing]\nbench_after=0\n",
                "[routing] bench_after: must be at least 1",
            ),
            ("[log]\nlevel = \"-ser , \u{4cf}=   \"\n", "[log] level"),
            ("[server]\nhandshake_timeout=\"10\"\n", "has no unit"),
            ("[server]\nworkerz=1\n", "unknown field `workerz`"),
        ];
        for (extra, want) in cases {
            let e = err(extra);
            assert!(e.contains(want), "{extra}\n=> {e}\nwanted: {want}");
        }
    }

    #[test]
    fn listeners_that_collide() {
        let two = |a: &str, b: &str| {
            let extra = format!("[[listener]]\nlisten = \"{b}\"\nnetwork = \"res\"\n");
            parse(&format!("{}{extra}", BASE.replace("127.0.0.1:0", a)))
        };
        let e = two("127.0.0.1:7000", "0.0.0.0:7000").unwrap_err();
        assert!(e.contains("collides with 127.0.0.1:7000"), "{e}");
        assert!(two("127.0.0.1:7000", "127.0.0.1:7000").is_err());
        assert!(two("127.0.0.1:7000", "127.0.0.2:7000").is_ok());
        assert!(two("127.0.0.1:7000", "[::]:7000").is_ok());
        // Port 0 never collides: each gets its own ephemeral port.
        assert!(two("127.0.0.1:0", "127.0.0.1:0").is_ok());
    }

    #[test]
    fn upstream_urls() {
        let u = super::parse_upstream_url("socks5://us%40r:p%3Ass@198.51.100.7:1080", "socks5")
            .unwrap();
        assert_eq!(u.host, "198.51.100.7");
        assert_eq!(u.port, 1080);
        assert_eq!(u.username.as_deref(), Some("us@r"));
        assert_eq!(u.password.as_deref(), Some("p:ss"));
        let v6 = super::parse_upstream_url("http://[::1]:3128", "http").unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 3128));
        assert!(super::parse_upstream_url("http://h:0", "http").is_err());
        assert!(super::parse_upstream_url("http://h", "http").is_err());
    }

    #[test]
    fn argon2_hash_is_checked_at_load() {
        let bad = BASE.replace("password = \"pw\"", "password_hash = \"nope\"");
        assert!(parse(&bad).unwrap_err().contains("password_hash"));
    }
}
