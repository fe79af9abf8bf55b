//! Configuration: the serde model of the TOML file, validation that names the exact key,
//! and the immutable [`Snapshot`] that connections read (published through `ArcSwap`).

mod cluster;
mod exits;
mod model;
mod units;
mod validate;

pub use cluster::{ClusterSection, DownPolicy};
pub use exits::parse_upstream_url;
pub use model::{
    Account, Exit, ExitKind, Listener, Network, Password, Period, Plan, ProxyProtocol, Snapshot,
    Source, Upstream,
};
pub use units::{parse_duration, parse_size, Dur, Size};
pub use validate::{
    allow_ip, check_account_name, check_password_hash, parse_expires, parse_period, parse_speed,
};

use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The whole file, as written. Names are DESIGN.md's configuration contract.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub admin: Option<AdminSection>,
    #[serde(default)]
    pub log: LogSection,
    #[serde(default)]
    pub dns: DnsSection,
    #[serde(default)]
    pub routing: RoutingSection,
    #[serde(default)]
    pub security: SecuritySection,
    #[serde(default, rename = "listener")]
    pub listeners: Vec<ListenerSection>,
    #[serde(default, rename = "network")]
    pub networks: Vec<NetworkSection>,
    #[serde(default, rename = "exit")]
    pub exits: Vec<ExitSection>,
    #[serde(default, rename = "plan")]
    pub plans: Vec<PlanSection>,
    #[serde(default, rename = "user")]
    pub users: Vec<UserSection>,
    #[serde(default)]
    pub cluster: Option<ClusterSection>,
    #[serde(default)]
    pub support: SupportSection,
}

/// `[support]`: the error records kept for support (see `support`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SupportSection {
    /// Error records kept at most (the oldest go first).
    pub errors_kept: u64,
    /// How long an error record is kept.
    pub errors_for: Dur,
}

impl Default for SupportSection {
    fn default() -> Self {
        Self {
            errors_kept: 100_000,
            errors_for: Dur(std::time::Duration::from_secs(7 * 86_400)),
        }
    }
}

/// `[server]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// Executors pinned to cores; 0 = one per online CPU.
    pub workers: usize,
    /// Client must finish greeting, auth and request within this.
    pub handshake_timeout: Dur,
    /// Outbound connect, per attempt.
    pub connect_timeout: Dur,
    /// A tunnel with no bytes either way for this long is closed.
    pub idle_timeout: Dur,
    /// Once one side of a tunnel has closed, it is closed after this long without a byte
    /// (at most `idle_timeout`): a client that left does not hold its thread for long
    /// when the origin never answers its close.
    pub half_close_timeout: Dur,
    /// On SIGTERM/SIGINT, how long live connections may take to finish.
    pub drain_timeout: Dur,
    /// Allow loopback/private/link-local/CGNAT/metadata targets.
    pub allow_private_targets: bool,
    /// Where the embedded usage store lives.
    pub state_dir: PathBuf,
    /// How often usage is written to the store (a `kill -9` loses at most this much).
    pub usage_flush: Dur,
    /// Largest HTTP request or response head accepted.
    pub max_header_size: Size,
    /// Concurrent client connections per executor; the overflow is closed at accept.
    pub max_connections_per_worker: usize,
    /// How long an executor with nothing to do busy-polls before it sleeps; 0 = sleep at
    /// once. Read at start.
    pub spin_before_park: Dur,
    /// Relay tunnels between two plain TCP sockets with splice(2) (no copy through user
    /// space) once a direction carries bulk (a read fills a whole buffer; until then it
    /// copies, which costs less for small reads); `false`: copy through buffers like TLS
    /// sessions do.
    pub splice: bool,
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            workers: 0,
            handshake_timeout: Dur(std::time::Duration::from_secs(10)),
            connect_timeout: Dur(std::time::Duration::from_secs(10)),
            idle_timeout: Dur(std::time::Duration::from_secs(300)),
            half_close_timeout: Dur(std::time::Duration::from_secs(10)),
            drain_timeout: Dur(std::time::Duration::from_secs(30)),
            allow_private_targets: false,
            state_dir: PathBuf::from("./state"),
            usage_flush: Dur(std::time::Duration::from_secs(5)),
            max_header_size: Size(16 * 1024),
            max_connections_per_worker: 65_536,
            spin_before_park: Dur(std::time::Duration::ZERO),
            splice: true,
        }
    }
}

/// `[admin]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    pub listen: String,
    /// Export per-account bytes and threads (turn off with very many accounts).
    #[serde(default = "yes")]
    pub per_account_metrics: bool,
    /// A file holding the accounts API's bearer token (one line, at least 16 bytes);
    /// without it the API (`/v1/…`) is off. Re-read on SIGHUP.
    #[serde(default)]
    pub api_token_file: Option<PathBuf>,
    /// Ask for the token on `/metrics` and `/healthz` too.
    #[serde(default)]
    pub protect_metrics: bool,
}

fn yes() -> bool {
    true
}

/// `[log]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// `error`, `warn`, `info`, `debug`, `trace`, or a full `RUST_LOG`-style filter.
    pub level: String,
    /// `human` or `json`.
    pub format: String,
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: "human".into(),
        }
    }
}

/// `[dns]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsSection {
    /// How long a resolved name is reused by an executor.
    pub cache_ttl: Dur,
    /// How long a failed lookup is remembered.
    pub negative_ttl: Dur,
    /// Names each executor keeps at most.
    pub cache_size: usize,
    /// Resolver threads per executor (lookups never run on the executor thread).
    pub resolver_threads: usize,
}

impl Default for DnsSection {
    fn default() -> Self {
        Self {
            cache_ttl: Dur(std::time::Duration::from_secs(60)),
            negative_ttl: Dur(std::time::Duration::from_secs(5)),
            cache_size: 4096,
            resolver_threads: 2,
        }
    }
}

/// Largest `[routing] retries`.
pub const MAX_RETRIES: u32 = 16;

/// `[routing]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingSection {
    /// Further exits tried when a rotating connection's exit fails (not its target).
    pub retries: u32,
    /// Consecutive exit failures that bench an exit.
    pub bench_after: u32,
    /// How long a benched exit is left out.
    pub bench_for: Dur,
    /// Sticky sessions kept at most (expired ones are swept first).
    pub max_sessions: usize,
    /// Sticky sessions one account keeps at most; past it, its own oldest goes.
    pub max_sessions_per_account: usize,
    /// Keys the derivation of a session's address inside a prefix exit: without it the
    /// address is still stable (derived from the exit and its prefix), with it unguessable.
    pub session_secret: Option<Secret>,
}

/// A secret from the file: never printed (`Debug` shows `Secret(..)`).
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Default for RoutingSection {
    fn default() -> Self {
        Self {
            retries: 2,
            bench_after: 3,
            bench_for: Dur(std::time::Duration::from_secs(30)),
            max_sessions: 1_000_000,
            max_sessions_per_account: 100_000,
            session_secret: None,
        }
    }
}

/// `[security]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecuritySection {
    /// Different failed credentials from one address within `auth_window` that slow it...
    pub auth_failures: u32,
    pub auth_window: Dur,
    /// ...for this long.
    pub auth_block: Dur,
    /// While slowed: one password check per this interval.
    pub auth_delay: Dur,
}

impl Default for SecuritySection {
    fn default() -> Self {
        Self {
            auth_failures: 10,
            auth_window: Dur(std::time::Duration::from_secs(60)),
            auth_block: Dur(std::time::Duration::from_secs(300)),
            auth_delay: Dur(std::time::Duration::from_secs(1)),
        }
    }
}

/// `[[listener]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerSection {
    pub listen: String,
    pub network: String,
    /// `"v1"`, `"v2"` or `"any"`: connections start with a PROXY protocol header (a load
    /// balancer's), whose client address is used.
    #[serde(default)]
    pub proxy_protocol: Option<String>,
    /// The senders (balancers) allowed to send it; other connections are closed.
    #[serde(default)]
    pub proxy_protocol_from: Vec<String>,
    /// PEM certificate chain and private key: the listener also serves the HTTP proxy
    /// inside TLS (an HTTPS proxy), told apart by the first byte like SOCKS5 and HTTP.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
}

/// `[[network]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSection {
    pub name: String,
    #[serde(default)]
    pub targeting: bool,
    #[serde(default = "default_ttl_min")]
    pub ttl_min: u32,
    #[serde(default = "default_ttl_max")]
    pub ttl_max: u32,
    #[serde(default = "default_ttl_default")]
    pub ttl_default: u32,
    /// `"request"`: every forwarded request of a rotating username takes the next exit
    /// (and address); `"connection"`: a client connection keeps the first one.
    #[serde(default = "default_rotate")]
    pub rotate: String,
}

fn default_rotate() -> String {
    "request".into()
}

fn default_ttl_min() -> u32 {
    1
}
fn default_ttl_max() -> u32 {
    1440
}
fn default_ttl_default() -> u32 {
    10
}

/// `[[exit]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExitSection {
    /// Optional label for logs; defaults to `exit-<n>` (1-based position in the file).
    pub name: Option<String>,
    pub network: String,
    pub kind: String,
    pub source_ip: Option<String>,
    /// `direct` only: leave from addresses of this local prefix (IPv4 or IPv6 CIDR).
    pub source_cidr: Option<String>,
    pub url: Option<String>,
    pub country: Option<String>,
    pub state: Option<String>,
    pub city: Option<String>,
}

/// `[[plan]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanSection {
    pub name: String,
    pub bandwidth: Size,
    pub threads: u32,
    /// Relayed bytes per second across all of an account's connections, e.g. "10MiB/s".
    pub speed: Option<String>,
    /// When usage starts again from zero: "month", "week", "day" or "none" (UTC).
    pub period: Option<String>,
}

/// `[[user]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserSection {
    pub name: String,
    pub password: Option<String>,
    pub password_hash: Option<String>,
    pub plan: String,
    pub networks: Vec<String>,
    /// Client addresses (CIDR) that may connect without credentials as this account.
    #[serde(default)]
    pub allow_ips: Vec<String>,
    /// RFC 3339 time after which the account is refused (407, "account expired").
    pub expires: Option<String>,
}

/// A configuration problem, worded for the operator: file, key and reason.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

/// Read, parse and validate a config file.
pub fn load(path: &Path) -> Result<Snapshot, ConfigError> {
    let err = |message: String| ConfigError {
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
    parse(&text).map_err(err)
}

/// Parse and validate config text.
pub fn parse(text: &str) -> Result<Snapshot, String> {
    let file: File = toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())?;
    Snapshot::build(file)
}

/// Defined names, quoted, for an error message ("none" when there are none).
fn names<'a>(it: impl Iterator<Item = &'a str>) -> String {
    let v: Vec<_> = it.map(|n| format!("{n:?}")).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// Position of `wanted` among `names_`.
fn find(names_: &[&str], wanted: &str) -> Option<usize> {
    names_.iter().position(|n| *n == wanted)
}
