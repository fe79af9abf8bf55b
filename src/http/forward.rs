//! One forwarded `http://` exchange: request head and body to the origin, response head and
//! body back, with `Expect: 100-continue` honoured end to end and the origin connection kept
//! for the client's next request to the same host.

use super::codec::{parse_response, ChunkedDecoder, Framing, Request, Response};
use super::{read_head, Ctx, HeadStop};
use crate::error::ProxyError;
use crate::exit::{self, TargetAddr};
use crate::relay::relay;
use crate::route::Route;
use crate::session::Side;
use crate::worker::BufPool;
use futures_lite::AsyncReadExt;
use std::time::Instant;

/// An open origin connection, kept between a client's requests to the same host.
pub struct Origin {
    side: Side,
    host: String,
    port: u16,
    exit: usize,
}

/// A completed exchange.
pub struct Done {
    pub code: u16,
    pub client_keep_alive: bool,
    pub exit: usize,
}

/// A failed exchange: what went wrong and whether the client already got a response head
/// (then it cannot get an error response any more).
pub struct Failed {
    pub error: ProxyError,
    pub exit: Option<usize>,
    pub replied: bool,
}

enum Attempt {
    Done {
        code: u16,
        client_keep_alive: bool,
        origin_reusable: bool,
    },
    /// A reused origin connection had been closed by the origin before it saw the request.
    Stale,
    Failed {
        error: ProxyError,
        replied: bool,
    },
}

/// Forward `req` (head already parsed off `client.buf`) and relay the response.
pub async fn exchange(
    ctx: &Ctx,
    client: &mut Side,
    slot: &mut Option<Origin>,
    req: &Request,
    route: &Route,
) -> Result<Done, Failed> {
    let (host, port) = req.target.host_port();
    // Reuse only a connection to the same origin through an exit this request may use
    // (for a sticky session: its bound exit).
    let members = ctx.snap.index.members(route.list);
    let usable = |exit: usize| {
        members.contains(&exit)
            && route.sticky.as_ref().is_none_or(|st| {
                ctx.w.sessions.get(&st.key, Instant::now()).as_deref()
                    == Some(ctx.snap.exits[exit].name.as_str())
            })
    };
    if let Some(o) = slot
        .as_mut()
        .filter(|o| o.host == host && o.port == port && usable(o.exit))
    {
        let exit = o.exit;
        let retryable = req.body == Framing::None;
        match attempt(ctx, client, o, req, retryable).await {
            Attempt::Stale => {}
            other => return settle(other, slot, None, exit),
        }
    }
    *slot = None;
    let target = TargetAddr::from_host(host, port);
    let out = exit::dial(&ctx.w, &ctx.snap, route, &target)
        .await
        .map_err(|error| Failed {
            error,
            exit: None,
            replied: false,
        })?;
    let mut side = Side::new(out.stream);
    side.buf = out.early;
    let mut o = Origin {
        side,
        host: host.to_owned(),
        port,
        exit: out.exit,
    };
    let res = attempt(ctx, client, &mut o, req, false).await;
    settle(res, slot, Some(o), out.exit)
}

fn settle(
    res: Attempt,
    slot: &mut Option<Origin>,
    fresh: Option<Origin>,
    exit: usize,
) -> Result<Done, Failed> {
    match res {
        Attempt::Done {
            code,
            client_keep_alive,
            origin_reusable,
        } => {
            if !origin_reusable || !client_keep_alive {
                *slot = None;
            } else if let Some(o) = fresh {
                *slot = Some(o);
            }
            Ok(Done {
                code,
                client_keep_alive,
                exit,
            })
        }
        Attempt::Stale => {
            *slot = None;
            Err(Failed {
                error: ProxyError::Upstream("origin closed the connection".into()),
                exit: Some(exit),
                replied: false,
            })
        }
        Attempt::Failed { error, replied } => {
            *slot = None;
            Err(Failed {
                error,
                exit: Some(exit),
                replied,
            })
        }
    }
}

fn upstream(msg: &str) -> Attempt {
    Attempt::Failed {
        error: ProxyError::Upstream(msg.to_owned()),
        replied: false,
    }
}

async fn attempt(
    ctx: &Ctx,
    client: &mut Side,
    o: &mut Origin,
    req: &Request,
    retryable: bool,
) -> Attempt {
    let max_head = ctx.snap.server.max_header_size.0 as usize;
    let idle = ctx.snap.server.idle_timeout.0;
    let pool = &ctx.w.buffers;
    let mut head = Vec::with_capacity(512);
    req.encode_upstream(&mut head);
    if o.side.send(&head).await.is_err() {
        return if retryable {
            Attempt::Stale
        } else {
            upstream("writing the request to the origin failed")
        };
    }
    let is_head = req.method.eq_ignore_ascii_case("HEAD");
    let parse = |b: &[u8]| parse_response(b, is_head);
    let mut body_sent = req.body == Framing::None;
    let mut early: Option<Response> = None;

    if !body_sent && req.expect_continue && client.buf.is_empty() {
        // Either the origin answers (100 or final) or the client gives up waiting and
        // sends the body anyway; whichever comes first.
        let mut peek = [0u8; 1];
        let raced = futures_lite::future::or(
            async {
                Some(read_head(&mut o.side, max_head, Instant::now() + idle, &[], parse).await)
            },
            async {
                let _ = client.stream.peek(&mut peek).await;
                None
            },
        )
        .await;
        match raced {
            None => {}
            Some(Err(_)) => return upstream("origin closed before answering Expect"),
            Some(Ok((resp, n))) => {
                o.side.consume(n);
                if resp.code == 100 {
                    if req.minor >= 1 {
                        let mut h = Vec::new();
                        resp.encode_downstream(false, true, &mut h);
                        if client.send(&h).await.is_err() {
                            return gone_client();
                        }
                    }
                } else if (100..200).contains(&resp.code) {
                    // Other 1xx: forward below through the normal loop.
                    early = Some(resp);
                } else {
                    // Final answer without the body: the client's body state is unknown,
                    // so the connection closes after this response.
                    return respond(ctx, client, o, req, resp, false, pool).await;
                }
            }
        }
    }
    if !body_sent {
        if let Err(e) = copy_body(pool, client, &mut o.side, req.body, false).await {
            return match e {
                BodyErr::Src => Attempt::Failed {
                    error: ProxyError::BadRequest("request body incomplete"),
                    replied: true,
                },
                BodyErr::Malformed => Attempt::Failed {
                    error: ProxyError::BadRequest("malformed chunked request body"),
                    replied: false,
                },
                BodyErr::Dst => upstream("origin stopped reading the request body"),
                BodyErr::Quota => Attempt::Failed {
                    error: ProxyError::BandwidthExceeded,
                    replied: true,
                },
            };
        }
        body_sent = true;
    }
    let mut got_any = early.is_some();
    loop {
        let resp = match early.take() {
            Some(r) => r,
            None => {
                match read_head(&mut o.side, max_head, Instant::now() + idle, &[], parse).await {
                    Ok((r, n)) => {
                        o.side.consume(n);
                        r
                    }
                    Err(HeadStop::Gone) if retryable && !got_any && o.side.buf.is_empty() => {
                        return Attempt::Stale
                    }
                    Err(HeadStop::Gone) => return upstream("origin closed before responding"),
                    Err(HeadStop::Bad(_)) => {
                        return upstream("malformed response head from origin")
                    }
                }
            }
        };
        got_any = true;
        if (100..200).contains(&resp.code) && resp.code != 101 {
            if req.minor >= 1 {
                let mut h = Vec::new();
                resp.encode_downstream(false, true, &mut h);
                if client.send(&h).await.is_err() {
                    return gone_client();
                }
            }
            continue;
        }
        return respond(ctx, client, o, req, resp, body_sent, pool).await;
    }
}

fn gone_client() -> Attempt {
    Attempt::Failed {
        error: ProxyError::BadRequest("client went away"),
        replied: true,
    }
}

/// Send the final response head and its body to the client.
async fn respond(
    ctx: &Ctx,
    client: &mut Side,
    o: &mut Origin,
    req: &Request,
    resp: Response,
    body_sent: bool,
    pool: &BufPool,
) -> Attempt {
    let dechunk = req.minor == 0 && resp.body == Framing::Chunked;
    let upgrade = resp.code == 101;
    let client_keep_alive = req.keep_alive
        && body_sent
        && !dechunk
        && !upgrade
        && resp.body != Framing::UntilClose
        && !ctx.w.drain.is_fired();
    let mut h = Vec::with_capacity(512);
    resp.encode_downstream(dechunk, client_keep_alive, &mut h);
    if client.send(&h).await.is_err() {
        return gone_client();
    }
    if upgrade {
        let early = std::mem::take(&mut o.side.buf);
        if client.send(&early).await.is_ok() {
            let idle = ctx.snap.server.idle_timeout.0;
            relay(
                &ctx.w,
                &mut client.stream,
                &mut o.side.stream,
                &client.meter,
                idle,
            )
            .await;
        }
        return Attempt::Done {
            code: 101,
            client_keep_alive: false,
            origin_reusable: false,
        };
    }
    match copy_body(pool, &mut o.side, client, resp.body, dechunk).await {
        Ok(()) => Attempt::Done {
            code: resp.code,
            client_keep_alive,
            origin_reusable: resp.reusable && body_sent,
        },
        Err(e) => Attempt::Failed {
            error: match e {
                BodyErr::Quota => ProxyError::BandwidthExceeded,
                _ => ProxyError::Upstream("response body cut short".into()),
            },
            replied: true,
        },
    }
}

#[derive(Debug)]
enum BodyErr {
    /// Reading the source failed or it ended early.
    Src,
    /// Writing the destination failed.
    Dst,
    /// The chunked framing is broken.
    Malformed,
    /// The client's plan ran out of bandwidth mid-body.
    Quota,
}

/// Copy one message body from `src` (buffered bytes first) to `dst`.
async fn copy_body(
    pool: &BufPool,
    src: &mut Side,
    dst: &mut Side,
    framing: Framing,
    dechunk: bool,
) -> Result<(), BodyErr> {
    match framing {
        Framing::None => Ok(()),
        Framing::Chunked => copy_chunked(src, dst, dechunk).await,
        Framing::Length(n) => {
            let mut buf = pool.take();
            let r = copy_raw(&mut buf, src, dst, Some(n)).await;
            pool.give(buf);
            r
        }
        Framing::UntilClose => {
            let mut buf = pool.take();
            let r = copy_raw(&mut buf, src, dst, None).await;
            pool.give(buf);
            r
        }
    }
}

/// `limit` bytes, or until the source closes when `None`.
async fn copy_raw(
    buf: &mut [u8],
    src: &mut Side,
    dst: &mut Side,
    limit: Option<u64>,
) -> Result<(), BodyErr> {
    let mut left = limit.unwrap_or(u64::MAX);
    let k = (src.buf.len() as u64).min(left) as usize;
    if k > 0 {
        dst.send(&src.buf[..k]).await.map_err(|_| BodyErr::Dst)?;
        src.consume(k);
        left -= k as u64;
    }
    while left > 0 {
        let want = allowance(src, dst, (buf.len() as u64).min(left) as usize).await?;
        let n = src
            .stream
            .read(&mut buf[..want])
            .await
            .map_err(|_| BodyErr::Src)?;
        if n == 0 {
            return match limit {
                None => Ok(()),
                Some(_) => Err(BodyErr::Src),
            };
        }
        read_for(src, dst, n);
        dst.send(&buf[..n]).await.map_err(|_| BodyErr::Dst)?;
        left -= n as u64;
    }
    Ok(())
}

/// Bytes that may be read from `src` for `dst` now: the client's plan caps reads on
/// whichever side it is.
async fn allowance(src: &Side, dst: &Side, want: usize) -> Result<usize, BodyErr> {
    let a = src.meter.allow(want).await;
    match if a == 0 { 0 } else { dst.meter.allow(a).await } {
        0 => Err(BodyErr::Quota),
        n => Ok(n),
    }
}

/// Count `n` bytes read from `src` on `dst`'s behalf.
fn read_for(src: &Side, dst: &Side, n: usize) {
    src.meter.add_up(n);
    dst.meter.read_for_client(n);
}

async fn copy_chunked(src: &mut Side, dst: &mut Side, dechunk: bool) -> Result<(), BodyErr> {
    let mut dec = ChunkedDecoder::default();
    loop {
        if src.buf.is_empty() {
            let want = allowance(src, dst, 64 * 1024).await?;
            let n = src.fill(want).await.map_err(|_| BodyErr::Src)?;
            if n == 0 {
                return Err(BodyErr::Src);
            }
            dst.meter.read_for_client(n);
        }
        let fed = dec.feed(&src.buf).map_err(|_| BodyErr::Malformed)?;
        if dechunk {
            for r in &fed.data {
                dst.send(&src.buf[r.clone()])
                    .await
                    .map_err(|_| BodyErr::Dst)?;
            }
        } else {
            dst.send(&src.buf[..fed.consumed])
                .await
                .map_err(|_| BodyErr::Dst)?;
        }
        src.consume(fed.consumed);
        if fed.done {
            return Ok(());
        }
    }
}
