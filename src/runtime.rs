//! Start-up and shut-down: one executor per worker pinned to a CPU, listeners bound for
//! each, signals (SIGTERM/SIGINT drain, SIGHUP reload), and the drain itself.

use crate::admin;
use crate::cluster::Cluster;
use crate::config::{self, Snapshot};
use crate::metrics::{CoreMetrics, Metrics};
use crate::plan::store::SqliteStore;
use crate::plan::Ledger;
use crate::route::sessions::SessionTable;
use crate::util::within;
use crate::worker::{Shared, Worker};
use arc_swap::ArcSwap;
use glommio::{LocalExecutorBuilder, Placement, PoolPlacement};
use std::os::fd::{IntoRawFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Set once by SIGTERM/SIGINT; each executor notices within [`DRAIN_POLL`].
static DRAINING: AtomicBool = AtomicBool::new(false);
const DRAIN_POLL: Duration = Duration::from_millis(50);

/// CPUs this process may run on.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

/// Raise a resource's soft limit to its hard limit; returns the soft limit in force.
/// RLIMIT_MEMLOCK: io_uring rings need locked memory. RLIMIT_NOFILE: one fd per client and
/// per outbound connection.
fn raise_limit(resource: libc::__rlimit_resource_t) -> u64 {
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(resource, &mut r) == 0 {
            if r.rlim_cur < r.rlim_max {
                r.rlim_cur = r.rlim_max;
                libc::setrlimit(resource, &r);
            }
            return r.rlim_cur;
        }
    }
    0
}

/// Everything `run` needs from the command line.
pub struct Options {
    pub config_path: PathBuf,
}

/// Run the gateway until SIGTERM/SIGINT and the drain that follows.
pub fn run(opts: Options, mut snap: Snapshot) -> Result<(), String> {
    let cpus = allowed_cpus();
    let workers = match snap.server.workers {
        0 => cpus.len().max(1),
        n => n,
    };
    let memlock = raise_limit(libc::RLIMIT_MEMLOCK);
    let nofile = raise_limit(libc::RLIMIT_NOFILE);
    if nofile < 65_536 {
        tracing::warn!(
            nofile,
            "RLIMIT_NOFILE is low for a proxy: raise it (LimitNOFILE=1048576 in the unit)"
        );
    }
    if memlock < 512 * 1024 {
        return Err(format!(
            "RLIMIT_MEMLOCK is {memlock} bytes; io_uring needs at least 512 KiB per process. \
             Raise it (ulimit -l 65536, or LimitMEMLOCK=infinity in the systemd unit)."
        ));
    }

    // Bind every listener once per worker. With port 0 the first socket picks the port
    // and the others join it, so all cores share one ephemeral port.
    let mut fds: Vec<Vec<(RawFd, usize)>> = vec![Vec::new(); workers];
    let mut bound = Vec::new();
    for (i, l) in snap.listeners.iter().enumerate() {
        crate::listener::ensure_free(l.listen).map_err(|e| {
            format!(
                "[[listener]] #{} (listen = \"{}\"): {e} (is another tollgate or another service \
                 already listening there?)",
                i + 1,
                l.listen
            )
        })?;
        let mut addr = l.listen;
        for per_worker in fds.iter_mut() {
            let sock = crate::listener::bind(addr).map_err(|e| {
                format!(
                    "[[listener]] #{} (listen = \"{}\"): cannot listen: {e}",
                    i + 1,
                    l.listen
                )
            })?;
            if addr.port() == 0 {
                if let Some(a) = sock.local_addr().ok().and_then(|a| a.as_socket()) {
                    addr = a;
                }
            }
            per_worker.push((sock.into_raw_fd(), i));
        }
        bound.push((addr, i, snap.networks[l.network].name.clone()));
    }

    tracing::info!(
        workers,
        listeners = snap.listeners.len(),
        networks = snap.networks.len(),
        exits = snap.exits.len(),
        accounts = snap.accounts.len(),
        "starting"
    );
    for n in &snap.networks {
        tracing::info!(network = %n.name, targeting = n.targeting, ttl_min = n.ttl_min, ttl_max = n.ttl_max, "network");
    }
    for e in &snap.exits {
        let kind = match &e.kind {
            config::ExitKind::Direct {
                source_ip: Some(ip),
            } => format!("direct from {ip}"),
            config::ExitKind::Direct { source_ip: None } => "direct".into(),
            config::ExitKind::Socks5(u) => format!("socks5 via {}:{}", u.host, u.port),
            config::ExitKind::Http(u) => format!("http via {}:{}", u.host, u.port),
        };
        tracing::info!(
            exit = %e.name,
            network = %snap.networks[e.network].name,
            kind,
            country = e.country.as_deref(),
            state = e.state.as_deref(),
            city = e.city.as_deref(),
            "exit"
        );
    }
    let cluster = match &snap.cluster {
        Some(c) => Some(Cluster::start(c.clone())?),
        None => None,
    };
    let ledger = match &cluster {
        Some(c) => {
            tracing::info!(node = %c.me, policy = ?c.policy(), "cluster: plans, usage and sessions shared through redis");
            Ledger::shared(c.clone())
        }
        None => Ledger::open(Box::new(SqliteStore::open(&snap.server.state_dir)?))?,
    };
    ledger.attach(&mut snap);
    let flush_every = snap.server.usage_flush.0;
    let resolver_threads = snap.dns.resolver_threads;
    let spin = snap.server.spin_before_park.0;
    let sessions = Arc::new(SessionTable::new(
        snap.routing.max_sessions,
        snap.routing.max_sessions_per_account,
    ));
    let guard = Arc::new(crate::auth::guard::AuthGuard::default());
    let config = Arc::new(ArcSwap::from_pointee(snap));
    spawn_signal_thread(opts.config_path, config.clone(), ledger.clone())?;
    let (stop_flusher, flusher) = spawn_flusher(ledger.clone(), flush_every)?;
    let core_metrics: Vec<Arc<CoreMetrics>> = (0..workers)
        .map(|_| Arc::new(CoreMetrics::default()))
        .collect();
    let snap_now = config.load();
    let admin_addr = match snap_now.admin {
        Some(addr) => {
            let metrics = Arc::new(Metrics {
                cores: core_metrics.clone(),
                accounts: ledger.clone(),
                cluster: cluster.as_ref().map(|c| c.stats.clone()),
                listeners: bound.iter().map(|(a, _, _)| a.to_string()).collect(),
                per_account: snap_now.per_account_metrics,
            });
            let health = Arc::new(ExecutorHealth {
                cores: core_metrics.clone(),
            });
            Some(admin::start(addr, metrics, health)?)
        }
        None => None,
    };
    drop(snap_now);

    let mut handles = Vec::with_capacity(workers);
    for (id, my_fds) in fds.into_iter().enumerate() {
        let cpu = cpus.get(id % cpus.len().max(1)).copied().unwrap_or(0);
        let config = config.clone();
        let shared = Shared {
            sessions: sessions.clone(),
            guard: guard.clone(),
            cluster: cluster.clone(),
        };
        let metrics = core_metrics[id].clone();
        let handle = LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name(&format!("tollgate-{id}"))
            // Network I/O does not use the registered io_memory; keep it small.
            .io_memory(64 << 10)
            .spin_before_park(spin)
            .blocking_thread_pool_placement(PoolPlacement::Unbound(resolver_threads))
            .spawn(move || worker_main(id, workers, config, shared, metrics, my_fds))
            .map_err(|e| {
                format!(
                    "cannot start executor {id} on CPU {cpu}: {e}. tollgate needs io_uring \
                     (Linux >= 5.8, not disabled by kernel.io_uring_disabled or a seccomp \
                     profile) and RLIMIT_MEMLOCK >= 512 KiB"
                )
            })?;
        handles.push(handle);
    }
    for (addr, i, network) in &bound {
        tracing::info!(listener = i, %addr, network = %network, "listening");
        println!("listening {addr} listener={i} network={network}");
    }
    if let Some(a) = admin_addr {
        tracing::info!(%a, "admin listening (/metrics, /healthz)");
        println!("admin {a}");
    }
    println!("ready workers={workers}");
    use std::io::Write;
    let _ = std::io::stdout().flush();

    let mut failed = false;
    for h in handles {
        if h.join().is_err() {
            failed = true;
        }
    }
    // Executors settled their shards on the way out: write the final usage.
    drop(stop_flusher);
    let _ = flusher.join();
    if let Err(e) = ledger.flush() {
        tracing::error!(error = %e, "final usage write failed");
    }
    if let Some(c) = &cluster {
        c.stop();
    }
    if failed {
        return Err("an executor stopped abnormally".into());
    }
    tracing::info!("drained; exiting");
    Ok(())
}

/// Writes usage every `every` until the sender is dropped.
fn spawn_flusher(
    ledger: Arc<Ledger>,
    every: Duration,
) -> Result<(std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>), String> {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let handle = std::thread::Builder::new()
        .name("tollgate-usage".into())
        .spawn(move || {
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(every) {
                if let Err(e) = ledger.flush() {
                    tracing::error!(error = %e, "usage write failed; will retry");
                }
            }
        })
        .map_err(|e| format!("cannot start usage writer: {e}"))?;
    Ok((tx, handle))
}

fn spawn_signal_thread(
    path: PathBuf,
    config: Arc<ArcSwap<Snapshot>>,
    ledger: Arc<Ledger>,
) -> Result<(), String> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    std::thread::Builder::new()
        .name("tollgate-signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                match sig {
                    SIGHUP => {
                        // A reload must never take the signal thread (and every later
                        // reload and drain) down with it.
                        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            reload(&path, &config, &ledger)
                        }));
                        if r.is_err() {
                            tracing::error!("reload panicked; keeping the running configuration");
                        }
                    }
                    _ => {
                        if DRAINING.swap(true, Ordering::SeqCst) {
                            tracing::warn!("second stop signal: exiting without waiting");
                            std::process::exit(1);
                        }
                        tracing::info!("stop signal: draining");
                    }
                }
            }
        })
        .map_err(|e| format!("cannot start signal thread: {e}"))?;
    Ok(())
}

/// SIGHUP: re-read the file; a valid one replaces the snapshot, an invalid one is logged
/// and ignored. Listeners are bound at start and keep their addresses.
fn reload(path: &std::path::Path, config: &ArcSwap<Snapshot>, ledger: &Ledger) {
    match config::load(path) {
        Ok(mut new) => {
            let old = config.load();
            new.inherit_health(&old);
            ledger.attach(&mut new);
            let same = old.listeners.len() == new.listeners.len()
                && old
                    .listeners
                    .iter()
                    .zip(&new.listeners)
                    .all(|(a, b)| a.listen == b.listen);
            if !same {
                tracing::warn!("reload: listener changes take effect only after a restart");
            }
            if old.cluster != new.cluster {
                tracing::warn!("reload: [cluster] changes take effect only after a restart");
            }
            tracing::info!(accounts = new.accounts.len(), "configuration reloaded");
            config.store(Arc::new(new));
        }
        Err(e) => tracing::error!(error = %e, "reload rejected; keeping the running configuration"),
    }
}

/// How often expired sticky sessions are swept (by worker 0).
const SESSION_SWEEP: Duration = Duration::from_secs(30);

fn epoch_ms() -> u64 {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    EPOCH
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

fn heartbeat(m: &CoreMetrics) {
    m.heartbeat_ms.store(epoch_ms().max(1), Ordering::Relaxed);
}

/// `/healthz`: every executor ticked recently and the gateway is not draining.
struct ExecutorHealth {
    cores: Vec<Arc<CoreMetrics>>,
}

/// An executor that has not ticked for this long is reported as stalled.
const STALL_AFTER_MS: u64 = 5_000;

impl admin::Health for ExecutorHealth {
    fn check(&self) -> Result<(), String> {
        if DRAINING.load(Ordering::Relaxed) {
            return Err("draining".into());
        }
        let now = epoch_ms();
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

async fn worker_main(
    id: usize,
    workers: usize,
    config: Arc<ArcSwap<Snapshot>>,
    shared: Shared,
    metrics: Arc<CoreMetrics>,
    fds: Vec<(RawFd, usize)>,
) {
    let w = Worker::new(id, workers, config, shared, metrics);
    let ticker = w.clone();
    glommio::spawn_local(async move {
        loop {
            heartbeat(&ticker.metrics);
            glommio::timer::sleep(QUOTA_TICK).await;
            ticker.quota.tick();
        }
    })
    .detach();
    if id == 0 {
        let sweeper = w.clone();
        glommio::spawn_local(async move {
            loop {
                glommio::timer::sleep(SESSION_SWEEP).await;
                sweeper.sessions.sweep(std::time::Instant::now());
            }
        })
        .detach();
    }
    let watcher = w.clone();
    glommio::spawn_local(async move {
        while !DRAINING.load(Ordering::Relaxed) {
            glommio::timer::sleep(DRAIN_POLL).await;
        }
        watcher.drain.fire();
    })
    .detach();
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
    let drain = w.config.load().server.drain_timeout.0;
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
            w.stop.fire();
            let _ = within(Duration::from_secs(1), w.all_closed()).await;
        }
    }
}
