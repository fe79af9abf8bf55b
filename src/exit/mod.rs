//! Exits: where traffic leaves. Dials the target through the exit the route picks
//! (rotation, sticky session, retries on another exit, benching) — directly from this
//! host (optionally from a source address) or through an upstream SOCKS5/HTTP proxy.

pub mod dns;
pub mod policy;
pub mod upstream;

use crate::config::{ExitKind, Snapshot};
use crate::error::ProxyError;
use crate::route::{Route, Sticky};
use crate::util::within;
use crate::worker::Worker;
use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;
use socket2::{Domain, Protocol, SockRef, Socket, Type};
use std::cell::Cell;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd};
use std::time::{Duration, Instant};

/// What the client asked to reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetAddr {
    Ip(SocketAddr),
    Name(String, u16),
}

impl TargetAddr {
    /// A host string (name or IP literal) and port, as HTTP and SOCKS domain targets carry.
    /// Every numeric form `inet_aton` accepts (`127.1`, `2130706433`, `0x7f000001`,
    /// `0177.0.0.1`, `0`) becomes the IPv4 address it means, so that the private-target
    /// policy sees it on every exit kind, not only where this host resolves it.
    pub fn from_host(host: &str, port: u16) -> TargetAddr {
        let host = host
            .strip_suffix('.')
            .filter(|h| !h.is_empty())
            .unwrap_or(host);
        if let Ok(ip) = host.parse::<IpAddr>() {
            return TargetAddr::Ip(SocketAddr::new(ip, port));
        }
        match inet_aton(host) {
            Some(v4) => TargetAddr::Ip(SocketAddr::new(IpAddr::V4(v4), port)),
            None => TargetAddr::Name(host.to_ascii_lowercase(), port),
        }
    }

    /// A SOCKS5 domain name: hostname characters only (letters, digits, `-`, `_`, `.`; at
    /// most 253 bytes, labels of 1–63), or an IP literal. Anything else (CR, LF, NUL,
    /// space, `/`, `@`, `:`, …) would travel into an upstream's CONNECT line or a log line.
    pub fn from_socks_name(name: &[u8], port: u16) -> Option<TargetAddr> {
        let host = std::str::from_utf8(name).ok()?;
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Some(TargetAddr::Ip(SocketAddr::new(ip, port)));
        }
        let bare = host.strip_suffix('.').unwrap_or(host);
        let valid = !bare.is_empty()
            && bare.len() <= 253
            && bare.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes()
                        .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
            });
        valid.then(|| TargetAddr::from_host(host, port))
    }

    pub fn port(&self) -> u16 {
        match self {
            TargetAddr::Ip(a) => a.port(),
            TargetAddr::Name(_, p) => *p,
        }
    }
}

/// The IPv4 address `inet_aton(3)` would make of `s`: one to four parts, each decimal,
/// octal (leading `0`) or hex (`0x`); the last part fills the remaining bytes.
pub fn inet_aton(s: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = s.split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let mut vals = Vec::with_capacity(4);
    for p in &parts {
        let (digits, radix) = if let Some(h) = p.strip_prefix("0x").or_else(|| p.strip_prefix("0X"))
        {
            (h, 16)
        } else if p.len() > 1 && p.starts_with('0') {
            (&p[1..], 8)
        } else {
            (*p, 10)
        };
        if p.is_empty()
            || (digits.is_empty() && radix != 16)
            || !digits.bytes().all(|c| c.is_ascii_hexdigit())
        {
            return None;
        }
        let v = if digits.is_empty() {
            0
        } else {
            u64::from_str_radix(digits, radix).ok()?
        };
        vals.push(v);
    }
    let (last, head) = vals.split_last()?;
    if head.iter().any(|&v| v > 255) {
        return None;
    }
    let rest_bits = 8 * (4 - head.len() as u32);
    if *last >= 1u64 << rest_bits {
        return None;
    }
    let mut n: u64 = 0;
    for (i, &v) in head.iter().enumerate() {
        n |= v << (24 - 8 * i as u32);
    }
    n |= last;
    Some(Ipv4Addr::from(n as u32))
}

impl fmt::Display for TargetAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetAddr::Ip(a) => write!(f, "{a}"),
            TargetAddr::Name(h, p) => write!(f, "{h}:{p}"),
        }
    }
}

/// An established outbound connection.
pub struct Outbound {
    pub stream: TcpStream,
    /// Our side of it: the SOCKS5 reply's BND.ADDR.
    pub local: SocketAddr,
    /// Index into the snapshot's exits.
    pub exit: usize,
    /// Bytes an upstream proxy sent after its handshake: they belong to the client.
    pub early: Vec<u8>,
}

/// Whose fault a failed attempt was: the exit's (try another, count towards benching) or
/// the target's (report it; another exit would not help).
pub enum Fail {
    /// The exit's own failure (its upstream unreachable, its handshake or credentials
    /// refused): retried elsewhere, counts towards benching the exit.
    Exit(ProxyError),
    /// The target's failure: reported at once, retried nowhere, never benches the exit.
    Target(ProxyError),
    /// Could be either (an upstream's 503, or no answer to our CONNECT within
    /// `connect_timeout`): reported at once like a target's failure; benches the exit only
    /// when several targets of several accounts fail this way (one tenant cannot bench a
    /// shared exit).
    Unclear(ProxyError),
}

/// The exit sticky session `st` is bound to, binding one first if it has none. In a
/// cluster the binding lives in Redis (so every node agrees) and this core's table mirrors
/// it; while Redis is down, the local table alone decides.
async fn sticky_exit(
    w: &Worker,
    snap: &Snapshot,
    route: &Route,
    st: &Sticky,
    now: Instant,
) -> Option<usize> {
    let members = snap.index.members(route.list);
    let usable = |n: &str| {
        snap.exit_by_name
            .get(n)
            .copied()
            .filter(|i| members.contains(i))
    };
    if let Some(c) = &w.cluster {
        if let Some(pick) = w.pick(snap, route.list, &[], now) {
            if let Ok((exit, left)) = c.bind(&st.key, &snap.exits[pick].name, st.ttl).await {
                w.sessions.put(&st.key, &exit, left, Instant::now());
                return usable(&exit);
            }
        }
    }
    if let Some(i) = w.sessions.get(&st.key, now).and_then(|n| usable(&n)) {
        return Some(i);
    }
    let pick = w.pick(snap, route.list, &[], now)?;
    let winner = w
        .sessions
        .bind(&st.key, &snap.exits[pick].name, st.ttl, now);
    usable(&winner)
}

/// Move session `st` off `failed` onto `exit` (in Redis too, in a cluster).
async fn move_session(w: &Worker, st: &Sticky, failed: &str, exit: &str, now: Instant) {
    if let Some(c) = &w.cluster {
        if let Ok((exit, left)) = c.replace(&st.key, failed, exit, st.ttl).await {
            w.sessions.put(&st.key, &exit, left, Instant::now());
            return;
        }
    }
    w.sessions.replace(&st.key, failed, exit, st.ttl, now);
}

/// At most this many resolved addresses are tried for one target.
const MAX_ADDRS_TRIED: usize = 3;

/// Connect to `target` along `route`.
pub async fn dial(
    w: &Worker,
    snap: &Snapshot,
    route: &Route,
    target: &TargetAddr,
) -> Result<Outbound, ProxyError> {
    let now = Instant::now();
    let name = |i: usize| snap.exits[i].name.as_str();
    // A sticky session starts on its bound exit (binding one first if it has none).
    let bound = match &route.sticky {
        Some(st) => sticky_exit(w, snap, route, st, now).await,
        None => None,
    };
    // Exits tried so far (at most 1 + MAX_RETRIES): on the stack, no allocation.
    let mut tried_buf = [usize::MAX; 1 + crate::config::MAX_RETRIES as usize];
    let attempts = (1 + snap.routing.retries as usize).min(tried_buf.len());
    let mut last = None;
    for n_tried in 0..attempts {
        let exit = match bound.filter(|b| n_tried == 0 && !snap.exits[*b].health.is_benched(now)) {
            Some(b) => b,
            None => match w.pick(snap, route.list, &tried_buf[..n_tried], now) {
                Some(i) => i,
                None => break,
            },
        };
        tried_buf[n_tried] = exit;
        let health = &snap.exits[exit].health;
        let t0 = Instant::now();
        // Set once our CONNECT request is with the upstream: a timeout after it is unclear.
        let asked = Cell::new(false);
        let res = within(
            snap.server.connect_timeout.0,
            connect_via(w, snap, exit, target, &asked),
        )
        .await;
        w.metrics
            .exit_attempt(name(exit), !matches!(res, Some(Ok(_))));
        match res {
            Some(Ok(out)) => {
                w.metrics.observe_connect(t0.elapsed());
                health.success();
                if let (Some(st), Some(b)) = (&route.sticky, bound) {
                    if b != exit {
                        // The session's exit failed: it moves to this one for the rest of its TTL.
                        move_session(w, st, name(b), name(exit), now).await;
                        tracing::info!(exit = name(exit), failed = name(b), "sticky session moved");
                    }
                }
                return Ok(out);
            }
            Some(Err(Fail::Target(e))) => {
                health.success();
                return Err(e);
            }
            None if matches!(snap.exits[exit].kind, ExitKind::Direct { .. }) => {
                return Err(ProxyError::ConnectTimeout);
            }
            Some(Err(Fail::Unclear(e))) => {
                unclear(snap, exit, target, route, &e, now);
                return Err(e);
            }
            None if asked.get() => {
                let e = ProxyError::ConnectTimeout;
                unclear(snap, exit, target, route, &e, now);
                return Err(e);
            }
            outcome => {
                let e = match outcome {
                    Some(Err(Fail::Exit(e))) => e,
                    _ => ProxyError::Upstream(format!("exit {} timed out", name(exit))),
                };
                tracing::warn!(exit = name(exit), error = %e, "exit failed");
                if health.failure(snap.routing.bench_after, snap.routing.bench_for.0, now) {
                    tracing::warn!(
                        exit = name(exit),
                        cooldown = ?snap.routing.bench_for.0,
                        "exit benched after repeated failures"
                    );
                }
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or(ProxyError::Unavailable("every matching exit is benched")))
}

/// A failure that may be the target's or the exit's: counted per target and account.
fn unclear(
    snap: &Snapshot,
    exit: usize,
    target: &TargetAddr,
    route: &Route,
    e: &ProxyError,
    now: Instant,
) {
    let name = snap.exits[exit].name.as_str();
    tracing::info!(exit = name, error = %e, "exit or target failed (unclear which)");
    let health = &snap.exits[exit].health;
    let r = &snap.routing;
    if health.unclear_failure(
        target_key(target),
        route.tenant,
        r.bench_after,
        r.bench_for.0,
        now,
    ) {
        tracing::warn!(
            exit = name,
            cooldown = ?r.bench_for.0,
            "exit benched: several accounts' targets failed through it"
        );
    }
}

/// A target's identity for health bookkeeping.
fn target_key(target: &TargetAddr) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = ahash::AHasher::default();
    match target {
        TargetAddr::Ip(a) => a.hash(&mut h),
        TargetAddr::Name(n, p) => (n, p).hash(&mut h),
    }
    h.finish()
}

/// One attempt through one exit.
async fn connect_via(
    w: &Worker,
    snap: &Snapshot,
    exit: usize,
    target: &TargetAddr,
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
    let timeout = snap.server.connect_timeout.0;
    let (up, is_socks) = match &snap.exits[exit].kind {
        ExitKind::Direct { source_ip } => {
            let (stream, local) =
                connect_target(w, target, *source_ip, allow_private, timeout).await?;
            return Ok(Outbound {
                stream,
                local,
                exit,
                early: Vec::new(),
            });
        }
        ExitKind::Socks5(up) => (up, true),
        ExitKind::Http(up) => (up, false),
    };
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
        Err(_) => *w
            .dns
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
    let (mut stream, local) = connect_direct(addr, None, timeout).await.map_err(|e| {
        Fail::Exit(ProxyError::Upstream(format!(
            "upstream proxy {addr} unreachable: {e}"
        )))
    })?;
    let early = if is_socks {
        upstream::socks5(&mut stream, up, target, asked).await?
    } else {
        upstream::http_connect(&mut stream, up, target, asked).await?
    };
    Ok(Outbound {
        stream,
        local,
        exit,
        early,
    })
}

/// Resolve, apply the private-range policy and connect directly.
async fn connect_target(
    w: &Worker,
    target: &TargetAddr,
    source_ip: Option<IpAddr>,
    allow_private: bool,
    timeout: Duration,
) -> Result<(TcpStream, SocketAddr), Fail> {
    let one;
    let resolved;
    let addrs: &[IpAddr] = match target {
        TargetAddr::Ip(a) => {
            one = [a.ip()];
            &one
        }
        TargetAddr::Name(host, _) => {
            resolved = w
                .dns
                .resolve(host)
                .await
                .map_err(|_| Fail::Target(ProxyError::DnsFailed(host.clone())))?;
            &resolved
        }
    };
    let allowed = || {
        addrs
            .iter()
            .copied()
            .filter(|ip| allow_private || !policy::is_private(*ip))
    };
    if allowed().next().is_none() {
        return Err(Fail::Target(ProxyError::ForbiddenTarget(
            target.to_string(),
        )));
    }
    let usable = allowed()
        .filter(|ip| source_ip.is_none_or(|s| s.is_ipv4() == ip.is_ipv4()))
        .take(MAX_ADDRS_TRIED);
    let mut last = ProxyError::NetworkUnreachable;
    for ip in usable {
        match connect_direct(SocketAddr::new(ip, target.port()), source_ip, timeout).await {
            Ok(ok) => return Ok(ok),
            // The source address is not on this host: the exit is broken, not the target.
            Err(e @ ProxyError::Unavailable(_)) => return Err(Fail::Exit(e)),
            Err(e) => last = e,
        }
    }
    Err(Fail::Target(last))
}

/// Non-blocking connect from an optional source address, adopted into glommio.
/// glommio's own connect resolves on the executor thread and cannot bind a source.
pub async fn connect_direct(
    addr: SocketAddr,
    source: Option<IpAddr>,
    timeout: Duration,
) -> Result<(TcpStream, SocketAddr), ProxyError> {
    let io = |e: std::io::Error| ProxyError::from_connect_io(&e);
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(|_| ProxyError::Unavailable("out of sockets"))?;
    sock.set_nonblocking(true).map_err(io)?;
    sock.set_nodelay(true).map_err(io)?;
    if let Some(src) = source {
        // Let connect() pick the port, so many source IPs don't exhaust ephemeral ports at
        // bind time (IP_BIND_ADDRESS_NO_PORT, Linux 4.2+).
        let one: libc::c_int = 1;
        // SAFETY: valid fd, option value is a c_int that outlives the call.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                &one as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        sock.bind(&SocketAddr::new(src, 0).into()).map_err(|e| {
            if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) {
                ProxyError::Unavailable("exit source_ip is not an address of this host")
            } else {
                io(e)
            }
        })?;
    }
    match sock.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(io(e)),
    }
    // SAFETY: we own the fd (into_raw_fd) and hand it to the stream.
    let mut stream = unsafe { TcpStream::from_raw_fd(sock.into_raw_fd()) };
    // A zero-length write completes when the socket becomes writable: connected or failed.
    match within(timeout, stream.write(&[])).await {
        None => return Err(ProxyError::ConnectTimeout),
        Some(Err(e)) => return Err(io(e)),
        Some(Ok(_)) => {}
    }
    // SAFETY: the fd stays open for the borrow's lifetime (the stream outlives it).
    let fd = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) };
    if let Ok(Some(e)) = SockRef::from(&fd).take_error() {
        return Err(io(e));
    }
    let local = stream
        .local_addr()
        .map_err(|_| ProxyError::ConnectionRefused)?;
    // A socket that was refused may still look writable; peer_addr tells for sure.
    stream
        .peer_addr()
        .map_err(|_| ProxyError::ConnectionRefused)?;
    Ok((stream, local))
}

#[cfg(test)]
mod tests {
    use super::{inet_aton, TargetAddr};

    #[test]
    fn every_inet_aton_form_is_an_ip_literal() {
        for (s, want) in [
            ("127.1", Some([127, 0, 0, 1])),
            ("2130706433", Some([127, 0, 0, 1])),
            ("0x7f000001", Some([127, 0, 0, 1])),
            ("0177.0.0.1", Some([127, 0, 0, 1])),
            ("0", Some([0, 0, 0, 0])),
            ("127.0.1", Some([127, 0, 0, 1])),
            ("0xa9.0xfe.0xa9.0xfe", Some([169, 254, 169, 254])),
            ("256.0.0.1", None),
            ("1.2.3.4.5", None),
            ("example.com", None),
            ("+1", None),
            ("08", None),
            ("1.", None),
        ] {
            assert_eq!(inet_aton(s), want.map(std::net::Ipv4Addr::from), "{s}");
        }
        assert!(matches!(
            TargetAddr::from_host("127.1", 80),
            TargetAddr::Ip(_)
        ));
        assert!(matches!(
            TargetAddr::from_host("127.0.0.1.", 80),
            TargetAddr::Ip(_)
        ));
    }

    #[test]
    fn socks_names_are_host_names() {
        for bad in [
            &b"a\r\nb"[..],
            b"a\nb",
            b"a b",
            b"a/b",
            b"a@b",
            b"a\0b",
            b"",
            b"a..b",
            b"h:1",
        ] {
            assert!(TargetAddr::from_socks_name(bad, 80).is_none(), "{bad:?}");
        }
        assert!(TargetAddr::from_socks_name(b"ex-am_ple.com.", 80).is_some());
        assert!(matches!(
            TargetAddr::from_socks_name(b"0x7f.1", 80),
            Some(TargetAddr::Ip(_))
        ));
    }
}
