//! tollgate: a SOCKS5 + HTTP proxy gateway, thread-per-core on glommio.
//!
//! # The layers
//!
//! Each floor imports only the floors below it (and a module its own children);
//! `scripts/layers.py`, run by the test command, fails on any import that goes up or
//! sideways.
//!
//! | floor | modules | what lives there |
//! |---|---|---|
//! | primitives | [`error`], [`util`], [`geo`], [`metrics`], [`stream`], [`tls`] | the one error type and its reply table; latch, buffer pool, deadlines, [`util::Parsed`]; ISO codes; per-core counters; a connection's byte stream (plain or TLS) and the HTTPS listener's certificate |
//! | codecs | [`sniff`], [`auth::username`], [`http::codec`], [`socks5::codec`] | sans-IO parsers and encoders, fuzzed; no state |
//! | data | [`config`] | the validated configuration: pure data |
//! | directory | [`accounts`] | accounts and plans of the API: the shared directory logins read, the SQLite store and its change log |
//! | domain | [`auth`], [`plan`], [`route`] | who (credentials, guard); what they may spend (slots, leases, the ledger, the [`plan::SharedPlan`] seam); where it may go (targeting, [`route::choose`]: rotation, sticky sessions, benching, the [`route::SharedSessions`] seam) |
//! | bytes | [`relay`], [`side`] | the metered two-way copy; one end of a connection and the one read loop |
//! | egress | [`exit`] | DNS, private-target policy, direct connects, upstream proxies |
//! | backends | [`cluster`] | Redis: implements plan's and route's seams |
//! | world, core | [`world`], [`worker`] | the published world (config + usage + exit health); one core's [`worker::Core`] and the shared [`worker::Services`] |
//! | connection | [`conn`], [`proxy`] | a connection's [`conn::Ctx`] and [`conn::Exchange`] (its access line); the pipeline both protocols share: admit, tunnel, fail |
//! | handlers | [`socks5`], [`http`] | the protocols; never each other, never their caller |
//! | dispatch | [`session`], [`listener`] | sniff and hand over; accept loops |
//! | process | [`admin`], [`runtime`] | `/metrics`, `/healthz`; boot, executors, reload, drain |
//!
//! # One connection's journey
//!
//! 1. `runtime/mod.rs` starts the services (ledger, cluster link, the first
//!    [`world::World`], sessions, guard) and one pinned executor per core
//!    (`runtime/executor.rs`), each with its own SO_REUSEPORT sockets (`runtime/boot.rs`).
//! 2. `listener.rs` accepts and spawns the connection's task under a panic boundary.
//! 3. `session.rs` loads the world once ([`conn::Ctx::new`]), reads the first bytes and
//!    sniffs them (`sniff.rs`), then hands the connection to `socks5/mod.rs` or
//!    `http/mod.rs`.
//! 4. The handler parses its protocol with its codec through [`side::Side::read_until`] and
//!    authenticates with [`auth::login`] (`auth/mod.rs`, `auth/guard.rs`,
//!    `auth/username.rs`).
//! 5. [`proxy::admit`] resolves the route (`route/mod.rs`), takes a thread slot and a
//!    bandwidth charge (`plan/mod.rs`, `plan/ledger.rs`, `plan/shard.rs`) and binds the
//!    connection's [`relay::Meter`].
//! 6. [`exit::dial`] (`exit/mod.rs`) asks [`route::Choice`] (`route/choose.rs`) for each
//!    attempt's exit and connects through it (`exit/connect.rs`, `exit/dns.rs`,
//!    `exit/upstream.rs`), reporting whose fault each failure was.
//! 7. A tunnel goes through [`proxy::tunnel`] (the reply, early bytes, then `relay.rs`);
//!    a forwarded `http://` request through `http/forward/` (origin reuse, framing,
//!    100-continue, upgrade). A refusal goes through [`proxy::fail`].
//! 8. [`conn::Exchange::finish`] writes the access line and counts the outcome; the slot
//!    and the charge are released when they drop.

pub mod accounts;
pub mod admin;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod conn;
pub mod error;
pub mod exit;
pub mod fuzzing;
pub mod geo;
pub mod http;
pub mod listener;
pub mod metrics;
pub mod plan;
pub mod proxy;
pub mod proxy_header;
pub mod relay;
pub mod route;
pub mod runtime;
pub mod session;
pub mod side;
pub mod sniff;
pub mod socks5;
pub mod stream;
pub mod support;
pub mod tls;
pub mod util;
pub mod worker;
pub mod world;
