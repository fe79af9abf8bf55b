//! SOCKS5 (RFC 1928) with username/password authentication (RFC 1929).
//!
//! The success reply goes out only after the outbound connect succeeded, carrying the real
//! bound address; failures get their reply code from [`ProxyError::socks_reply`].

pub mod codec;
mod udp;

use crate::auth::{self, Identity};
use crate::conn::{Ctx, Exchange};
use crate::error::{ProxyError, SocksReply};
use crate::exit::{self, TargetAddr};
use crate::proxy::{self, Frontend, Shown, Tunnel};
use crate::route::Route;
use crate::side::{Bounds, ReadStop, Side};
use codec::Parsed;
use socks5_proto::{handshake::Method, Address, Command};

/// Largest greeting/auth/request we buffer (all three are far smaller).
const MAX_HANDSHAKE: usize = 1024;

/// Why the handshake stopped: an error to report, or the client left / timed out.
enum Stop {
    Reply(ProxyError),
    Gone,
}

impl From<ProxyError> for Stop {
    fn from(e: ProxyError) -> Self {
        Stop::Reply(e)
    }
}

/// Parse the next message, reading more bytes (within the handshake deadline) until it is
/// complete.
async fn next<T>(
    ctx: &Ctx,
    client: &mut Side,
    parse: impl Fn(&[u8]) -> Result<Parsed<T>, ProxyError>,
) -> Result<T, Stop> {
    let bounds = Bounds::new(MAX_HANDSHAKE, ctx.handshake_deadline);
    match client.read_until(&bounds, parse).await {
        Ok((v, used)) => {
            client.consume(used);
            Ok(v)
        }
        Err(ReadStop::Bad(ProxyError::HeadTooLarge)) => Err(Stop::Reply(ProxyError::BadRequest(
            "socks5 message too long",
        ))),
        Err(ReadStop::Bad(e)) => Err(Stop::Reply(e)),
        Err(ReadStop::Gone | ReadStop::Quota) => Err(Stop::Gone),
    }
}

/// SOCKS5 answers a refusal at the stage it happened, then closes.
struct Socks5;

impl Frontend for Socks5 {
    fn refusal(&self, err: &ProxyError, _request_id: &str) -> (Vec<u8>, bool) {
        let mut out = Vec::with_capacity(16);
        match err.socks_reply() {
            SocksReply::Close => {}
            SocksReply::NoAcceptableMethod => codec::encode_method(Method::UNACCEPTABLE, &mut out),
            SocksReply::AuthFailure(status) => codec::encode_auth_status(status, &mut out),
            SocksReply::Reply(code) => codec::encode_reply(code, Address::unspecified(), &mut out),
        }
        (out, false)
    }
}

/// Greeting and RFC 1929 sub-negotiation. A malformed greeting is closed without a reply.
async fn greet_and_authenticate(ctx: &Ctx, client: &mut Side) -> Result<Identity, Stop> {
    let methods = match next(ctx, client, codec::parse_greeting).await {
        Err(Stop::Reply(_)) => return Err(Stop::Gone),
        other => other?,
    };
    let mut out = Vec::with_capacity(2);
    if !methods.contains(&Method::PASSWORD) {
        // Clients that cannot send credentials (browsers): an allow-listed address may
        // use "no authentication" and is its account.
        if methods.contains(&Method::NONE) {
            if let Some(ident) =
                auth::by_address(ctx.config(), &ctx.world.accounts, ctx.network, ctx.peer)
            {
                let ident = ident.map_err(|_| Stop::Reply(ProxyError::NoAcceptableMethod))?;
                codec::encode_method(Method::NONE, &mut out);
                client.send(&out).await.map_err(|_| Stop::Gone)?;
                return Ok(ident);
            }
        }
        return Err(Stop::Reply(ProxyError::NoAcceptableMethod));
    }
    codec::encode_method(Method::PASSWORD, &mut out);
    client.send(&out).await.map_err(|_| Stop::Gone)?;
    let (user, pass) = next(ctx, client, codec::parse_password).await?;
    let ident = auth::login(&ctx.gate(), &user, &pass).await?;
    out.clear();
    codec::encode_auth_status(0, &mut out);
    client.send(&out).await.map_err(|_| Stop::Gone)?;
    Ok(ident)
}

/// What the client asked for.
enum Ask {
    /// A CONNECT to an address or a host name.
    Connect(TargetAddr),
    /// A UDP association; the address the client says it will send from (often zeros).
    Udp(Address),
}

/// The request: a CONNECT, or a UDP ASSOCIATE. BIND is not served (`0x07`).
async fn request(ctx: &Ctx, client: &mut Side) -> Result<Ask, Stop> {
    let (command, address) = next(ctx, client, codec::parse_request).await?;
    match command {
        Command::Connect => {}
        Command::Associate => return Ok(Ask::Udp(address)),
        Command::Bind => return Err(Stop::Reply(ProxyError::CommandNotSupported)),
    }
    Ok(Ask::Connect(match address {
        Address::SocketAddress(a) => TargetAddr::Ip(a),
        Address::DomainAddress(name, port) => TargetAddr::from_socks_name(&name, port)
            .ok_or(ProxyError::BadRequest("not a host name"))?,
    }))
}

/// Serve a SOCKS5 client whose first bytes are in `client.buf`.
pub async fn serve(ctx: &Ctx, client: &mut Side) {
    // Greeting, authentication, the request and the dial are boxed: their state is freed
    // before the (long) relay, which keeps only the tunnel.
    if let Some(t) = Box::pin(establish(ctx, client)).await {
        proxy::run_tunnel(ctx, client, t).await;
    }
}

/// Everything before the relay: the tunnel to relay, or `None` when the exchange is over
/// (refused and answered, the client gone, or a UDP association served to its end).
async fn establish(ctx: &Ctx, client: &mut Side) -> Option<Box<Tunnel>> {
    let mut ex = Exchange::first(if ctx.tls { "socks5+tls" } else { "socks5" });
    // 1. Greeting and authentication. Boxed, like the request: their state is freed
    //    before the dial.
    let ident = match Box::pin(greet_and_authenticate(ctx, client)).await {
        Ok(i) => i,
        Err(Stop::Gone) => return None,
        Err(Stop::Reply(e)) => {
            proxy::fail(ctx, client, ex, &Socks5, &e).await;
            return None;
        }
    };
    ex.account = Some(&ident.account);
    // 2. The request, then targeting and the plan (454/455, 452/453 on the CONNECT reply),
    //    after a successful auth step, so that clients see "not allowed by ruleset" rather
    //    than an auth failure.
    let target = match Box::pin(request(ctx, client)).await {
        Ok(Ask::Connect(t)) => t,
        Ok(Ask::Udp(hint)) => {
            ex.proto = if ctx.tls {
                "socks5-udp+tls"
            } else {
                "socks5-udp"
            };
            Box::pin(associate(ctx, client, ex, &ident, &hint)).await;
            return None;
        }
        Err(Stop::Gone) => return None,
        Err(Stop::Reply(e)) => {
            proxy::fail(ctx, client, ex, &Socks5, &e).await;
            return None;
        }
    };
    ex.target = Some(&target);
    // 3. Connect; the reply carries the real bound address.
    match connect(ctx, client, &ident, &target).await {
        Ok((out, slot)) => {
            let mut reply = Vec::with_capacity(32);
            codec::encode_reply(0x00, Address::SocketAddress(out.local), &mut reply);
            let began = ex.began();
            Some(Tunnel::new(
                began,
                Shown::Addr(target),
                out,
                slot,
                reply.into(),
            ))
        }
        Err(e) => {
            proxy::fail(ctx, client, ex, &Socks5, &e).await;
            None
        }
    }
}

/// UDP ASSOCIATE: admission (the association holds a thread slot until it ends), a direct
/// exit's sockets, the success reply with the relay's address, then the datagrams until
/// the control connection closes.
async fn associate(
    ctx: &Ctx,
    client: &mut Side,
    mut ex: Exchange<'_>,
    ident: &Identity,
    hint: &Address,
) {
    let opened = async {
        let (route, slot) = proxy::admit(ctx, client, ident)
            .await
            .map_err(|d| d.error)?;
        let a = udp::open(ctx, client, &route, hint).await?;
        Ok::<_, ProxyError>((a, slot))
    };
    let (a, _slot) = match opened.await {
        Ok(v) => v,
        Err(e) => {
            proxy::fail(ctx, client, ex, &Socks5, &e).await;
            return;
        }
    };
    ex.exit = Some(a.exit);
    ex.source = a.source;
    let Ok(bound) = a.relay_addr() else {
        proxy::fail(
            ctx,
            client,
            ex,
            &Socks5,
            &ProxyError::Internal("no relay address"),
        )
        .await;
        return;
    };
    let mut reply = Vec::with_capacity(32);
    codec::encode_reply(0x00, Address::SocketAddress(bound), &mut reply);
    client.meter.commit();
    if client.send_relayed(&reply, true).await.is_err() {
        ex.finish(ctx, client, Ok(200), "client_reset");
        return;
    }
    let end = udp::relay(ctx, client, &a).await;
    tracing::debug!(?end, relay = %bound, "socks5 udp association ended");
    ex.finish(ctx, client, Ok(200), end.label());
}

/// Admission, then the dial; the slot is held until the tunnel closes.
async fn connect(
    ctx: &Ctx,
    client: &mut Side,
    ident: &Identity,
    target: &TargetAddr,
) -> Result<(exit::Outbound, crate::plan::ledger::ThreadSlot), ProxyError> {
    let (route, slot): (Route, _) = proxy::admit(ctx, client, ident)
        .await
        .map_err(|d| d.error)?;
    let out = Box::pin(exit::dial(&ctx.egress(), &route, target)).await?;
    Ok((out, slot))
}
