//! The zero-copy relay for plain TCP on both sides: once a direction carries bulk, it moves
//! its bytes with splice(2) from the source socket into a pipe and from the pipe into the
//! other socket, so they never cross into user space. Until then (a handshake, a request,
//! a short answer) it copies through a pool buffer with recv/send: for a few hundred bytes
//! splice costs more than the copy it saves (the kernel copies small segments into a fresh
//! page for the pipe, and each splice takes the pipe's lock), and most tunnels never carry
//! more. A direction turns bulk when one read fills a whole buffer, as HAProxy's
//! `splice-auto` does when the buffer fills. Each read from the source is capped at the
//! account's lease and its return value is what gets billed, on both paths, exactly as the
//! copying relay bills its reads. Pipes and buffers come from per-core pools only while
//! bytes are in flight: an idle tunnel holds none.

use super::{Dir, Meter, Party, Progress, PREEMPT_CHECK};
use crate::util::{BufPool, RELAY_BUF};
use glommio::net::TcpStream;
use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::task::{Context, Poll};

/// What a pipe is asked to hold: one splice moves at most this much. 1 MiB (the default
/// `fs.pipe-max-size`) moves 10–45% more bytes per CPU-second than 256 KiB on loopback, but
/// the kernel lets an unprivileged user hold only `fs.pipe-user-pages-soft` of pipes (64 MiB
/// by default) and makes every pipe past that 8 KiB: 64 pipes at 1 MiB, 256 at 256 KiB.
/// So 1 MiB only where that limit does not apply (`CAP_SYS_RESOURCE` or `CAP_SYS_ADMIN`).
const PIPE_BIG: usize = 1024 * 1024;
const PIPE_SMALL: usize = 256 * 1024;

/// The size new pipes ask for, decided once per process.
fn pipe_size() -> usize {
    static SIZE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *SIZE.get_or_init(|| {
        let caps = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                let line = s.lines().find(|l| l.starts_with("CapEff:"))?;
                u64::from_str_radix(line["CapEff:".len()..].trim(), 16).ok()
            })
            .unwrap_or(0);
        // capability(7) numbers: CAP_SYS_ADMIN 21, CAP_SYS_RESOURCE 24.
        let unlimited = caps & (1 << 21 | 1 << 24) != 0;
        if unlimited {
            PIPE_BIG
        } else {
            PIPE_SMALL
        }
    })
}

/// One pipe: its read and write ends, and how much it holds.
pub struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
    size: usize,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: a two-element array for pipe2 to fill.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 returned two fresh descriptors that nothing else owns.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // A bigger pipe moves a bulk transfer in fewer splices; where the system refuses
        // (over the user's pipe pages), the pipe keeps the size it was made with, asked
        // back from the kernel (64 KiB, or 8 KiB past the limit).
        let fd = w.as_raw_fd();
        // SAFETY: valid fd; F_SETPIPE_SZ takes an int.
        let mut got = unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, pipe_size() as libc::c_int) };
        if got <= 0 {
            // SAFETY: valid fd.
            got = unsafe { libc::fcntl(fd, libc::F_GETPIPE_SZ) };
        }
        let size = if got > 0 { got as usize } else { 4096 };
        Ok(Pipe { r, w, size })
    }
}

/// Per-core pool of empty pipes.
pub struct PipePool {
    free: RefCell<Vec<Pipe>>,
    max_free: usize,
}

impl PipePool {
    pub fn new(max_free: usize) -> PipePool {
        PipePool {
            free: RefCell::new(Vec::new()),
            max_free,
        }
    }

    fn take(&self) -> io::Result<Pipe> {
        match self.free.borrow_mut().pop() {
            Some(p) => Ok(p),
            None => Pipe::new(),
        }
    }

    /// Only empty pipes come back; one that still holds bytes is closed.
    fn give(&self, p: Pipe) {
        let mut free = self.free.borrow_mut();
        if free.len() < self.max_free {
            free.push(p);
        }
    }
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: plain descriptors, no offsets (sockets and pipes).
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn recv(from: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of its length.
    let n = unsafe { libc::recv(from, buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn send(to: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of its length.
    let n = unsafe { libc::send(to, buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

/// Where a direction's bytes wait between read and write: a pool buffer until it is
/// bulk, a pipe from then on.
#[derive(Default)]
enum Hold {
    #[default]
    Empty,
    Buf(Box<[u8]>),
    Pipe(Pipe),
}

/// One direction. An idle tunnel holds two of these, so the counts are `u32`: a read
/// moves at most one buffer or one pipe (1 MiB at most, `fs.pipe-max-size`).
#[derive(Default)]
struct Half {
    hold: Hold,
    /// Where the unwritten bytes start in a buffer.
    pos: u32,
    /// Bytes in the pipe or the buffer, read from the source and not yet written.
    held: u32,
    /// A read filled a whole buffer: the reads from here on splice.
    bulk: bool,
    /// No pipe worth splicing through could be had (out of descriptors, or the kernel's
    /// per-user pipe limit left it a few pages): this direction copies to its end.
    copy_only: bool,
    eof: bool,
    done: bool,
    /// The source has likely nothing yet (the relay just started, or the last read was
    /// short): wait for readiness before the next read instead of trying it.
    drained: bool,
}

impl Half {
    /// No pipe for this direction: it copies from here to its end.
    fn copy_to_end(&mut self) {
        self.copy_only = true;
        self.bulk = false;
    }
}

/// Both directions of one tunnel between plain sockets, copied until bulk and spliced from
/// then on; the same contract as the copying pump.
pub(super) struct SplicePump<'a> {
    pub pool: &'a PipePool,
    pub bufs: &'a BufPool,
    pub client: &'a mut TcpStream,
    pub upstream: &'a mut TcpStream,
    pub meter: &'a Meter,
    up: Half,
    down: Half,
}

impl<'a> SplicePump<'a> {
    pub fn new(
        pool: &'a PipePool,
        bufs: &'a BufPool,
        client: &'a mut TcpStream,
        upstream: &'a mut TcpStream,
        meter: &'a Meter,
    ) -> SplicePump<'a> {
        // splice(2) from a socket blocks unless the socket itself is non-blocking
        // (SPLICE_F_NONBLOCK covers only the pipe). Both are, from their creation: the
        // listener's accept4 and the exit's socket(2) ask for it.
        #[cfg(debug_assertions)]
        for fd in [client.as_raw_fd(), upstream.as_raw_fd()] {
            // SAFETY: valid fd; F_GETFL takes no argument.
            let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
            debug_assert!(flags & libc::O_NONBLOCK != 0, "splice on a blocking socket");
        }
        SplicePump {
            pool,
            bufs,
            client,
            upstream,
            meter,
            up: Half {
                drained: true,
                ..Half::default()
            },
            down: Half {
                drained: true,
                ..Half::default()
            },
        }
    }

    pub(super) fn move_dir(
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
            if half.held > 0 {
                // A write that blocked armed a readiness poll: until it fires, trying the
                // socket again would only get EAGAIN.
                if dst.write_poll_armed() {
                    match dst.poll_writable(cx) {
                        Poll::Ready(Ok(())) => {}
                        Poll::Ready(Err(e)) => return Poll::Ready(Err((dst_party, e))),
                        Poll::Pending => return Poll::Pending,
                    }
                }
                let (pos, held) = (half.pos as usize, half.held as usize);
                let wrote = match &half.hold {
                    Hold::Buf(buf) => match buf.get(pos..pos + held) {
                        Some(bytes) => send(dst.as_raw_fd(), bytes),
                        None => Err(io::Error::other("relay buffer overrun")),
                    },
                    Hold::Pipe(pipe) => splice(pipe.r.as_raw_fd(), dst.as_raw_fd(), held),
                    Hold::Empty => Err(io::Error::other("relay buffer missing")),
                };
                match wrote {
                    Ok(0) => return Poll::Ready(Err((dst_party, io::ErrorKind::WriteZero.into()))),
                    Ok(n) => {
                        // n <= held, which fits u32.
                        half.held -= n as u32;
                        moved += n;
                        if dir == Dir::Down {
                            self.meter.add_down(n);
                        }
                        if half.held > 0 {
                            half.pos += n as u32;
                        } else if matches!(half.hold, Hold::Buf(_)) {
                            // A drained buffer goes back; a drained pipe stays for the
                            // next bulk read.
                            if let Hold::Buf(buf) = std::mem::take(&mut half.hold) {
                                self.bufs.give(buf);
                            }
                            half.pos = 0;
                        }
                    }
                    Err(e) if would_block(&e) => {
                        dst.clear_writable();
                        match dst.poll_writable(cx) {
                            Poll::Ready(Ok(())) => {}
                            Poll::Ready(Err(e)) => return Poll::Ready(Err((dst_party, e))),
                            Poll::Pending => return Poll::Pending,
                        }
                    }
                    Err(e) => return Poll::Ready(Err((dst_party, e))),
                }
                continue;
            }
            if half.eof {
                // Forward the FIN: the peer learns this direction is finished. When the
                // other direction is finished too, the relay ends now and the close sends
                // it: `dst` has read its peer's FIN, so nothing unread turns the close into
                // a reset.
                if !other_done {
                    // SAFETY: valid fd.
                    unsafe { libc::shutdown(dst.as_raw_fd(), libc::SHUT_WR) };
                }
                if let Hold::Pipe(p) = std::mem::take(&mut half.hold) {
                    self.pool.give(p);
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
            // The same for reads: the direction that did not wake this poll costs no
            // syscall.
            if half.drained || src.read_poll_armed() {
                match src.poll_readable(cx) {
                    Poll::Ready(Ok(())) => half.drained = false,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err((src_party, e))),
                    Poll::Pending => return Poll::Pending,
                }
            }
            if !half.bulk {
                let read = copy_in(
                    cx,
                    src,
                    half,
                    self.bufs,
                    self.meter,
                    (dir, src_party),
                    progress,
                );
                match read {
                    Poll::Ready(Ok(())) => continue,
                    other => return other,
                }
            }
            let pipe = match std::mem::take(&mut half.hold) {
                Hold::Pipe(p) => p,
                held => {
                    // (A buffer is held only while its bytes are unwritten: none here.)
                    if let Hold::Buf(b) = held {
                        self.bufs.give(b);
                    }
                    match self.pool.take() {
                        Ok(p) if p.size >= RELAY_BUF => p,
                        // A pipe smaller than a buffer would move bulk in more system
                        // calls than copying does, and a failed pipe2 is no reason to
                        // end the tunnel: either way this direction copies. (Pooled
                        // pipes are all full-size: a small one is closed here, which
                        // also hands its pages back to the user's pipe budget.)
                        Ok(small) => {
                            tracing::debug!(
                                size = small.size,
                                "relay pipe under the buffer size, copying instead"
                            );
                            half.copy_to_end();
                            continue;
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "no relay pipe, copying instead");
                            half.copy_to_end();
                            continue;
                        }
                    }
                }
            };
            let cap = match progress.lease(cx, self.meter, pipe.size, src_party) {
                Poll::Ready(Ok(cap)) => cap,
                stop => {
                    self.pool.give(pipe);
                    return stop.map(|r| r.map(drop));
                }
            };
            match splice(src.as_raw_fd(), pipe.w.as_raw_fd(), cap) {
                Ok(0) => {
                    self.pool.give(pipe);
                    half.eof = true;
                }
                Ok(n) => {
                    half.hold = Hold::Pipe(pipe);
                    // n <= cap <= the pipe's size, which fits u32.
                    half.held = n as u32;
                    half.drained = n < cap;
                    progress.read(self.meter, dir, n);
                }
                Err(e) if would_block(&e) => {
                    // Idle: the pipe goes back while the source has nothing.
                    self.pool.give(pipe);
                    src.clear_readable();
                    match src.poll_readable(cx) {
                        Poll::Ready(Ok(())) => {}
                        Poll::Ready(Err(e)) => return Poll::Ready(Err((src_party, e))),
                        Poll::Pending => return Poll::Pending,
                    }
                }
                Err(e) => {
                    self.pool.give(pipe);
                    return Poll::Ready(Err((src_party, e)));
                }
            }
        }
    }
}

/// One read of a direction that is not bulk (yet), into a pool buffer: `Ready(Ok)` when it
/// got bytes (to be written next), the end (the FIN to forward), or readiness.
fn copy_in(
    cx: &mut Context<'_>,
    src: &mut TcpStream,
    half: &mut Half,
    bufs: &BufPool,
    meter: &Meter,
    (dir, party): (Dir, Party),
    progress: &mut Progress,
) -> Poll<Result<(), (Party, io::Error)>> {
    // Empty here: a direction holds a pipe only once it is bulk.
    let mut buf = match std::mem::take(&mut half.hold) {
        Hold::Buf(b) => b,
        _ => bufs.take(),
    };
    let cap = match progress.lease(cx, meter, buf.len(), party) {
        Poll::Ready(Ok(cap)) => cap,
        stop => {
            bufs.give(buf);
            return stop.map(|r| r.map(drop));
        }
    };
    match recv(src.as_raw_fd(), &mut buf[..cap]) {
        Ok(0) => {
            bufs.give(buf);
            half.eof = true;
            Poll::Ready(Ok(()))
        }
        Ok(n) => {
            half.bulk = n == RELAY_BUF && !half.copy_only;
            half.drained = n < cap;
            if half.drained {
                // A short recv emptied the socket (unless urgent data stopped it): its
                // next bytes are a new edge.
                src.clear_readable_short();
            }
            half.hold = Hold::Buf(buf);
            half.pos = 0;
            // n <= cap <= RELAY_BUF, which fits u32.
            half.held = n as u32;
            progress.read(meter, dir, n);
            Poll::Ready(Ok(()))
        }
        Err(e) if would_block(&e) => {
            // Idle: the buffer goes back while the source has nothing.
            bufs.give(buf);
            src.clear_readable();
            match src.poll_readable(cx) {
                Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
                Poll::Ready(Err(e)) => Poll::Ready(Err((party, e))),
                Poll::Pending => Poll::Pending,
            }
        }
        Err(e) => {
            bufs.give(buf);
            Poll::Ready(Err((party, e)))
        }
    }
}

impl super::Directions for SplicePump<'_> {
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

impl Drop for SplicePump<'_> {
    fn drop(&mut self) {
        // A pipe that still holds bytes (the relay ended mid-flight) is closed, not pooled.
        for half in [&mut self.up, &mut self.down] {
            match std::mem::take(&mut half.hold) {
                Hold::Buf(b) => self.bufs.give(b),
                Hold::Pipe(p) if half.held == 0 => self.pool.give(p),
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_direction_stays_small() {
        // Two per idle tunnel: a buffer or a pipe, two counts, four flags.
        assert!(
            std::mem::size_of::<Half>() <= 40,
            "{}",
            std::mem::size_of::<Half>()
        );
    }
}
