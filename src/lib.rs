//! tollgate: a SOCKS5 + HTTP proxy gateway, thread-per-core on glommio.
//!
//! A connection's journey, one module per stage:
//!
//! - [`runtime`] starts one pinned executor per core and handles signals and drain;
//!   [`worker`] is one core's context (buffers, DNS cache, credential cache, counters).
//! - [`listener`] owns each core's SO_REUSEPORT sockets and accept loop.
//! - [`session`] runs one client connection top to bottom: [`sniff`] the first bytes, then
//!   the [`socks5`] or [`http`] handler; [`conn`] is what every stage knows of the
//!   connection (its context, its two sides, its access line).
//! - [`auth`] checks credentials and parses the username's modifiers.
//! - [`plan`] admits (thread slots) and meters (bandwidth leases) each account's traffic,
//!   and keeps usage durable.
//! - [`route`] picks the exit: targeting, rotation, sticky sessions, benching.
//! - [`exit`] turns a target into an outbound connection (DNS, policy, source address).
//! - [`relay`] moves bytes both ways with pooled buffers and counts them.
//! - [`metrics`] and [`admin`]: per-core counters, `/metrics` and `/healthz`.
//! - [`error`] is the one error type and its reply table; [`config`] the validated snapshot.
//! - [`util`]: primitives with no proxy knowledge (latch, buffer pool, deadlines).

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
pub mod relay;
pub mod route;
pub mod runtime;
pub mod session;
pub mod side;
pub mod sniff;
pub mod socks5;
pub mod util;
pub mod worker;
pub mod world;
