//! The pipeline both protocols share, once: admission of an authenticated client (route,
//! thread slot, bandwidth), the tunnel tail (reply, early bytes, relay) and the failure sink
//! (reply + access line + metrics, and whether the connection stays open). The handlers
//! parse their protocol and call these; they import neither each other nor their caller.

use crate::auth::Identity;
use crate::conn::{Began, Ctx, Exchange};
use crate::error::ProxyError;
use crate::exit::{Outbound, TargetAddr};
use crate::plan::{self, ledger::ThreadSlot};
use crate::relay::{relay, Quiet, RelayEnd};
use crate::route::{self, Route};
use crate::side::{SendError, Side};
use crate::stream::Stream;
use std::borrow::Cow;
use std::net::IpAddr;

/// How a protocol answers a refusal.
pub trait Frontend {
    /// The bytes that answer `e` (none: close without a reply), and whether the connection
    /// stays open for another request after them. `request_id` is the refusal's id for
    /// support (HTTP shows it in `X-Request-Id`).
    fn refusal(&self, e: &ProxyError, request_id: &str) -> (Vec<u8>, bool);
}

/// Why admission refused: the error to answer, and whether the connection may stay open
/// after the answer (not when the bytes already read could not be billed).
pub struct Denied {
    pub error: ProxyError,
    pub may_keep: bool,
}

/// Admit an authenticated client's connection (or request): its route (454, 455, 503), a
/// thread slot (453) and bandwidth (452). The bytes read so far (handshake, request head)
/// are reserved from the plan; they are billed once the exchange is relayed. The slot is
/// held until dropped.
pub async fn admit(
    ctx: &Ctx,
    client: &mut Side,
    ident: &Identity,
) -> Result<(Route, ThreadSlot), Denied> {
    let checks = async {
        let w = &ctx.world;
        let route = route::resolve(&w.config, &w.exits.index, ident)?;
        let quota = &ctx.core().quota;
        let state = plan::state_for(quota, &w.ledger, &ident.account, &ident.plan)?;
        let adm = plan::admit(quota, &state).await?;
        Ok::<_, ProxyError>((route, adm))
    };
    let (route, adm) = checks.await.map_err(|error| Denied {
        error,
        may_keep: true,
    })?;
    if !client.meter.bind(adm.charge).await {
        return Err(Denied {
            error: ProxyError::BandwidthExceeded,
            may_keep: false,
        });
    }
    Ok((route, adm.slot))
}

/// A dialled tunnel, handed from a handler's handshake to its relay: what the relay phase
/// needs and nothing of the handshake. Handlers box it and drop their own state before the
/// relay, for which an idle tunnel keeps only this.
pub struct Tunnel {
    /// The exchange's start (its access line covers the handshake too).
    pub began: Began,
    pub target: Shown,
    /// The exit's connection, its index and the address it left from (the dial's
    /// `Outbound` without its local address, which the reply already carries).
    pub stream: Stream,
    pub exit: usize,
    pub source: Option<IpAddr>,
    /// Bytes an upstream proxy sent after its handshake: the client's, sent after the reply.
    pub early: Vec<u8>,
    /// Held until the tunnel closes; it also names the account (for the access line).
    pub slot: ThreadSlot,
    /// The success reply, sent first.
    pub reply: Cow<'static, [u8]>,
}

/// A tunnel's target as its access line shows it: the address the client asked for
/// (SOCKS5, kept as parsed), or the request's host and port as written (HTTP).
pub enum Shown {
    Addr(TargetAddr),
    Text(String),
}

impl Tunnel {
    /// The tunnel through `out`, to be relayed after `reply`.
    pub fn new(
        began: Began,
        target: Shown,
        out: Outbound,
        slot: ThreadSlot,
        reply: Cow<'static, [u8]>,
    ) -> Box<Tunnel> {
        let Outbound {
            stream,
            exit,
            early,
            source,
            ..
        } = out;
        Box::new(Tunnel {
            began,
            target,
            stream,
            exit,
            source,
            early,
            slot,
            reply,
        })
    }
}

impl std::fmt::Display for Shown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Shown::Addr(a) => a.fmt(f),
            Shown::Text(t) => f.write_str(t),
        }
    }
}

/// Relay a dialled tunnel, for both CONNECTs, to its end, then write its access line:
/// the opening (the success reply and the exit's early bytes to the client, the client's
/// early bytes to the exit; the handshake or request head is billed from here), then the
/// relay until either side ends it.
pub async fn run_tunnel(ctx: &Ctx, client: &mut Side, mut t: Box<Tunnel>) {
    // Boxed: the sends' state is freed before the relay, which the tunnel waits in.
    let end = match Box::pin(open(client, &mut t)).await {
        Err(end) => end,
        Ok(()) => {
            let core = ctx.core();
            let server = &ctx.config().server;
            let t = &mut *t;
            relay(
                core.pools(server.splice),
                &core.stop,
                &mut client.stream,
                &mut t.stream,
                &client.meter,
                Quiet {
                    idle: server.idle_timeout.0,
                    half_closed: server.half_close_timeout.0,
                    slot: Some(&t.slot),
                },
            )
            .await
        }
    };
    tracing::debug!(?end, proto = t.began.proto(), target = %t.target, "tunnel ended");
    let mut ex = Exchange::resume(t.began);
    ex.account = Some(t.slot.account());
    ex.target = Some(&t.target);
    ex.exit = Some(t.exit);
    ex.source = t.source;
    ex.finish(ctx, client, Ok(200), end.label());
}

/// The tunnel's opening: the handshake is billed, the reply and the exit's early bytes go
/// to the client, the client's early bytes to the exit. Every buffer is freed after it:
/// an idle tunnel holds none.
async fn open(client: &mut Side, t: &mut Tunnel) -> Result<(), RelayEnd> {
    let reply = std::mem::take(&mut t.reply);
    client.meter.commit();
    for (data, whole) in [(&reply[..], true), (&t.early[..], false)] {
        match client.send_relayed(data, whole).await {
            Ok(()) => {}
            Err(SendError::Quota) => return Err(RelayEnd::Quota),
            Err(SendError::Io) => {
                return Err(RelayEnd::ClientReset(std::io::ErrorKind::BrokenPipe.into()))
            }
        }
    }
    // Bytes the client pipelined after its request go first.
    let early = std::mem::take(&mut client.buf);
    if !early.is_empty() {
        if let Err(e) = futures_lite::AsyncWriteExt::write_all(&mut t.stream, &early).await {
            return Err(RelayEnd::UpstreamReset(e));
        }
    }
    t.early = Vec::new();
    Ok(())
}

/// The failure sink: answer `e` as `front` does, write the exchange's access line
/// (`end=refused`) and count it. A refused exchange is billed to no one. Returns whether
/// the connection stays open for another request.
pub async fn fail(
    ctx: &Ctx,
    client: &mut Side,
    ex: Exchange<'_>,
    front: &impl Frontend,
    e: &ProxyError,
) -> bool {
    fail_as(ctx, client, ex, front, e, "refused").await
}

/// [`fail`] for an exchange that ended some other way (`end`: cut by the plan, the origin
/// reset or went idle mid-answer); `front` sends nothing when the client already has an
/// answer's head.
pub async fn fail_as(
    ctx: &Ctx,
    client: &mut Side,
    ex: Exchange<'_>,
    front: &impl Frontend,
    e: &ProxyError,
    end: &'static str,
) -> bool {
    let mut ex = ex;
    let id = crate::support::new_id();
    let (reply, open) = front.refusal(e, &id);
    ex.request_id = Some(id);
    let sent = reply.is_empty() || client.send_refusal(&reply).await.is_ok();
    ex.finish(ctx, client, Err(e), end);
    open && sent
}
