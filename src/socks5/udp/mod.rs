//! SOCKS5 UDP ASSOCIATE (RFC 1928 section 7).
//!
//! The association lives as long as its TCP control connection and holds one thread slot.
//! Two sockets: the *relay* socket, on the address the client reached the gateway at,
//! takes the client's datagrams (from the client's address only) and gives it the answers;
//! the *exit* socket, on the direct exit's source address (for a prefix exit one address
//! per association, sticky per session), sends them to their targets. Answers are taken
//! only from targets the client has sent to, so no one else can bill the account by
//! sending to the exit socket. Through an upstream SOCKS5 exit, the gateway opens its own
//! association with the upstream and the exit socket talks to the upstream's relay only,
//! datagrams passing with their headers.
//!
//! Metering: the plan bills each datagram's bytes as exchanged with the client — the
//! SOCKS5 UDP header and the data, whole datagrams only (one the plan cannot cover is
//! dropped, and the association ends once the plan is used up); the IP and UDP headers are
//! not billed, like TCP's.

mod datagram;

use super::codec;
use crate::config::{ExitKind, Source};
use crate::conn::Ctx;
use crate::error::ProxyError;
use crate::exit::source;
use crate::route::choose::Choice;
use crate::route::Route;
use crate::side::Side;
use datagram::{answer, client_datagram, Drop, Peers};
use glommio::net::UdpSocket;
use socket2::{Domain, Socket, Type};
use socks5_proto::Address;
use std::cell::{Cell, RefCell};
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::os::fd::{FromRawFd, IntoRawFd};
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
    /// Through an upstream SOCKS5 proxy: its UDP relay, where datagrams go with their
    /// header, and the control connection that keeps its association alive.
    via: Option<SocketAddr>,
    upstream_control: RefCell<Option<crate::stream::Stream>>,
}

impl Association {
    /// Where the client sends its datagrams (the success reply's BND.ADDR).
    pub fn relay_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.relay.local_addr()?)
    }
}

/// Choose an exit along `route` that can carry datagrams — a direct exit, or an upstream
/// SOCKS5 proxy that serves UDP ASSOCIATE itself — and open both sockets. HTTP upstreams
/// cannot: with none of the others, `0x07`.
pub async fn open(
    ctx: &Ctx,
    client: &Side,
    route: &Route,
    hint: &Address,
) -> Result<Association, ProxyError> {
    let peer = ctx.peer.ok_or(ProxyError::Internal("no peer address"))?;
    let snap = ctx.config();
    let mut choice = Choice::start(ctx.chooser(), route).await;
    let hinted_port = match hint {
        Address::SocketAddress(a) if a.port() != 0 => Some(a.port()),
        _ => None,
    };
    let mut last = ProxyError::CommandNotSupported;
    let exit = loop {
        let Some(e) = choice.next_exit() else {
            return Err(last);
        };
        match &snap.exits[e].kind {
            ExitKind::Direct { .. } => break e,
            ExitKind::Socks5(up) => match through_upstream(ctx, up).await {
                Ok((control, via)) => {
                    let (exit_sock, dual) = bind_exit(None, false)
                        .map_err(|_| ProxyError::Internal("cannot bind the udp exit socket"))?;
                    let relay = relay_socket(client)?;
                    choice.served(e).await;
                    return Ok(Association {
                        relay,
                        exit_sock,
                        dual,
                        client_ip: peer.ip().to_canonical(),
                        client_port: Cell::new(hinted_port),
                        exit: e,
                        source: None,
                        via: Some(via),
                        upstream_control: RefCell::new(Some(control)),
                    });
                }
                Err(err) => {
                    tracing::debug!(exit = %snap.exits[e].name, error = %err, "upstream cannot carry UDP");
                    if !matches!(err, ProxyError::CommandNotSupported) {
                        choice.exit_failed(e, &err);
                    }
                    last = err;
                }
            },
            ExitKind::Http(_) => {}
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
    let relay = relay_socket(client)?;
    choice.served(exit).await;
    Ok(Association {
        relay,
        exit_sock,
        dual,
        client_ip: peer.ip().to_canonical(),
        client_port: Cell::new(hinted_port),
        exit,
        source: from,
        via: None,
        upstream_control: RefCell::new(None),
    })
}

/// The client's side: a socket on the address the client reached the gateway at.
fn relay_socket(client: &Side) -> Result<UdpSocket, ProxyError> {
    let local = client
        .stream
        .tcp()
        .local_addr()
        .map_err(|_| ProxyError::Internal("no local address"))?;
    UdpSocket::bind(SocketAddr::new(local.ip().to_canonical(), 0))
        .map_err(|_| ProxyError::Internal("cannot bind the udp relay socket"))
}

/// A UDP association of our own with an upstream SOCKS5 proxy, within `connect_timeout`:
/// its control connection and its relay's address.
async fn through_upstream(
    ctx: &Ctx,
    up: &crate::config::Upstream,
) -> Result<(crate::stream::Stream, SocketAddr), ProxyError> {
    use crate::exit::{connect_direct, upstream, Fail};
    let timeout = ctx.config().server.connect_timeout.0;
    let work = async {
        let ip = match up.host.parse::<IpAddr>() {
            Ok(ip) => ip,
            Err(_) => *ctx
                .core()
                .dns
                .resolve(&up.host)
                .await
                .map_err(|e| ProxyError::Upstream(format!("upstream {}: {}", up.host, e.0)))?
                .first()
                .ok_or_else(|| ProxyError::Upstream(format!("upstream {}: no address", up.host)))?,
        };
        let addr = SocketAddr::new(ip, up.port);
        let (stream, _) = connect_direct(addr, None, false)
            .await
            .map_err(|e| ProxyError::Upstream(format!("upstream proxy {addr} unreachable: {e}")))?;
        let mut side = Side::new(stream);
        let via = upstream::socks5_udp(&mut side, up, ip)
            .await
            .map_err(|f| match f {
                Fail::Exit(e)
                | Fail::Target(e)
                | Fail::Family(e)
                | Fail::Unclear(e)
                | Fail::Local(e) => e,
            })?;
        Ok((side.stream, via))
    };
    crate::util::within(timeout, work)
        .await
        .unwrap_or(Err(ProxyError::ConnectTimeout))
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
    /// The upstream SOCKS5 proxy closed its side of the association.
    UpstreamClosed,
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
            End::UpstreamClosed => "upstream_reset",
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
        // association. Stray bytes are read (and billed, within the plan like any read)
        // and thrown away.
        let mut b = [0u8; 512];
        loop {
            let room = meter.allow(b.len()).await;
            if room == 0 {
                return End::Quota;
            }
            match futures_lite::AsyncReadExt::read(&mut client.stream, &mut b[..room]).await {
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
    // Through an upstream: its association ends with its control connection.
    let upstream_control = a.upstream_control.borrow_mut().take();
    let upstream_watch = async {
        match upstream_control {
            Some(mut c) => {
                let mut b = [0u8; 64];
                loop {
                    match futures_lite::AsyncReadExt::read(&mut c, &mut b).await {
                        Ok(0) | Err(_) => return End::UpstreamClosed,
                        Ok(_) => {}
                    }
                }
            }
            None => std::future::pending().await,
        }
    };
    use futures_lite::future::or;
    or(
        or(up, down),
        or(or(watch, control), or(cut_watch, or(stop, upstream_watch))),
    )
    .await
}
