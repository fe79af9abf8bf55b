//! The validated configuration that connections read: pure data. Live state (usage,
//! exit health, the routing index) is kept by plan and route, beside it in the published
//! world, never inside it.

use super::{
    ClusterSection, DnsSection, LogSection, RoutingSection, SecuritySection, ServerSection,
    SupportSection,
};
use ahash::AHashMap;
use std::net::{IpAddr, SocketAddr};

/// Everything a connection needs to know of the configuration, validated. Published (in
/// the world) through `ArcSwap`; a connection loads it once and uses it for its whole life.
#[derive(Debug)]
pub struct Snapshot {
    pub server: ServerSection,
    pub admin: Option<SocketAddr>,
    /// `[admin] per_account_metrics`.
    pub per_account_metrics: bool,
    /// `[admin] api_token_file`'s token: the accounts API is off without one.
    pub api_token: Option<super::Secret>,
    /// `[admin] protect_metrics`.
    pub protect_metrics: bool,
    pub log: LogSection,
    pub dns: DnsSection,
    pub routing: RoutingSection,
    pub security: SecuritySection,
    pub listeners: Vec<Listener>,
    pub networks: Vec<Network>,
    pub exits: Vec<Exit>,
    pub exit_by_name: AHashMap<String, usize>,
    pub plans: Vec<std::sync::Arc<Plan>>,
    pub accounts: AHashMap<String, Account>,
    /// `allow_ips` of every account: client network → account name.
    pub ip_rules: Vec<(ipnet::IpNet, String)>,
    /// `[cluster]`: shared state in Redis; `None` = single node. Read at start only.
    pub cluster: Option<ClusterSection>,
    pub support: SupportSection,
}

#[derive(Debug, Clone)]
pub struct Listener {
    pub listen: SocketAddr,
    /// Index into [`Snapshot::networks`].
    pub network: usize,
    /// `proxy_protocol`: the versions accepted and who may send them.
    pub proxy: Option<ProxyProtocol>,
    /// `tls_cert` / `tls_key`, loaded: TLS ClientHellos are served (an HTTPS proxy);
    /// without, they are answered with an alert.
    pub tls: Option<crate::tls::ServerConfig>,
}

/// A listener behind load balancers that speak the PROXY protocol.
#[derive(Debug, Clone)]
pub struct ProxyProtocol {
    pub versions: crate::proxy_header::Versions,
    /// The balancers' addresses (`proxy_protocol_from`).
    pub from: Vec<ipnet::IpNet>,
}

impl ProxyProtocol {
    /// Whether `sender` may send a header.
    pub fn trusts(&self, sender: IpAddr) -> bool {
        self.from.iter().any(|n| n.contains(&sender))
    }
}

#[derive(Debug, Clone)]
pub struct Network {
    pub name: String,
    pub targeting: bool,
    pub ttl_min: u32,
    pub ttl_max: u32,
    pub ttl_default: u32,
    /// Rotating usernames take the next exit for every forwarded request (`rotate =
    /// "request"`), not only for every connection.
    pub rotate_per_request: bool,
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
}

#[derive(Debug, Clone)]
pub enum ExitKind {
    /// Connect from this host: from the address the kernel picks, from one local address,
    /// or from addresses of a local prefix.
    Direct { source: Source },
    /// Chain through an upstream SOCKS5 proxy.
    Socks5(Upstream),
    /// Chain through an upstream HTTP proxy (CONNECT).
    Http(Upstream),
}

/// Where a direct exit's connections leave from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The address the kernel picks for each target (either family).
    Host,
    /// `source_ip`: always this local address.
    Ip(IpAddr),
    /// `source_cidr`: an address of this prefix, random per rotating connection, derived
    /// from the session for a sticky one.
    Prefix(ipnet::IpNet),
}

impl Source {
    /// The address family the exit can reach targets in: `None` for both.
    pub fn family_v6(&self) -> Option<bool> {
        match self {
            Source::Host => None,
            Source::Ip(ip) => Some(ip.is_ipv6()),
            Source::Prefix(net) => Some(matches!(net, ipnet::IpNet::V6(_))),
        }
    }
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
    /// Bytes per second across all of an account's connections and cores; 0 = unlimited.
    pub speed: u64,
    /// When usage starts again from zero.
    pub period: Period,
}

/// A plan's usage period, on UTC calendar boundaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Period {
    /// Usage never resets by itself.
    #[default]
    None,
    Day,
    /// From Monday 00:00 UTC (ISO weeks).
    Week,
    /// From the 1st, 00:00 UTC.
    Month,
}

impl Period {
    /// The start (Unix seconds) of the period `t` falls in; 0 for [`Period::None`].
    /// Computed from the calendar, never timed: every node and every restart agrees.
    pub fn start_of(self, t: jiff::Timestamp) -> i64 {
        let utc = t.to_zoned(jiff::tz::TimeZone::UTC);
        let date = utc.date();
        let first = match self {
            Period::None => return 0,
            Period::Day => date,
            Period::Week => date
                .checked_sub(
                    jiff::Span::new().days(i64::from(date.weekday().to_monday_zero_offset())),
                )
                .unwrap_or(date),
            Period::Month => date.first_of_month(),
        };
        first
            .to_zoned(jiff::tz::TimeZone::UTC)
            .map_or(0, |z| z.timestamp().as_second())
    }
}

impl Period {
    /// The start of the period after the one that starts at `start` (Unix seconds): where
    /// that one ends. 0 for [`Period::None`].
    pub fn next_start(self, start: i64) -> i64 {
        let Ok(t) = jiff::Timestamp::from_second(start) else {
            return 0;
        };
        let z = t.to_zoned(jiff::tz::TimeZone::UTC);
        let step = match self {
            Period::None => return 0,
            Period::Day => jiff::Span::new().days(1),
            Period::Week => jiff::Span::new().weeks(1),
            Period::Month => jiff::Span::new().months(1),
        };
        z.checked_add(step).map_or(0, |z| z.timestamp().as_second())
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Period::None => "none",
            Period::Day => "day",
            Period::Week => "week",
            Period::Month => "month",
        }
    }
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
    /// Position among the file's accounts: the index of its live usage in the world.
    pub id: usize,
    /// After this the account is refused (407, "account expired").
    pub expires: Option<jiff::Timestamp>,
}

impl Account {
    pub fn may_use(&self, network: usize) -> bool {
        self.networks.contains(&network)
    }

    /// Whether the account has expired at `now`.
    pub fn expired(&self, now: jiff::Timestamp) -> bool {
        self.expires.is_some_and(|t| now >= t)
    }
}

impl Snapshot {
    /// The account a client address is allow-listed for (most specific network wins).
    pub fn account_for_ip(&self, ip: IpAddr) -> Option<&Account> {
        self.ip_rules
            .iter()
            .filter(|(net, _)| net.contains(&ip))
            .max_by_key(|(net, _)| net.prefix_len())
            .and_then(|(_, name)| self.accounts.get(name))
    }

    /// A plan of the file, by name.
    pub fn plan_named(&self, name: &str) -> Option<&std::sync::Arc<Plan>> {
        self.plans.iter().find(|p| p.name == name)
    }

    /// Index of a network by name.
    pub fn network_index(&self, name: &str) -> Option<usize> {
        self.networks.iter().position(|n| n.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::Period;

    #[test]
    fn periods_start_on_utc_calendar_boundaries() {
        let t = |s: &str| s.parse::<jiff::Timestamp>().unwrap();
        let start = |p: Period, s: &str| p.start_of(t(s));
        // 2026-12-01 is a Tuesday.
        let now = "2026-12-01T13:45:00+02:00";
        assert_eq!(
            start(Period::Day, now),
            t("2026-12-01T00:00:00Z").as_second()
        );
        assert_eq!(
            start(Period::Week, now),
            t("2026-11-30T00:00:00Z").as_second()
        );
        assert_eq!(
            start(Period::Month, now),
            t("2026-12-01T00:00:00Z").as_second()
        );
        assert_eq!(
            start(Period::Day, "2026-12-01T01:00:00+02:00"),
            t("2026-11-30T00:00:00Z").as_second()
        );
        assert_eq!(
            start(Period::Month, "2024-03-01T00:00:00Z"),
            t("2024-03-01T00:00:00Z").as_second()
        );
        assert_eq!(start(Period::None, now), 0);
        let dec = t("2026-12-01T00:00:00Z").as_second();
        assert_eq!(
            Period::Month.next_start(dec),
            t("2027-01-01T00:00:00Z").as_second()
        );
        assert_eq!(
            Period::Week.next_start(t("2026-11-30T00:00:00Z").as_second()),
            t("2026-12-07T00:00:00Z").as_second()
        );
        assert_eq!(Period::Day.next_start(dec), dec + 86_400);
    }
}
