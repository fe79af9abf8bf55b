//! Validation: a parsed [`File`] becomes a [`Snapshot`], or an error that names the
//! section, the entry and the key.

use super::exits::build_exits;
use super::model::{Account, Listener, Network, Password, Period, Plan, Snapshot};
use super::{find, names, ClusterSection, File, UserSection};
use crate::auth::username::KEYS;
use ahash::AHashMap;
use std::net::{IpAddr, SocketAddr};

impl Snapshot {
    /// Validate a parsed file. The error names the section, the entry and the key.
    pub fn build(f: File) -> Result<Snapshot, String> {
        check_server(&f)?;
        let admin = build_admin(&f)?;
        let api_token = read_api_token(&f)?;
        check_log(&f)?;
        check_limits(&f)?;
        let networks = build_networks(&f)?;
        let net_names: Vec<&str> = networks.iter().map(|n| n.name.as_str()).collect();
        let listeners = build_listeners(&f, &net_names, admin)?;
        let exits = build_exits(&f, &net_names)?;
        let plans = build_plans(&f)?;
        let plan_names: Vec<&str> = plans.iter().map(|p| p.name.as_str()).collect();
        let (accounts, ip_rules) = build_users(&f, &plan_names, &net_names)?;
        let cluster = f.cluster.map(ClusterSection::validate).transpose()?;
        let exit_by_name = exits
            .iter()
            .enumerate()
            .map(|(i, e)| (e.name.clone(), i))
            .collect();
        Ok(Snapshot {
            per_account_metrics: f.admin.as_ref().is_none_or(|a| a.per_account_metrics),
            protect_metrics: f.admin.as_ref().is_some_and(|a| a.protect_metrics),
            api_token,
            server: f.server,
            admin,
            log: f.log,
            dns: f.dns,
            routing: f.routing,
            security: f.security,
            listeners,
            networks,
            exits,
            exit_by_name,
            plans,
            accounts,
            ip_rules,
            cluster,
            support: f.support,
        })
    }
}

/// `[server]`: bounds of every key.
fn check_server(f: &File) -> Result<(), String> {
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
        ("half_close_timeout", s.half_close_timeout),
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
    Ok(())
}

/// `[admin] listen`.
fn build_admin(f: &File) -> Result<Option<SocketAddr>, String> {
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
    Ok(admin)
}

/// `[admin] api_token_file`: the token it holds (surrounding whitespace trimmed).
fn read_api_token(f: &File) -> Result<Option<super::Secret>, String> {
    let Some(a) = &f.admin else { return Ok(None) };
    let Some(path) = &a.api_token_file else {
        if a.protect_metrics {
            return Err(
                "[admin] protect_metrics: needs api_token_file (the token it asks for)".into(),
            );
        }
        return Ok(None);
    };
    let at = format!("[admin] api_token_file = {:?}", path.display().to_string());
    let text = std::fs::read_to_string(path).map_err(|e| format!("{at}: {e}"))?;
    let token = text.trim();
    if token.len() < 16 {
        return Err(format!(
            "{at}: the token must be at least 16 bytes (e.g. `openssl rand -hex 32`)"
        ));
    }
    if token.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(format!("{at}: the token must be one line without spaces"));
    }
    Ok(Some(super::Secret(token.to_owned())))
}

/// `[log]`: the format, and a level tracing understands.
fn check_log(f: &File) -> Result<(), String> {
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
    Ok(())
}

/// `[security]`, `[routing]` and `[dns]` bounds.
fn check_limits(f: &File) -> Result<(), String> {
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
    if f.routing
        .session_secret
        .as_ref()
        .is_some_and(|s| s.0.len() < 16)
    {
        return Err(
            "[routing] session_secret: at least 16 bytes (e.g. `openssl rand -hex 32`)".into(),
        );
    }
    if f.dns.resolver_threads == 0 || f.dns.resolver_threads > 64 {
        return Err("[dns] resolver_threads: must be between 1 and 64".into());
    }
    Ok(())
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
            rotate_per_request: match n.rotate.as_str() {
                "request" => true,
                "connection" => false,
                other => {
                    return Err(format!(
                        "{at}: rotate = {other:?}: must be \"request\" or \"connection\""
                    ))
                }
            },
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
        let proxy = match l.proxy_protocol.as_deref() {
            None => {
                if !l.proxy_protocol_from.is_empty() {
                    return Err(format!("{at}: proxy_protocol_from: needs proxy_protocol"));
                }
                None
            }
            Some(v) => {
                use crate::proxy_header::Versions;
                let versions = match v {
                    "v1" => Versions::V1,
                    "v2" => Versions::V2,
                    "any" => Versions::Any,
                    other => {
                        return Err(format!(
                            "{at}: proxy_protocol = {other:?}: must be \"v1\", \"v2\" or \"any\""
                        ))
                    }
                };
                if l.proxy_protocol_from.is_empty() {
                    return Err(format!(
                        "{at}: proxy_protocol_from: list the balancers allowed to send the header (e.g. [\"10.0.0.0/24\"])"
                    ));
                }
                let from = l
                    .proxy_protocol_from
                    .iter()
                    .map(|c| allow_ip(&format!("{at}: proxy_protocol_from"), c))
                    .collect::<Result<Vec<_>, _>>()?;
                Some(super::model::ProxyProtocol { versions, from })
            }
        };
        let tls = crate::tls::load_pair(l.tls_cert.as_deref(), l.tls_key.as_deref())
            .map_err(|e| format!("{at}: {e}"))?;
        out.push(Listener {
            listen,
            network,
            proxy,
            tls,
        });
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

fn build_plans(f: &File) -> Result<Vec<std::sync::Arc<Plan>>, String> {
    let mut plans = Vec::with_capacity(f.plans.len());
    for (i, p) in f.plans.iter().enumerate() {
        let at = format!("[[plan]] #{} (name = {:?})", i + 1, p.name);
        if p.name.is_empty() {
            return Err(format!("[[plan]] #{}: name must not be empty", i + 1));
        }
        if plans
            .iter()
            .any(|q: &std::sync::Arc<Plan>| q.name == p.name)
        {
            return Err(format!("{at}: name: duplicate plan"));
        }
        if p.threads == 0 {
            return Err(format!("{at}: threads: must be at least 1"));
        }
        let speed = match &p.speed {
            None => 0,
            Some(v) => parse_speed(v).map_err(|e| format!("{at}: speed = {v:?}: {e}"))?,
        };
        let period = match p.period.as_deref() {
            None => Period::None,
            Some(v) => parse_period(v).map_err(|e| format!("{at}: period = {v:?}: {e}"))?,
        };
        plans.push(std::sync::Arc::new(Plan {
            name: p.name.clone(),
            bandwidth: p.bandwidth.0,
            threads: p.threads,
            speed,
            period,
        }));
    }
    Ok(plans)
}

/// A plan's `speed`: a size per second, at least 1 KiB/s.
pub fn parse_speed(v: &str) -> Result<u64, String> {
    let bad = || "a size per second, e.g. \"10MiB/s\"".to_string();
    let per_second = v.trim().strip_suffix("/s").ok_or_else(bad)?;
    match super::parse_size(per_second) {
        Ok(n) if n >= 1024 => Ok(n),
        Ok(_) => Err("at least 1KiB/s".into()),
        Err(_) => Err(bad()),
    }
}

/// A plan's `period`.
pub fn parse_period(v: &str) -> Result<Period, String> {
    match v {
        "none" => Ok(Period::None),
        "day" => Ok(Period::Day),
        "week" => Ok(Period::Week),
        "month" => Ok(Period::Month),
        _ => Err("must be \"month\", \"week\", \"day\" or \"none\"".into()),
    }
}

/// An account's `expires`: an RFC 3339 time.
pub fn parse_expires(t: &str) -> Result<jiff::Timestamp, String> {
    t.parse::<jiff::Timestamp>()
        .map_err(|e| format!("not an RFC 3339 time such as \"2027-01-31T23:59:59Z\" ({e})"))
}

/// An account name that the username grammar can address: 1 to 255 bytes, no ':', no
/// spaces or control characters, no modifier key inside it.
pub fn check_account_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 255 {
        return Err("must be 1 to 255 bytes".into());
    }
    if name.contains(':') || name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("must not contain ':', spaces or control characters".into());
    }
    // `-key-` inside or `-key` at the end (without allocating: a million names are
    // checked at start-up).
    let has_key = |k: &str| {
        name.match_indices('-').any(|(i, _)| {
            let rest = &name[i + 1..];
            rest.strip_prefix(k)
                .is_some_and(|after| after.is_empty() || after.starts_with('-'))
        })
    };
    if let Some(key) = KEYS.iter().find(|k| has_key(k)) {
        return Err(format!(
            "contains the modifier key \"-{key}\", so it could not be addressed"
        ));
    }
    Ok(())
}

/// A client address or network of `allow_ips`.
pub fn allow_ip(at: &str, cidr: &str) -> Result<ipnet::IpNet, String> {
    match cidr.parse::<ipnet::IpNet>() {
        Ok(n) => Ok(n.trunc()),
        Err(_) => match cidr.parse::<IpAddr>() {
            Ok(ip) => Ok(ipnet::IpNet::from(ip)),
            Err(_) => Err(format!(
                "{at}: {cidr:?} is not an address or CIDR (e.g. \"203.0.113.0/24\")"
            )),
        },
    }
}

type Users = (AHashMap<String, Account>, Vec<(ipnet::IpNet, String)>);

/// `[[user]]`: the accounts, and `allow_ips` as (client network, account) rules.
fn build_users(f: &File, plan_names: &[&str], net_names: &[&str]) -> Result<Users, String> {
    let mut accounts = AHashMap::with_capacity(f.users.len());
    let mut ip_rules: Vec<(ipnet::IpNet, String)> = Vec::new();
    for (i, u) in f.users.iter().enumerate() {
        for cidr in &u.allow_ips {
            let at = format!("[[user]] #{} (name = {:?}): allow_ips", i + 1, u.name);
            let net = allow_ip(&at, cidr)?;
            if let Some((_, other)) = ip_rules.iter().find(|(n, _)| *n == net) {
                return Err(format!("{at}: {net} is already allowed for {other:?}"));
            }
            ip_rules.push((net, u.name.clone()));
        }
        let account = build_account(i, u, plan_names, net_names)?;
        if accounts.contains_key(&account.name) {
            return Err(format!(
                "[[user]] #{} (name = {:?}): name: duplicate user",
                i + 1,
                u.name
            ));
        }
        accounts.insert(account.name.clone(), account);
    }
    Ok((accounts, ip_rules))
}

fn build_account(
    i: usize,
    u: &UserSection,
    plan_names: &[&str],
    net_names: &[&str],
) -> Result<Account, String> {
    let at = format!("[[user]] #{} (name = {:?})", i + 1, u.name);
    check_account_name(&u.name).map_err(|e| format!("{at}: name: {e}"))?;
    let password = build_password(&at, u)?;
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
        id: i,
        expires: match &u.expires {
            None => None,
            Some(t) => Some(parse_expires(t).map_err(|e| format!("{at}: expires = {t:?}: {e}"))?),
        },
    })
}

/// `password` (at most 255 bytes, the SOCKS5 limit) or a complete argon2 `password_hash`.
fn build_password(at: &str, u: &UserSection) -> Result<Password, String> {
    Ok(match (&u.password, &u.password_hash) {
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
            check_password_hash(h).map_err(|e| format!("{at}: password_hash: {e}"))?;
            Password::Argon2(h.clone())
        }
    })
}

/// A complete argon2 PHC string (`$argon2id$v=19$m=…,t=…,p=…$<salt>$<hash>`): checked
/// whole, so that no account is made that can never log in.
pub fn check_password_hash(h: &str) -> Result<(), String> {
    let parsed =
        argon2::PasswordHash::new(h).map_err(|e| format!("not a PHC hash string ({e})"))?;
    if !parsed.algorithm.as_str().starts_with("argon2") {
        return Err("only argon2 hashes are supported".into());
    }
    if parsed.salt.is_none() || parsed.hash.is_none() {
        return Err("incomplete, needs $argon2id$v=19$m=…,t=…,p=…$<salt>$<hash> (make one with `argon2` or Python's argon2-cffi)".into());
    }
    argon2::Params::try_from(&parsed).map_err(|e| format!("bad argon2 parameters ({e})"))?;
    Ok(())
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
        let u =
            super::super::parse_upstream_url("socks5://us%40r:p%3Ass@198.51.100.7:1080", "socks5")
                .unwrap();
        assert_eq!(u.host, "198.51.100.7");
        assert_eq!(u.port, 1080);
        assert_eq!(u.username.as_deref(), Some("us@r"));
        assert_eq!(u.password.as_deref(), Some("p:ss"));
        let v6 = super::super::parse_upstream_url("http://[::1]:3128", "http").unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 3128));
        assert!(super::super::parse_upstream_url("http://h:0", "http").is_err());
        assert!(super::super::parse_upstream_url("http://h", "http").is_err());
    }

    #[test]
    fn argon2_hash_is_checked_at_load() {
        let bad = BASE.replace("password = \"pw\"", "password_hash = \"nope\"");
        assert!(parse(&bad).unwrap_err().contains("password_hash"));
    }
}
