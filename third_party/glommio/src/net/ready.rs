//! tollgate patch: edge-triggered readiness for stream sockets, through one epoll instance
//! per executor.
//!
//! Upstream waits for a stream socket's readiness with a one-shot io_uring `POLL_ADD` per
//! wait: a submission, a `Source` allocation, the kernel's poll arming and task work, and
//! a completion, each time a read or write finds the socket empty or full. Here a socket is
//! added to the executor's epoll instance once (`EPOLLIN | EPOLLPRI | EPOLLOUT |
//! EPOLLRDHUP | EPOLLET`), the first time it has to wait, and stays there until it is
//! closed. Its edges set readiness flags and wake the waiting task; a read or write clears
//! its flag when the socket says it is empty (`EAGAIN`, or a short read with no FIN or
//! urgent data seen) or full (`EAGAIN`). The reactor drains the instance with a
//! non-blocking `epoll_wait` when the executor looks for I/O (`drain`), and the executor
//! sleeps in it (`sleep`), as an epoll event loop would: the cost of a wait is shared by
//! every socket that became ready meanwhile. The io_uring rings' fds are in the instance
//! too (`watch`), so that a completion ends the sleep. Non-blocking listeners wait here
//! for connections the same way (`TcpListener`).
//!
//! `GLOMMIO_EPOLL=0` in the environment turns it off (the io_uring polls, as upstream).

use std::{
    cell::RefCell,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    task::{Context, Poll, Waker},
};

const IN_BITS: u32 =
    (libc::EPOLLIN | libc::EPOLLPRI | libc::EPOLLRDHUP | libc::EPOLLERR | libc::EPOLLHUP) as u32;
const OUT_BITS: u32 = (libc::EPOLLOUT | libc::EPOLLERR | libc::EPOLLHUP) as u32;
const INTEREST: u32 =
    (libc::EPOLLIN | libc::EPOLLPRI | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32;
/// Events that stay true once seen: after the peer's FIN (or a reset, or an error) a read
/// never blocks again, so no later edge would come to set the flag a short read cleared.
const RX_STICKY: u32 = (libc::EPOLLRDHUP | libc::EPOLLERR | libc::EPOLLHUP) as u32;
const TX_STICKY: u32 = (libc::EPOLLERR | libc::EPOLLHUP) as u32;
const BATCH: usize = 256;
/// The events of a watched fd that is not a socket (`watch`).
const NO_SLOT: u64 = u64::MAX;

#[derive(Default)]
struct Slot {
    gen: u32,
    /// The events seen since the flag they set was last cleared.
    rx_events: u32,
    tx_events: u32,
    rx_ready: bool,
    tx_ready: bool,
    rx: Option<Waker>,
    tx: Option<Waker>,
}

struct Registry {
    epfd: OwnedFd,
    /// The executor whose reactor drains this instance.
    executor: usize,
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// `drain`'s buffers, kept between drains.
    events: Vec<libc::epoll_event>,
    wake: Vec<Waker>,
}

thread_local! {
    static REGISTRY: RefCell<Option<Registry>> = const { RefCell::new(None) };
    static ENABLED: bool = std::env::var("GLOMMIO_EPOLL").map(|v| v != "0").unwrap_or(true);
}

/// Whether streams use this (not the io_uring polls).
pub(crate) fn enabled() -> bool {
    ENABLED.with(|e| *e)
}

/// A socket's place in its executor's epoll instance; dropped with the stream (the close
/// that follows takes the socket out of the instance).
#[derive(Debug)]
pub(crate) struct Registration {
    idx: u32,
    gen: u32,
}

impl Registration {
    /// Add `fd` to this executor's instance. `rx_ready`/`tx_ready`: whether a read or
    /// write should be tried before waiting (false for the side whose `EAGAIN` asked for
    /// the registration). Readiness the socket has already is reported by the instance's
    /// next drain either way.
    pub(crate) fn new(fd: RawFd, rx_ready: bool, tx_ready: bool) -> io::Result<Registration> {
        let executor = crate::executor().id();
        REGISTRY.with(|r| {
            let mut r = r.borrow_mut();
            if r.as_ref().map(|reg| reg.executor) != Some(executor) {
                // SAFETY: plain syscall; the fd is owned at once.
                let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
                if epfd < 0 {
                    return Err(io::Error::last_os_error());
                }
                // SAFETY: a fresh fd of ours.
                let epfd = unsafe { OwnedFd::from_raw_fd(epfd) };
                *r = Some(Registry {
                    epfd,
                    executor,
                    slots: Vec::new(),
                    free: Vec::new(),
                    events: vec![libc::epoll_event { events: 0, u64: 0 }; BATCH],
                    wake: Vec::new(),
                });
            }
            let reg = r.as_mut().ok_or_else(|| io::Error::other("no epoll registry"))?;
            let idx = match reg.free.pop() {
                Some(i) => i,
                None => {
                    reg.slots.push(Slot::default());
                    u32::try_from(reg.slots.len() - 1).map_err(io::Error::other)?
                }
            };
            let slot = &mut reg.slots[idx as usize];
            slot.rx_ready = rx_ready;
            slot.tx_ready = tx_ready;
            slot.rx_events = 0;
            slot.tx_events = 0;
            let gen = slot.gen;
            let mut ev = libc::epoll_event {
                events: INTEREST,
                u64: (u64::from(gen) << 32) | u64::from(idx),
            };
            let epfd = reg.epfd.as_raw_fd();
            // SAFETY: valid fds and event.
            let mut rc = unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, &mut ev) };
            if rc < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EEXIST) {
                // The same socket under an earlier stream of this executor (from_raw_fd
                // again): take it over.
                // SAFETY: as above.
                rc = unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_MOD, fd, &mut ev) };
            }
            if rc < 0 {
                let err = io::Error::last_os_error();
                reg.free.push(idx);
                return Err(err);
            }
            Ok(Registration { idx, gen })
        })
    }

    fn with<T>(&self, f: impl FnOnce(&mut Slot) -> T) -> Option<T> {
        REGISTRY.with(|r| {
            let mut r = r.borrow_mut();
            let slot = r.as_mut()?.slots.get_mut(self.idx as usize)?;
            (slot.gen == self.gen).then(|| f(slot))
        })
    }

    /// Whether a read may find bytes (an edge came since the last `clear_rx`).
    pub(crate) fn rx_ready(&self) -> bool {
        self.with(|s| s.rx_ready).unwrap_or(true)
    }

    pub(crate) fn tx_ready(&self) -> bool {
        self.with(|s| s.tx_ready).unwrap_or(true)
    }

    /// A read found the socket empty: wait for the next edge (unless the peer has
    /// finished: its FIN can come in the same edge as the bytes a short read took).
    pub(crate) fn clear_rx(&self) {
        self.with(|s| {
            if s.rx_events & RX_STICKY != 0 {
                return;
            }
            s.rx_ready = false;
            s.rx_events = 0;
        });
    }

    /// A read came back shorter than asked: the socket is empty now, unless TCP urgent
    /// data (`EPOLLPRI`) stopped it at the urgent mark with bytes after it already queued,
    /// which no later edge would announce. Then the flag stays until a read says `EAGAIN`.
    pub(crate) fn clear_rx_short(&self) {
        let urgent = self.with(|s| s.rx_events & libc::EPOLLPRI as u32 != 0);
        if urgent == Some(false) {
            self.clear_rx();
        }
    }

    /// A write found the socket full: wait for the next edge.
    pub(crate) fn clear_tx(&self) {
        self.with(|s| {
            if s.tx_events & TX_STICKY != 0 {
                return;
            }
            s.tx_ready = false;
            s.tx_events = 0;
        });
    }

    /// `Ready(events)` once readable (or closed, or failed), else the task waits.
    pub(crate) fn poll_rx(&self, cx: &Context<'_>) -> Poll<u32> {
        self.with(|s| {
            if s.rx_ready {
                return Poll::Ready(s.rx_events);
            }
            set_waker(&mut s.rx, cx.waker());
            Poll::Pending
        })
        .unwrap_or(Poll::Ready(libc::EPOLLERR as u32))
    }

    /// `Ready(events)` once writable (or failed), else the task waits.
    pub(crate) fn poll_tx(&self, cx: &Context<'_>) -> Poll<u32> {
        self.with(|s| {
            if s.tx_ready {
                return Poll::Ready(s.tx_events);
            }
            set_waker(&mut s.tx, cx.waker());
            Poll::Pending
        })
        .unwrap_or(Poll::Ready(libc::EPOLLERR as u32))
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let _ = REGISTRY.try_with(|r| {
            if let Ok(mut r) = r.try_borrow_mut() {
                if let Some(reg) = r.as_mut() {
                    if let Some(slot) = reg.slots.get_mut(self.idx as usize) {
                        if slot.gen == self.gen {
                            slot.gen = slot.gen.wrapping_add(1);
                            slot.rx = None;
                            slot.tx = None;
                            reg.free.push(self.idx);
                        }
                    }
                }
            }
        });
    }
}

fn set_waker(at: &mut Option<Waker>, w: &Waker) {
    match at {
        Some(old) if old.will_wake(w) => {}
        _ => *at = Some(w.clone()),
    }
}

/// Apply one drained batch: flags set, wakers collected (woken by the caller, outside the
/// registry's borrow).
fn dispatch(slots: &mut [Slot], events: &[libc::epoll_event], wake: &mut Vec<Waker>) {
    for ev in events {
        let data = ev.u64;
        let (idx, gen) = (data as u32, (data >> 32) as u32);
        let Some(slot) = slots.get_mut(idx as usize) else {
            continue;
        };
        if slot.gen != gen {
            continue;
        }
        let bits = ev.events;
        if bits & IN_BITS != 0 {
            slot.rx_ready = true;
            slot.rx_events |= bits;
            wake.extend(slot.rx.take());
        }
        if bits & OUT_BITS != 0 {
            slot.tx_ready = true;
            slot.tx_events |= bits;
            wake.extend(slot.tx.take());
        }
    }
}

/// The epoll instance of `executor`, once one of its sockets has registered.
pub(crate) fn epfd(executor: usize) -> Option<RawFd> {
    REGISTRY.with(|r| {
        let r = r.try_borrow().ok()?;
        let reg = r.as_ref()?;
        (reg.executor == executor).then(|| reg.epfd.as_raw_fd())
    })
}

/// Add one of the executor's own fds (an io_uring ring's) to its instance, so that a sleep
/// in `epoll_wait` ends when it becomes readable. Its events carry no slot.
pub(crate) fn watch(epfd: RawFd, fd: RawFd) -> io::Result<()> {
    let mut ev = libc::epoll_event {
        events: (libc::EPOLLIN | libc::EPOLLET) as u32,
        u64: NO_SLOT,
    };
    // SAFETY: valid fds and event.
    if unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
        let err = io::Error::last_os_error();
        // Added by an earlier try that failed on the other ring.
        if err.raw_os_error() != Some(libc::EEXIST) {
            return Err(err);
        }
    }
    Ok(())
}

/// Take every event `executor`'s instance holds (non-blocking `epoll_wait`s), set the
/// sockets' flags and wake their tasks. Returns the number of tasks woken; no system call
/// before the first socket registers.
pub(crate) fn drain(executor: usize) -> usize {
    collect(executor, None)
}

/// Sleep in `executor`'s instance until an edge (a socket's, or a ring's), a signal or
/// task work (`EINTR`), or `timeout`; then drain it as `drain` does.
pub(crate) fn sleep(executor: usize, timeout: Option<std::time::Duration>) -> usize {
    collect(executor, Some(timeout))
}

static NO_PWAIT2: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `epoll_pwait2` (nanosecond timeout; Linux 5.11), or `epoll_wait` with the timeout
/// rounded up to a millisecond where the kernel lacks it.
fn wait_for(epfd: RawFd, events: &mut [libc::epoll_event], timeout: Option<std::time::Duration>) -> i32 {
    use std::sync::atomic::Ordering::Relaxed;
    let max = events.len() as i32;
    if !NO_PWAIT2.load(Relaxed) {
        let ts = timeout.map(|d| libc::timespec {
            tv_sec: d.as_secs().min(i64::MAX as u64) as libc::time_t,
            tv_nsec: d.subsec_nanos() as libc::c_long,
        });
        let tsp = ts.as_ref().map_or(std::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: valid fd, buffer of `max` events, timespec or null, no signal mask.
        let n = unsafe {
            libc::syscall(
                libc::SYS_epoll_pwait2,
                epfd,
                events.as_mut_ptr(),
                max,
                tsp,
                std::ptr::null::<libc::sigset_t>(),
                0usize,
            )
        } as i32;
        if n >= 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ENOSYS) {
            return n;
        }
        NO_PWAIT2.store(true, Relaxed);
    }
    let ms = match timeout {
        None => -1,
        Some(d) => d.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32,
    };
    // SAFETY: valid fd and buffer of `max` events.
    unsafe { libc::epoll_wait(epfd, events.as_mut_ptr(), max, ms) }
}

/// `wait`: `None` never blocks; `Some(timeout)` blocks the first `epoll_wait` (for ever
/// when `timeout` is `None`).
fn collect(executor: usize, mut wait: Option<Option<std::time::Duration>>) -> usize {
    let mut woken = 0;
    loop {
        let (mut wake, full) = match REGISTRY.with(|r| {
            let mut r = r.try_borrow_mut().ok()?;
            let reg = r.as_mut().filter(|reg| reg.executor == executor)?;
            let epfd = reg.epfd.as_raw_fd();
            let n = match wait.take() {
                None => {
                    // SAFETY: valid fd and buffer of BATCH events.
                    unsafe { libc::epoll_wait(epfd, reg.events.as_mut_ptr(), BATCH as i32, 0) }
                }
                Some(timeout) => wait_for(epfd, &mut reg.events, timeout),
            };
            if n <= 0 {
                // Empty, timed out or interrupted: the next drain looks again.
                return None;
            }
            let n = n as usize;
            let mut wake = std::mem::take(&mut reg.wake);
            dispatch(&mut reg.slots, &reg.events[..n], &mut wake);
            Some((wake, n == BATCH))
        }) {
            Some(x) => x,
            None => return woken,
        };
        woken += wake.len();
        for w in wake.drain(..) {
            w.wake();
        }
        // Give the (empty) buffer back for the next drain.
        REGISTRY.with(|r| {
            if let Ok(mut r) = r.try_borrow_mut() {
                if let Some(reg) = r.as_mut() {
                    if reg.wake.capacity() < wake.capacity() {
                        reg.wake = wake;
                    }
                }
            }
        });
        if !full {
            return woken;
        }
    }
}
