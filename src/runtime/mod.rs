//! Boot, executors, reload and drain: the process around the cores.
//!
//! [`run`] checks the host (`boot.rs`), binds every listener once per core, starts the shared
//! services (cluster link, ledger, the first world, sessions, guard, admin), spawns one
//! pinned executor per core (`executor.rs`) and waits for them; SIGHUP publishes the next
//! world, SIGTERM/SIGINT drain.

mod boot;
mod executor;

use crate::accounts::store::{AccountSource, AccountStore, Change};
use crate::accounts::Directory;
use crate::admin;
use crate::admin::scrape::Metrics;
use crate::auth::guard::AuthGuard;
use crate::cluster::Cluster;
use crate::config::{self, Snapshot};
use crate::metrics::CoreMetrics;
use crate::plan::store::SqliteStore;
use crate::plan::Ledger;
use crate::route::sessions::SessionTable;
use crate::route::{Sessions, SharedSessions};
use crate::worker::Services;
use crate::world::World;
use arc_swap::ArcSwap;
use boot::{Bound, Fds};
use glommio::{LocalExecutorBuilder, Placement, PoolPlacement};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Set once by SIGTERM/SIGINT (for `/healthz` and the second signal); each executor
/// learns of it from its [`bell`].
static DRAINING: AtomicBool = AtomicBool::new(false);

/// How the stop signal reaches the executors at once without any timer: one socket pair
/// per executor, whose read end (the `OwnedFd`) the executor waits on (a readiness poll
/// that costs nothing until it fires: an idle executor is not woken to look at a flag)
/// and whose write end the signal thread rings with one byte.
fn bell() -> Result<(std::os::unix::net::UnixStream, std::os::fd::OwnedFd), String> {
    let (ring, wait) = std::os::unix::net::UnixStream::pair()
        .map_err(|e| format!("cannot create the drain socket pair: {e}"))?;
    wait.set_nonblocking(true)
        .map_err(|e| format!("cannot set the drain socket non-blocking: {e}"))?;
    Ok((ring, wait.into()))
}

/// Everything `run` needs from the command line.
pub struct Options {
    pub config_path: PathBuf,
}

/// What the executors share, and what the process keeps to stop it.
struct Started {
    services: Services,
    ledger: Arc<Ledger>,
    cluster: Option<Arc<Cluster>>,
}

/// Run the gateway until SIGTERM/SIGINT and the drain that follows.
pub fn run(opts: Options, snap: Snapshot) -> Result<(), String> {
    let cpus = boot::allowed_cpus();
    let workers = match snap.server.workers {
        0 => cpus.len().max(1),
        n => n,
    };
    boot::check_limits()?;
    let (fds, bound) = boot::bind_listeners(&snap, workers)?;
    boot::log_config(&snap, workers);
    let (flush_every, resolver_threads, spin) = (
        snap.server.usage_flush.0,
        snap.dns.resolver_threads,
        snap.server.spin_before_park.0,
    );
    let started = start_services(snap)?;
    let (rings, waits): (Vec<_>, Vec<_>) = (0..workers)
        .map(|_| bell())
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .unzip();
    spawn_signal_thread(opts.config_path, started.services.world.clone(), rings)?;
    let (stop_flusher, flusher) = spawn_flusher(started.ledger.clone(), flush_every)?;
    let cores: Vec<Arc<CoreMetrics>> = (0..workers)
        .map(|_| Arc::new(CoreMetrics::default()))
        .collect();
    let admin_addr = start_admin(&started, &cores, &bound)?;
    let tuning = Tuning {
        cpus,
        resolver_threads,
        spin,
    };
    let handles = spawn_executors(&started.services, &cores, fds, waits, &tuning)?;
    announce(&bound, admin_addr, workers);

    let failed = handles.into_iter().any(|h| h.join().is_err());
    // Executors settled their shards on the way out: write the final usage.
    drop(stop_flusher);
    let _ = flusher.join();
    if let Err(e) = started.ledger.flush() {
        tracing::error!(error = %e, "final usage write failed");
    }
    if let Some(c) = &started.cluster {
        c.stop();
    }
    if failed {
        return Err("an executor stopped abnormally".into());
    }
    tracing::info!("drained; exiting");
    Ok(())
}

/// The cluster link (when configured), the ledger (usage resumed from the store, or shared
/// through Redis), the first world, the session table and the auth guard.
fn start_services(snap: Snapshot) -> Result<Started, String> {
    let cluster = match &snap.cluster {
        Some(c) => Some(Cluster::start(c.clone())?),
        None => None,
    };
    let ledger = match &cluster {
        Some(c) => {
            tracing::info!(node = %c.me, policy = ?c.cfg.on_redis_down, "cluster: plans, usage and sessions shared through redis");
            Ledger::shared(
                c.clone(),
                Box::new(crate::cluster::usage::RedisBuckets::open(&c.cfg)?),
            )
        }
        None => Ledger::open(Box::new(SqliteStore::open(&snap.server.state_dir)?))?,
    };
    let table = Arc::new(SessionTable::new(
        snap.routing.max_sessions,
        snap.routing.max_sessions_per_account,
    ));
    let shared = cluster.clone().map(|c| c as Arc<dyn SharedSessions>);
    let state_dir = snap.server.state_dir.clone();
    let accounts = Arc::new(Directory::default());
    let t0 = std::time::Instant::now();
    if snap.cluster.is_none() {
        AccountStore::open(&state_dir)?.trim_changes()?;
    }
    let mut store = admin::ops::open_source(&snap)?;
    // The change the directory is up to (`None`: read everything once the store answers).
    let seen = match store
        .last_change()
        .and_then(|seq| crate::accounts::load(&accounts, &mut *store).map(|_| seq))
    {
        Ok(seq) => Some(seq),
        // Only a cluster's Redis can be down at start: its accounts come when it is back.
        Err(e) if snap.cluster.is_some() => {
            tracing::error!(error = %e, "store accounts not loaded; retrying in the background");
            None
        }
        Err(e) => return Err(e),
    };
    tracing::info!(
        accounts = accounts.len(),
        plans = accounts.plans().len(),
        took_ms = t0.elapsed().as_millis() as u64,
        "store accounts loaded"
    );
    warn_shadowed(&snap, &accounts);
    let trail_store = admin::ops::open_trail(&snap)?;
    let world = World::prepare(snap, &ledger, &accounts, None);
    boot::check_sources(&world);
    let world = Arc::new(ArcSwap::from_pointee(world));
    let current = world.clone();
    let trail = crate::support::Trail::start(trail_store, move || {
        crate::support::Retention::of(&current.load().config)
    })?;
    // The configuration file's parse is freed: hand its pages back.
    crate::accounts::release_freed_memory();
    let started = Started {
        services: Services {
            world,
            sessions: Sessions { table, shared },
            guard: Arc::new(AuthGuard::default()),
            trail,
        },
        ledger,
        cluster,
    };
    spawn_account_sync(&started, store, seen)?;
    Ok(started)
}

/// A file account shadows a store account of the same name (the file wins at login).
fn warn_shadowed(snap: &Snapshot, accounts: &Directory) {
    for name in snap.accounts.keys() {
        if accounts.get(name).is_some() {
            tracing::warn!(account = %name, "an account of the file has the name of a store account; the file's is served");
        }
    }
}

/// Follow the store's change log: what `tollgate account …` (another process) or the API
/// wrote is applied within [`crate::accounts::store::POLL`].
fn spawn_account_sync(
    started: &Started,
    mut store: Box<dyn AccountSource>,
    mut seen: Option<i64>,
) -> Result<(), String> {
    let world = started.services.world.clone();
    let table = started.services.sessions.table.clone();
    std::thread::Builder::new()
        .name("tollgate-accounts".into())
        .spawn(move || {
            let mut warned = false;
            loop {
                std::thread::sleep(crate::accounts::store::POLL);
                let changes = match seen {
                    None => store.last_change().map(|s| vec![(s, Change::Resync)]),
                    Some(s) => store.changes_since(s),
                };
                let changes = match changes {
                    Ok(c) => {
                        warned = false;
                        c
                    }
                    Err(e) => {
                        if !std::mem::replace(&mut warned, true) {
                            tracing::warn!(error = %e, "account store unreadable; will retry");
                        }
                        continue;
                    }
                };
                let w = world.load();
                for (seq, change) in changes {
                    if let Err(e) = w.apply(&mut *store, &table, &change) {
                        tracing::warn!(error = %e, ?change, "store change not applied; retrying");
                        break;
                    }
                    seen = Some(seq);
                }
            }
        })
        .map_err(|e| format!("cannot start the account sync: {e}"))?;
    Ok(())
}

/// The admin listener, when configured: `/metrics` over every core's counters, `/healthz`.
fn start_admin(
    started: &Started,
    cores: &[Arc<CoreMetrics>],
    bound: &Bound,
) -> Result<Option<SocketAddr>, String> {
    let world = started.services.world.load();
    let Some(addr) = world.config.admin else {
        return Ok(None);
    };
    let metrics = Arc::new(Metrics {
        cores: cores.to_vec(),
        ledger: started.ledger.clone(),
        cluster: started.cluster.as_ref().map(|c| c.stats.clone()),
        listeners: bound.iter().map(|(a, _, _)| a.to_string()).collect(),
        per_account: world.config.per_account_metrics,
    });
    let health = Arc::new(executor::ExecutorHealth {
        cores: cores.to_vec(),
    });
    let store = admin::ops::open_source(&world.config)?;
    admin::start(
        addr,
        admin::AppState {
            metrics,
            health,
            world: started.services.world.clone(),
            sessions: started.services.sessions.table.clone(),
            store: Some(Arc::new(parking_lot::Mutex::new(store))),
            guard: started.services.guard.clone(),
            secret: {
                let mut s = [0u8; 32];
                getrandom::getrandom(&mut s)
                    .map_err(|e| format!("no randomness for the dashboard: {e}"))?;
                s
            },
            exit_rates: Default::default(),
            proxy_addr: bound.first().map(|(a, _, _)| a.to_string()),
            trail: Some(Arc::new(parking_lot::Mutex::new(admin::ops::open_trail(
                &world.config,
            )?))),
        },
    )
    .map(Some)
}

/// Where and how executors run.
struct Tuning {
    cpus: Vec<usize>,
    resolver_threads: usize,
    spin: Duration,
}

/// One executor per core, pinned, each with its own listening sockets.
fn spawn_executors(
    services: &Services,
    cores: &[Arc<CoreMetrics>],
    fds: Fds,
    bells: Vec<std::os::fd::OwnedFd>,
    t: &Tuning,
) -> Result<Vec<glommio::ExecutorJoinHandle<()>>, String> {
    let workers = fds.len();
    let mut handles = Vec::with_capacity(workers);
    for (id, (my_fds, bell)) in fds.into_iter().zip(bells).enumerate() {
        let cpu = t.cpus.get(id % t.cpus.len().max(1)).copied().unwrap_or(0);
        let services = services.clone();
        let metrics = cores[id].clone();
        let handle = LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name(&format!("tollgate-{id}"))
            // Network I/O does not use the registered io_memory; keep it small.
            .io_memory(64 << 10)
            .spin_before_park(t.spin)
            .blocking_thread_pool_placement(PoolPlacement::Unbound(t.resolver_threads))
            .spawn(move || executor::worker_main(id, workers, services, metrics, my_fds, bell))
            .map_err(|e| {
                format!(
                    "cannot start executor {id} on CPU {cpu}: {e}. tollgate needs io_uring \
                     (Linux >= 5.8, not disabled by kernel.io_uring_disabled or a seccomp \
                     profile) and RLIMIT_MEMLOCK >= 512 KiB"
                )
            })?;
        handles.push(handle);
    }
    Ok(handles)
}

/// Tell the operator (and the tests, on stdout) where the gateway listens.
fn announce(bound: &Bound, admin: Option<SocketAddr>, workers: usize) {
    for (addr, i, network) in bound {
        tracing::info!(listener = i, %addr, network = %network, "listening");
        println!("listening {addr} listener={i} network={network}");
    }
    if let Some(a) = admin {
        tracing::info!(%a, "admin listening (/metrics, /healthz)");
        println!("admin {a}");
    }
    println!("ready workers={workers}");
    use std::io::Write;
    let _ = std::io::stdout().flush();
}

/// Starts plan periods that ended (every second) and writes usage every `every`, until the
/// sender is dropped.
fn spawn_flusher(
    ledger: Arc<Ledger>,
    every: Duration,
) -> Result<(std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>), String> {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let tick = every.min(Duration::from_secs(1));
    let handle = std::thread::Builder::new()
        .name("tollgate-usage".into())
        .spawn(move || {
            let mut next_flush = std::time::Instant::now() + every;
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(tick) {
                ledger.roll_periods(crate::util::wall_now());
                if std::time::Instant::now() >= next_flush {
                    next_flush += every;
                    match ledger.flush() {
                        // Written: the states nobody uses can go.
                        Ok(()) => {
                            ledger.sweep();
                        }
                        Err(e) => tracing::error!(error = %e, "usage write failed; will retry"),
                    }
                }
            }
        })
        .map_err(|e| format!("cannot start usage writer: {e}"))?;
    Ok((tx, handle))
}

/// SIGHUP reloads; SIGTERM/SIGINT drain (a second one exits at once).
fn spawn_signal_thread(
    path: PathBuf,
    world: Arc<ArcSwap<World>>,
    rings: Vec<std::os::unix::net::UnixStream>,
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
                            reload(&path, &world)
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
                        for mut r in &rings {
                            use std::io::Write;
                            // A fresh socket pair always has room for one byte.
                            let _ = r.write(&[1]);
                        }
                    }
                }
            }
        })
        .map_err(|e| format!("cannot start signal thread: {e}"))?;
    Ok(())
}

/// SIGHUP: re-read the file; a valid one becomes the next world (usage and exit health
/// carried over), an invalid one is logged and ignored. Listeners are bound at start and
/// keep their addresses.
fn reload(path: &std::path::Path, world: &ArcSwap<World>) {
    let new = match config::load(path) {
        Ok(new) => new,
        Err(e) => {
            tracing::error!(error = %e, "reload rejected; keeping the running configuration");
            return;
        }
    };
    let old = world.load();
    let same = old.config.listeners.len() == new.listeners.len()
        && old
            .config
            .listeners
            .iter()
            .zip(&new.listeners)
            .all(|(a, b)| a.listen == b.listen);
    if !same {
        tracing::warn!("reload: listener changes take effect only after a restart");
    }
    if old.config.cluster != new.cluster {
        tracing::warn!("reload: [cluster] changes take effect only after a restart");
    }
    tracing::info!(accounts = new.accounts.len(), "configuration reloaded");
    warn_shadowed(&new, &old.accounts);
    let next = World::prepare(new, &old.ledger, &old.accounts, Some(&old));
    boot::check_sources(&next);
    world.store(Arc::new(next));
    drop(old);
    // The file's parse and the replaced world are freed: hand their pages back (a big
    // file's reload would otherwise leave the process twice its size).
    crate::accounts::release_freed_memory();
}
