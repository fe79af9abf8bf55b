//! One client connection as every stage sees it: its context ([`Ctx`]: the world it
//! loaded, where it came from, and narrow views of its core for each stage) and the record
//! of each exchange on it ([`Exchange`]), written once as its access line. Below the
//! pipeline and the protocol handlers, which share it.

use crate::auth::Gate;
use crate::config::Snapshot;
use crate::error::ProxyError;
use crate::exit::Egress;
use crate::route::choose::Chooser;
use crate::side::Side;
use crate::worker::{Core, Worker};
use crate::world::World;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

/// What a handler knows about the connection it serves.
pub struct Ctx {
    w: Rc<Worker>,
    /// The world loaded at accept: every index the connection uses comes from it.
    pub world: Arc<World>,
    /// Index of the listener (and so of its network) the client came in on.
    pub listener: usize,
    pub network: usize,
    pub peer: Option<SocketAddr>,
    /// Greeting, authentication and request must be complete by then.
    pub handshake_deadline: Instant,
    /// The client speaks inside a TLS session (an HTTPS proxy client).
    pub tls: bool,
}

impl Ctx {
    /// The context of a connection accepted on `listener`, on `w`'s core; `None` when the
    /// current world has no such listener.
    pub fn new(w: Rc<Worker>, listener: usize, peer: Option<SocketAddr>) -> Option<Ctx> {
        let world = w.services.world.load_full();
        let network = world.config.listeners.get(listener)?.network;
        let handshake_deadline = Instant::now() + world.config.server.handshake_timeout.0;
        Some(Ctx {
            w,
            world,
            listener,
            network,
            peer,
            handshake_deadline,
            tls: false,
        })
    }

    pub fn config(&self) -> &Snapshot {
        &self.world.config
    }

    /// This core: buffers, quota shard, counters, drain and stop latches.
    pub fn core(&self) -> &Core {
        &self.w.core
    }

    /// What a login reads.
    pub fn gate(&self) -> Gate<'_> {
        Gate {
            accounts: &self.world.accounts,
            snap: &self.world.config,
            cache: &self.w.core.creds,
            guard: &self.w.services.guard,
            network: self.network,
            peer: self.peer,
        }
    }

    /// What choosing an exit reads.
    pub fn chooser(&self) -> Chooser<'_> {
        Chooser {
            snap: &self.world.config,
            exits: &self.world.exits,
            rotation: &self.w.core.rotation,
            sessions: &self.w.services.sessions,
        }
    }

    /// Where this connection's refusals are recorded for support.
    pub fn trail(&self) -> &crate::support::Trail {
        &self.w.services.trail
    }

    /// What dialing an exit uses.
    pub fn egress(&self) -> Egress<'_> {
        Egress {
            choose: self.chooser(),
            dns: &self.w.core.dns,
            metrics: &self.w.core.metrics,
        }
    }
}

/// When an exchange began (its protocol, start time and the connection's byte counts then),
/// carried without borrowing across a handler's phases: [`Exchange::resume`] continues it.
#[derive(Clone, Copy)]
pub struct Began {
    proto: &'static str,
    started: Instant,
    base: (u64, u64),
}

impl Began {
    pub fn proto(&self) -> &'static str {
        self.proto
    }
}

/// One exchange (a proxied connection, or one forwarded request) as it progresses: who,
/// where, through which exit, and the connection's byte counts when it began. Written once,
/// from [`Exchange::finish`], as the access line.
pub struct Exchange<'a> {
    pub proto: &'static str,
    pub account: Option<&'a str>,
    /// Formatted only when the line is written.
    pub target: Option<&'a dyn std::fmt::Display>,
    pub exit: Option<usize>,
    /// The address a direct exit's connection left from.
    pub source: Option<std::net::IpAddr>,
    /// Set for a refusal the gateway answers itself: shown to the client, on the access
    /// line, and the key of the error record.
    pub request_id: Option<String>,
    started: Instant,
    base: (u64, u64),
}

impl<'a> Exchange<'a> {
    /// The connection's first exchange: its bytes since accept are this exchange's (the
    /// sniffed first bytes included).
    pub fn first(proto: &'static str) -> Exchange<'a> {
        Exchange {
            proto,
            account: None,
            target: None,
            exit: None,
            source: None,
            request_id: None,
            started: Instant::now(),
            base: (0, 0),
        }
    }

    /// A later exchange on `client` (a keep-alive client's next request): its bytes from
    /// here on are this exchange's, so the lines add up to the connection's total.
    pub fn next(proto: &'static str, client: &Side) -> Exchange<'a> {
        Exchange {
            base: (client.meter.up(), client.meter.down()),
            ..Exchange::first(proto)
        }
    }

    /// Its start, to be continued by [`Exchange::resume`] once the borrowed fields are gone.
    pub fn began(&self) -> Began {
        Began {
            proto: self.proto,
            started: self.started,
            base: self.base,
        }
    }

    /// The exchange that [`Exchange::began`] was taken from; account, target and exit are
    /// set again by the caller.
    pub fn resume(b: Began) -> Exchange<'a> {
        Exchange {
            proto: b.proto,
            started: b.started,
            base: b.base,
            ..Exchange::first(b.proto)
        }
    }

    /// Emit the access line and count the outcome (never a password: accounts and targets
    /// only). `end` says how it ended: a tunnel's [`crate::relay::RelayEnd::label`],
    /// `closed` for a completed exchange, `refused` for the gateway's own error reply,
    /// `client_reset` when the client left mid-request.
    pub fn finish(
        self,
        ctx: &Ctx,
        client: &Side,
        outcome: Result<u16, &ProxyError>,
        end: &'static str,
    ) {
        let snap = ctx.config();
        let exit = self
            .exit
            .and_then(|i| snap.exits.get(i))
            .map(|e| e.name.as_str());
        let network = snap.networks.get(ctx.network).map(|n| n.name.as_str());
        let (code, error) = match outcome {
            Ok(code) => (code, None),
            Err(e) => (e.code(), Some(e.to_string())),
        };
        let (up, down) = (
            client.meter.up() - self.base.0,
            client.meter.down() - self.base.1,
        );
        let core = ctx.core();
        core.metrics.finished(
            (code, end),
            network,
            self.account,
            (up, down),
            snap.per_account_metrics,
        );
        tracing::info!(
            target: "access",
            proto = self.proto,
            worker = core.id,
            peer = ?ctx.peer,
            listener = ctx.listener,
            network,
            account = self.account,
            target = self.target.map(|t| tracing::field::display(Escaped(t))),
            exit,
            source = self.source.map(tracing::field::display),
            up,
            down,
            ms = self.started.elapsed().as_millis() as u64,
            code,
            end,
            error = error.as_deref(),
            request_id = self.request_id.as_deref(),
        );
        if let (Some(id), Err(e)) = (self.request_id, outcome) {
            ctx.trail().record(crate::support::ErrorRecord {
                id,
                at_ms: crate::util::wall_now().as_millisecond(),
                account: self.account.map(str::to_owned),
                proto: self.proto.to_owned(),
                code,
                error: e.to_string(),
                body: if matches!(self.proto, "http" | "https") {
                    e.http_status().body.to_owned()
                } else {
                    String::new()
                },
                target: self.target.map(|t| Escaped(t).to_string()),
                peer: ctx.peer.map(|p| p.to_string()),
                exit: exit.map(str::to_owned),
                network: network.map(str::to_owned),
            });
        }
    }
}

/// A client-supplied log field with control characters escaped (`\n` → `\\n`), so that no
/// client can forge or split a log line.
struct Escaped<'a>(&'a dyn std::fmt::Display);

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Escapes as it writes: no string is built for the common, clean case.
        struct Escaping<'a, 'b>(&'a mut std::fmt::Formatter<'b>);
        impl std::fmt::Write for Escaping<'_, '_> {
            fn write_str(&mut self, s: &str) -> std::fmt::Result {
                for part in s.split_inclusive(char::is_control) {
                    match part.char_indices().last() {
                        Some((i, c)) if c.is_control() => {
                            self.0.write_str(&part[..i])?;
                            write!(self.0, "{}", c.escape_default())?;
                        }
                        _ => self.0.write_str(part)?,
                    }
                }
                Ok(())
            }
        }
        std::fmt::write(&mut Escaping(f), format_args!("{}", self.0))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn client_fields_are_escaped_in_log_lines() {
        let shown = |s: &str| super::Escaped(&s).to_string();
        assert_eq!(shown("example.com:80"), "example.com:80");
        assert_eq!(shown("a\nforged line"), "a\\nforged line");
        assert_eq!(shown("a\r\n\0b"), "a\\r\\n\\u{0}b");
    }
}
