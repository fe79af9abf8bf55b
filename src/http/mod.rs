//! HTTP proxy: `CONNECT` tunnels and absolute-form forwarding of `http://` requests with
//! client keep-alive and origin connection reuse.

pub mod codec;
mod forward;

use crate::auth::{self, Identity};
use crate::conn::{Access, Ctx, SendError, Side};
use crate::error::ProxyError;
use crate::exit::{self, TargetAddr};
use crate::plan::{self, Admission};
use crate::relay::{relay, Meter, RelayEnd};
use crate::route::{self, Route};
use crate::util::{any_fired, until, Latch};
use codec::{Framing, Parsed, Request, Target};
use std::time::Instant;

/// Why reading a head stopped without a head.
pub(crate) enum HeadStop {
    /// Clean end: EOF between messages, timeout, or drain.
    Gone,
    /// The bytes are not a valid head (or too large): answer this.
    Bad(ProxyError),
    /// The client's plan has no bandwidth left for the bytes of the head.
    Quota,
}

/// Read until `parse` finds a complete head in `side.buf`, bounded by `max` bytes and
/// `deadline`; any of `stops` firing ends a wait that has no byte of the head yet. With
/// `cap`, reads are capped at that client's plan (a head read on its behalf).
pub(crate) async fn read_head<T>(
    side: &mut Side,
    max: usize,
    deadline: Instant,
    stops: &[&Latch],
    cap: Option<&Meter>,
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
            let room = match cap {
                Some(m) => m.allow(room).await,
                None => room,
            };
            if room == 0 {
                return None;
            }
            Some(if side.buf.is_empty() && !stops.is_empty() {
                futures_lite::future::or(side.fill(room), async {
                    any_fired(stops).await;
                    Ok(0)
                })
                .await
            } else {
                side.fill(room).await
            })
        })
        .await;
        match read {
            Some(Some(Ok(n))) if n > 0 => {}
            Some(None) => return Err(HeadStop::Quota),
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
        Ok(route) => plan::admit(&ctx.w.quota, &ident.counters)
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
    // Until a request has been admitted, the whole connection lives under the handshake
    // deadline from accept, however many 407s it collects.
    let mut admitted_once = false;
    // Each access line covers the bytes since the previous one, so they add up to the
    // connection's total.
    let mut mark = Mark {
        started: Instant::now(),
        up0: 0,
        down0: 0,
    };
    for n in 0u64.. {
        let first = n == 0;
        let deadline = if admitted_once {
            Instant::now() + idle
        } else {
            ctx.handshake_deadline
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
            mark = Mark::now(client);
        }
        let read = read_head(
            client,
            max_head,
            deadline,
            &stops,
            None,
            codec::parse_request,
        )
        .await;
        let (req, head_len) = match read {
            Ok(v) => v,
            Err(HeadStop::Gone | HeadStop::Quota) => return,
            Err(HeadStop::Bad(e)) => {
                refuse(ctx, client, mark, None, None, e, Keep::CLOSE).await;
                return;
            }
        };
        client.consume(head_len);
        let target_s = HostPort(req.target.host_port());
        let target = Some(&target_s as &dyn std::fmt::Display);
        let idle_ok = req.keep_alive && req.body == Framing::None;
        let is_head = req.method.eq_ignore_ascii_case("HEAD");
        let (ident, route, admission) = match Box::pin(admit(ctx, &req)).await {
            Ok(i) => i,
            Err((account, e)) => {
                let keep = Keep::when(idle_ok, is_head);
                if refuse(ctx, client, mark, account.as_deref(), target, e, keep).await {
                    continue;
                }
                return;
            }
        };
        let account = Some(ident.account.as_str());
        // Traffic from here on is this account's, the head already read included; its
        // slot is held for this request (or for the tunnel's life).
        let _slot = admission.slot;
        if !client.meter.bind(admission.charge).await {
            let e = ProxyError::BandwidthExceeded;
            refuse(
                ctx,
                client,
                mark,
                account,
                target,
                e,
                Keep::when(false, is_head),
            )
            .await;
            return;
        }
        admitted_once = true;
        let keep = match &req.target {
            Target::Tunnel { host, port } => {
                let dest = TargetAddr::from_host(host, *port);
                match Box::pin(exit::dial(&ctx.w, &ctx.snap, &route, &dest)).await {
                    Ok(out) => {
                        let exit = Some(out.exit);
                        let end = tunnel(ctx, client, out, &target_s).await.label();
                        let rec = Record {
                            account,
                            target,
                            exit,
                            end,
                        };
                        log(ctx, client, mark, rec, Ok(200));
                        false
                    }
                    Err(e) => {
                        let keep = Keep::when(req.keep_alive, is_head);
                        refuse(ctx, client, mark, account, target, e, keep).await
                    }
                }
            }
            Target::Forward { .. } => {
                let res = Box::pin(forward::exchange(ctx, client, &mut origin, &req, &route)).await;
                let (code, keep, exit, end) = match &res {
                    Ok(d) => (Ok(d.code), d.client_keep_alive, Some(d.exit), d.end),
                    // A client that left mid-request: its own outcome (499, as nginx logs it).
                    Err(f) if f.end == "client_reset" => (Ok(499), false, f.exit, f.end),
                    Err(f) => {
                        let keep = !f.replied && idle_ok && f.error.http_keeps_connection();
                        if !f.replied {
                            let reply = f.error.http_response_to(keep, is_head);
                            let _ = client.send_refusal(&reply).await;
                        }
                        (Err(&f.error), keep, f.exit, f.end)
                    }
                };
                let rec = Record {
                    account,
                    target,
                    exit,
                    end,
                };
                log(ctx, client, mark, rec, code);
                keep
            }
        };
        if !keep {
            return;
        }
        // The next request may be another account's: its bytes wait for its admission.
        client.meter.park();
    }
}

/// A CONNECT tunnel, once dialled: the 200, the exit's early bytes (relayed, so within the
/// plan), the client's early bytes, then the relay.
async fn tunnel(
    ctx: &Ctx,
    client: &mut Side,
    mut out: exit::Outbound,
    target: &HostPort<'_>,
) -> RelayEnd {
    // The tunnel is served: its request head is billed, and its 200 is part of it.
    client.meter.commit();
    for data in [
        &b"HTTP/1.1 200 Connection established\r\n\r\n"[..],
        &out.early,
    ] {
        match client.send_relayed(data, true).await {
            Ok(()) => {}
            Err(SendError::Quota) => return RelayEnd::Quota,
            Err(SendError::Io) => {
                return RelayEnd::ClientReset(std::io::ErrorKind::BrokenPipe.into())
            }
        }
    }
    // Bytes after the CONNECT head go first; the head buffer is freed before the relay (an
    // idle tunnel holds no buffer).
    let early = std::mem::take(&mut client.buf);
    if !early.is_empty() {
        if let Err(e) = futures_lite::AsyncWriteExt::write_all(&mut out.stream, &early).await {
            return RelayEnd::UpstreamReset(e);
        }
    }
    drop(early);
    let idle = ctx.snap.server.idle_timeout.0;
    let end = relay(
        &ctx.w.buffers,
        &ctx.w.stop,
        &mut client.stream,
        &mut out.stream,
        &client.meter,
        idle,
    )
    .await;
    tracing::debug!(?end, target = %target, "http tunnel ended");
    end
}

/// Where one exchange's access line starts: its clock and the connection's byte counts.
#[derive(Clone, Copy)]
struct Mark {
    started: Instant,
    up0: u64,
    down0: u64,
}

impl Mark {
    fn now(client: &Side) -> Mark {
        Mark {
            started: Instant::now(),
            up0: client.meter.up(),
            down0: client.meter.down(),
        }
    }
}

/// One exchange's record: who, where, through which exit, and how it ended.
struct Record<'a> {
    account: Option<&'a str>,
    target: Option<&'a dyn std::fmt::Display>,
    exit: Option<usize>,
    end: &'static str,
}

fn log(ctx: &Ctx, client: &Side, mark: Mark, rec: Record<'_>, outcome: Result<u16, &ProxyError>) {
    let Record {
        account,
        target,
        exit,
        end,
    } = rec;
    ctx.log_access(Access {
        end,
        proto: "http",
        account,
        target,
        exit,
        up: client.meter.up() - mark.up0,
        down: client.meter.down() - mark.down0,
        started: mark.started,
        outcome,
    });
}

/// How to answer a refused request: whether its connection may stay open, and whether it
/// was a HEAD (its answer then has no body).
#[derive(Clone, Copy)]
struct Keep {
    open: bool,
    head: bool,
}

impl Keep {
    const CLOSE: Keep = Keep {
        open: false,
        head: false,
    };

    fn when(open: bool, head: bool) -> Keep {
        Keep { open, head }
    }
}

/// Answer a request with the gateway's own error response and log it; `true` when the
/// connection stays open for the next request (`keep` and the error allow it).
async fn refuse(
    ctx: &Ctx,
    client: &mut Side,
    mark: Mark,
    account: Option<&str>,
    target: Option<&dyn std::fmt::Display>,
    e: ProxyError,
    keep: Keep,
) -> bool {
    let open = keep.open && e.http_keeps_connection();
    let _ = client
        .send_refusal(&e.http_response_to(open, keep.head))
        .await;
    let rec = Record {
        account,
        target,
        exit: None,
        end: "refused",
    };
    log(ctx, client, mark, rec, Err(&e));
    open
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
