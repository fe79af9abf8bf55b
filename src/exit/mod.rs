//! Exits: where traffic leaves. Connects to the target through the exit that route's
//! [`Choice`] picks, attempt by attempt — directly from this host (optionally from a source
//! address) or through an upstream SOCKS5/HTTP proxy — and tells the choice whose fault
//! each failure was.

mod connect;
pub mod dns;
pub mod policy;
pub mod source;
mod target;
pub mod upstream;

pub use connect::connect_direct;
pub use target::{inet_aton, TargetAddr};

use crate::config::{ExitKind, Snapshot, Source, Upstream};
use crate::error::ProxyError;
use crate::metrics::CoreMetrics;
use crate::route::choose::{Choice, Chooser};
use crate::route::Route;
use crate::side::Side;
use crate::stream::Stream;
use crate::util::within;
use connect::{connect_target, From};
use dns::DnsCache;
use std::cell::Cell;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

/// What dialing uses: the exit choice's inputs, this core's DNS cache and counters.
pub struct Egress<'a> {
    pub choose: Chooser<'a>,
    pub dns: &'a DnsCache,
    pub metrics: &'a CoreMetrics,
}

/// An established outbound connection.
pub struct Outbound {
    pub stream: Stream,
    /// Our side of it: the SOCKS5 reply's BND.ADDR.
    pub local: SocketAddr,
    /// Index into the snapshot's exits.
    pub exit: usize,
    /// Bytes an upstream proxy sent after its handshake: they belong to the client.
    pub early: Vec<u8>,
    /// The address a direct exit's connection left from (what the target sees).
    pub source: Option<IpAddr>,
}

/// Whose fault a failed attempt was: the exit's (try another, count towards benching) or
/// the target's (report it; another exit would not help).
pub enum Fail {
    /// The exit's own failure (its upstream unreachable, its handshake or credentials
    /// refused): retried elsewhere, counts towards benching the exit.
    Exit(ProxyError),
    /// The target's failure: reported at once, retried nowhere, never benches the exit.
    Target(ProxyError),
    /// The target has no address of the exit's family: another exit may have one; never
    /// counts against the exit.
    Family(ProxyError),
    /// Could be either (an upstream's 503, or no answer to our CONNECT within
    /// `connect_timeout`): reported at once like a target's failure; benches the exit only
    /// when several targets of several accounts fail this way (one tenant cannot bench a
    /// shared exit).
    Unclear(ProxyError),
    /// This gateway ran out of something of its own (file descriptors for a socket):
    /// reported at once, retried nowhere (another exit would need one too), and never
    /// counted against the exit: a tenant that exhausts the gateway's descriptors must not
    /// bench a shared exit for everyone after its connections are gone.
    Local(ProxyError),
}

/// Connect to `target` along `route`: the exits [`Choice`] offers, in turn, until one
/// connects or a failure is the target's (another exit would not help).
pub async fn dial(
    eg: &Egress<'_>,
    route: &Route,
    target: &TargetAddr,
) -> Result<Outbound, ProxyError> {
    let snap = eg.choose.snap;
    let mut choice = Choice::start(eg.choose, route).await;
    let mut last = None;
    while let Some(exit) = choice.next_exit() {
        let t0 = Instant::now();
        // Set once our CONNECT request is with the upstream: a timeout after it is unclear.
        let asked = Cell::new(false);
        let session = route.sticky.as_ref().map(|st| st.key.as_str());
        // One expression: a named attempt moved into `within` would be held twice in
        // this future.
        let res = within(
            snap.server.connect_timeout.0,
            connect_via(eg.dns, snap, exit, target, session, &asked),
        )
        .await;
        let name = snap.exits[exit].name.as_str();
        // A socket this gateway could not create never reached the exit: no attempt of it.
        if !matches!(res, Some(Err(Fail::Local(_)))) {
            eg.metrics.exit_attempt(name, !matches!(res, Some(Ok(_))));
        }
        let e = match res {
            Some(Ok(out)) => {
                eg.metrics.observe_connect(t0.elapsed());
                choice.served(exit).await;
                return Ok(out);
            }
            Some(Err(Fail::Target(e))) => {
                choice.target_failed(exit);
                return Err(e);
            }
            Some(Err(Fail::Local(e))) => return Err(e),
            None if matches!(snap.exits[exit].kind, ExitKind::Direct { .. }) => {
                return Err(ProxyError::ConnectTimeout);
            }
            Some(Err(Fail::Unclear(e))) => {
                choice.unclear(exit, target::target_key(target), &e);
                return Err(e);
            }
            None if asked.get() => {
                let e = ProxyError::ConnectTimeout;
                choice.unclear(exit, target::target_key(target), &e);
                return Err(e);
            }
            Some(Err(Fail::Family(e))) => {
                last = Some(e);
                continue;
            }
            Some(Err(Fail::Exit(e))) => e,
            None => ProxyError::Upstream(format!("exit {name} timed out")),
        };
        choice.exit_failed(exit, &e);
        last = Some(e);
    }
    Err(last.unwrap_or(ProxyError::Unavailable("every matching exit is benched")))
}

/// One attempt through one exit.
async fn connect_via(
    dns: &DnsCache,
    snap: &Snapshot,
    exit: usize,
    target: &TargetAddr,
    session: Option<&str>,
    asked: &Cell<bool>,
) -> Result<Outbound, Fail> {
    #[cfg(feature = "fault-injection")]
    if matches!(target, TargetAddr::Name(h, _) if h == "panic.fault-injection.invalid") {
        #[allow(clippy::panic)]
        {
            panic!("fault injection: panic requested by the target name");
        }
    }
    let allow_private = snap.server.allow_private_targets;
    let (up, is_socks) = match &snap.exits[exit].kind {
        ExitKind::Direct { source } => {
            let name = snap.exits[exit].name.as_str();
            let from = From {
                ip: source::pick(source, name, session, snap.routing.session_secret.as_ref()),
                freebind: matches!(source, Source::Prefix(_)),
                family_v6: source.family_v6(),
            };
            let (stream, local) = connect_target(dns, target, from, allow_private).await?;
            return Ok(Outbound {
                stream: stream.into(),
                local,
                exit,
                early: Vec::new(),
                source: Some(local.ip()),
            });
        }
        ExitKind::Socks5(up) => (up, true),
        ExitKind::Http(up) => (up, false),
    };
    // Boxed: the upstream handshake's state would otherwise size every direct dial too.
    Box::pin(via_upstream(
        dns,
        up,
        is_socks,
        exit,
        target,
        allow_private,
        asked,
    ))
    .await
}

/// One attempt through an upstream proxy exit: resolve and connect to it, then its
/// SOCKS5 or HTTP CONNECT handshake for `target`.
async fn via_upstream(
    dns: &DnsCache,
    up: &Upstream,
    is_socks: bool,
    exit: usize,
    target: &TargetAddr,
    allow_private: bool,
    asked: &Cell<bool>,
) -> Result<Outbound, Fail> {
    // The upstream resolves names itself; IP literals are checked here.
    if let TargetAddr::Ip(a) = target {
        if !allow_private && policy::is_private(a.ip()) {
            return Err(Fail::Target(ProxyError::ForbiddenTarget(
                target.to_string(),
            )));
        }
    }
    let ip = match up.host.parse::<IpAddr>() {
        Ok(ip) => ip,
        Err(_) => *dns
            .resolve(&up.host)
            .await
            .map_err(|e| {
                Fail::Exit(ProxyError::Upstream(format!(
                    "upstream {}: {}",
                    up.host, e.0
                )))
            })?
            .first()
            .ok_or_else(|| {
                Fail::Exit(ProxyError::Upstream(format!(
                    "upstream {}: no address",
                    up.host
                )))
            })?,
    };
    let addr = SocketAddr::new(ip, up.port);
    let (stream, local) = connect_direct(addr, None, false).await.map_err(|e| {
        if connect::out_of_sockets(&e) {
            return Fail::Local(e);
        }
        Fail::Exit(ProxyError::Upstream(format!(
            "upstream proxy {addr} unreachable: {e}"
        )))
    })?;
    let mut side = Side::new(stream);
    if is_socks {
        upstream::socks5(&mut side, up, target, asked).await?
    } else {
        upstream::http_connect(&mut side, up, target, asked).await?
    };
    Ok(Outbound {
        stream: side.stream,
        local,
        exit,
        early: side.buf,
        source: None,
    })
}
