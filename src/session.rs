//! One client connection, top to bottom: take the snapshot, read the first bytes once,
//! sniff the protocol and hand the connection (and the bytes already read) to its handler.

use crate::config::Snapshot;
use crate::error::ProxyError;
use crate::relay::Meter;
use crate::sniff::{sniff, Protocol};
use crate::util::until;
use crate::worker::Worker;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

/// What a handler knows about the connection it serves.
pub struct Ctx {
    pub w: Rc<Worker>,
    pub snap: Arc<Snapshot>,
    /// Index of the listener (and so of its network) the client came in on.
    pub listener: usize,
    pub network: usize,
    pub peer: Option<SocketAddr>,
    /// Greeting, authentication and request must be complete by then.
    pub handshake_deadline: Instant,
}

/// One end of a proxied exchange: a stream, the bytes read from it but not yet used, and
/// the meter its bytes are counted on.
pub struct Side {
    pub stream: TcpStream,
    pub buf: Vec<u8>,
    pub meter: Meter,
}

/// Why [`Side::send_relayed`] did not deliver everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// The bound account's bandwidth is used up.
    Quota,
    /// The write failed (the peer reset or stopped reading).
    Io,
}

/// Bytes asked of the kernel per head read.
const READ_CHUNK: usize = 8 * 1024;

impl Side {
    pub fn new(stream: TcpStream) -> Side {
        Side {
            stream,
            buf: Vec::new(),
            meter: Meter::default(),
        }
    }

    /// Read up to `max` more bytes into `buf`; `Ok(0)` at end of stream.
    pub async fn fill(&mut self, max: usize) -> std::io::Result<usize> {
        let old = self.buf.len();
        self.buf.resize(old + max.clamp(1, READ_CHUNK), 0);
        let res = self.stream.read(&mut self.buf[old..]).await;
        let n = *res.as_ref().unwrap_or(&0);
        self.buf.truncate(old + n);
        self.meter.add_up(n);
        res
    }

    /// First read of a fresh connection: one direct non-blocking `recv`, which saves the
    /// reactor round trip a new glommio stream's first read costs; falls back to `fill`.
    pub async fn fill_first(&mut self) -> std::io::Result<usize> {
        match self.recv_now() {
            Some(res) => res,
            None => self.fill(READ_CHUNK).await,
        }
    }

    /// A non-blocking `recv`; `None` when nothing has arrived yet.
    fn recv_now(&mut self) -> Option<std::io::Result<usize>> {
        let mut tmp = [0u8; 1024];
        // SAFETY: valid fd, buffer and length.
        let n = unsafe {
            libc::recv(
                self.stream.as_raw_fd(),
                tmp.as_mut_ptr() as *mut libc::c_void,
                tmp.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n >= 0 {
            let n = n as usize;
            self.buf.extend_from_slice(&tmp[..n]);
            self.meter.add_up(n);
            return Some(Ok(n));
        }
        let err = std::io::Error::last_os_error();
        (err.kind() != std::io::ErrorKind::WouldBlock).then_some(Err(err))
    }

    /// Write all of `data`, counted as sent on this side's meter.
    pub async fn send(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(data).await?;
        self.meter.add_down(data.len());
        Ok(())
    }

    /// Write the gateway's own refusal (an error response or reply): the exchange it ends is
    /// not billed, neither the bytes read for it nor the refusal.
    pub async fn send_refusal(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.meter.forgive();
        self.stream.write_all(data).await?;
        self.meter.add_own_down(data.len());
        Ok(())
    }

    /// Write bytes relayed from the other end (not the gateway's own reply) within the
    /// bound plan: the bytes are reserved before they are written, so a plan is never
    /// exceeded. When the plan cannot cover all of `data`, `whole` sends nothing, otherwise
    /// as much as it covers is sent; either way the answer is [`SendError::Quota`].
    pub async fn send_relayed(&mut self, data: &[u8], whole: bool) -> Result<(), SendError> {
        let n = self.meter.reserve(data.len()).await;
        let n = if n < data.len() && whole { 0 } else { n };
        if n > 0 {
            self.stream
                .write_all(&data[..n])
                .await
                .map_err(|_| SendError::Io)?;
            self.meter.add_down(n);
        }
        if n < data.len() {
            Err(SendError::Quota)
        } else {
            Ok(())
        }
    }

    /// Drop the first `n` buffered bytes (they were parsed).
    pub fn consume(&mut self, n: usize) {
        self.buf.drain(..n.min(self.buf.len()));
    }
}

/// Serve one accepted connection until it closes.
pub async fn serve(w: Rc<Worker>, stream: TcpStream, listener: usize) {
    let _live = w.track();
    let snap = w.config.load_full();
    let Some(network) = snap.listeners.get(listener).map(|l| l.network) else {
        return;
    };
    let handshake_deadline = Instant::now() + snap.server.handshake_timeout.0;
    let peer = stream.peer_addr().ok();
    let mut client = Side::new(stream);
    let ctx = Ctx {
        w,
        snap,
        listener,
        network,
        peer,
        handshake_deadline,
    };
    // Boxed: the sniff phase's timer and read state are freed before the connection's long
    // life, which the task allocation lasts for.
    let Some(proto) = Box::pin(sniff_first_bytes(&mut client, handshake_deadline)).await else {
        return;
    };
    let name = match proto {
        Protocol::Socks5 => "socks5",
        Protocol::Http => "http",
        Protocol::Socks4 => "socks4",
        Protocol::Unknown => "unknown",
    };
    *ctx.w
        .metrics
        .accepted
        .lock()
        .entry((listener, name))
        .or_default() += 1;
    // Each handler is boxed at its own size: a task's allocation lasts as long as the
    // connection, so it must not be sized for the largest protocol's state.
    match proto {
        Protocol::Socks5 => Box::pin(crate::socks5::serve(&ctx, &mut client)).await,
        Protocol::Http => Box::pin(crate::http::serve(&ctx, &mut client)).await,
        Protocol::Socks4 => Box::pin(refuse_socks4(&mut client, handshake_deadline)).await,
        Protocol::Unknown => {
            tracing::debug!(peer = ?ctx.peer, first = client.buf.first(), "closed: not SOCKS5 or HTTP");
        }
    }
}

/// SOCKS4 and SOCKS4a are not served: read the request (bounded, within the handshake
/// deadline) and answer "request rejected or failed" (`0x5B`), so that clients report a
/// refusal rather than a dropped connection.
async fn refuse_socks4(client: &mut Side, deadline: Instant) {
    // VN CD DSTPORT(2) DSTIP(4) USERID NUL, and for 4a (DSTIP 0.0.0.x, x ≠ 0) DOMAIN NUL.
    let complete = |b: &[u8]| {
        if b.len() < 9 {
            return false;
        }
        let nuls = b[8..].iter().filter(|&&c| c == 0).count();
        let socks4a = b[4..7] == [0, 0, 0] && b[7] != 0;
        nuls >= if socks4a { 2 } else { 1 }
    };
    while !complete(&client.buf) && client.buf.len() < 1024 {
        match until(deadline, client.fill(1024 - client.buf.len())).await {
            Some(Ok(n)) if n > 0 => {}
            _ => return,
        }
    }
    let _ = client.send_refusal(&[0x00, 0x5B, 0, 0, 0, 0, 0, 0]).await;
    tracing::debug!("refused a SOCKS4 request");
}

/// Read until the first bytes tell the protocol; `None` when the client left or stalled.
async fn sniff_first_bytes(client: &mut Side, deadline: Instant) -> Option<Protocol> {
    let mut first = true;
    loop {
        if let Some(p) = sniff(&client.buf) {
            return Some(p);
        }
        let read = if first {
            first = false;
            until(deadline, client.fill_first()).await
        } else {
            until(deadline, client.fill(READ_CHUNK)).await
        };
        match read {
            Some(Ok(n)) if n > 0 => {}
            _ => return None,
        }
    }
}

/// One access-log line: a proxied connection or forwarded request.
pub struct Access<'a> {
    pub proto: &'static str,
    pub account: Option<&'a str>,
    /// Formatted only when the line is written.
    pub target: Option<&'a dyn std::fmt::Display>,
    pub exit: Option<usize>,
    pub up: u64,
    pub down: u64,
    pub started: Instant,
    pub outcome: Result<u16, &'a ProxyError>,
    /// How it ended: a tunnel's [`crate::relay::RelayEnd::label`], `closed` for a completed
    /// exchange, `refused` for the gateway's own error reply, `client_reset` when the client
    /// left mid-request.
    pub end: &'static str,
}

impl Ctx {
    /// Emit the access line (never a password: accounts and targets only).
    pub fn log_access(&self, a: Access<'_>) {
        let exit = a
            .exit
            .and_then(|i| self.snap.exits.get(i))
            .map(|e| e.name.as_str());
        let network = self
            .snap
            .networks
            .get(self.network)
            .map(|n| n.name.as_str());
        let (code, error) = match a.outcome {
            Ok(code) => (code, None),
            Err(e) => (e.code(), Some(e.to_string())),
        };
        self.w.metrics.finished(
            (code, a.end),
            network,
            a.account,
            (a.up, a.down),
            self.snap.per_account_metrics,
        );
        tracing::info!(
            target: "access",
            proto = a.proto,
            worker = self.w.id,
            peer = ?self.peer,
            listener = self.listener,
            network,
            account = a.account,
            target = a.target.map(|t| tracing::field::display(Escaped(t))),
            exit,
            up = a.up,
            down = a.down,
            ms = a.started.elapsed().as_millis() as u64,
            code,
            end = a.end,
            error,
        );
    }
}

/// A client-supplied log field with control characters escaped (`\n` → `\\n`), so that no
/// client can forge or split a log line.
struct Escaped<'a>(&'a dyn std::fmt::Display);

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = self.0.to_string();
        if !text.chars().any(|c| c.is_control()) {
            return f.write_str(&text);
        }
        for c in text.chars() {
            if c.is_control() {
                write!(f, "{}", c.escape_default())?;
            } else {
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}
