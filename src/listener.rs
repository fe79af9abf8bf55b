//! Listening sockets (one SO_REUSEPORT socket per listener per executor, built with socket2)
//! and each core's accept loop.

use crate::worker::Worker;
use glommio::net::TcpListener;
use socket2::{Domain, Protocol, Socket, Type};
use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

/// Accept backlog asked of the kernel (it is capped by `net.core.somaxconn`).
pub const BACKLOG: i32 = 8192;

/// Fail when another process already listens on `addr`. SO_REUSEPORT would otherwise let a
/// second gateway (or anything else of the same user) silently take a share of the traffic.
/// A probe bind without SO_REUSEPORT conflicts with any socket listening there.
pub fn ensure_free(addr: SocketAddr) -> std::io::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // SO_REUSEADDR: connections of a previous run in TIME_WAIT do not count, a listener does.
    probe.set_reuse_address(true)?;
    if addr.is_ipv6() {
        probe.set_only_v6(true)?;
    }
    probe.bind(&addr.into())
}

/// A listening socket for one executor: SO_REUSEPORT so every core has its own accept
/// queue, TCP_NODELAY inherited by accepted sockets, IPv6 sockets v6-only. Non-blocking:
/// the executor's accept asks it directly (one `accept4`, EAGAIN when none is queued).
pub fn bind(addr: SocketAddr) -> std::io::Result<Socket> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(true)?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.set_nodelay(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(BACKLOG)?;
    Ok(sock)
}

/// Accept until the core starts draining; each connection runs as its own task.
pub async fn accept_loop(w: Rc<Worker>, listener: TcpListener, index: usize) {
    loop {
        // The accept gives the peer's address and a non-blocking socket: no getpeername,
        // no fcntl per connection.
        let next =
            futures_lite::future::or(async { Some(listener.accept_with_peer().await) }, async {
                w.core.drain.wait().await;
                None
            })
            .await;
        match next {
            None => break,
            Some(Ok((stream, peer))) => {
                let cap = w
                    .services
                    .world
                    .load()
                    .config
                    .server
                    .max_connections_per_worker;
                if w.active() >= cap {
                    // Over the per-core cap: close at once rather than queue without bound.
                    tracing::warn!(
                        worker = w.core.id,
                        cap,
                        "connection cap reached; closing new connection"
                    );
                    drop(stream);
                    continue;
                }
                if let Some(conn) = serve_isolated(w.clone(), stream, peer, index) {
                    glommio::spawn_local(conn).detach();
                }
            }
            Some(Err(e)) => {
                // EMFILE/ENFILE and friends: back off briefly instead of spinning.
                tracing::warn!(worker = w.core.id, error = %e, "accept failed");
                glommio::timer::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// One connection's task, with a panic caught at its boundary: the connection is dropped
/// (its guards release slots and leases), the panic is counted and logged, and the executor
/// and its other connections carry on. A plain future around the session's, not an `async`
/// block: awaiting a captured future moves it into the block's own state, so the task
/// would hold the session twice for the connection's life.
fn serve_isolated(
    w: Rc<Worker>,
    stream: glommio::net::TcpStream,
    peer: Option<std::net::SocketAddr>,
    index: usize,
) -> Option<Isolated<impl Future<Output = ()>>> {
    use futures_lite::FutureExt;
    Some(Isolated {
        session: AssertUnwindSafe(crate::session::serve(w.clone(), stream, peer, index)?)
            .catch_unwind(),
        w,
    })
}

pin_project_lite::pin_project! {
    /// [`serve_isolated`]'s future.
    struct Isolated<F> {
        #[pin]
        session: futures_lite::future::CatchUnwind<AssertUnwindSafe<F>>,
        w: Rc<Worker>,
    }
}

impl<F: Future<Output = ()>> Future for Isolated<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        match this.session.poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(())) => Poll::Ready(()),
            Poll::Ready(Err(panic)) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-string panic".into());
                this.w.core.metrics.panics.inc();
                tracing::error!(worker = this.w.core.id, panic = %what, "connection task panicked; connection dropped");
                Poll::Ready(())
            }
        }
    }
}
