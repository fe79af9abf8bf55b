//! The byte stream of one end of a proxied exchange: a plain TCP connection, or a client's
//! TLS session (an HTTPS proxy listener) over one. Both read and write as the same
//! `AsyncRead + AsyncWrite`, so the handlers, the relay and the meter never ask which:
//! under TLS they see (and the plan bills) the decrypted bytes.

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll};

/// A client's TLS session over its TCP connection.
pub type TlsStream = futures_rustls::server::TlsStream<Prefixed>;

/// One end's stream.
pub enum Stream {
    Plain(TcpStream),
    /// Boxed: a session's state is kilobytes, and only TLS clients pay for it.
    Tls(Box<TlsStream>),
}

impl Stream {
    /// The TCP connection underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => &s.get_ref().0.tcp,
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }

    fn tcp_mut(&mut self) -> &mut TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => &mut s.get_mut().0.tcp,
        }
    }

    /// Wait until the peer has sent more bytes (left unread) or has closed or reset the
    /// connection. It waits on the stream's own readiness poll, the one its last short
    /// read armed and its next read uses, so waiting costs no system call or io_uring
    /// operation, and an answer one `MSG_PEEK` of a byte. Under TLS this looks at the TCP
    /// connection (records, not plaintext): enough to tell "more is coming" from "gone".
    pub fn poll_peer(&mut self, cx: &mut Context<'_>) -> Poll<Peer> {
        let tcp = self.tcp_mut();
        loop {
            match tcp.poll_readable(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(_)) => return Poll::Ready(Peer::Gone),
                Poll::Ready(Ok(())) => {}
            }
            let mut b = 0u8;
            // SAFETY: a one-byte buffer on the stack; the fd is this stream's.
            let n = unsafe {
                libc::recv(
                    tcp.as_raw_fd(),
                    (&mut b as *mut u8).cast(),
                    1,
                    libc::MSG_PEEK | libc::MSG_DONTWAIT,
                )
            };
            match n {
                0 => return Poll::Ready(Peer::Gone),
                n if n > 0 => return Poll::Ready(Peer::Sent),
                _ => match io::Error::last_os_error().kind() {
                    // A readiness that was gone by the time it was looked at: wait again.
                    io::ErrorKind::WouldBlock => tcp.clear_readable(),
                    io::ErrorKind::Interrupted => {}
                    _ => return Poll::Ready(Peer::Gone),
                },
            }
        }
    }

    /// Resolve once the peer has shut down its side of the TCP connection (or reset it),
    /// even while bytes it sent before are unread: under TLS a session's end is a
    /// close_notify record and then the close, and the record alone is not the end.
    pub fn poll_closed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.tcp_mut().poll_peer_closed(cx).map(drop)
    }

    /// Write all of `data` with more to follow: a plain connection queues what it can with
    /// `MSG_MORE`, so the next write goes out in the same segments (TLS writes its record).
    pub async fn write_more(&mut self, data: &[u8]) -> io::Result<()> {
        use futures_lite::AsyncWriteExt;
        let mut sent = 0;
        if let Stream::Plain(s) = self {
            // SAFETY: valid fd, buffer and length.
            let n = unsafe {
                libc::send(
                    s.as_raw_fd(),
                    data.as_ptr().cast(),
                    data.len(),
                    libc::MSG_MORE | libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            // Anything short of all of it (a full buffer, an error) goes the usual way,
            // which also reports the error.
            sent = usize::try_from(n).unwrap_or(0);
        }
        self.write_all(&data[sent..]).await
    }
}

/// What [`Stream::poll_peer`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// More bytes wait to be read.
    Sent,
    /// The peer closed or reset the connection.
    Gone,
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        self.tcp().as_raw_fd()
    }
}

impl From<TcpStream> for Stream {
    fn from(s: TcpStream) -> Stream {
        Stream::Plain(s)
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_close(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_close(cx),
        }
    }
}

/// A TCP connection whose first bytes were already read (sniffed): they are read again
/// first, then the connection. What a TLS session is built on.
pub struct Prefixed {
    head: Vec<u8>,
    pos: usize,
    pub tcp: TcpStream,
}

impl Prefixed {
    pub fn new(head: Vec<u8>, tcp: TcpStream) -> Prefixed {
        Prefixed { head, pos: 0, tcp }
    }
}

impl AsyncRead for Prefixed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.pos < this.head.len() {
            let n = buf.len().min(this.head.len() - this.pos);
            buf[..n].copy_from_slice(&this.head[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.head.len() {
                this.head = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(n));
        }
        Pin::new(&mut this.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_close(cx)
    }
}
