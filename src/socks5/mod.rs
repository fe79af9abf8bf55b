//! SOCKS5 (RFC 1928) with username/password authentication (RFC 1929).
//!
//! The success reply goes out only after the outbound connect succeeded, carrying the real
//! bound address; failures get their reply code from [`ProxyError::socks_reply`].

pub mod codec;

use crate::auth::{self, Identity};
use crate::conn::SendError;
use crate::conn::{Access, Ctx, Side};
use crate::error::{ProxyError, SocksReply};
use crate::exit::{self, TargetAddr};
use crate::plan;
use crate::relay::{relay, RelayEnd};
use crate::route::{self, Route};
use crate::util::until;
use codec::Parsed;
use socks5_proto::{handshake::Method, Address, Command};
use std::time::Instant;

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

/// Parse the next message, reading more bytes until it is complete.
async fn next<T>(
    ctx: &Ctx,
    client: &mut Side,
    parse: impl Fn(&[u8]) -> Result<Parsed<T>, ProxyError>,
) -> Result<T, Stop> {
    loop {
        if let Parsed::Done(v, used) = parse(&client.buf)? {
            client.consume(used);
            return Ok(v);
        }
        if client.buf.len() >= MAX_HANDSHAKE {
            return Err(Stop::Reply(ProxyError::BadRequest(
                "socks5 message too long",
            )));
        }
        match until(
            ctx.handshake_deadline,
            client.fill(MAX_HANDSHAKE - client.buf.len()),
        )
        .await
        {
            Some(Ok(n)) if n > 0 => {}
            _ => return Err(Stop::Gone),
        }
    }
}

/// Encode and send the reply for `err` at the stage it happened.
async fn refuse(client: &mut Side, err: &ProxyError) {
    let mut out = Vec::with_capacity(16);
    match err.socks_reply() {
        SocksReply::Close => {}
        SocksReply::NoAcceptableMethod => codec::encode_method(Method::UNACCEPTABLE, &mut out),
        SocksReply::AuthFailure(status) => codec::encode_auth_status(status, &mut out),
        SocksReply::Reply(code) => codec::encode_reply(code, Address::unspecified(), &mut out),
    }
    if !out.is_empty() {
        let _ = client.send_refusal(&out).await;
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
            if let Some(ident) = auth::by_address(&ctx.snap, ctx.network, ctx.peer) {
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
    let ident = auth::login(
        &ctx.snap,
        &ctx.w.creds,
        &ctx.w.guard,
        ctx.network,
        ctx.peer,
        &user,
        &pass,
    )
    .await?;
    out.clear();
    codec::encode_auth_status(0, &mut out);
    client.send(&out).await.map_err(|_| Stop::Gone)?;
    Ok(ident)
}

/// The request; plan and targeting errors are reported here, after a successful auth
/// step, so that clients see "not allowed by ruleset" rather than an auth failure.
async fn request(
    ctx: &Ctx,
    client: &mut Side,
    ident: &Identity,
) -> Result<(TargetAddr, Route), Stop> {
    let (command, address) = next(ctx, client, codec::parse_request).await?;
    if command != Command::Connect {
        return Err(Stop::Reply(ProxyError::CommandNotSupported));
    }
    let route = route::resolve(&ctx.snap, ident)?;
    let target = match address {
        Address::SocketAddress(a) => TargetAddr::Ip(a),
        Address::DomainAddress(name, port) => TargetAddr::from_socks_name(&name, port)
            .ok_or(ProxyError::BadRequest("not a host name"))?,
    };
    Ok((target, route))
}

/// Serve a SOCKS5 client whose first bytes are in `client.buf`.
pub async fn serve(ctx: &Ctx, client: &mut Side) {
    let started = Instant::now();
    // The handshake and the dial are boxed: their state is freed before the (long) relay.
    let ident = match Box::pin(greet_and_authenticate(ctx, client)).await {
        Ok(i) => i,
        Err(Stop::Gone) => return,
        Err(Stop::Reply(e)) => {
            refuse(client, &e).await;
            ctx.log_access(Access {
                proto: "socks5",
                account: None,
                target: None,
                exit: None,
                up: client.meter.up(),
                down: client.meter.down(),
                started,
                outcome: Err(&e),
                end: "refused",
            });
            return;
        }
    };
    let fail = |client: &Side, target: Option<&dyn std::fmt::Display>, e: &ProxyError| {
        ctx.log_access(Access {
            proto: "socks5",
            account: Some(&ident.account),
            target,
            exit: None,
            up: client.meter.up(),
            down: client.meter.down(),
            started,
            outcome: Err(e),
            end: "refused",
        })
    };
    let (target, route) = match Box::pin(request(ctx, client, &ident)).await {
        Ok(t) => t,
        Err(Stop::Gone) => return,
        Err(Stop::Reply(e)) => {
            refuse(client, &e).await;
            fail(client, None, &e);
            return;
        }
    };
    // Plan: 452/453 on the CONNECT reply. The slot is held until the tunnel closes.
    // The handshake bytes read so far are billed at bind, within the plan.
    let admitted = match plan::admit(&ctx.w.quota, &ident.counters).await {
        Ok(adm) => {
            if client.meter.bind(adm.charge).await {
                Ok(adm.slot)
            } else {
                Err(ProxyError::BandwidthExceeded)
            }
        }
        Err(e) => Err(e),
    };
    let _slot = match admitted {
        Ok(slot) => slot,
        Err(e) => {
            refuse(client, &e).await;
            fail(client, Some(&target), &e);
            return;
        }
    };
    let mut out = match Box::pin(exit::dial(&ctx.w, &ctx.snap, &route, &target)).await {
        Ok(o) => o,
        Err(e) => {
            refuse(client, &e).await;
            fail(client, Some(&target), &e);
            return;
        }
    };
    let mut reply = Vec::with_capacity(32);
    codec::encode_reply(0x00, Address::SocketAddress(out.local), &mut reply);
    // The tunnel is served: its handshake is billed, and its reply is part of it.
    client.meter.commit();
    let end = match client.send_relayed(&reply, true).await {
        Ok(()) => tunnel(ctx, client, &mut out).await,
        Err(SendError::Quota) => RelayEnd::Quota,
        Err(SendError::Io) => RelayEnd::ClientReset(std::io::ErrorKind::BrokenPipe.into()),
    };
    tracing::debug!(?end, target = %target, "socks5 tunnel ended");
    ctx.log_access(Access {
        proto: "socks5",
        account: Some(&ident.account),
        target: Some(&target),
        exit: Some(out.exit),
        up: client.meter.up(),
        down: client.meter.down(),
        started,
        outcome: Ok(200),
        end: end.label(),
    });
}

/// The served tunnel: the exit's early bytes (relayed, within the plan), the client's early
/// bytes, then the relay.
async fn tunnel(ctx: &Ctx, client: &mut Side, out: &mut exit::Outbound) -> RelayEnd {
    match client.send_relayed(&out.early, false).await {
        Ok(()) => {}
        Err(SendError::Quota) => return RelayEnd::Quota,
        Err(SendError::Io) => return RelayEnd::ClientReset(std::io::ErrorKind::BrokenPipe.into()),
    }
    // Bytes the client pipelined after its request go first; the handshake buffer is freed
    // before the relay (an idle tunnel holds no buffer).
    let early = std::mem::take(&mut client.buf);
    if !early.is_empty() {
        if let Err(e) = futures_lite::AsyncWriteExt::write_all(&mut out.stream, &early).await {
            return RelayEnd::UpstreamReset(e);
        }
    }
    drop(early);
    relay(
        &ctx.w.buffers,
        &ctx.w.stop,
        &mut client.stream,
        &mut out.stream,
        &client.meter,
        ctx.snap.server.idle_timeout.0,
    )
    .await
}
