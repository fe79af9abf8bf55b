//! One attempt at an exchange over one origin connection: the request head, the
//! `Expect: 100-continue` race, the request body, then interim heads until the final one.

use super::answer::{respond, send_interim};
use super::body::{copy_body, BodyErr};
use super::{gone_client, quota, upstream, Attempt, Interim, Limits, Origin};
use crate::conn::Ctx;
use crate::error::ProxyError;
use crate::http::codec::{parse_response, Framing, Relay, Request, Response};
use crate::plan::ledger::ThreadSlot;
use crate::relay::Meter;
use crate::side::{Bounds, ReadStop as HeadStop, Side};
use crate::stream::{Peer, Stream};
use crate::util::until;
use std::cell::Cell;
use std::task::Poll;
use std::time::Instant;

pub(super) async fn attempt(
    ctx: &Ctx,
    client: &mut Side,
    o: &mut Origin,
    req: &Request,
    (retryable, thread): (bool, &Cell<Option<ThreadSlot>>),
) -> Attempt {
    let lim = Limits {
        max_head: ctx.config().server.max_header_size.0 as usize,
        idle: ctx.config().server.idle_timeout.0,
        pool: &ctx.core().buffers,
        slot: thread,
    };
    if let Err(a) = send_head(client, o, req, &lim, retryable).await {
        return a;
    }
    let mut interim = Interim { count: 0, bytes: 0 };
    let mut body_sent = req.body == Framing::None;
    if !body_sent && req.expect_continue && client.buf.is_empty() {
        match expect_continue(client, o, req, &lim, &mut interim).await {
            Continue::Body => {}
            Continue::Final(resp) => {
                // Final answer without the body: the client's body state is unknown, so
                // the connection closes after this response.
                return respond(ctx, client, o, req, resp, false, &lim).await;
            }
            Continue::Stop(a) => return a,
        }
    }
    if !body_sent {
        if let Err(e) = copy_body(&lim, client, &mut o.side, req.body, Relay::Framed, false).await {
            return request_body_failed(e);
        }
        body_sent = true;
    }
    final_answer(ctx, client, o, req, &lim, interim, retryable, body_sent).await
}

/// Write the request head to the origin; once it is there, the head is billed. A reused
/// connection that cannot take it is `Stale` (the request is retried on a fresh one).
async fn send_head(
    client: &Side,
    o: &mut Origin,
    req: &Request,
    lim: &Limits<'_>,
    retryable: bool,
) -> Result<(), Attempt> {
    let mut head = Vec::with_capacity(512);
    req.encode_upstream(&mut head);
    if !matches!(
        until(Instant::now() + lim.idle, o.side.send(&head)).await,
        Some(Ok(()))
    ) {
        return Err(if retryable {
            Attempt::Stale
        } else {
            upstream("writing the request to the origin failed")
        });
    }
    client.meter.commit();
    Ok(())
}

/// What `Expect: 100-continue` came to.
enum Continue {
    /// Send the body: the origin said 100, or the client stopped waiting and sent it.
    Body,
    /// The origin answered without wanting the body.
    Final(Response),
    Stop(Attempt),
}

/// Either the origin answers (100 or final) or the client gives up waiting and sends the
/// body anyway; whichever comes first.
async fn expect_continue(
    client: &mut Side,
    o: &mut Origin,
    req: &Request,
    lim: &Limits<'_>,
    interim: &mut Interim,
) -> Continue {
    let (meter, stream) = (&client.meter, &mut client.stream);
    let raced = futures_lite::future::or(
        async { Some(origin_head(meter, o, req, lim).await) },
        async {
            std::future::poll_fn(|cx| stream.poll_peer(cx)).await;
            None
        },
    )
    .await;
    match raced {
        None => Continue::Body,
        Some(Err(stop)) => Continue::Stop(stopped(stop, false, false)),
        Some(Ok((resp, n))) => {
            o.side.consume(n);
            if !(100..200).contains(&resp.code) || resp.code == 101 {
                return Continue::Final(resp);
            }
            if !interim.admit(n, lim.max_head) {
                return Continue::Stop(upstream("too many interim responses"));
            }
            match send_interim(client, req, &resp, lim).await {
                Ok(()) => Continue::Body,
                Err(a) => Continue::Stop(a),
            }
        }
    }
}

/// Copying the request body to the origin failed.
fn request_body_failed(e: BodyErr) -> Attempt {
    match e {
        BodyErr::Src => gone_client(),
        BodyErr::Idle => Attempt::Failed {
            error: ProxyError::BadRequest("request body stalled"),
            replied: true,
            end: "idle",
        },
        BodyErr::Malformed => Attempt::Failed {
            error: ProxyError::BadRequest("malformed chunked request body"),
            replied: false,
            end: "refused",
        },
        BodyErr::Dst => upstream("origin stopped reading the request body"),
        BodyErr::Quota => quota(true),
    }
}

/// Interim heads relayed until the final one, which is answered. The origin may think for
/// a while; a client that leaves meanwhile ends the exchange (and frees its slot) at once.
#[allow(clippy::too_many_arguments)]
async fn final_answer(
    ctx: &Ctx,
    client: &mut Side,
    o: &mut Origin,
    req: &Request,
    lim: &Limits<'_>,
    mut interim: Interim,
    retryable: bool,
    body_sent: bool,
) -> Attempt {
    let mut got_any = interim.count > 0;
    loop {
        let (meter, stream) = (&client.meter, &mut client.stream);
        let read = futures_lite::future::or(
            async { Some(origin_head(meter, o, req, lim).await) },
            async {
                client_gone(stream).await;
                None
            },
        )
        .await;
        let resp = match read {
            None => return gone_client(),
            Some(Ok((r, n))) => {
                o.side.consume(n);
                if (100..200).contains(&r.code) && r.code != 101 && !interim.admit(n, lim.max_head)
                {
                    return upstream("too many interim responses");
                }
                r
            }
            Some(Err(HeadStop::Gone)) if retryable && !got_any && o.side.buf.is_empty() => {
                return Attempt::Stale
            }
            Some(Err(stop)) => return stopped(stop, got_any, true),
        };
        got_any = true;
        if (100..200).contains(&resp.code) && resp.code != 101 {
            if let Err(a) = send_interim(client, req, &resp, lim).await {
                return a;
            }
            continue;
        }
        return respond(ctx, client, o, req, resp, body_sent, lim).await;
    }
}

/// The outcome when reading a response head stopped without one.
fn stopped(stop: HeadStop, replied: bool, after_request: bool) -> Attempt {
    match stop {
        HeadStop::Quota => quota(replied),
        HeadStop::Bad(_) => upstream("malformed response head from origin"),
        HeadStop::Gone if after_request => upstream("origin closed before responding"),
        HeadStop::Gone => upstream("origin closed before answering Expect"),
    }
}

/// Read one response head from the origin, within `idle` per read and the client's plan.
async fn origin_head(
    meter: &Meter,
    o: &mut Origin,
    req: &Request,
    lim: &Limits<'_>,
) -> Result<(Response, usize), HeadStop> {
    let is_head = req.method.eq_ignore_ascii_case("HEAD");
    let bounds = Bounds {
        max: lim.max_head,
        deadline: Instant::now() + lim.idle,
        stops: &[],
        cap: Some(meter),
    };
    o.side
        .read_until(&bounds, |b| parse_response(b, is_head))
        .await
}

/// Resolves when the client has closed or reset its connection; never when it has only
/// sent more bytes (a pipelined request). Under TLS, bytes followed by the close are the
/// session's end (close_notify, then the close), so there the close after bytes counts
/// too; in the clear, a pipelined request followed by a half-close is still answered.
async fn client_gone(client: &mut Stream) {
    let mut sent = false;
    std::future::poll_fn(|cx| {
        if !sent {
            match client.poll_peer(cx) {
                Poll::Ready(Peer::Gone) => return Poll::Ready(()),
                // Left for the next request's read.
                Poll::Ready(Peer::Sent) => sent = true,
                Poll::Pending => return Poll::Pending,
            }
        }
        // Bytes wait: in the clear nothing more to watch for; under TLS the close itself.
        match client.is_tls() {
            true => client.poll_closed(cx),
            false => Poll::Pending,
        }
    })
    .await
}
