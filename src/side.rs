//! One end of a proxied exchange ([`Side`]): a stream, the bytes read from it but not yet
//! used, and the meter its bytes count on; with the one "read until the parser is done"
//! loop every codec uses ([`Side::read_until`]). Below the exit and the handlers, which
//! both read through it.

use crate::error::ProxyError;
use crate::relay::Meter;
use crate::stream::Stream;
use crate::util::{any_fired, until, Latch, Parsed};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use std::os::fd::AsRawFd;
use std::time::Instant;

/// One end of a proxied exchange: a stream, the bytes read from it but not yet used, and
/// the meter its bytes are counted on.
pub struct Side {
    pub stream: Stream,
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
    pub fn new(stream: impl Into<Stream>) -> Side {
        Side {
            stream: stream.into(),
            buf: Vec::new(),
            meter: Meter::default(),
        }
    }

    /// Read up to `max` more bytes into `buf`; `Ok(0)` at end of stream.
    ///
    /// Cancel-safe: a read dropped while it waits (a race lost, a deadline) leaves `buf` as
    /// it was, so a later read continues exactly where the stream is.
    pub async fn fill(&mut self, max: usize) -> std::io::Result<usize> {
        /// Cuts `buf` back to `keep` bytes when dropped: the room a waiting read was given
        /// is never left behind as bytes that did not come.
        struct Room<'a> {
            buf: &'a mut Vec<u8>,
            keep: usize,
        }
        impl Drop for Room<'_> {
            fn drop(&mut self) {
                self.buf.truncate(self.keep);
            }
        }
        let old = self.buf.len();
        let mut room = Room {
            buf: &mut self.buf,
            keep: old,
        };
        room.buf.resize(old + max.clamp(1, READ_CHUNK), 0);
        let res = self.stream.read(&mut room.buf[old..]).await;
        let n = *res.as_ref().unwrap_or(&0);
        room.keep = old + n;
        drop(room);
        self.meter.add_up(n);
        res
    }

    /// First read of a fresh connection: one direct non-blocking `recv` (its first bytes
    /// are usually there by now; no readiness poll is armed at accept); when nothing has
    /// arrived, a wait for readability and then `fill`.
    pub async fn fill_first(&mut self) -> std::io::Result<usize> {
        match self.recv_now() {
            Some(res) => res,
            None => {
                if let Stream::Plain(tcp) = &mut self.stream {
                    tcp.clear_readable();
                    std::future::poll_fn(|cx| tcp.poll_readable(cx)).await?;
                }
                self.fill(READ_CHUNK).await
            }
        }
    }

    /// A non-blocking `recv`; `None` when nothing has arrived yet (or the stream is a TLS
    /// session, whose bytes only its reads can decrypt).
    fn recv_now(&mut self) -> Option<std::io::Result<usize>> {
        if self.stream.is_tls() {
            return None;
        }
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
        self.send_relayed_past(data, if whole { data.len() } else { 0 })
            .await
    }

    /// [`Side::send_relayed`] with its first `head` bytes sent all or not at all and the
    /// rest as far as the plan covers: a response head and the body bytes that came with
    /// it, in one write.
    pub async fn send_relayed_past(&mut self, data: &[u8], head: usize) -> Result<(), SendError> {
        let n = self.meter.reserve(data.len()).await;
        self.send_covered(data, head, n).await
    }

    /// Write what `n` reserved bytes of the plan cover of `data` (nothing unless they cover
    /// its first `head` bytes); [`SendError::Quota`] when that is not all of it.
    async fn send_covered(&mut self, data: &[u8], head: usize, n: usize) -> Result<(), SendError> {
        let n = if n < head.min(data.len()) { 0 } else { n };
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

    /// [`Side::send_relayed_past`] for the last write of an answer, but its last byte:
    /// the client cannot have the whole answer yet. Returns that byte (reserved, not
    /// written; none for empty `data`) for [`Side::send_last`]. In between, the caller
    /// gives the request's slot back and frees its buffers: the next request the client
    /// sends the moment it has the answer finds the slot free, and a client that stops
    /// reading before the last byte keeps the slot, or once past it holds no more than an
    /// idle connection.
    pub async fn send_relayed_but_last(
        &mut self,
        data: &[u8],
        head: usize,
    ) -> Result<Option<u8>, SendError> {
        let Some((&last, most)) = data.split_last() else {
            return Ok(None);
        };
        let n = self.meter.reserve(data.len()).await;
        if n < data.len() {
            // The plan does not cover it: as much as it covers, as any relayed write.
            return Err(match self.send_covered(data, head, n).await {
                Err(e) => e,
                Ok(()) => SendError::Quota,
            });
        }
        self.stream
            .write_more(most)
            .await
            .map_err(|_| SendError::Io)?;
        self.meter.add_down(most.len());
        Ok(Some(last))
    }

    /// The answer's last byte, reserved by [`Side::send_relayed_but_last`].
    pub async fn send_last(&mut self, last: u8) -> Result<(), SendError> {
        self.stream
            .write_all(&[last])
            .await
            .map_err(|_| SendError::Io)?;
        self.meter.add_down(1);
        Ok(())
    }

    /// Drop the first `n` buffered bytes (they were parsed).
    pub fn consume(&mut self, n: usize) {
        self.buf.drain(..n.min(self.buf.len()));
    }
}

/// Why [`Side::read_until`] stopped without a message.
pub enum ReadStop {
    /// Clean end: end of stream, a read error, the deadline, or a stop latch.
    Gone,
    /// The bytes are not a valid message, or `max` bytes hold none: answer this.
    Bad(ProxyError),
    /// The plan given as `cap` has no bandwidth left for the bytes of the message.
    Quota,
}

/// Bounds of one [`Side::read_until`]: at most `max` bytes by `deadline`; any of `stops`
/// firing ends a wait that has no byte of the message yet; with `cap`, reads are capped at
/// that meter's plan (a message read on a client's behalf).
pub struct Bounds<'a> {
    pub max: usize,
    pub deadline: Instant,
    pub stops: &'a [&'a Latch],
    pub cap: Option<&'a Meter>,
}

impl Bounds<'static> {
    /// At most `max` bytes by `deadline`, nothing else.
    pub fn new(max: usize, deadline: Instant) -> Bounds<'static> {
        Bounds {
            max,
            deadline,
            stops: &[],
            cap: None,
        }
    }
}

impl Side {
    /// Read until `parse` finds a complete message at the front of `buf`: the value and
    /// the bytes it used (still in `buf`). A message that does not fit `max` is
    /// `Bad(HeadTooLarge)`.
    pub async fn read_until<T>(
        &mut self,
        b: &Bounds<'_>,
        parse: impl Fn(&[u8]) -> Result<Parsed<T>, ProxyError>,
    ) -> Result<(T, usize), ReadStop> {
        loop {
            if !self.buf.is_empty() {
                match parse(&self.buf) {
                    Ok(Parsed::Done(v, n)) => return Ok((v, n)),
                    Ok(Parsed::Incomplete) => {}
                    Err(e) => return Err(ReadStop::Bad(e)),
                }
                if self.buf.len() >= b.max {
                    return Err(ReadStop::Bad(ProxyError::HeadTooLarge));
                }
            }
            let room = b.max - self.buf.len();
            let first = self.buf.is_empty();
            let read = until(b.deadline, async {
                let room = match b.cap {
                    Some(m) => m.allow(room).await,
                    None => room,
                };
                if room == 0 {
                    return None;
                }
                Some(if first && !b.stops.is_empty() {
                    futures_lite::future::or(self.fill(room), async {
                        any_fired(b.stops).await;
                        Ok(0)
                    })
                    .await
                } else {
                    self.fill(room).await
                })
            })
            .await;
            match read {
                Some(Some(Ok(n))) if n > 0 => {}
                Some(None) => return Err(ReadStop::Quota),
                _ => return Err(ReadStop::Gone),
            }
        }
    }
}
