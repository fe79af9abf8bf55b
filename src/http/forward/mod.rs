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

mod answer;
mod attempt;
mod body;

use super::codec::{Framing, Request};
use crate::config::{ExitKind, Source};
use crate::conn::Ctx;
use crate::error::ProxyError;
use crate::exit::{self, TargetAddr};
use crate::plan::ledger::ThreadSlot;
use crate::route::{choose, Route};
use crate::side::Side;
use crate::util::BufPool;
use attempt::attempt;
use std::cell::Cell;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::time::Duration;

/// Most interim (1xx) responses relayed for one request.
pub const MAX_INTERIM: usize = 16;

/// An open origin connection, kept between a client's requests to the same host.
pub struct Origin {
    side: Side,
    host: String,
    port: u16,
    exit: usize,
    /// The address it left from: a request is sent on it only if it would leave from there.
    source: Option<IpAddr>,
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
    pub source: Option<IpAddr>,
    /// `closed`, or how an upgraded connection's tunnel ended.
    pub end: &'static str,
}

/// A failed exchange: what went wrong and whether the client already got a response head
/// (then it cannot get an error response any more).
pub struct Failed {
    pub error: ProxyError,
    pub exit: Option<usize>,
    pub source: Option<IpAddr>,
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

/// What every step of an exchange needs: limits, the core's buffers, and the request's
/// thread slot.
struct Limits<'a> {
    max_head: usize,
    idle: Duration,
    pool: &'a BufPool,
    slot: &'a Cell<Option<ThreadSlot>>,
}

impl Limits<'_> {
    /// The client's answer is written but for its last byte: its thread slot goes back
    /// before that byte, so a client that sends its next request (on any connection, to
    /// any core) the moment it has this answer finds the slot free. That byte is the
    /// exchange's last write.
    fn answer_ends(&self) {
        drop(self.slot.take());
    }
}

/// Forward `req` (head already parsed off `client.buf`) and relay the response. The
/// request's `thread` slot goes back just before the answer's last byte (a failed
/// exchange leaves it to the caller).
pub async fn exchange(
    ctx: &Ctx,
    client: &mut Side,
    slot: &mut Option<Origin>,
    req: &Request,
    (route, thread): (&Route, &Cell<Option<ThreadSlot>>),
) -> Result<Done, Failed> {
    let (host, port) = req.target.host_port();
    // Reuse only a clean connection to the same origin that this request would have
    // left through anyway (exit and address).
    if let Some(o) = slot.as_mut().filter(|o| {
        o.host == host && o.port == port && would_leave_by(ctx, route, o) && o.is_clean()
    }) {
        let via = (o.exit, o.source);
        let retryable = req.body == Framing::None && req.upgrade.is_none();
        match attempt(ctx, client, o, req, (retryable, thread)).await {
            Attempt::Stale => {}
            other => return settle(other, slot, None, via),
        }
    }
    *slot = None;
    let target = TargetAddr::from_host(host, port);
    let out = exit::dial(&ctx.egress(), route, &target)
        .await
        .map_err(|error| Failed {
            error,
            exit: None,
            source: None,
            replied: false,
            end: "refused",
        })?;
    let mut side = Side::new(out.stream);
    side.buf = out.early;
    let via = (out.exit, out.source);
    let mut o = Origin {
        side,
        host: host.to_owned(),
        port,
        exit: out.exit,
        source: out.source,
    };
    let res = attempt(ctx, client, &mut o, req, (false, thread)).await;
    settle(res, slot, Some(o), via)
}

/// Would this request leave through `o`'s exit and address? A sticky session: only from
/// its exit and, on a prefix exit, its own address. A rotating username on a network that
/// rotates per request (`rotate = "request"`): only when rotation could pick nothing else
/// (one candidate exit with one address); per connection: any exit it may use.
fn would_leave_by(ctx: &Ctx, route: &Route, o: &Origin) -> bool {
    let snap = ctx.config();
    let per_request = route.sticky.is_none()
        && snap
            .networks
            .get(ctx.network)
            .is_some_and(|n| n.rotate_per_request);
    if !choose::may_reuse(ctx.chooser(), route, o.exit, per_request) {
        return false;
    }
    let Some(e) = snap.exits.get(o.exit) else {
        return false;
    };
    match (&e.kind, &route.sticky) {
        (
            ExitKind::Direct {
                source: s @ Source::Prefix(_),
            },
            Some(st),
        ) => {
            let secret = snap.routing.session_secret.as_ref();
            o.source == exit::source::pick(s, &e.name, Some(&st.key), secret)
        }
        (
            ExitKind::Direct {
                source: Source::Prefix(_),
            },
            None,
        ) => !per_request,
        _ => true,
    }
}

fn settle(
    res: Attempt,
    slot: &mut Option<Origin>,
    fresh: Option<Origin>,
    (exit, source): (usize, Option<IpAddr>),
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
                source,
                end,
            })
        }
        Attempt::Stale => {
            *slot = None;
            Err(Failed {
                error: ProxyError::Upstream("origin closed the connection".into()),
                exit: Some(exit),
                source,
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
                source,
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
