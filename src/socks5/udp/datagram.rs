//! One datagram each way: the checks, the bill, the send.

use super::{codec, Association, HEADROOM, MAX_PEERS};
use crate::conn::Ctx;
use crate::exit::{policy, TargetAddr};
use crate::relay::Meter;
use ahash::AHashSet;
use glommio::net::UdpSocket;
use socket2::SockRef;
use socks5_proto::Address;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::mem::MaybeUninit;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Instant;

/// Why one datagram was not relayed.
pub(super) enum Drop {
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
    pub(super) fn label(&self) -> &'static str {
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
pub(super) struct Peers {
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
pub(super) async fn client_datagram(
    ctx: &Ctx,
    a: &Association,
    meter: &Meter,
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
        if let Some(via) = a.via {
            // The upstream resolves names; addresses are checked here, as for tunnels.
            if let TargetAddr::Ip(s) = &target {
                let private = policy::is_private(s.ip().to_canonical());
                if private && !ctx.config().server.allow_private_targets {
                    return Err(Drop::ForbiddenTarget);
                }
            }
            if !meter.datagram(n, true).await {
                return Err(Drop::Quota);
            }
            last.set(Instant::now());
            // Header and all: the upstream's relay reads the target from it.
            let _ = a.exit_sock.send_to(&buf[..n], wire_addr(a.dual, via)).await;
            return Ok(());
        }
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

/// `to` as the exit socket must be given it (IPv4-mapped on a dual-stack socket).
fn wire_addr(dual: bool, to: SocketAddr) -> SocketAddr {
    match (dual, to) {
        (true, SocketAddr::V4(v4)) => SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port()),
        _ => to,
    }
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
pub(super) async fn answer(
    ctx: &Ctx,
    a: &Association,
    meter: &Meter,
    peers: &RefCell<Peers>,
    last: &Cell<Instant>,
) -> Result<(), Drop> {
    let (mut buf, n, from) = receive(ctx, &a.exit_sock, HEADROOM).await?;
    let pool = &ctx.core().buffers;
    let res = async {
        if let Some(via) = a.via {
            // From the upstream's relay only; its datagrams carry their header already.
            let Some(port) = a.client_port.get() else {
                return Err(Drop::Stranger);
            };
            if from != SocketAddr::new(via.ip().to_canonical(), via.port()) {
                return Err(Drop::Stranger);
            }
            let datagram = &buf[HEADROOM..HEADROOM + n];
            match codec::parse_udp(datagram) {
                Ok((0, _, _)) => {}
                _ => return Err(Drop::Malformed),
            }
            if !meter.datagram(n, false).await {
                return Err(Drop::Quota);
            }
            last.set(Instant::now());
            let _ = a
                .relay
                .send_to(datagram, SocketAddr::new(a.client_ip, port))
                .await;
            return Ok(());
        }
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
