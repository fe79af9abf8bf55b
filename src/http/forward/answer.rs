//! The final answer to the client: its head and body (re-framed), or for a `101` the
//! upgraded connection as a tunnel; and interim heads.

use super::body::{copy_body, send_but_last, send_end, send_head, BodyErr};
use super::{gone_client, quota, upstream, Attempt, Limits, Origin};
use crate::conn::Ctx;
use crate::error::ProxyError;
use crate::http::codec::{Framing, Relay, Request, Response};
use crate::relay::{relay, Quiet};
use crate::side::{SendError, Side};
use crate::util::until;
use std::time::Instant;

/// Relay an interim (1xx) head to an HTTP/1.1 client (HTTP/1.0 has none).
pub(super) async fn send_interim(
    client: &mut Side,
    req: &Request,
    resp: &Response,
    lim: &Limits<'_>,
) -> Result<(), Attempt> {
    if req.minor == 0 {
        return Ok(());
    }
    let mut h = Vec::new();
    resp.encode_downstream(Relay::Framed, true, &mut h);
    send_to_client(client, &h, true, lim)
        .await
        .map_err(|e| match e {
            SendError::Quota => quota(true),
            SendError::Io => gone_client(),
        })
}

/// Write relayed bytes to the client within `idle`.
async fn send_to_client(
    client: &mut Side,
    data: &[u8],
    whole: bool,
    lim: &Limits<'_>,
) -> Result<(), SendError> {
    until(Instant::now() + lim.idle, client.send_relayed(data, whole))
        .await
        .unwrap_or(Err(SendError::Io))
}

/// Send the final response head and its body to the client.
pub(super) async fn respond(
    ctx: &Ctx,
    client: &mut Side,
    o: &mut Origin,
    req: &Request,
    resp: Response,
    body_sent: bool,
    lim: &Limits<'_>,
) -> Attempt {
    if resp.code == 101 {
        return upgrade(ctx, client, o, req, resp, lim).await;
    }
    let relay_as = if req.minor == 0 && resp.body == Framing::Chunked {
        Relay::Dechunked
    } else {
        Relay::Framed
    };
    let client_keep_alive = req.keep_alive
        && body_sent
        && relay_as == Relay::Framed
        && resp.body != Framing::UntilClose
        && !ctx.core().drain.is_fired();
    let mut h = Vec::with_capacity(512);
    resp.encode_downstream(relay_as, client_keep_alive, &mut h);
    // The body's first bytes, when they came with the head, go out in the head's write:
    // the head whole or not at all, those bytes as far as the plan covers (as a body copy
    // would send them).
    let head_len = h.len();
    let (body, with_head) = match resp.body {
        Framing::Length(n) => {
            let k = (o.side.buf.len() as u64).min(n) as usize;
            h.extend_from_slice(&o.side.buf[..k]);
            (Framing::Length(n - k as u64), k)
        }
        other => (other, 0),
    };
    // Nothing after the head: its write is the answer's last.
    let ends = matches!(body, Framing::None | Framing::Length(0));
    let sent = if ends {
        send_but_last(lim, client, &h, head_len).await
    } else {
        send_head(lim, client, &h, head_len).await.map(|()| None)
    };
    drop(h);
    let sent = match sent {
        Ok(last) => {
            o.side.consume(with_head);
            if ends {
                send_end(lim, client, last).await
            } else {
                Ok(())
            }
        }
        Err(e) => Err(e),
    };
    match sent {
        Ok(()) => {}
        Err(BodyErr::Quota) => return quota(true),
        Err(_) => return gone_client(),
    }
    match copy_body(lim, &mut o.side, client, body, relay_as, true).await {
        Ok(()) => Attempt::Done {
            code: resp.code,
            client_keep_alive,
            // Reused only if the response ended exactly where its framing says.
            origin_reusable: resp.reusable && body_sent && o.side.buf.is_empty(),
            end: "closed",
        },
        Err(BodyErr::Quota) => quota(true),
        Err(BodyErr::Dst) => gone_client(),
        Err(e) => Attempt::Failed {
            error: match e {
                BodyErr::Malformed => ProxyError::Upstream("malformed chunked response".into()),
                BodyErr::Idle => ProxyError::Upstream("response body stalled".into()),
                _ => ProxyError::Upstream("response body cut short".into()),
            },
            replied: true,
            end: if matches!(e, BodyErr::Idle) {
                "idle"
            } else {
                "upstream_reset"
            },
        },
    }
}

/// A `101 Switching Protocols`: only for a client that asked to upgrade; then the
/// connection is a tunnel, metered and holding its thread slot like a CONNECT.
async fn upgrade(
    ctx: &Ctx,
    client: &mut Side,
    o: &mut Origin,
    req: &Request,
    resp: Response,
    lim: &Limits<'_>,
) -> Attempt {
    if req.upgrade.is_none() || req.minor == 0 {
        return upstream("origin switched protocols the client did not ask for");
    }
    let mut h = Vec::with_capacity(256);
    resp.encode_downstream(Relay::Framed, false, &mut h);
    match send_to_client(client, &h, true, lim).await {
        Ok(()) => {}
        Err(SendError::Quota) => return quota(true),
        Err(SendError::Io) => return gone_client(),
    }
    let from_origin = std::mem::take(&mut o.side.buf);
    let from_client = std::mem::take(&mut client.buf);
    let sent = send_to_client(client, &from_origin, false, lim)
        .await
        .is_ok()
        && (from_client.is_empty()
            || matches!(
                until(Instant::now() + lim.idle, o.side.send(&from_client)).await,
                Some(Ok(()))
            ));
    drop((from_origin, from_client));
    let end = if sent {
        // The tunnel holds the request's slot for its life.
        let slot = lim.slot.take();
        let end = relay(
            ctx.core().pools(ctx.config().server.splice),
            &ctx.core().stop,
            &mut client.stream,
            &mut o.side.stream,
            &client.meter,
            Quiet {
                idle: lim.idle,
                half_closed: ctx.config().server.half_close_timeout.0,
                slot: slot.as_ref(),
            },
        )
        .await;
        drop(slot);
        tracing::debug!(?end, "upgraded connection ended");
        end.label()
    } else {
        "client_reset"
    };
    Attempt::Done {
        code: 101,
        client_keep_alive: false,
        origin_reusable: false,
        end,
    }
}
