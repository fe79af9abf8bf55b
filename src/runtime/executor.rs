//! One executor: its connections' core, its periodic work, its drain; and the `/healthz`
//! check that every executor still ticks.

use crate::admin;
use crate::metrics::CoreMetrics;
use crate::util::{epoch_ms, within};
use crate::worker::{Services, Worker};
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often expired sticky sessions are swept (by worker 0).
const SESSION_SWEEP: Duration = Duration::from_secs(30);

fn heartbeat(m: &CoreMetrics) {
    m.heartbeat_ms
        .store(epoch_ms(Instant::now()).max(1), Ordering::Relaxed);
}

/// `/healthz`: every executor ticked recently and the gateway is not draining.
pub(super) struct ExecutorHealth {
    pub(super) cores: Vec<Arc<CoreMetrics>>,
}

/// An executor that has not ticked for this long is reported as stalled.
const STALL_AFTER_MS: u64 = 5_000;

impl admin::Health for ExecutorHealth {
    fn check(&self) -> Result<(), String> {
        if super::DRAINING.load(Ordering::Relaxed) {
            return Err("draining".into());
        }
        let now = epoch_ms(Instant::now());
        for (i, c) in self.cores.iter().enumerate() {
            let beat = c.heartbeat_ms.load(Ordering::Relaxed);
            if beat == 0 || now.saturating_sub(beat) > STALL_AFTER_MS {
                return Err(format!("executor {i} is not serving"));
            }
        }
        Ok(())
    }
}

/// How often each core settles spent bytes and returns idle leases.
const QUOTA_TICK: Duration = Duration::from_secs(1);

/// One executor's life: its background tasks, its accept loops until the drain, then the
/// wait for its connections (cut at the drain timeout).
pub(super) async fn worker_main(
    id: usize,
    workers: usize,
    services: Services,
    metrics: Arc<CoreMetrics>,
    fds: Vec<(RawFd, usize)>,
    bell: std::os::fd::OwnedFd,
) {
    let w = Worker::new(id, workers, services, metrics);
    background(&w, bell);
    let mut loops = Vec::with_capacity(fds.len());
    for (fd, index) in fds {
        // SAFETY: the fd is a bound, listening socket created for this worker alone.
        let l = unsafe { <glommio::net::TcpListener as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        loops.push(glommio::spawn_local(crate::listener::accept_loop(
            w.clone(),
            l,
            index,
        )));
    }
    for l in loops {
        l.await;
    }
    let drain = w.services.world.load().config.server.drain_timeout.0;
    let live = w.active();
    if live > 0 {
        tracing::info!(worker = id, live, "waiting for live connections");
        if within(drain, w.all_closed()).await.is_none() {
            tracing::warn!(
                worker = id,
                left = w.active(),
                "drain timeout; closing the rest"
            );
            // Tunnels end and log `end=drain`; a moment for them to do so.
            w.core.stop.fire();
            let _ = within(Duration::from_secs(1), w.all_closed()).await;
        }
    }
}

/// The core's periodic work: heartbeat and quota tick; the session sweep (worker 0); the
/// drain watch (`bell`: the read end of this executor's drain socket pair).
fn background(w: &Rc<Worker>, bell: std::os::fd::OwnedFd) {
    let ticker = w.clone();
    glommio::spawn_local(async move {
        loop {
            heartbeat(&ticker.core.metrics);
            glommio::timer::sleep(QUOTA_TICK).await;
            ticker.core.quota.tick();
        }
    })
    .detach();
    if w.core.id == 0 {
        let sweeper = w.clone();
        glommio::spawn_local(async move {
            loop {
                glommio::timer::sleep(SESSION_SWEEP).await;
                sweeper.services.sessions.table.sweep(Instant::now());
            }
        })
        .detach();
    }
    let watcher = w.clone();
    glommio::spawn_local(async move {
        use futures_lite::AsyncReadExt;
        use std::os::fd::{FromRawFd, IntoRawFd};
        // SAFETY: the socket is this executor's alone; the stream owns it from here on.
        let mut bell = unsafe { glommio::net::UnixStream::from_raw_fd(bell.into_raw_fd()) };
        // The signal thread's byte, or the pair's end (the process is going away): drain.
        let _ = bell.read(&mut [0u8; 1]).await;
        watcher.core.drain.fire();
    })
    .detach();
}
