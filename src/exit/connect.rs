//! Direct connects: resolve, apply the private-target policy, and connect from an optional
//! source address (a socket glommio adopts once it is connecting).

use super::dns::DnsCache;
use super::policy;
use super::{Fail, TargetAddr};
use crate::error::ProxyError;
use crate::util::within;
use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;
use socket2::{Domain, Protocol, SockRef, Socket, Type};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd};
use std::time::Duration;

/// At most this many resolved addresses are tried for one target.
const MAX_ADDRS_TRIED: usize = 3;

/// Resolve, apply the private-range policy and connect directly.
pub(super) async fn connect_target(
    dns: &DnsCache,
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
