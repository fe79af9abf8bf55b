//! Direct connects: resolve, apply the private-target policy, and connect from an optional
//! source address (a socket glommio adopts once it is connecting).

use super::dns::DnsCache;
use super::policy;
use super::{Fail, TargetAddr};
use crate::error::ProxyError;
use glommio::net::TcpStream;
use socket2::{Domain, Protocol, SockRef, Socket, Type};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd};
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

/// At most this many resolved addresses are tried for one target.
const MAX_ADDRS_TRIED: usize = 3;

/// Where a direct connect leaves from.
#[derive(Clone, Copy)]
pub(super) struct From {
    /// The source address; `None`: the kernel's choice.
    pub ip: Option<IpAddr>,
    /// Bind with `IP_FREEBIND` / `IPV6_FREEBIND` (an address of a prefix routed to this
    /// host, which no interface carries).
    pub freebind: bool,
    /// The targets this exit can reach: IPv6 only (`Some(true)`), IPv4 only, or both.
    pub family_v6: Option<bool>,
}

/// Resolve, apply the private-range policy and the exit's address family, and connect
/// directly; with both families possible, IPv6 and IPv4 addresses alternate and race
/// (RFC 8305).
pub(super) async fn connect_target(
    dns: &DnsCache,
    target: &TargetAddr,
    from: From,
    allow_private: bool,
) -> Result<(TcpStream, SocketAddr), Fail> {
    let one;
    let resolved;
    let addrs: &[IpAddr] = match target {
        TargetAddr::Ip(a) => {
            one = [a.ip()];
            &one
        }
        TargetAddr::Name(host, _) => {
            resolved = dns
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
    let in_family = |v6: bool| allowed().filter(move |ip| ip.is_ipv6() == v6);
    let mut order: Vec<SocketAddr> = Vec::with_capacity(MAX_ADDRS_TRIED);
    match from.family_v6 {
        Some(v6) => order.extend(
            in_family(v6)
                .take(MAX_ADDRS_TRIED)
                .map(|ip| SocketAddr::new(ip, target.port())),
        ),
        None => {
            let (mut six, mut four) = (in_family(true), in_family(false));
            while order.len() < MAX_ADDRS_TRIED {
                let next = [six.next(), four.next()];
                if next.iter().all(Option::is_none) {
                    break;
                }
                order.extend(
                    next.into_iter()
                        .flatten()
                        .map(|ip| SocketAddr::new(ip, target.port())),
                );
            }
            order.truncate(MAX_ADDRS_TRIED);
        }
    }
    if order.is_empty() {
        let want = match from.family_v6 {
            Some(true) => "IPv6",
            _ => "IPv4",
        };
        return Err(Fail::Family(ProxyError::NoAddressInFamily(format!(
            "{target} has no {want} address, and the exits that may carry it reach {want} targets only"
        ))));
    }
    match race(&order, from).await {
        Ok(ok) => Ok(ok),
        // No descriptor for a socket: this gateway's shortage, neither side's fault.
        Err(e) if out_of_sockets(&e) => Err(Fail::Local(e)),
        // The source address is not on this host: the exit is broken, not the target.
        Err(e @ ProxyError::Unavailable(_)) => Err(Fail::Exit(e)),
        Err(e) => Err(Fail::Target(e)),
    }
}

/// A connect that has not answered within this long lets the next address start too.
const ATTEMPT_DELAY: Duration = Duration::from_millis(250);

type Attempt = Pin<Box<dyn Future<Output = Result<(TcpStream, SocketAddr), ProxyError>>>>;

/// Connect to the first of `addrs` that answers: each next address starts when the one
/// before it failed or has not answered for [`ATTEMPT_DELAY`]; the first connection made
/// wins and the others are dropped (closed).
async fn race(addrs: &[SocketAddr], from: From) -> Result<(TcpStream, SocketAddr), ProxyError> {
    let source = from.ip;
    if let [only] = addrs {
        return connect_direct(*only, source, from.freebind).await;
    }
    let start = |a: SocketAddr| -> Attempt { Box::pin(connect_direct(a, source, from.freebind)) };
    let mut live: Vec<Attempt> = Vec::with_capacity(addrs.len());
    let mut next = 0;
    let mut delay: Pin<Box<dyn Future<Output = ()>>> =
        Box::pin(glommio::timer::sleep(ATTEMPT_DELAY));
    // Set when an attempt failed: the next address starts at once.
    let mut due = false;
    let mut last = ProxyError::NetworkUnreachable;
    std::future::poll_fn(|cx| loop {
        while next < addrs.len() && (due || live.is_empty() || delay.as_mut().poll(cx).is_ready()) {
            due = false;
            live.push(start(addrs[next]));
            next += 1;
            delay = Box::pin(glommio::timer::sleep(ATTEMPT_DELAY));
        }
        if live.is_empty() {
            return Poll::Ready(Err(last.clone()));
        }
        let mut i = 0;
        while i < live.len() {
            match live[i].as_mut().poll(cx) {
                Poll::Ready(Ok(ok)) => return Poll::Ready(Ok(ok)),
                Poll::Ready(Err(e)) => {
                    // A finished attempt is never polled again.
                    last = e;
                    drop(live.swap_remove(i));
                    due = true;
                }
                Poll::Pending => i += 1,
            }
        }
        // A failure starts the next address at once; with none left to start, the live
        // attempts are waited on (looping here would spin the core until one resolved).
        if due && next < addrs.len() {
            continue;
        }
        due = false;
        if live.is_empty() {
            return Poll::Ready(Err(last.clone()));
        }
        return Poll::Pending;
    })
    .await
}

/// What a connect reports when socket(2) fails (no descriptor left: EMFILE/ENFILE, or no
/// memory for one).
const OUT_OF_SOCKETS: &str = "out of sockets";

/// The failure is this gateway's shortage of sockets, not the exit's or the target's.
pub(super) fn out_of_sockets(e: &ProxyError) -> bool {
    matches!(e, ProxyError::Unavailable(why) if *why == OUT_OF_SOCKETS)
}

/// Non-blocking connect from an optional source address, adopted into glommio.
/// glommio's own connect resolves on the executor thread and cannot bind a source.
/// Unbounded in time: every caller runs it under its own `connect_timeout` deadline (one
/// timer per dial, not one more per connect).
pub async fn connect_direct(
    addr: SocketAddr,
    source: Option<IpAddr>,
    freebind: bool,
) -> Result<(TcpStream, SocketAddr), ProxyError> {
    let io = |e: std::io::Error| ProxyError::from_connect_io(&e);
    // Non-blocking (and close-on-exec) from socket(2) itself: no fcntl round trips.
    let kind = Type::STREAM.nonblocking();
    let sock = Socket::new(Domain::for_address(addr), kind, Some(Protocol::TCP))
        .map_err(|_| ProxyError::Unavailable(OUT_OF_SOCKETS))?;
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
        if freebind {
            // An address of a prefix routed to this host that no interface carries.
            match src {
                IpAddr::V4(_) => sock.set_freebind(true),
                IpAddr::V6(_) => sock.set_freebind_ipv6(true),
            }
            .map_err(io)?;
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
    // Writable (or failed) once the handshake has finished: wait on the readiness poll
    // alone (no zero-length send). A failed connect sets POLLERR (and POLLHUP); only then
    // is SO_ERROR read, for the reason. A connected socket costs no syscall more.
    let events = std::future::poll_fn(|cx| stream.poll_writable_events(cx))
        .await
        .map_err(io)?;
    if events & (libc::POLLERR | libc::POLLHUP) as u32 != 0 || events & libc::POLLOUT as u32 == 0 {
        // SAFETY: the fd stays open for the borrow's lifetime (the stream outlives it).
        let fd = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) };
        return Err(io(match SockRef::from(&fd).take_error() {
            Ok(Some(e)) | Err(e) => e,
            // Hung up with no error recorded: the target's stack ended it, a refusal.
            Ok(None) => std::io::Error::from_raw_os_error(libc::ECONNREFUSED),
        }));
    }
    // Our side's address: what the target sees, and the SOCKS5 reply's BND.ADDR. A socket
    // whose connect failed has none to give.
    let local = stream
        .local_addr()
        .map_err(|_| ProxyError::ConnectionRefused)?;
    Ok((stream, local))
}
