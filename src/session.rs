//! One client connection, top to bottom: take the snapshot, read the first bytes once,
//! sniff the protocol and hand the connection (and the bytes already read) to its handler.

use crate::conn::Ctx;
use crate::side::{Bounds, ReadStop, Side, READ_CHUNK};
use crate::sniff::{sniff, Protocol};
use crate::stream::{Prefixed, Stream};
use crate::util::{until, Parsed};
use crate::worker::{ConnGuard, Worker};
use glommio::net::TcpStream;
use std::rc::Rc;
use std::time::Instant;

/// One accepted connection: its context, its client side, and its place in the core's
/// count of live connections. Boxed apart from the connection's future (an `async fn`
/// keeps its arguments a second time, beside the locals they are moved into, for the
/// connection's whole life: one box is cheaper than two copies).
struct Conn {
    ctx: Ctx,
    client: Side,
    _live: ConnGuard,
}

/// Serve one accepted connection (`peer`: its address, as the accept gave it) until it
/// closes: the connection's future, or `None` when the current world has no such listener
/// (a reload removed it).
pub fn serve(
    w: Rc<Worker>,
    stream: TcpStream,
    peer: Option<std::net::SocketAddr>,
    listener: usize,
) -> Option<impl std::future::Future<Output = ()>> {
    let live = w.track();
    let ctx = Ctx::new(w, listener, peer)?;
    Some(serve_conn(Box::new(Conn {
        ctx,
        client: Side::new(stream),
        _live: live,
    })))
}

async fn serve_conn(mut conn: Box<Conn>) {
    let Conn { ctx, client, .. } = &mut *conn;
    let listener = ctx.listener;
    if let Some(pp) = ctx.config().listeners[listener].proxy.clone() {
        if let Err(why) = Box::pin(proxy_header(ctx, client, &pp)).await {
            let refused = &ctx.core().metrics.proxy_header_refused;
            *refused.lock().entry((listener, why)).or_default() += 1;
            tracing::debug!(peer = ?ctx.peer, why, "closed: PROXY protocol header");
            return;
        }
    }
    // Boxed: the sniff phase's timer and read state are freed before the connection's long
    // life, which the task allocation lasts for.
    let Some(proto) = Box::pin(sniff_first_bytes(client, ctx.handshake_deadline)).await else {
        return;
    };
    let name = match proto {
        Protocol::Socks5 => "socks5",
        Protocol::Http => "http",
        Protocol::Socks4 => "socks4",
        Protocol::Tls => "tls",
        Protocol::Unknown => "unknown",
    };
    let accepted = &ctx.core().metrics.accepted;
    *accepted.lock().entry((listener, name)).or_default() += 1;
    // Each handler is boxed at its own size: a task's allocation lasts as long as the
    // connection, so it must not be sized for the largest protocol's state.
    match proto {
        Protocol::Socks5 => Box::pin(crate::socks5::serve(ctx, client)).await,
        Protocol::Http => Box::pin(crate::http::serve(ctx, client)).await,
        Protocol::Socks4 => Box::pin(refuse_socks4(client, ctx.handshake_deadline)).await,
        Protocol::Tls => Box::pin(serve_tls(conn)).await,
        Protocol::Unknown => {
            tracing::debug!(peer = ?ctx.peer, first = client.buf.first(), "closed: not SOCKS5 or HTTP");
        }
    }
}

/// A TLS ClientHello: on a listener with a certificate, the handshake (within the
/// handshake deadline from accept), then the protocol inside is sniffed and served as
/// usual (the HTTP proxy; SOCKS5 over TLS too). The meter starts inside the session: the
/// plan bills the decrypted bytes, exactly what the same exchange costs in the clear;
/// the handshake and the records' framing are billed to no one.
async fn serve_tls(conn: Box<Conn>) {
    let Conn {
        mut ctx,
        client,
        _live,
    } = *conn;
    let ctx = &mut ctx;
    let listener = ctx.listener;
    let count = |result: &'static str| {
        let m = &ctx.core().metrics.tls_handshakes;
        *m.lock().entry((listener, result)).or_default() += 1;
    };
    let Some(config) = ctx.config().listeners[listener].tls.clone() else {
        let mut client = client;
        let _ = client.send_refusal(&crate::tls::NO_CERTIFICATE_ALERT).await;
        count("no_certificate");
        tracing::debug!(peer = ?ctx.peer, "refused a TLS ClientHello: the listener has no tls_cert");
        return;
    };
    let Side { stream, buf, .. } = client;
    let Stream::Plain(tcp) = stream else {
        return;
    };
    let accept = futures_rustls::TlsAcceptor::from(config).accept(Prefixed::new(buf, tcp));
    let session = match until(ctx.handshake_deadline, accept).await {
        Some(Ok(s)) => s,
        Some(Err(e)) => {
            count("failed");
            tracing::debug!(peer = ?ctx.peer, error = %e, "TLS handshake failed");
            return;
        }
        None => {
            count("timeout");
            tracing::debug!(peer = ?ctx.peer, "TLS handshake timed out");
            return;
        }
    };
    count("ok");
    ctx.tls = true;
    let mut client = Side::new(Stream::Tls(Box::new(session)));
    match sniff_first_bytes(&mut client, ctx.handshake_deadline).await {
        Some(Protocol::Http) => Box::pin(crate::http::serve(ctx, &mut client)).await,
        Some(Protocol::Socks5) => Box::pin(crate::socks5::serve(ctx, &mut client)).await,
        Some(other) => {
            tracing::debug!(peer = ?ctx.peer, ?other, "closed: inside TLS, not HTTP or SOCKS5")
        }
        None => {}
    }
}

/// SOCKS4 and SOCKS4a are not served: read the request (bounded, within the handshake
/// deadline) and answer "request rejected or failed" (`0x5B`), so that clients report a
/// refusal rather than a dropped connection.
async fn refuse_socks4(client: &mut Side, deadline: Instant) {
    // VN CD DSTPORT(2) DSTIP(4) USERID NUL, and for 4a (DSTIP 0.0.0.x, x ≠ 0) DOMAIN NUL.
    let request = |b: &[u8]| {
        if b.len() < 9 {
            return Ok(Parsed::Incomplete);
        }
        let nuls = b[8..].iter().filter(|&&c| c == 0).count();
        let socks4a = b[4..7] == [0, 0, 0] && b[7] != 0;
        Ok(match nuls >= if socks4a { 2 } else { 1 } {
            true => Parsed::Done((), b.len()),
            false => Parsed::Incomplete,
        })
    };
    match client
        .read_until(&Bounds::new(1024, deadline), request)
        .await
    {
        Ok(_) | Err(ReadStop::Bad(_)) => {}
        Err(ReadStop::Gone | ReadStop::Quota) => return,
    }
    let _ = client.send_refusal(&[0x00, 0x5B, 0, 0, 0, 0, 0, 0]).await;
    tracing::debug!("refused a SOCKS4 request");
}

/// A load balancer's PROXY protocol header, before the client's bytes: only from a
/// trusted sender, whole, within the handshake deadline. The client's address it carries
/// becomes the connection's peer (for `allow_ips`, the auth guard, access lines); its bytes
/// are not the client's (not counted, not billed). `Err`: why the connection is closed.
async fn proxy_header(
    ctx: &mut Ctx,
    client: &mut Side,
    pp: &crate::config::ProxyProtocol,
) -> Result<(), &'static str> {
    if !ctx.peer.is_some_and(|p| pp.trusts(p.ip())) {
        return Err("untrusted_sender");
    }
    let deadline = ctx.handshake_deadline;
    match until(deadline, client.fill_first()).await {
        Some(Ok(n)) if n > 0 => {}
        _ => return Err("missing"),
    }
    let parse = |b: &[u8]| crate::proxy_header::parse(b, pp.versions);
    let (header, n) = match client.read_until(&Bounds::new(1024, deadline), parse).await {
        Ok(h) => h,
        Err(ReadStop::Bad(_)) => return Err("malformed"),
        Err(_) => return Err("missing"),
    };
    client.consume(n);
    client.meter.not_the_clients(n);
    if let Some(source) = header.source {
        ctx.peer = Some(source);
    }
    Ok(())
}

/// The first bytes, until the protocol is known: the first read is one direct `recv`
/// (see [`Side::fill_first`]), the rest go through the one read loop. Bytes already read
/// (after a PROXY header) are sniffed first.
async fn sniff_first_bytes(client: &mut Side, deadline: Instant) -> Option<Protocol> {
    if client.buf.is_empty() {
        match until(deadline, client.fill_first()).await {
            Some(Ok(n)) if n > 0 => {}
            _ => return None,
        }
    }
    let parse = |b: &[u8]| Ok(sniff(b).map_or(Parsed::Incomplete, |p| Parsed::Done(p, 0)));
    let bounds = Bounds::new(2 * READ_CHUNK, deadline);
    client.read_until(&bounds, parse).await.ok().map(|(p, _)| p)
}
