// Unless explicitly stated otherwise all files in this repository are licensed
// under the MIT/Apache-2.0 License, at your convenience
//
// This product includes software developed at Datadog (https://www.datadoghq.com/). Copyright 2020 Datadog, Inc.
//
use crate::{
    reactor::Reactor,
    sys::{self, Source, SourceType},
};
use futures_lite::ready;
use nix::sys::socket::MsgFlags;
use std::{
    cell::Cell,
    io,
    net::Shutdown,
    os::unix::io::{AsRawFd, FromRawFd, RawFd},
    rc::{Rc, Weak},
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};

type Result<T> = crate::Result<T, ()>;

/// Root trait for socket stream receive buffer
pub trait RxBuf {
    fn read(&mut self, buf: &mut [u8]) -> usize;
    fn peek(&self, buf: &mut [u8]) -> usize;
    fn is_empty(&self) -> bool;
    fn as_bytes(&self) -> &[u8];
    fn consume(&mut self, amt: usize);
    fn buffer_size(&self) -> usize;
    fn handle_result(&mut self, result: usize);
    fn unfilled(&mut self) -> &mut [u8];
}

#[derive(Debug, Default)]
pub struct NonBuffered;

impl RxBuf for NonBuffered {
    fn read(&mut self, _buf: &mut [u8]) -> usize {
        0
    }

    fn peek(&self, _buf: &mut [u8]) -> usize {
        0
    }

    fn is_empty(&self) -> bool {
        true
    }

    fn as_bytes(&self) -> &[u8] {
        &[]
    }

    fn consume(&mut self, _amt: usize) {}

    fn buffer_size(&self) -> usize {
        0
    }

    fn handle_result(&mut self, _result: usize) {}

    fn unfilled(&mut self) -> &mut [u8] {
        &mut []
    }
}

/// Trait for receive buffer implementations
pub trait Buffered: RxBuf {}

/// Non-shared fixed sized receive buffer allocated
/// when buffered stream is created
#[derive(Debug)]
pub struct Preallocated {
    buf: Vec<u8>,
    head: usize,
    tail: usize,
    cap: usize,
}

impl Preallocated {
    const DEFAULT_BUFFER_SIZE: usize = 8192;

    /// Creates a fixed sized receive buffer
    pub fn new(size: usize) -> Self {
        Self {
            buf: vec![0; size],
            tail: 0,
            head: 0,
            cap: size,
        }
    }
}

impl Default for Preallocated {
    fn default() -> Self {
        Self::new(Self::DEFAULT_BUFFER_SIZE)
    }
}

impl Preallocated {
    fn len(&self) -> usize {
        self.tail - self.head
    }
}

impl Buffered for Preallocated {}

impl RxBuf for Preallocated {
    fn read(&mut self, buf: &mut [u8]) -> usize {
        let sz = std::cmp::min(self.len(), buf.len());
        if sz > 0 {
            buf[..sz].copy_from_slice(&self.buf[self.head..self.head + sz]);
            self.head += sz;
        }
        sz
    }

    fn peek(&self, buf: &mut [u8]) -> usize {
        let sz = std::cmp::min(self.len(), buf.len());
        if sz > 0 {
            buf[..sz].copy_from_slice(&self.buf[self.head..self.head + sz]);
        }
        sz
    }

    fn is_empty(&self) -> bool {
        self.head >= self.tail
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[self.head..self.tail]
    }

    fn consume(&mut self, amt: usize) {
        self.head += std::cmp::min(self.len(), amt);
    }

    fn buffer_size(&self) -> usize {
        self.cap
    }

    fn handle_result(&mut self, result: usize) {
        self.tail += result;
    }

    fn unfilled(&mut self) -> &mut [u8] {
        if self.len() == 0 {
            self.head = 0;
            self.tail = 0;
        }
        &mut self.buf[self.tail..]
    }
}

#[derive(Debug)]
struct Timeout {
    id: u64,
    timeout: Cell<Option<Duration>>,
    timer: Cell<Option<Instant>>,
}

impl Timeout {
    fn new(id: u64) -> Self {
        Self {
            id,
            timeout: Cell::new(None),
            timer: Cell::new(None),
        }
    }

    fn get(&self) -> Option<Duration> {
        self.timeout.get()
    }

    fn set(&self, dur: Option<Duration>) -> Result<()> {
        if let Some(dur) = dur.as_ref() {
            if dur.as_nanos() == 0 {
                return Err(io::Error::from_raw_os_error(libc::EINVAL).into());
            }
        }
        self.timeout.set(dur);
        Ok(())
    }

    fn maybe_set_timer(&self, reactor: &Reactor, waker: &Waker) {
        if let Some(timeout) = self.timeout.get() {
            if self.timer.get().is_none() {
                let deadline = Instant::now() + timeout;
                reactor.insert_timer(self.id, deadline, waker);
                self.timer.set(Some(deadline));
            }
        }
    }

    fn cancel_timer(&self, reactor: &Reactor) {
        if self.timer.take().is_some() {
            reactor.remove_timer(self.id);
        }
    }

    fn check(&self, reactor: &Reactor) -> io::Result<()> {
        if let Some(deadline) = self.timer.get() {
            if !reactor.timer_exists(&(deadline, self.id)) {
                reactor.remove_timer(self.id);
                self.timer.take();
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "Operation timed out",
                ));
            }
        }
        Ok(())
    }
}

/// tollgate patch: a stream's read and write timeouts, allocated only once one is set.
#[derive(Debug)]
struct Timeouts {
    write: Timeout,
    read: Timeout,
}

#[derive(Debug)]
pub(crate) struct NonBufferedStream<S> {
    reactor: Weak<Reactor>,
    stream: S,
    source_tx: Option<Source>,
    source_rx: Option<Source>,
    /// tollgate patch: a poll for the peer's shutdown alone ([`Self::poll_peer_closed`]).
    source_hup: Option<Source>,
    /// tollgate patch: the socket's place in the executor's epoll instance
    /// (`super::ready`), once it has had to wait; `Err(())` when that failed (the io_uring
    /// polls serve it then) or is turned off.
    ready: Option<std::result::Result<super::ready::Registration, ()>>,
    /// tollgate patch: upstream keeps both timeouts inline (80 bytes a stream, two streams
    /// per proxied connection) though most streams never set one.
    timeouts: std::cell::OnceCell<Box<Timeouts>>,
}

impl<S: AsRawFd> NonBufferedStream<S> {
    fn read_timeout(&self) -> Option<&Timeout> {
        self.timeouts.get().map(|t| &t.read)
    }

    fn write_timeout(&self) -> Option<&Timeout> {
        self.timeouts.get().map(|t| &t.write)
    }

    fn timeouts(&self) -> &Timeouts {
        self.timeouts.get_or_init(|| {
            let reactor = self.reactor.upgrade().unwrap();
            Box::new(Timeouts {
                write: Timeout::new(reactor.register_timer()),
                read: Timeout::new(reactor.register_timer()),
            })
        })
    }

    /// tollgate patch: the epoll registration, made now (with the given readiness
    /// guesses) if there is none; `None`: this stream waits on io_uring polls.
    fn ready(&mut self, rx: bool, tx: bool) -> Option<&super::ready::Registration> {
        if self.ready.is_none() {
            self.ready = Some(if super::ready::enabled() {
                super::ready::Registration::new(self.stream.as_raw_fd(), rx, tx).map_err(drop)
            } else {
                Err(())
            });
        }
        self.registered()
    }

    /// tollgate patch: the registration if there is one.
    fn registered(&self) -> Option<&super::ready::Registration> {
        self.ready.as_ref().and_then(|r| r.as_ref().ok())
    }

    /// tollgate patch: reads and writes go through the epoll registration (made at the
    /// first wait), not the io_uring polls: on unless turned off or registering failed.
    fn uses_epoll(&self) -> bool {
        super::ready::enabled() && !matches!(self.ready, Some(Err(())))
    }

    /// tollgate patch: the caller's own read found the socket empty (`EAGAIN`): its next
    /// `poll_readable` waits for a new edge.
    pub(crate) fn clear_readable(&self) {
        if let Some(r) = self.registered() {
            r.clear_rx();
        }
    }

    /// tollgate patch: the caller's own `recv` from a stream socket came back short.
    pub(crate) fn clear_readable_short(&self) {
        if let Some(r) = self.registered() {
            r.clear_rx_short();
        }
    }

    /// tollgate patch: the caller's own write found the socket full (`EAGAIN`).
    pub(crate) fn clear_writable(&self) {
        if let Some(r) = self.registered() {
            r.clear_tx();
        }
    }

    fn init(&mut self) {
        if super::ready::enabled() {
            // Registered when it first has to wait.
            return;
        }
        let reactor = self.reactor.upgrade().unwrap();
        let stream_fd = self.stream.as_raw_fd();
        self.source_rx = Some(reactor.poll_read_ready(stream_fd));
    }

    pub(crate) fn try_peek(&self, buf: &mut [u8]) -> Option<io::Result<usize>> {
        super::yolo_peek(self.stream.as_raw_fd(), buf)
    }

    pub(crate) async fn peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        let source = self.reactor.upgrade().unwrap().recv(
            self.stream.as_raw_fd(),
            buf.len(),
            MsgFlags::MSG_PEEK,
        );

        let sz = source.collect_rw().await?;
        match source.extract_source_type() {
            SourceType::SockRecv(mut src) => {
                buf[0..sz].copy_from_slice(&src.take().unwrap().as_bytes()[0..sz]);
            }
            _ => unreachable!(),
        }
        Ok(sz)
    }

    pub(crate) fn poll_read(
        &mut self,
        cx: &Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        if self.uses_epoll() {
            return self.poll_read_edge(cx, buf);
        }
        let reactor = self.reactor.upgrade().unwrap();
        let reactor = reactor.as_ref();

        let no_pending_poll = self
            .source_rx
            .as_ref()
            .map(|src| src.result().is_some())
            .unwrap_or(true);

        if no_pending_poll {
            if let Some(result) = super::yolo_recv(self.stream.as_raw_fd(), buf) {
                self.source_rx.take();
                if let Some(t) = self.read_timeout() {
                    t.cancel_timer(reactor);
                }
                let result = poll_err!(result);
                // Start an early poll if the buffer is not fully filled. So when
                // the next time `poll_read` is called, it will be known immediately
                // whether the underlying stream is ready for reading.
                if result > 0 && result < buf.len() {
                    self.source_rx = Some(reactor.poll_read_ready(self.stream.as_raw_fd()));
                    // The `rush_dispatch`s here and after could be removed to
                    // improve performance if #458 is handled appropriately.
                    // reactor.rush_dispatch(self.source_rx.as_ref().unwrap());
                }
                return Poll::Ready(Ok(result));
            }
        }

        if let Some(t) = self.read_timeout() {
            poll_err!(t.check(reactor));
        }

        if no_pending_poll {
            self.source_rx = Some(reactor.poll_read_ready(self.stream.as_raw_fd()));
            // reactor.rush_dispatch(self.source_rx.as_ref().unwrap());
        }

        let source = self.source_rx.as_ref().unwrap();
        source.add_waiter_single(cx.waker());
        if let Some(t) = self.read_timeout() {
            t.maybe_set_timer(reactor, cx.waker());
        }
        Poll::Pending
    }

    /// tollgate patch: `poll_read` on the epoll registration.
    fn poll_read_edge(&mut self, cx: &Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let fd = self.stream.as_raw_fd();
        if self.registered().map(|r| r.rx_ready()).unwrap_or(true) {
            if let Some(result) = super::yolo_recv(fd, buf) {
                if let (Ok(n), Some(r)) = (&result, self.registered()) {
                    if *n < buf.len() {
                        // Short: the socket is empty now; its next bytes are a new edge.
                        r.clear_rx_short();
                    }
                }
                if let Some(t) = self.read_timeout() {
                    let reactor = self.reactor.upgrade().unwrap();
                    t.cancel_timer(reactor.as_ref());
                }
                return Poll::Ready(result);
            }
            match self.registered() {
                Some(r) => r.clear_rx(),
                None => {
                    if self.ready(false, true).is_none() {
                        return self.poll_read(cx, buf);
                    }
                }
            }
        }
        let reactor = self.reactor.upgrade().unwrap();
        let reactor = reactor.as_ref();
        if let Some(t) = self.read_timeout() {
            poll_err!(t.check(reactor));
        }
        let Some(r) = self.registered() else {
            return self.poll_read(cx, buf);
        };
        if r.poll_rx(cx).is_ready() {
            // An edge came between the read and now: try again.
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        if let Some(t) = self.read_timeout() {
            t.maybe_set_timer(reactor, cx.waker());
        }
        Poll::Pending
    }

    /// tollgate patch: `poll_write` on the epoll registration.
    fn poll_write_edge(&mut self, cx: &Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let fd = self.stream.as_raw_fd();
        if self.registered().map(|r| r.tx_ready()).unwrap_or(true) {
            if let Some(result) = super::yolo_send(fd, buf) {
                if let Some(t) = self.write_timeout() {
                    let reactor = self.reactor.upgrade().unwrap();
                    t.cancel_timer(reactor.as_ref());
                }
                return Poll::Ready(result);
            }
            match self.registered() {
                Some(r) => r.clear_tx(),
                None => {
                    if self.ready(true, false).is_none() {
                        return self.poll_write(cx, buf);
                    }
                }
            }
        }
        let reactor = self.reactor.upgrade().unwrap();
        let reactor = reactor.as_ref();
        if let Some(t) = self.write_timeout() {
            poll_err!(t.check(reactor));
        }
        let Some(r) = self.registered() else {
            return self.poll_write(cx, buf);
        };
        if r.poll_tx(cx).is_ready() {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        if let Some(t) = self.write_timeout() {
            t.maybe_set_timer(reactor, cx.waker());
        }
        Poll::Pending
    }

    pub(crate) fn poll_write(&mut self, cx: &Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.uses_epoll() {
            return self.poll_write_edge(cx, buf);
        }
        // On the write path, we always start with calling `yolo_send`, because
        // it is very likely to success. It could be a waste if it already timed
        // out since the last `poll_write`, but it would not cost much more to
        // give it one last chance in this case.
        if let Some(result) = super::yolo_send(self.stream.as_raw_fd(), buf) {
            let reactor = self.reactor.upgrade().unwrap();
            if let Some(t) = self.write_timeout() {
                t.cancel_timer(reactor.as_ref());
            }
            self.source_tx.take();
            return Poll::Ready(result);
        }

        let reactor = self.reactor.upgrade().unwrap();
        let reactor = reactor.as_ref();
        if let Some(t) = self.write_timeout() {
            poll_err!(t.check(reactor));
        }

        let no_pending_poll = self
            .source_tx
            .as_ref()
            .map(|src| src.result().is_some())
            .unwrap_or(true);

        if no_pending_poll {
            self.source_tx = Some(reactor.poll_write_ready(self.stream.as_raw_fd()));
        }

        let source = self.source_tx.as_ref().unwrap();
        source.add_waiter_single(cx.waker());
        if let Some(t) = self.write_timeout() {
            t.maybe_set_timer(reactor, cx.waker());
        }
        Poll::Pending
    }

    /// tollgate patch: resolve once the socket is readable (or closed, or failed), moving
    /// no byte: for callers that move the bytes themselves (splice(2)). Shares the read
    /// side's pending poll with `poll_read`.
    pub(crate) fn poll_readable(&mut self, cx: &Context<'_>) -> Poll<io::Result<()>> {
        if let Some(r) = self.ready(false, true) {
            return r.poll_rx(cx).map(|_| Ok(()));
        }
        let reactor = self.reactor.upgrade().unwrap();
        if let Some(src) = self.source_rx.as_ref() {
            if let Some(res) = src.result() {
                self.source_rx.take();
                return Poll::Ready(res.map(|_| ()));
            }
            src.add_waiter_single(cx.waker());
            return Poll::Pending;
        }
        let src = reactor.poll_read_ready(self.stream.as_raw_fd());
        src.add_waiter_single(cx.waker());
        self.source_rx = Some(src);
        Poll::Pending
    }

    /// tollgate patch: a readiness poll is armed for reading (it may have fired already):
    /// `poll_readable` answers without a syscall.
    pub(crate) fn read_poll_armed(&self) -> bool {
        self.registered().is_some() || self.source_rx.is_some()
    }

    /// tollgate patch: resolve once the peer has shut down its side (`POLLRDHUP`), or the
    /// connection failed or hung up, whether or not unread bytes wait; with the poll's
    /// `revents`. Its poll is its own: it does not disturb the read side's.
    pub(crate) fn poll_peer_closed(&mut self, cx: &Context<'_>) -> Poll<io::Result<u32>> {
        if let Some(src) = self.source_hup.as_ref() {
            if let Some(res) = src.result() {
                self.source_hup = None;
                return Poll::Ready(res.map(|events| events as u32));
            }
            src.add_waiter_single(cx.waker());
            return Poll::Pending;
        }
        let reactor = self.reactor.upgrade().unwrap();
        let src = reactor.poll_peer_closed(self.stream.as_raw_fd());
        src.add_waiter_single(cx.waker());
        self.source_hup = Some(src);
        Poll::Pending
    }

    /// tollgate patch: the same for writing.
    pub(crate) fn write_poll_armed(&self) -> bool {
        self.registered().is_some() || self.source_tx.is_some()
    }

    /// tollgate patch: resolve once the socket is writable (or failed), moving no byte.
    pub(crate) fn poll_writable(&mut self, cx: &Context<'_>) -> Poll<io::Result<()>> {
        self.poll_writable_events(cx).map(|r| r.map(|_| ()))
    }

    /// tollgate patch: [`Self::poll_writable`] with the poll's `revents` (`POLLOUT`,
    /// `POLLERR`, `POLLHUP`, ...).
    pub(crate) fn poll_writable_events(&mut self, cx: &Context<'_>) -> Poll<io::Result<u32>> {
        if let Some(r) = self.ready(false, false) {
            return r.poll_tx(cx).map(Ok);
        }
        let reactor = self.reactor.upgrade().unwrap();
        if let Some(src) = self.source_tx.as_ref() {
            if let Some(res) = src.result() {
                self.source_tx.take();
                return Poll::Ready(res.map(|events| events as u32));
            }
            src.add_waiter_single(cx.waker());
            return Poll::Pending;
        }
        let src = reactor.poll_write_ready(self.stream.as_raw_fd());
        src.add_waiter_single(cx.waker());
        self.source_tx = Some(src);
        Poll::Pending
    }

    pub(crate) fn poll_close(&mut self, _: &Context<'_>) -> Poll<io::Result<()>> {
        self.source_tx.take();
        Poll::Ready(sys::shutdown(self.stream.as_raw_fd(), Shutdown::Write))
    }

    /// io_uring has support for shutdown now, but it is not in any released
    /// kernel. Even with my "let's use latest" policy it would be crazy to
    /// mandate a kernel that doesn't even exist. So in preparation for that
    /// we'll sync-emulate this but already on an async wrapper
    pub(crate) fn poll_shutdown(
        &self,
        _cx: &mut Context<'_>,
        how: Shutdown,
    ) -> Poll<io::Result<()>> {
        Poll::Ready(sys::shutdown(self.stream.as_raw_fd(), how))
    }
}

#[derive(Debug)]
pub(crate) struct GlommioStream<S, B> {
    pub(crate) stream: NonBufferedStream<S>,
    rx_buf: B,
    rx_done: Cell<bool>,
}

impl<S> From<socket2::Socket> for GlommioStream<S, NonBuffered>
where
    S: AsRawFd + From<socket2::Socket> + Unpin,
{
    fn from(socket: socket2::Socket) -> Self {
        let mut stream = GlommioStream::unarmed(socket);
        stream.stream.init();
        stream
    }
}

impl<S> GlommioStream<S, NonBuffered>
where
    S: AsRawFd + From<socket2::Socket> + Unpin,
{
    /// tollgate patch: the stream without the read-readiness poll that `From` arms at
    /// once (for a caller that reads the socket itself first: its first `poll_read` tries
    /// the socket and arms a poll only if nothing is there).
    pub(crate) fn unarmed(socket: socket2::Socket) -> Self {
        let reactor = crate::executor().reactor();
        GlommioStream {
            stream: NonBufferedStream {
                reactor: Rc::downgrade(&reactor),
                stream: socket.into(),
                source_tx: None,
                source_rx: None,
                source_hup: None,
                ready: None,
                timeouts: std::cell::OnceCell::new(),
            },
            rx_buf: NonBuffered,
            rx_done: Cell::new(false),
        }
    }
}

impl<S: AsRawFd> AsRawFd for GlommioStream<S, NonBuffered> {
    fn as_raw_fd(&self) -> RawFd {
        self.stream.stream.as_raw_fd()
    }
}

impl<S> FromRawFd for GlommioStream<S, NonBuffered>
where
    S: AsRawFd + FromRawFd + From<socket2::Socket> + Unpin,
{
    unsafe fn from_raw_fd(fd: RawFd) -> Self {
        let socket = socket2::Socket::from_raw_fd(fd);
        GlommioStream::from(socket)
    }
}

impl<S> GlommioStream<S, NonBuffered> {
    pub(crate) fn buffered_with<B: Buffered>(self, rx_buf: B) -> GlommioStream<S, B> {
        GlommioStream {
            stream: self.stream,
            rx_buf,
            rx_done: self.rx_done,
        }
    }
}

impl<S: AsRawFd, B: RxBuf> GlommioStream<S, B> {
    /// Receives data on the socket from the remote address to which it is
    /// connected, without removing that data from the queue.
    ///
    /// On success, returns the number of bytes peeked.
    /// Successive calls return the same data. This is accomplished by passing
    /// `MSG_PEEK` as a flag to the underlying `recv` system call.
    pub(crate) async fn peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        let mut pos = self.rx_buf.peek(buf);
        if pos < buf.len() && !self.rx_done.get() {
            if let Some(result) = self.stream.try_peek(&mut buf[pos..]) {
                match result {
                    Err(e) => return Err(e),
                    Ok(len) => {
                        pos += len;
                        if len == 0 {
                            self.rx_done.set(true);
                        }
                    }
                }
            }
        }
        if pos > 0 || self.rx_done.get() {
            return Ok(pos);
        }
        self.stream.peek(buf).await
    }

    pub(crate) fn poll_read(
        &mut self,
        cx: &Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        if self.rx_buf.is_empty() {
            if buf.len() >= self.rx_buf.buffer_size() {
                return self.stream.poll_read(cx, buf);
            }
            if !self.rx_done.get() {
                poll_err!(ready!(self.poll_replenish_buffer(cx)));
            }
        }
        Poll::Ready(Ok(self.rx_buf.read(buf)))
    }

    fn poll_replenish_buffer(&mut self, cx: &Context<'_>) -> Poll<io::Result<usize>> {
        let result = poll_err!(ready!(self.stream.poll_read(cx, self.rx_buf.unfilled())));
        self.rx_buf.handle_result(result);
        if result == 0 {
            self.rx_done.set(true);
        }
        Poll::Ready(Ok(result))
    }

    pub(crate) fn poll_write(&mut self, cx: &Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.stream.poll_write(cx, buf)
    }

    pub(crate) fn poll_flush(&self, _cx: &Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    pub(crate) fn poll_close(&mut self, cx: &Context<'_>) -> Poll<io::Result<()>> {
        self.stream.poll_close(cx)
    }

    pub(crate) fn poll_shutdown(
        &self,
        cx: &mut Context<'_>,
        how: Shutdown,
    ) -> Poll<io::Result<()>> {
        self.stream.poll_shutdown(cx, how)
    }

    pub(crate) fn set_write_timeout(&self, dur: Option<Duration>) -> Result<()> {
        self.stream.timeouts().write.set(dur)
    }

    pub(crate) fn set_read_timeout(&self, dur: Option<Duration>) -> Result<()> {
        self.stream.timeouts().read.set(dur)
    }

    pub(crate) fn write_timeout(&self) -> Option<Duration> {
        self.stream.write_timeout().and_then(Timeout::get)
    }

    pub(crate) fn read_timeout(&self) -> Option<Duration> {
        self.stream.read_timeout().and_then(Timeout::get)
    }

    pub(crate) fn stream(&self) -> &S {
        &self.stream.stream
    }
}

impl<S: AsRawFd, B: Buffered> GlommioStream<S, B> {
    pub(crate) fn poll_fill_buf(&mut self, cx: &Context<'_>) -> Poll<io::Result<&[u8]>> {
        if self.rx_buf.is_empty() {
            poll_err!(ready!(self.poll_replenish_buffer(cx)));
        }
        Poll::Ready(Ok(self.rx_buf.as_bytes()))
    }

    pub(crate) fn consume(&mut self, amt: usize) {
        self.rx_buf.consume(amt);
    }
}
