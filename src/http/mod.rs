//! HTTP proxy: `CONNECT` tunnels and absolute-form forwarding of `http://` requests with
//! client keep-alive and origin connection reuse.

pub mod codec;
mod forward;

use crate::auth::{self, Identity};
use crate::error::ProxyError;
use crate::exit::{self, TargetAddr};
use crate::plan::{self, Admission};
use crate::relay::relay;
use crate::route::{self, Route};
use crate::session::{Access, Ctx, Side};
use crate::worker::{any_fired, until, Latch};
use codec::{Framing, Parsed, Request, Target};
use std::time::Instant;

/// Why reading a head stopped without a head.
pub(crate) enum HeadStop {
    /// Clean end: EOF between messages, timeout, or drain.
    Gone,
    /// The bytes are not a valid head (or too large): answer this.
    Bad(ProxyError),
}

/// Read until `parse` finds a complete head in `side.buf`, bounded by `max` bytes and
/// `deadline`; any of `stops` firing ends a wait that has no byte of the head yet.
pub(crate) async fn read_head<T>(
    side: &mut Side,
    max: usize,
    deadline: Instant,
    stops: &[&Latch],
    parse: impl Fn(&[u8]) -> Result<Parsed<T>, ProxyError>,
) -> Result<(T, usize), HeadStop> {
    loop {
        if !side.buf.is_empty() {
            match parse(&side.buf) {
                Ok(Parsed::Done(v, n)) => return Ok((v, n)),
                Ok(Parsed::Incomplete) => {}
                Err(e) => return Err(HeadStop::Bad(e)),
            }
            if side.buf.len() >= max {
                return Err(HeadStop::Bad(ProxyError::HeadTooLarge));
            }
        }
        let room = max - side.buf.len();
        let read = until(deadline, async {
            if side.buf.is_empty() && !stops.is_empty() {
                futures_lite::future::or(side.fill(room), async {
                    any_fired(stops).await;
                    Ok(0)
                })
                .await
            } else {
                side.fill(room).await
            }
        })
        .await;
        match read {
            Some(Ok(n)) if n > 0 => {}
            _ => return Err(HeadStop::Gone),
        }
    }
}

/// Check credentials, the username's targeting and session, then the plan, for one
/// request. The account is returned even when a later check fails (for the log).
async fn admit(
    ctx: &Ctx,
    req: &Request,
) -> Result<(Identity, Route, Admission), (Option<String>, ProxyError)> {
    let ident = match &req.credentials {
        Some((user, pass)) => {
            auth::login(
                &ctx.snap,
                &ctx.w.creds,
                &ctx.w.guard,
                ctx.network,
                ctx.peer,
                user,
                pass,
            )
            .await
        }
        // No credentials: an allow-listed client address stands for its account.
        None => auth::by_address(&ctx.snap, ctx.network, ctx.peer)
            .unwrap_or(Err(ProxyError::AuthFailed("no Proxy-Authorization"))),
    }
    .map_err(|e| (None, e))?;
    let checks = match route::resolve(&ctx.snap, &ident) {
        Ok(route) => plan::admit(&ctx.w, &ident.counters)
            .await
            .map(|adm| (route, adm)),
        Err(e) => Err(e),
    };
    match checks {
        Ok((route, adm)) => Ok((ident, route, adm)),
        Err(e) => Err((Some(ident.account), e)),
    }
}

/// Serve an HTTP proxy client whose first bytes are in `client.buf`.
pub async fn serve(ctx: &Ctx, client: &mut Side) {
    let max_head = ctx.snap.server.max_header_size.0 as usize;
    let idle = ctx.snap.server.idle_timeout.0;
    let mut origin: Option<forward::Origin> = None;
    let mut first = true;
    // Each access line covers the bytes since the previous one, so they add up to the
    // connection's total.
    let (mut up0, mut down0) = (0, 0);
    loop {
        let deadline = if first {
            ctx.handshake_deadline
        } else {
            Instant::now() + idle
        };
        if !first && ctx.w.drain.is_fired() {
            return;
        }
        // Between requests, a drain or the bound account running out ends the wait.
        let cut = client.meter.cut();
        let mut stops: Vec<&Latch> = Vec::with_capacity(2);
        if !first {
            stops.push(&ctx.w.drain);
            stops.extend(cut.as_deref());
        }
        let started = Instant::now();
        if !first {
            (up0, down0) = (client.meter.up(), client.meter.down());
        }
        let (req, head_len) =
            match read_head(client, max_head, deadline, &stops, codec::parse_request).await {
                Ok(v) => v,
                Err(HeadStop::Gone) => return,
                Err(HeadStop::Bad(e)) => {
                    let _ = client.send(&e.http_response(false)).await;
                    log(
                        ctx,
                        client,
                        None,
                        None,
                        None,
                        started,
                        (up0, down0),
                        Err(&e),
                    );
                    return;
                }
            };
        first = false;
        client.consume(head_len);
        let target_s = HostPort(req.target.host_port());
        let (ident, route, admission) = match Box::pin(admit(ctx, &req)).await {
            Ok(i) => i,
            Err((account, e)) => {
                let keep = req.keep_alive && req.body == Framing::None && e.http_keeps_connection();
                let _ = client.send(&e.http_response(keep)).await;
                log(
                    ctx,
                    client,
                    account.as_deref(),
                    Some(&target_s),
                    None,
                    started,
                    (up0, down0),
                    Err(&e),
                );
                if keep {
                    continue;
                }
                return;
            }
        };
        let account = Some(ident.account.as_str());
        // Traffic from here on is this account's; its slot is held for this request (or
        // for the tunnel's life).
        client.meter.bind(admission.charge);
        let _slot = admission.slot;
        match &req.target {
            Target::Tunnel { host, port } => {
                let target = TargetAddr::from_host(host, *port);
                let mut out = match Box::pin(exit::dial(&ctx.w, &ctx.snap, &route, &target)).await {
                    Ok(o) => o,
                    Err(e) => {
                        let keep = req.keep_alive && e.http_keeps_connection();
                        let _ = client.send(&e.http_response(keep)).await;
                        log(
                            ctx,
                            client,
                            account,
                            Some(&target_s),
                            None,
                            started,
                            (up0, down0),
                            Err(&e),
                        );
                        if keep {
                            continue;
                        }
                        return;
                    }
                };
                if client
                    .send(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await
                    .is_err()
                    || client.send(&out.early).await.is_err()
                {
                    return;
                }
                // Bytes after the CONNECT head go first; the head buffer is freed before the
                // relay (an idle tunnel holds no buffer).
                let early = std::mem::take(&mut client.buf);
                if !early.is_empty()
                    && futures_lite::AsyncWriteExt::write_all(&mut out.stream, &early)
                        .await
                        .is_err()
                {
                    return;
                }
                drop(early);
                let end = relay(
                    &ctx.w,
                    &mut client.stream,
                    &mut out.stream,
                    &client.meter,
                    idle,
                )
                .await;
                tracing::debug!(?end, target = %target_s, "http tunnel ended");
                log(
                    ctx,
                    client,
                    account,
                    Some(&target_s),
                    Some(out.exit),
                    started,
                    (up0, down0),
                    Ok(200),
                );
                return;
            }
            Target::Forward { .. } => {
                let res = Box::pin(forward::exchange(ctx, client, &mut origin, &req, &route)).await;
                let (code, keep, exit) = match &res {
                    Ok(done) => (Ok(done.code), done.client_keep_alive, Some(done.exit)),
                    Err(forward::Failed {
                        error,
                        exit,
                        replied,
                    }) => {
                        let keep = !replied
                            && req.keep_alive
                            && req.body == Framing::None
                            && error.http_keeps_connection();
                        if !replied {
                            let _ = client.send(&error.http_response(keep)).await;
                        }
                        (Err(error), keep, *exit)
                    }
                };
                log(
                    ctx,
                    client,
                    account,
                    Some(&target_s),
                    exit,
                    started,
                    (up0, down0),
                    code,
                );
                if !keep {
                    return;
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn log(
    ctx: &Ctx,
    client: &Side,
    account: Option<&str>,
    target: Option<&dyn std::fmt::Display>,
    exit: Option<usize>,
    started: Instant,
    (up0, down0): (u64, u64),
    outcome: Result<u16, &ProxyError>,
) {
    ctx.log_access(Access {
        proto: "http",
        account,
        target,
        exit,
        up: client.meter.up() - up0,
        down: client.meter.down() - down0,
        started,
        outcome,
    });
}

/// A request's target for the access line, formatted only when the line is written.
struct HostPort<'a>((&'a str, u16));

impl std::fmt::Display for HostPort<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            (h, p) if h.contains(':') => write!(f, "[{h}]:{p}"),
            (h, p) => write!(f, "{h}:{p}"),
        }
    }
}
