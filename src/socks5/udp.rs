//! SOCKS5 UDP ASSOCIATE (RFC 1928 section 7).
//!
//! The association lives as long as its TCP control connection and holds one thread slot.
//! Two sockets: the *relay* socket, on the address the client reached the gateway at,
//! takes the client's datagrams (from the client's address only) and gives it the answers;
//! the *exit* socket, on the direct exit's source address (for a prefix exit one address
//! per association, sticky per session), sends them to their targets. Answers are taken
//! only from targets the client has sent to, so no one else can bill the account by
//! sending to the exit socket.
//!
//! Metering: the plan bills each datagram's bytes as exchanged with the client — the
//! SOCKS5 UDP header and the data, whole datagrams only (one the plan cannot cover is
//! dropped, and the association ends once the plan is used up); the IP and UDP headers are
//! not billed, like TCP's.

use super::codec;
use crate::config::{ExitKind, Source};
use crate::conn::Ctx;
use crate::error::ProxyError;
use crate::exit::{policy, source, TargetAddr};
use crate::route::choose::Choice;
use crate::route::Route;
use crate::side::Side;
use ahash::AHashSet;
use glommio::net::UdpSocket;
use socket2::{Domain, SockRef, Socket, Type};
use socks5_proto::Address;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::mem::MaybeUninit;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd};
use std::time::Instant;

/// Targets an association remembers answers may come from (oldest forgotten first).
const MAX_PEERS: usize = 1024;
/// Room before an answer's data for its header (`RSV FRAG ATYP`, an IPv6 address, a port).
const HEADROOM: usize = 22;

/// An association ready to relay: its two sockets and what the reply tells the client.
pub struct Association {
    relay: UdpSocket,
    exit_sock: UdpSocket,
    /// The exit socket is IPv6 with IPv4-mapped addresses (no source address was set).
    dual: bool,
    /// Only datagrams from here are the client's (the port once known).
    client_ip: IpAddr,
    client_port: Cell<Option<u16>>,
    pub exit: usize,
    pub source: Option<IpAddr>,
}

impl Association {
    /// Where the client sends its datagrams (the success reply's BND.ADDR).
    pub fn relay_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.relay.local_addr()?)
    }
}

/// Choose a direct exit along `route` and open both sockets. An upstream proxy exit cannot
/// carry UDP here: `0x07`.
pub async fn open(
    ctx: &Ctx,
    client: &Side,
    route: &Route,
    hint: &Address,
) -> Result<Association, ProxyError> {
    let peer = ctx.peer.ok_or(ProxyError::Internal("no peer address"))?;
    let snap = ctx.config();
    let mut choice = Choice::start(ctx.chooser(), route).await;
    let exit = loop {
        let Some(e) = choice.next_exit() else {
            return Err(ProxyError::CommandNotSupported);
        };
        if matches!(snap.exits[e].kind, ExitKind::Direct { .. }) {
            break e;
        }
    };
    let ExitKind::Direct { source: src } = &snap.exits[exit].kind else {
        return Err(ProxyError::CommandNotSupported);
    };
    let session = route.sticky.as_ref().map(|st| st.key.as_str());
    let from = source::pick(
        src,
        &snap.exits[exit].name,
        session,
        snap.routing.session_secret.as_ref(),
    );
    let (exit_sock, dual) = bind_exit(from, matches!(src, Source::Prefix(_))).map_err(|e| {
        tracing::warn!(exit = %snap.exits[exit].name, error = %e, "cannot bind a UDP exit socket");
        ProxyError::Internal("cannot bind the udp exit socket")
    })?;
    let local = client
        .stream
        .tcp()
        .local_addr()
        .map_err(|_| ProxyError::Internal("no local address"))?;
    let relay = UdpSocket::bind(SocketAddr::new(local.ip().to_canonical(), 0))
        .map_err(|_| ProxyError::Internal("cannot bind the udp relay socket"))?;
    choice.served(exit).await;
    let hinted_port = match hint {
        Address::SocketAddress(a) if a.port() != 0 => Some(a.port()),
        _ => None,
    };
    Ok(Association {
        relay,
        exit_sock,
        dual,
        client_ip: peer.ip().to_canonical(),
        client_port: Cell::new(hinted_port),
        exit,
        source: from,
    })
}

/// The exit's socket: on its source address (free-bound for a prefix), or, without one, an
/// IPv6 socket that also reaches IPv4 targets (an IPv4 one where IPv6 is off).
fn bind_exit(ip: Option<IpAddr>, freebind: bool) -> io::Result<(UdpSocket, bool)> {
    let (addr, dual) = match ip {
        Some(ip) => (SocketAddr::new(ip, 0), false),
        None => (SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), 0), true),
    };
    let make = |addr: SocketAddr, dual: bool| -> io::Result<Socket> {
        let s = Socket::new(Domain::for_address(addr), Type::DGRAM, None)?;
        s.set_nonblocking(true)?;
        s.set_cloexec(true)?;
        if dual {
            s.set_only_v6(false)?;
        }
        if freebind {
            match addr {
                SocketAddr::V4(_) => s.set_freebind(true)?,
                SocketAddr::V6(_) => s.set_freebind_ipv6(true)?,
            }
        }
        s.bind(&addr.into())?;
        Ok(s)
    };
    match make(addr, dual) {
        Ok(s) => Ok((adopt(s), dual)),
        Err(_) if dual => {
            let v4 = SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), 0);
            Ok((adopt(make(v4, false)?), false))
        }
        Err(e) => Err(e),
    }
}

/// Hand a bound socket to glommio.
fn adopt(s: Socket) -> UdpSocket {
    // SAFETY: the fd is an open, bound UDP socket whose ownership moves here.
    unsafe { UdpSocket::from_raw_fd(s.into_raw_fd()) }
}

/// How an association ended (the access line's `end`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The control connection closed.
    Closed,
    Idle,
    Quota,
    Disconnected,
    Drain,
    ClientReset,
}

impl End {
    pub fn label(self) -> &'static str {
        match self {
            End::Closed => "closed",
            End::Idle => "idle",
            End::Quota => "quota",
            End::Disconnected => "disconnect",
            End::Drain => "drain",
            End::ClientReset => "client_reset",
        }
    }
}

/// Relay until the control connection closes, `idle_timeout` passes without a datagram,
/// the plan is used up or cut, or the gateway drains.
pub async fn relay(ctx: &Ctx, client: &mut Side, a: &Association) -> End {
    let last = Cell::new(Instant::now());
    let peers = RefCell::new(Peers::default());
    let quota = Cell::new(false);
    let meter = &client.meter;
    let cut = meter.cut();
    let up = async {
        loop {
            if let Err(why) = client_datagram(ctx, a, meter, &peers, &last).await {
                match why {
                    Drop::Quota => {
                        quota.set(true);
                        return End::Quota;
                    }
                    Drop::Io => return End::ClientReset,
                    other => ctx.core().metrics.udp_dropped(other.label()),
                }
            }
        }
    };
    let down = async {
        loop {
            if let Err(why) = answer(ctx, a, meter, &peers, &last).await {
                match why {
                    Drop::Quota => {
                        quota.set(true);
                        return End::Quota;
                    }
                    Drop::Io => return End::ClientReset,
                    other => ctx.core().metrics.udp_dropped(other.label()),
                }
            }
        }
    };
    let idle = ctx.config().server.idle_timeout.0;
    let watch = async {
        loop {
            let deadline = last.get() + idle;
            let now = Instant::now();
            if now >= deadline {
                return End::Idle;
            }
            glommio::timer::sleep(deadline - now).await;
        }
    };
    let control = async {
        // The client sends nothing more on the control connection; its close ends the
        // association. Stray bytes are read (and counted) and thrown away.
        let mut b = [0u8; 512];
        loop {
            match futures_lite::AsyncReadExt::read(&mut client.stream, &mut b).await {
                Ok(0) | Err(_) => return End::Closed,
                Ok(n) => meter.add_up(n),
            }
        }
    };
    let cut_watch = async {
        match &cut {
            Some(l) => {
                l.wait().await;
                if l.why() == crate::plan::shard::CUT_BY_OPERATOR {
                    return End::Disconnected;
                }
                End::Quota
            }
            None => std::future::pending().await,
        }
    };
    let stop = async {
        ctx.core().stop.wait().await;
        End::Drain
    };
    use futures_lite::future::or;
    or(or(up, down), or(or(watch, control), or(cut_watch, stop))).await
}

/// Why one datagram was not relayed.
enum Drop {
    /// From someone other than the client (or, for an answer, than a target it sent to).
    Stranger,
    Fragmented,
    Malformed,
    ForbiddenTarget,
    /// The name did not resolve, or not to the exit's address family.
    NoRoute,
    /// Bigger than the relay buffer allows with its header.
    TooLarge,
    /// The plan cannot cover it: the association ends.
    Quota,
    /// The relay socket failed: the association ends.
    Io,
}

impl Drop {
    fn label(&self) -> &'static str {
        match self {
            Drop::Stranger => "stranger",
            Drop::Fragmented => "fragmented",
            Drop::Malformed => "malformed",
            Drop::ForbiddenTarget => "forbidden_target",
            Drop::NoRoute => "no_route",
            Drop::TooLarge => "too_large",
            Drop::Quota => "quota",
            Drop::Io => "io",
        }
    }
}

/// Targets the client has sent to: answers from anyone else are dropped.
#[derive(Default)]
struct Peers {
    set: AHashSet<SocketAddr>,
    order: VecDeque<SocketAddr>,
}

impl Peers {
    fn add(&mut self, a: SocketAddr) {
        if self.set.insert(a) {
            self.order.push_back(a);
            if self.order.len() > MAX_PEERS {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }
}

/// Wait for a datagram on `sock` and take it into one of the core's buffers at `at`: an
/// idle association holds no buffer while it waits. (Sender, bytes.)
async fn receive(
    ctx: &Ctx,
    sock: &UdpSocket,
    at: usize,
) -> Result<(Box<[u8]>, usize, SocketAddr), Drop> {
    let pool = &ctx.core().buffers;
    loop {
        // Readiness: a one-byte peek waits for a datagram without taking it.
        sock.peek_from(&mut [0u8; 1]).await.map_err(|_| Drop::Io)?;
        let mut buf = pool.take();
        // SAFETY: the socket's fd is open for this borrow.
        let fd = unsafe { BorrowedFd::borrow_raw(sock.as_raw_fd()) };
        let room = &mut buf[at..];
        // SAFETY: u8 and MaybeUninit<u8> have the same layout; recv only writes.
        let room = unsafe { &mut *(room as *mut [u8] as *mut [MaybeUninit<u8>]) };
        match SockRef::from(&fd).recv_from_with_flags(room, libc::MSG_DONTWAIT | libc::MSG_TRUNC) {
            Ok((n, from)) => {
                let Some(from) = from.as_socket() else {
                    pool.give(buf);
                    continue;
                };
                if n > buf.len() - at {
                    pool.give(buf);
                    return Err(Drop::TooLarge);
                }
                return Ok((
                    buf,
                    n,
                    SocketAddr::new(from.ip().to_canonical(), from.port()),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => pool.give(buf),
            Err(_) => {
                pool.give(buf);
                return Err(Drop::Io);
            }
        }
    }
}

/// One datagram from the client: checked, billed, sent to its target.
async fn client_datagram(
    ctx: &Ctx,
    a: &Association,
    meter: &crate::relay::Meter,
    peers: &RefCell<Peers>,
    last: &Cell<Instant>,
) -> Result<(), Drop> {
    let (buf, n, from) = receive(ctx, &a.relay, 0).await?;
    let pool = &ctx.core().buffers;
    let res = async {
        if from.ip() != a.client_ip || a.client_port.get().is_some_and(|p| p != from.port()) {
            return Err(Drop::Stranger);
        }
        let (frag, dst, data) = codec::parse_udp(&buf[..n]).map_err(|_| Drop::Malformed)?;
        if frag != 0 {
            return Err(Drop::Fragmented);
        }
        // The first datagram from the client's address fixes its port.
        a.client_port.set(Some(from.port()));
        let target = match dst {
            Address::SocketAddress(s) => TargetAddr::Ip(s),
            Address::DomainAddress(name, port) => {
                TargetAddr::from_socks_name(&name, port).ok_or(Drop::Malformed)?
            }
        };
        let to = resolve(ctx, a, &target).await?;
        if !meter.datagram(n, true).await {
            return Err(Drop::Quota);
        }
        last.set(Instant::now());
        peers.borrow_mut().add(to);
        let wire = match (a.dual, to) {
            (true, SocketAddr::V4(v4)) => {
                SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port())
            }
            _ => to,
        };
        // A target that cannot be reached (no route, refused) loses the datagram, as UDP does.
        let _ = a.exit_sock.send_to(&buf[data..n], wire).await;
        Ok(())
    }
    .await;
    pool.give(buf);
    res
}

/// The address a datagram for `target` goes to: policy-checked, of the exit's family.
async fn resolve(ctx: &Ctx, a: &Association, target: &TargetAddr) -> Result<SocketAddr, Drop> {
    let allow_private = ctx.config().server.allow_private_targets;
    let v6_ok = a.dual || a.source.is_some_and(|s| s.is_ipv6());
    let v4_ok = a.dual || a.source.is_none_or(|s| s.is_ipv4());
    let fits = |ip: &IpAddr| if ip.is_ipv4() { v4_ok } else { v6_ok };
    match target {
        TargetAddr::Ip(s) => {
            let ip = s.ip().to_canonical();
            if !allow_private && policy::is_private(ip) {
                return Err(Drop::ForbiddenTarget);
            }
            if !fits(&ip) {
                return Err(Drop::NoRoute);
            }
            Ok(SocketAddr::new(ip, s.port()))
        }
        TargetAddr::Name(host, port) => {
            let addrs = ctx
                .core()
                .dns
                .resolve(host)
                .await
                .map_err(|_| Drop::NoRoute)?;
            let mut forbidden = false;
            for ip in addrs.iter() {
                if !allow_private && policy::is_private(*ip) {
                    forbidden = true;
                    continue;
                }
                if fits(ip) {
                    return Ok(SocketAddr::new(*ip, *port));
                }
            }
            Err(if forbidden {
                Drop::ForbiddenTarget
            } else {
                Drop::NoRoute
            })
        }
    }
}

/// One answer from a target: from a target the client sent to, billed, sent to the client
/// with its header.
async fn answer(
    ctx: &Ctx,
    a: &Association,
    meter: &crate::relay::Meter,
    peers: &RefCell<Peers>,
    last: &Cell<Instant>,
) -> Result<(), Drop> {
    let (mut buf, n, from) = receive(ctx, &a.exit_sock, HEADROOM).await?;
    let pool = &ctx.core().buffers;
    let res = async {
        let client = match a.client_port.get() {
            Some(port) if peers.borrow().set.contains(&from) => SocketAddr::new(a.client_ip, port),
            _ => return Err(Drop::Stranger),
        };
        let mut head = Vec::with_capacity(HEADROOM);
        codec::encode_udp_header(from, &mut head);
        let start = HEADROOM - head.len();
        buf[start..HEADROOM].copy_from_slice(&head);
        let datagram = &buf[start..HEADROOM + n];
        if !meter.datagram(datagram.len(), false).await {
            return Err(Drop::Quota);
        }
        last.set(Instant::now());
        // A client that stopped listening loses the datagram; its control connection's
        // close ends the association.
        let _ = a.relay.send_to(datagram, client).await;
        Ok(())
    }
    .await;
    pool.give(buf);
    res
}
