//! Start-up steps that touch the host: CPUs, resource limits, listening sockets, and the
//! configuration summary in the log.

use crate::config::{self, Snapshot};
use std::net::SocketAddr;
use std::os::fd::{IntoRawFd, RawFd};

/// CPUs this process may run on.
pub(super) fn allowed_cpus() -> Vec<usize> {
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

/// io_uring needs locked memory; a proxy needs many file descriptors.
pub(super) fn check_limits() -> Result<(), String> {
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
    Ok(())
}

/// Each worker's listening sockets: (fd, listener index).
pub(super) type Fds = Vec<Vec<(RawFd, usize)>>;
/// What was bound: (address, listener index, network name).
pub(super) type Bound = Vec<(SocketAddr, usize, String)>;

/// Bind every listener once per worker. With port 0 the first socket picks the port and
/// the others join it, so all cores share one ephemeral port.
pub(super) fn bind_listeners(snap: &Snapshot, workers: usize) -> Result<(Fds, Bound), String> {
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
    Ok((fds, bound))
}

/// The configuration in force, for the operator.
pub(super) fn log_config(snap: &Snapshot, workers: usize) {
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
            config::ExitKind::Direct { source } => match source {
                config::Source::Host => "direct".into(),
                config::Source::Ip(ip) => format!("direct from {ip}"),
                config::Source::Prefix(net) => format!(
                    "direct from {net} ({}, 2^{} addresses)",
                    if net.addr().is_ipv6() { "IPv6" } else { "IPv4" },
                    crate::exit::source::size_bits(net)
                ),
            },
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
}

/// Probe every prefix exit's `source_cidr` (is it local?): one that is not is left out,
/// with a log line that says what to run; one that is (again) is taken back.
pub(super) fn check_sources(world: &crate::world::World) {
    for (i, e) in world.config.exits.iter().enumerate() {
        let config::ExitKind::Direct {
            source: config::Source::Prefix(net),
        } = &e.kind
        else {
            continue;
        };
        let health = world.exits.health(i);
        match crate::exit::source::probe_local(net) {
            Ok(()) => health.set_usable(true),
            Err(why) => {
                tracing::error!(exit = %e.name, "{why}; the exit is left out until a reload finds it local");
                health.set_usable(false);
            }
        }
    }
}
