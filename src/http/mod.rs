//! HTTP proxy: `CONNECT` tunnels and absolute-form forwarding of `http://` requests with
//! client keep-alive and origin connection reuse.

pub mod codec;
mod forward;

use crate::auth::{self, Identity};
use crate::conn::{Ctx, Exchange};
use crate::error::ProxyError;
use crate::exit::{self, TargetAddr};
use crate::plan::ledger::ThreadSlot;
use crate::proxy::{self, Frontend, Shown, Tunnel};
use crate::route::Route;
use crate::side::{Bounds, ReadStop, Side};
use crate::util::Latch;
use codec::{Framing, Request, Target};
use std::cell::Cell;
use std::time::Instant;

/// How to answer a refused request: whether its connection may stay open, whether it was a
/// HEAD (its answer then has no body), and whether the client already has an answer's head
/// (then nothing more can be said).
#[derive(Clone, Copy)]
struct Keep {
    open: bool,
    head: bool,
    replied: bool,
}

impl Keep {
    const CLOSE: Keep = Keep {
        open: false,
        head: false,
        replied: false,
    };

    fn when(open: bool, head: bool) -> Keep {
        Keep {
            open,
            head,
            replied: false,
        }
    }
}

impl Frontend for Keep {
    fn refusal(&self, e: &ProxyError, request_id: &str) -> (Vec<u8>, bool) {
        if self.replied {
            return (Vec::new(), false);
        }
        let open = self.open && e.http_keeps_connection();
        let date = crate::util::wall_now()
            .to_zoned(jiff::tz::TimeZone::UTC)
            .strftime("%a, %d %b %Y %H:%M:%S GMT")
            .to_string();
        let support = Some((request_id, date.as_str()));
        (e.http_response_with_id(open, self.head, support), open)
    }
}

/// Serve an HTTP proxy client whose first bytes are in `client.buf`.
pub async fn serve(ctx: &Ctx, client: &mut Side) {
    let mut origin: Option<forward::Origin> = None;
    // Until a request has been admitted, the whole connection lives under the handshake
    // deadline from accept, however many 407s it collects.
    let mut admitted_once = false;
    let proto = if ctx.tls { "https" } else { "http" };
    for n in 0u64.. {
        if n > 0 && ctx.core().drain.is_fired() {
            return;
        }
        // Each access line covers the bytes since the previous one, so they add up to the
        // connection's total.
        let ex = match n {
            0 => Exchange::first(proto),
            _ => Exchange::next(proto, client),
        };
        let deadline = match admitted_once {
            true => Instant::now() + ctx.config().server.idle_timeout.0,
            false => ctx.handshake_deadline,
        };
        let req = match next_request(ctx, client, n > 0, deadline).await {
            Ok(req) => req,
            Err(None) => return,
            Err(Some(e)) => {
                proxy::fail(ctx, client, ex, &Keep::CLOSE, &e).await;
                return;
            }
        };
        let (next, admitted) = Box::pin(one(ctx, client, ex, &req, &mut origin)).await;
        admitted_once |= admitted;
        match next {
            Next::Keep => {}
            Next::Close => return,
            Next::Tunnel(t) => {
                // A CONNECT ends the HTTP exchange: the request, its identity and an idle
                // origin connection are gone before the relay.
                drop(req);
                drop(origin);
                proxy::run_tunnel(ctx, client, t).await;
                return;
            }
        }
        // The next request may be another account's: its bytes wait for its admission.
        client.meter.park();
    }
}

/// Read and parse the next request head (off `client.buf` once parsed). Between requests
/// (`between`), a drain or the bound account running out ends the wait. `Err(None)`: the
/// client left, went quiet or ran out; `Err(Some(e))`: answer `e` and close.
async fn next_request(
    ctx: &Ctx,
    client: &mut Side,
    between: bool,
    deadline: Instant,
) -> Result<Request, Option<ProxyError>> {
    let cut = client.meter.cut();
    let mut stops: Vec<&Latch> = Vec::with_capacity(2);
    if between {
        stops.push(&ctx.core().drain);
        stops.extend(cut.as_deref());
    }
    let bounds = Bounds {
        max: ctx.config().server.max_header_size.0 as usize,
        deadline,
        stops: &stops,
        cap: None,
    };
    match client.read_until(&bounds, codec::parse_request).await {
        Ok((req, head_len)) => {
            client.consume(head_len);
            Ok(req)
        }
        Err(ReadStop::Gone | ReadStop::Quota) => Err(None),
        Err(ReadStop::Bad(e)) => Err(Some(e)),
    }
}

/// Who the request is from: its Basic credentials, or an allow-listed client address.
async fn identify(ctx: &Ctx, req: &Request) -> Result<Identity, ProxyError> {
    match &req.credentials {
        Some((user, pass)) => auth::login(&ctx.gate(), user, pass).await,
        None => auth::by_address(ctx.config(), &ctx.world.accounts, ctx.network, ctx.peer)
            .unwrap_or(Err(ProxyError::AuthFailed("no Proxy-Authorization"))),
    }
}

/// What follows a request on its connection.
enum Next {
    /// The next request.
    Keep,
    Close,
    /// A dialled CONNECT: its relay.
    Tunnel(Box<Tunnel>),
}

impl Next {
    fn keep(keep: bool) -> Next {
        if keep {
            Next::Keep
        } else {
            Next::Close
        }
    }
}

/// One request: who it is from, its admission, then its tunnel or its forwarded exchange.
/// Returns what follows on the connection, and whether the request was admitted.
async fn one(
    ctx: &Ctx,
    client: &mut Side,
    ex: Exchange<'_>,
    req: &Request,
    origin: &mut Option<forward::Origin>,
) -> (Next, bool) {
    let target = HostPort(req.target.host_port());
    let mut ex: Exchange<'_> = ex;
    ex.target = Some(&target);
    let idle_ok = req.keep_alive && req.body == Framing::None;
    let is_head = req.method.eq_ignore_ascii_case("HEAD");
    let ident = match Box::pin(identify(ctx, req)).await {
        Ok(i) => i,
        Err(e) => {
            let keep = Keep::when(idle_ok, is_head);
            return (
                Next::keep(proxy::fail(ctx, client, ex, &keep, &e).await),
                false,
            );
        }
    };
    ex.account = Some(&ident.account);
    // Traffic from here on is this account's, the head already read included; its slot is
    // held for this request (or for the tunnel's life).
    let (route, slot) = match Box::pin(proxy::admit(ctx, client, &ident)).await {
        Ok(a) => a,
        Err(d) => {
            let keep = Keep::when(idle_ok && d.may_keep, is_head);
            return (
                Next::keep(proxy::fail(ctx, client, ex, &keep, &d.error).await),
                false,
            );
        }
    };
    let next = match &req.target {
        Target::Tunnel { host, port } => {
            let dest = TargetAddr::from_host(host, *port);
            match Box::pin(exit::dial(&ctx.egress(), &route, &dest)).await {
                Ok(out) => {
                    const REPLY: &[u8] = b"HTTP/1.1 200 Connection established\r\n\r\n";
                    let began = ex.began();
                    Next::Tunnel(Tunnel::new(
                        began,
                        Shown::Text(target.to_string()),
                        out,
                        slot,
                        REPLY.into(),
                    ))
                }
                Err(e) => {
                    let keep = Keep::when(req.keep_alive, is_head);
                    Next::keep(proxy::fail(ctx, client, ex, &keep, &e).await)
                }
            }
        }
        Target::Forward { .. } => {
            let keep = Keep::when(idle_ok, is_head);
            Next::keep(forward(ctx, client, ex, req, (&route, slot), origin, keep).await)
        }
    };
    (next, true)
}

/// A forwarded request, relayed; its access line. Returns whether the connection stays open
/// (`keep`: whether it may, should the exchange fail before the client has an answer).
async fn forward(
    ctx: &Ctx,
    client: &mut Side,
    mut ex: Exchange<'_>,
    req: &Request,
    (route, slot): (&Route, ThreadSlot),
    origin: &mut Option<forward::Origin>,
    keep: Keep,
) -> bool {
    let thread = Cell::new(Some(slot));
    let res = Box::pin(forward::exchange(
        ctx,
        client,
        origin,
        req,
        (route, &thread),
    ))
    .await;
    // An answered exchange gave its slot back before the answer's last byte; any other
    // gives it back here, before the access line is written or an error answered.
    drop(thread);
    match res {
        Ok(d) => {
            ex.exit = Some(d.exit);
            ex.source = d.source;
            ex.finish(ctx, client, Ok(d.code), d.end);
            d.client_keep_alive
        }
        // A client that left mid-request: its own outcome (499, as nginx logs it).
        Err(f) if f.end == "client_reset" => {
            ex.exit = f.exit;
            ex.source = f.source;
            ex.finish(ctx, client, Ok(499), f.end);
            false
        }
        Err(f) => {
            ex.exit = f.exit;
            ex.source = f.source;
            let keep = Keep {
                replied: f.replied,
                ..keep
            };
            proxy::fail_as(ctx, client, ex, &keep, &f.error, f.end).await
        }
    }
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
