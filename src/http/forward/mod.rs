//! One forwarded `http://` exchange: request head and body to the origin, response head and
//! body back, with `Expect: 100-continue` honoured end to end, `Upgrade` turned into a
//! tunnel, and the origin connection kept for the client's next request to the same host.
//!
//! The rules that make it trustworthy (RFC 9112 section 6, and the plan):
//! - the framing the client gets is the framing of the bytes it gets: the gateway writes
//!   `Content-Length` / `Transfer-Encoding` itself, re-chunks chunked bodies with clean
//!   framing and CRLF trailers, and drops `Content-Length` when `Transfer-Encoding` is there;
//! - an origin connection is reused only when its response ended exactly where its framing
//!   said and nothing more arrived since (no byte of one answer can reach another request);
//! - at most [`MAX_INTERIM`] interim (1xx) heads, `max_header_size` bytes in all, per request;
//!   a `101` the client did not ask for is refused;
//! - every byte read from the origin is read within the client's plan, and every byte
//!   written to the client is reserved from it first ([`Side::send_relayed`]);
//! - every read and write waits at most `idle_timeout`, and a client that leaves while the
//!   origin thinks ends the exchange (and frees its slot) at once.

mod body;

use super::codec::{parse_response, Framing, Relay, Request, Response};
use crate::conn::Ctx;
use crate::error::ProxyError;
use crate::exit::{self, TargetAddr};
use crate::relay::relay;
use crate::route::{choose, Route};
use crate::side::{Bounds, ReadStop as HeadStop};
use crate::side::{SendError, Side};
use crate::util::{until, BufPool};
use body::{copy_body, BodyErr};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// Most interim (1xx) responses relayed for one request.
pub const MAX_INTERIM: usize = 16;

/// An open origin connection, kept between a client's requests to the same host.
pub struct Origin {
    side: Side,
    host: String,
    port: u16,
    exit: usize,
}

impl Origin {
    /// Idle and clean: nothing buffered, and nothing arrived (no stray byte, no close)
    /// since its last response ended.
    fn is_clean(&self) -> bool {
        if !self.side.buf.is_empty() {
            return false;
        }
        let mut b = [0u8; 1];
        // SAFETY: valid fd and a one-byte buffer.
        let n = unsafe {
            libc::recv(
                self.side.stream.as_raw_fd(),
                b.as_mut_ptr() as *mut libc::c_void,
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock
    }
}

/// A completed exchange.
pub struct Done {
    pub code: u16,
    pub client_keep_alive: bool,
    pub exit: usize,
    /// `closed`, or how an upgraded connection's tunnel ended.
    pub end: &'static str,
}

/// A failed exchange: what went wrong and whether the client already got a response head
/// (then it cannot get an error response any more).
pub struct Failed {
    pub error: ProxyError,
    pub exit: Option<usize>,
    pub replied: bool,
    /// For the access line: `refused` (the gateway answers with `error`), `client_reset`
    /// (the client left mid-request), `upstream_reset`, `idle` or `quota` (cut mid-answer).
    pub end: &'static str,
}

enum Attempt {
    Done {
        code: u16,
        client_keep_alive: bool,
        origin_reusable: bool,
        end: &'static str,
    },
    /// A reused origin connection had been closed by the origin before it saw the request.
    Stale,
    Failed {
        error: ProxyError,
        replied: bool,
        end: &'static str,
    },
}

/// What every step of an exchange needs: limits and the core's buffers.
struct Limits<'a> {
    max_head: usize,
    idle: Duration,
    pool: &'a BufPool,
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
    // Reuse only a clean connection to the same origin through an exit this request may
    // use (for a sticky session: its bound exit).
    let usable = |exit: usize| choose::may_reuse(ctx.chooser(), route, exit);
    if let Some(o) = slot
        .as_mut()
        .filter(|o| o.host == host && o.port == port && usable(o.exit) && o.is_clean())
    {
        let exit = o.exit;
        let retryable = req.body == Framing::None && req.upgrade.is_none();
        match attempt(ctx, client, o, req, retryable).await {
            Attempt::Stale => {}
            other => return settle(other, slot, None, exit),
        }
    }
    *slot = None;
    let target = TargetAddr::from_host(host, port);
    let out = exit::dial(&ctx.egress(), route, &target)
        .await
        .map_err(|error| Failed {
            error,
            exit: None,
            replied: false,
            end: "refused",
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
            end,
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
                end,
            })
        }
        Attempt::Stale => {
            *slot = None;
            Err(Failed {
                error: ProxyError::Upstream("origin closed the connection".into()),
                exit: Some(exit),
                replied: false,
                end: "refused",
            })
        }
        Attempt::Failed {
            error,
            replied,
            end,
        } => {
            *slot = None;
            Err(Failed {
                error,
                exit: Some(exit),
                replied,
                end,
            })
        }
    }
}

fn upstream(msg: &str) -> Attempt {
    Attempt::Failed {
        error: ProxyError::Upstream(msg.to_owned()),
        replied: false,
        end: "refused",
    }
}

/// The plan ran out once the exchange was relayed: it is cut (no reply).
fn quota(replied: bool) -> Attempt {
    Attempt::Failed {
        error: ProxyError::BandwidthExceeded,
        replied,
        end: "quota",
    }
}

/// The client left (or stopped reading) mid-request.
fn gone_client() -> Attempt {
    Attempt::Failed {
        error: ProxyError::BadRequest("client went away"),
        replied: true,
        end: "client_reset",
    }
}

/// Interim responses seen for one request, bounded in count and bytes.
struct Interim {
    count: usize,
    bytes: usize,
}

impl Interim {
    fn admit(&mut self, head_len: usize, max_head: usize) -> bool {
        self.count += 1;
        self.bytes += head_len;
        self.count <= MAX_INTERIM && self.bytes <= max_head
    }
}

async fn attempt(
    ctx: &Ctx,
    client: &mut Side,
    o: &mut Origin,
    req: &Request,
    retryable: bool,
) -> Attempt {
    let lim = Limits {
        max_head: ctx.config().server.max_header_size.0 as usize,
        idle: ctx.config().server.idle_timeout.0,
        pool: &ctx.core().buffers,
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
        if let Err(e) = copy_body(&lim, client, &mut o.side, req.body, Relay::Framed).await {
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
    let mut peek = [0u8; 1];
    let raced = futures_lite::future::or(
        async { Some(origin_head(client, o, req, lim).await) },
        async {
            let _ = client.stream.peek(&mut peek).await;
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
        let read = futures_lite::future::or(
            async { Some(origin_head(client, o, req, lim).await) },
            async {
                client_gone(client).await;
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
    client: &Side,
    o: &mut Origin,
    req: &Request,
    lim: &Limits<'_>,
) -> Result<(Response, usize), HeadStop> {
    let is_head = req.method.eq_ignore_ascii_case("HEAD");
    let bounds = Bounds {
        max: lim.max_head,
        deadline: Instant::now() + lim.idle,
        stops: &[],
        cap: Some(&client.meter),
    };
    o.side
        .read_until(&bounds, |b| parse_response(b, is_head))
        .await
}

/// Resolves when the client has closed or reset its connection; never when it has only
/// sent more bytes (a pipelined request).
async fn client_gone(client: &Side) {
    let mut b = [0u8; 1];
    match client.stream.peek(&mut b).await {
        Ok(0) | Err(_) => {}
        Ok(_) => std::future::pending().await,
    }
}

/// Relay an interim (1xx) head to an HTTP/1.1 client (HTTP/1.0 has none).
async fn send_interim(
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
async fn respond(
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
    match send_to_client(client, &h, true, lim).await {
        Ok(()) => {}
        Err(SendError::Quota) => return quota(true),
        Err(SendError::Io) => return gone_client(),
    }
    match copy_body(lim, &mut o.side, client, resp.body, relay_as).await {
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
        let end = relay(
            &ctx.core().buffers,
            &ctx.core().stop,
            &mut client.stream,
            &mut o.side.stream,
            &client.meter,
            lim.idle,
        )
        .await;
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
