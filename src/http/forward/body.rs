//! Message bodies on the forward path: copied with the client's plan capping the reads and
//! covering the writes, every read and write within `idle_timeout`, chunked bodies
//! re-chunked (or de-chunked) on the way.

use super::Limits;
use crate::http::codec::{ChunkedDecoder, Framing, Relay};
use crate::side::{SendError, Side};
use crate::util::until;
use futures_lite::AsyncReadExt;
use std::time::Instant;

#[derive(Debug)]
pub(super) enum BodyErr {
    /// Reading the source failed or it ended early.
    Src,
    /// Writing the destination failed.
    Dst,
    /// No progress either way for `idle_timeout`.
    Idle,
    /// The chunked framing is broken.
    Malformed,
    /// The client's plan ran out of bandwidth mid-body.
    Quota,
}

impl From<SendError> for BodyErr {
    fn from(e: SendError) -> BodyErr {
        match e {
            SendError::Quota => BodyErr::Quota,
            SendError::Io => BodyErr::Dst,
        }
    }
}

/// Copy one message body from `src` (buffered bytes first) to `dst`. Whichever side is
/// the client, its plan caps the reads and covers the writes. An `answer` (the body the
/// client gets) gives the request's slot back before its last byte, where its framing
/// shows which byte that is (a body that runs until the origin closes has none).
pub(super) async fn copy_body(
    lim: &Limits<'_>,
    src: &mut Side,
    dst: &mut Side,
    framing: Framing,
    relay_as: Relay,
    answer: bool,
) -> Result<(), BodyErr> {
    match framing {
        Framing::None => Ok(()),
        Framing::Chunked => copy_chunked(lim, src, dst, relay_as == Relay::Dechunked, answer).await,
        Framing::Length(n) => copy_raw(lim, src, dst, Some(n), answer).await,
        Framing::UntilClose => copy_raw(lim, src, dst, None, false).await,
    }
}

/// A write to `dst` within `idle`: a stalled one is `Idle`.
async fn in_time<T>(
    lim: &Limits<'_>,
    write: impl std::future::Future<Output = Result<T, SendError>>,
) -> Result<T, BodyErr> {
    match until(Instant::now() + lim.idle, write).await {
        Some(r) => r.map_err(BodyErr::from),
        None => Err(BodyErr::Idle),
    }
}

/// Write relayed bytes to `dst` within `idle`.
async fn send_on(lim: &Limits<'_>, dst: &mut Side, data: &[u8]) -> Result<(), BodyErr> {
    in_time(lim, dst.send_relayed(data, false)).await
}

/// A response head and the body bytes that came with it, within `idle`: see
/// [`Side::send_relayed_past`].
pub(super) async fn send_head(
    lim: &Limits<'_>,
    dst: &mut Side,
    data: &[u8],
    head: usize,
) -> Result<(), BodyErr> {
    in_time(lim, dst.send_relayed_past(data, head)).await
}

/// The answer's last write within `idle`, all of it but its last byte (its first `head`
/// bytes all or none), which is returned: see [`Side::send_relayed_but_last`]. The
/// caller frees its buffer, then [`send_end`].
pub(super) async fn send_but_last(
    lim: &Limits<'_>,
    dst: &mut Side,
    data: &[u8],
    head: usize,
) -> Result<Option<u8>, BodyErr> {
    in_time(lim, dst.send_relayed_but_last(data, head)).await
}

/// The request's slot goes back, then the answer's last byte goes out.
pub(super) async fn send_end(
    lim: &Limits<'_>,
    dst: &mut Side,
    last: Option<u8>,
) -> Result<(), BodyErr> {
    lim.answer_ends();
    match last {
        Some(b) => in_time(lim, dst.send_last(b)).await,
        None => Ok(()),
    }
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

/// `limit` bytes, or until the source closes when `None`. An `answer`'s write that
/// completes `limit` is its last.
async fn copy_raw(
    lim: &Limits<'_>,
    src: &mut Side,
    dst: &mut Side,
    limit: Option<u64>,
    answer: bool,
) -> Result<(), BodyErr> {
    let ending = answer && limit.is_some();
    let mut left = limit.unwrap_or(u64::MAX);
    let k = (src.buf.len() as u64).min(left) as usize;
    if k > 0 {
        if ending && k as u64 == left {
            let last = send_but_last(lim, dst, &src.buf[..k], 0).await?;
            src.consume(k);
            return send_end(lim, dst, last).await;
        }
        send_on(lim, dst, &src.buf[..k]).await?;
        src.consume(k);
        left -= k as u64;
    }
    if left == 0 {
        return Ok(());
    }
    let mut buf = lim.pool.take();
    // `Some`: the answer's last byte, to be written once the buffer is back.
    let r = async {
        while left > 0 {
            let want = allowance(src, dst, (buf.len() as u64).min(left) as usize).await?;
            let n = match until(Instant::now() + lim.idle, src.stream.read(&mut buf[..want])).await
            {
                Some(Ok(n)) => n,
                Some(Err(_)) => return Err(BodyErr::Src),
                None => return Err(BodyErr::Idle),
            };
            if n == 0 {
                return match limit {
                    None => Ok(None),
                    Some(_) => Err(BodyErr::Src),
                };
            }
            src.meter.add_up(n);
            if ending && n as u64 == left {
                return send_but_last(lim, dst, &buf[..n], 0).await;
            }
            send_on(lim, dst, &buf[..n]).await?;
            left -= n as u64;
        }
        Ok(None)
    }
    .await;
    lim.pool.give(buf);
    match r? {
        Some(last) => send_end(lim, dst, Some(last)).await,
        None => Ok(()),
    }
}

/// A chunked body, re-chunked with clean framing (or de-chunked) on the way. An
/// `answer`'s write that carries the last chunk is its last.
async fn copy_chunked(
    lim: &Limits<'_>,
    src: &mut Side,
    dst: &mut Side,
    dechunk: bool,
    answer: bool,
) -> Result<(), BodyErr> {
    let mut dec = ChunkedDecoder::default();
    let mut out = Vec::new();
    loop {
        if src.buf.is_empty() {
            let want = allowance(src, dst, 64 * 1024).await?;
            match until(Instant::now() + lim.idle, src.fill(want)).await {
                Some(Ok(n)) if n > 0 => {}
                Some(_) => return Err(BodyErr::Src),
                None => return Err(BodyErr::Idle),
            }
        }
        let fed = dec.feed(&src.buf).map_err(|_| BodyErr::Malformed)?;
        out.clear();
        dec.reencode(&src.buf, &fed, dechunk, &mut out);
        src.consume(fed.consumed);
        if fed.done && answer {
            let last = send_but_last(lim, dst, &out, 0).await?;
            drop(out);
            return send_end(lim, dst, last).await;
        }
        if !out.is_empty() {
            send_on(lim, dst, &out).await?;
        }
        if fed.done {
            return Ok(());
        }
    }
}
