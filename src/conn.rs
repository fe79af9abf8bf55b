//! One client connection as every stage sees it: its context ([`Ctx`]), its two ends
//! ([`Side`]: stream, buffered bytes, meter), and its access line ([`Access`]). Below the
//! protocol handlers, which share it; above the relay and the plan.

use crate::config::Snapshot;
use crate::error::ProxyError;
use crate::relay::Meter;
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
pub const READ_CHUNK: usize = 8 * 1024;

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
