//! Two-way copy between a client and its outbound connection: one future drives both
//! directions, buffers come from the core's pool only while bytes are in flight, FIN is
//! forwarded, the executor gets the CPU back when it asks, and bytes are counted per
//! direction in one place ([`Meter`]).

mod meter;
mod splice;

pub use meter::Meter;

pub use splice::PipePool;

use crate::plan::ledger::ThreadSlot;
use crate::stream::Stream;
use crate::util::{BufPool, Latch, LatchKey, RELAY_BUF, RELAY_BUF_BULK};
use futures_lite::{AsyncRead, AsyncWrite};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// How a relay ended.
#[derive(Debug)]
pub enum RelayEnd {
    /// Both sides closed their write halves.
    Closed,
    /// No byte either way for `idle_timeout` (`half_close_timeout` once one side closed).
    Idle,
    /// The account's bandwidth ran out.
    Quota,
    /// An operator disconnected the account (`POST /v1/accounts/{name}/disconnect`).
    Disconnected,
    /// The gateway's drain timeout passed with the tunnel still open.
    Drain,
    /// Reading from or writing to the client failed (reset, broken pipe).
    ClientReset(io::Error),
    /// Reading from or writing to the upstream failed.
    UpstreamReset(io::Error),
}

impl RelayEnd {
    /// The access line's and `tollgate_outcomes_total`'s `end` label.
    pub fn label(&self) -> &'static str {
        match self {
            RelayEnd::Closed => "closed",
            RelayEnd::Idle => "idle",
            RelayEnd::Quota => "quota",
            RelayEnd::Disconnected => "disconnect",
            RelayEnd::Drain => "drain",
            RelayEnd::ClientReset(_) => "client_reset",
            RelayEnd::UpstreamReset(_) => "upstream_reset",
        }
    }
}

/// Which end of the relay an I/O error came from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Party {
    Client,
    Upstream,
}

/// Bytes moved in one direction before checking whether the executor wants the CPU back.
const PREEMPT_CHECK: usize = 256 * 1024;

#[derive(Default)]
struct Half {
    buf: Option<Box<[u8]>>,
    pos: usize,
    len: usize,
    eof: bool,
    done: bool,
    /// Reads keep filling the buffer: use the bulk size.
    bulk: bool,
}

/// Which way a [`Half`] moves bytes, for the meter.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    Up,
    Down,
}

struct Pump<'a> {
    pool: &'a BufPool,
    client: &'a mut Stream,
    upstream: &'a mut Stream,
    meter: &'a Meter,
    up: Half,
    down: Half,
}

impl Pump<'_> {
    fn move_dir(
        &mut self,
        cx: &mut Context<'_>,
        dir: Dir,
        progress: &mut Progress,
    ) -> Poll<Result<(), (Party, io::Error)>> {
        let other_done = match dir {
            Dir::Up => self.down.done,
            Dir::Down => self.up.done,
        };
        let (src, dst, half) = match dir {
            Dir::Up => (&mut *self.client, &mut *self.upstream, &mut self.up),
            Dir::Down => (&mut *self.upstream, &mut *self.client, &mut self.down),
        };
        let (src_party, dst_party) = match dir {
            Dir::Up => (Party::Client, Party::Upstream),
            Dir::Down => (Party::Upstream, Party::Client),
        };
        let mut moved = 0usize;
        loop {
            if half.pos < half.len {
                let Some(buf) = half.buf.as_ref() else {
                    return Poll::Ready(Err((dst_party, io::Error::other("relay buffer missing"))));
                };
                match Pin::new(&mut *dst).poll_write(cx, &buf[half.pos..half.len]) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err((dst_party, io::ErrorKind::WriteZero.into())))
                    }
                    Poll::Ready(Ok(n)) => {
                        half.pos += n;
                        moved += n;
                        if dir == Dir::Down {
                            self.meter.add_down(n);
                        }
                        if half.pos == half.len {
                            if let Some(b) = half.buf.take() {
                                self.pool.give(b);
                            }
                            half.pos = 0;
                            half.len = 0;
                        }
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err((dst_party, e))),
                    Poll::Pending => return Poll::Pending,
                }
                continue;
            }
            if half.eof {
                // Forward the FIN: the peer learns this direction is finished. A plain
                // socket whose other direction is finished too is closed as the relay
                // ends, which sends it (as in the splicing pump); TLS says close_notify.
                if !(other_done && matches!(dst, Stream::Plain(_))) {
                    let _ = Pin::new(&mut *dst).poll_close(cx);
                }
                half.done = true;
                return Poll::Ready(Ok(()));
            }
            if moved >= PREEMPT_CHECK {
                moved = 0;
                if glommio::executor().need_preempt() {
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
            }
            let mut buf = match half.buf.take() {
                Some(b) if (b.len() == RELAY_BUF_BULK) == half.bulk => b,
                Some(b) => {
                    self.pool.give(b);
                    self.pool.take_sized(half.bulk)
                }
                None => self.pool.take_sized(half.bulk),
            };
            let cap = match progress.lease(cx, self.meter, buf.len(), src_party) {
                Poll::Ready(Ok(cap)) => cap,
                stop => {
                    self.pool.give(buf);
                    return stop.map(|r| r.map(drop));
                }
            };
            match Pin::new(&mut *src).poll_read(cx, &mut buf[..cap]) {
                Poll::Ready(Ok(0)) => {
                    self.pool.give(buf);
                    half.eof = true;
                }
                Poll::Ready(Ok(n)) => {
                    // A full read means more is waiting: go bulk. A small one goes back.
                    if n == buf.len() {
                        half.bulk = true;
                    } else if n < RELAY_BUF / 4 {
                        half.bulk = false;
                    }
                    half.buf = Some(buf);
                    half.len = n;
                    half.pos = 0;
                    progress.read(self.meter, dir, n);
                }
                Poll::Ready(Err(e)) => {
                    self.pool.give(buf);
                    return Poll::Ready(Err((src_party, e)));
                }
                Poll::Pending => {
                    // Idle tunnels hold no buffer.
                    self.pool.give(buf);
                    return Poll::Pending;
                }
            }
        }
    }
}

/// What a relay's pump reports back as it moves bytes, whichever pump it is.
struct Progress {
    /// When a byte last moved either way (the idle timeout counts from here).
    last: Instant,
    /// The relay ended because the plan's bandwidth ran out.
    quota_hit: bool,
}

impl Progress {
    /// The most the next read from `src` may take, `want` at most: the plan's local lease,
    /// so the quota is never overshot. Once the bandwidth is used up, `Err`: the relay ends
    /// as `Quota`.
    fn lease(
        &mut self,
        cx: &mut Context<'_>,
        meter: &Meter,
        want: usize,
        src: Party,
    ) -> Poll<Result<usize, (Party, io::Error)>> {
        match meter.poll_allow(cx, want) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(0) => {
                self.quota_hit = true;
                Poll::Ready(Err((src, io::Error::other("bandwidth used up"))))
            }
            Poll::Ready(cap) => Poll::Ready(Ok(cap)),
        }
    }

    /// `n` bytes read from `dir`'s source: billed (a download once it reaches the client),
    /// and the idle clock starts again.
    fn read(&mut self, meter: &Meter, dir: Dir, n: usize) {
        match dir {
            Dir::Up => meter.add_up(n),
            Dir::Down => meter.read_for_client(n),
        }
        self.last = Instant::now();
    }
}

/// What both pumps (copying and splicing) share: each moves one direction at a time and
/// knows when a direction is finished.
trait Directions {
    fn poll_dir(
        &mut self,
        cx: &mut Context<'_>,
        dir: Dir,
        progress: &mut Progress,
    ) -> Poll<Result<(), (Party, io::Error)>>;
    fn done(&self, dir: Dir) -> bool;
}

/// Poll both directions in turn: the first error ends the relay; it is finished once both
/// directions are.
fn poll_both(
    p: &mut impl Directions,
    cx: &mut Context<'_>,
    progress: &mut Progress,
) -> Poll<Result<(), (Party, io::Error)>> {
    for dir in [Dir::Up, Dir::Down] {
        if !p.done(dir) {
            if let Poll::Ready(Err(e)) = p.poll_dir(cx, dir, progress) {
                return Poll::Ready(Err(e));
            }
        }
    }
    if p.done(Dir::Up) && p.done(Dir::Down) {
        Poll::Ready(Ok(()))
    } else {
        Poll::Pending
    }
}

impl Directions for Pump<'_> {
    fn poll_dir(
        &mut self,
        cx: &mut Context<'_>,
        dir: Dir,
        progress: &mut Progress,
    ) -> Poll<Result<(), (Party, io::Error)>> {
        self.move_dir(cx, dir, progress)
    }
    fn done(&self, dir: Dir) -> bool {
        match dir {
            Dir::Up => self.up.done,
            Dir::Down => self.down.done,
        }
    }
}

impl Drop for Pump<'_> {
    fn drop(&mut self) {
        for half in [&mut self.up, &mut self.down] {
            if let Some(b) = half.buf.take() {
                self.pool.give(b);
            }
        }
    }
}

/// One of the two pumps: spliced between plain sockets, copied otherwise.
enum AnyPump<'a> {
    Copy(Pump<'a>),
    Splice(splice::SplicePump<'a>),
}

impl AnyPump<'_> {
    /// One side has closed (its FIN passed on), the other not yet.
    fn half_closed(&self) -> bool {
        match self {
            AnyPump::Copy(p) => p.done(Dir::Up) || p.done(Dir::Down),
            AnyPump::Splice(p) => p.done(Dir::Up) || p.done(Dir::Down),
        }
    }

    fn poll_both(
        &mut self,
        cx: &mut Context<'_>,
        progress: &mut Progress,
    ) -> Poll<Result<(), (Party, io::Error)>> {
        match self {
            AnyPump::Copy(p) => poll_both(p, cx, progress),
            AnyPump::Splice(p) => poll_both(p, cx, progress),
        }
    }
}

/// Where a relay's bytes wait in flight: the core's buffers, and with `splice`, its pipes
/// for tunnels between two plain sockets.
pub struct Pools<'a> {
    pub buffers: &'a BufPool,
    pub pipes: Option<&'a PipePool>,
}

/// How long a tunnel may go without a byte either way: `idle`, and once one side has
/// closed, `half_closed` from then on (whichever is shorter). Its thread `slot`, if it
/// holds one, is then counted as closing: an admission waits a little for it.
pub struct Quiet<'a> {
    pub idle: Duration,
    pub half_closed: Duration,
    pub slot: Option<&'a ThreadSlot>,
}

/// Relay until both directions are finished, an error, no byte for as long as `quiet`
/// allows, or `stop` (the drain timeout) fires; the account's cut latch (bandwidth used
/// up, an operator's disconnect) ends it too.
pub fn relay<'a>(
    pools: Pools<'a>,
    stop: &'a Latch,
    client: &'a mut Stream,
    upstream: &'a mut Stream,
    meter: &'a Meter,
    quiet: Quiet<'a>,
) -> Relay<'a> {
    let pump = match (pools.pipes, client, upstream) {
        (Some(pipes), Stream::Plain(c), Stream::Plain(u)) => {
            AnyPump::Splice(splice::SplicePump::new(pipes, pools.buffers, c, u, meter))
        }
        (_, client, upstream) => AnyPump::Copy(Pump {
            pool: pools.buffers,
            client,
            upstream,
            meter,
            up: Half::default(),
            down: Half::default(),
        }),
    };
    Relay {
        pump,
        progress: Progress {
            last: Instant::now(),
            quota_hit: false,
        },
        quiet,
        half_since: None,
        timer: None,
        cut: meter.cut().map(|l| (l, LatchKey::default())),
        stop: (stop, LatchKey::default()),
    }
}

/// [`relay`]'s future: one struct, polled in place, rather than an `async fn` of four
/// racing futures. A tunnel waits in it for its whole life, so its size is the idle
/// tunnel's: each sub-future of an `async` version was held twice (as a local and inside
/// the race), its arguments too.
pub struct Relay<'a> {
    pump: AnyPump<'a>,
    progress: Progress,
    quiet: Quiet<'a>,
    /// When one side closed.
    half_since: Option<Instant>,
    /// Armed for the idle deadline as it stood when it was set (it only moves later,
    /// except when one side closes: then it is armed again).
    timer: Option<glommio::timer::Timer>,
    cut: Option<(Rc<Latch>, LatchKey)>,
    stop: (&'a Latch, LatchKey),
}

impl Future for Relay<'_> {
    type Output = RelayEnd;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<RelayEnd> {
        let this = self.get_mut();
        if let Poll::Ready(res) = this.pump.poll_both(cx, &mut this.progress) {
            return Poll::Ready(match res {
                Ok(()) => RelayEnd::Closed,
                Err(_) if this.progress.quota_hit => RelayEnd::Quota,
                Err((Party::Client, e)) => RelayEnd::ClientReset(e),
                Err((Party::Upstream, e)) => RelayEnd::UpstreamReset(e),
            });
        }
        if this.half_since.is_none() && this.pump.half_closed() {
            this.half_since = Some(Instant::now());
            if let Some(slot) = this.quiet.slot {
                slot.closing();
            }
            // Due at once: the loop below arms it again for the half-closed deadline.
            if let Some(t) = this.timer.as_mut() {
                t.reset(Duration::ZERO);
            }
        }
        loop {
            if let Some(t) = this.timer.as_mut() {
                if Pin::new(t).poll(cx).is_pending() {
                    break;
                }
            }
            // Fired (or not yet armed): the deadline may have moved with the traffic.
            let mut deadline = this.progress.last + this.quiet.idle;
            if let Some(since) = this.half_since {
                deadline = deadline.min(this.progress.last.max(since) + this.quiet.half_closed);
            }
            let now = Instant::now();
            if now >= deadline {
                return Poll::Ready(RelayEnd::Idle);
            }
            match this.timer.as_mut() {
                Some(t) => t.reset(deadline - now),
                None => this.timer = Some(glommio::timer::Timer::new(deadline - now)),
            }
        }
        if let Some((latch, key)) = this.cut.as_mut() {
            if latch.poll_wait(cx, key).is_ready() {
                return Poll::Ready(if latch.why() == crate::plan::shard::CUT_BY_OPERATOR {
                    RelayEnd::Disconnected
                } else {
                    RelayEnd::Quota
                });
            }
        }
        let (stop, key) = &mut this.stop;
        if stop.poll_wait(cx, key).is_ready() {
            return Poll::Ready(RelayEnd::Drain);
        }
        Poll::Pending
    }
}

impl Drop for Relay<'_> {
    fn drop(&mut self) {
        if let Some((latch, key)) = &mut self.cut {
            latch.forget(key);
        }
        let (stop, key) = &mut self.stop;
        stop.forget(key);
    }
}
