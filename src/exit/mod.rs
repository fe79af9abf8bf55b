//! Exits: where traffic leaves. Picks an exit for the connection's network, resolves the
//! target without blocking the executor, applies the private-range policy and connects
//! (from the exit's source address when it has one) under `connect_timeout`.

pub mod dns;
pub mod policy;

use crate::config::{ExitKind, Snapshot};
use crate::error::ProxyError;
use crate::worker::{within, Worker};
use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;
use socket2::{Domain, Protocol, SockRef, Socket, Type};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd};
use std::time::Duration;

/// What the client asked to reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetAddr {
    Ip(SocketAddr),
    Name(String, u16),
}

impl TargetAddr {
    /// A host string (name or IP literal) and port, as HTTP and SOCKS domain targets carry.
    pub fn from_host(host: &str, port: u16) -> TargetAddr {
        match host.parse::<IpAddr>() {
            Ok(ip) => TargetAddr::Ip(SocketAddr::new(ip, port)),
            Err(_) => TargetAddr::Name(host.to_ascii_lowercase(), port),
        }
    }

    pub fn port(&self) -> u16 {
        match self {
            TargetAddr::Ip(a) => a.port(),
            TargetAddr::Name(_, p) => *p,
        }
    }
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
    pub peer: SocketAddr,
    /// Index into the snapshot's exits.
    pub exit: usize,
}

/// At most this many resolved addresses are tried for one target.
const MAX_ADDRS_TRIED: usize = 3;

/// Pick an exit of `network` and connect to `target` through it.
pub async fn open(
    w: &Worker,
    snap: &Snapshot,
    network: usize,
    target: &TargetAddr,
) -> Result<Outbound, ProxyError> {
    let exit = pick(w, snap, network)?;
    let ExitKind::Direct { source_ip } = snap.exits[exit].kind else {
        return Err(ProxyError::Unavailable("upstream exits are not enabled"));
    };
    let addrs: Vec<IpAddr> = match target {
        TargetAddr::Ip(a) => vec![a.ip()],
        TargetAddr::Name(host, _) => w
            .dns
            .resolve(host)
            .await
            .map_err(|_| ProxyError::DnsFailed(host.clone()))?
            .to_vec(),
    };
    let allowed: Vec<IpAddr> = addrs
        .iter()
        .copied()
        .filter(|ip| snap.server.allow_private_targets || !policy::is_private(*ip))
        .collect();
    if allowed.is_empty() {
        return Err(ProxyError::ForbiddenTarget(target.to_string()));
    }
    let usable: Vec<IpAddr> = allowed
        .into_iter()
        .filter(|ip| source_ip.is_none_or(|s| s.is_ipv4() == ip.is_ipv4()))
        .take(MAX_ADDRS_TRIED)
        .collect();
    let mut last = ProxyError::NetworkUnreachable;
    for ip in usable {
        let addr = SocketAddr::new(ip, target.port());
        match connect_direct(addr, source_ip, snap.server.connect_timeout.0).await {
            Ok((stream, local)) => {
                return Ok(Outbound {
                    stream,
                    local,
                    peer: addr,
                    exit,
                })
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Rotate over the network's direct exits.
fn pick(w: &Worker, snap: &Snapshot, network: usize) -> Result<usize, ProxyError> {
    let candidates = || {
        snap.exits
            .iter()
            .enumerate()
            .filter(move |(_, e)| e.network == network && matches!(e.kind, ExitKind::Direct { .. }))
            .map(|(i, _)| i)
    };
    let n = candidates().count();
    if n == 0 {
        return Err(ProxyError::Unavailable("no exit serves this network"));
    }
    let turn = w.rotation.get();
    w.rotation.set(turn.wrapping_add(1));
    candidates()
        .nth(turn % n)
        .ok_or(ProxyError::Internal("exit rotation"))
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
                std::os::fd::AsRawFd::as_raw_fd(&sock),
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
