//! Metrics: counters live per core (written only by their core: a plain load + store, no
//! locked instruction, no shared cache line) and are summed at scrape time into Prometheus /
//! OpenMetrics text by prometheus-client's encoder. Labelled counters that change once per
//! connection sit behind an uncontended per-core mutex.

use ahash::AHashMap;
use parking_lot::Mutex;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A counter written by one core only.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn add(&self, n: u64) {
        // Single writer: no read-modify-write instruction needed.
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Upper bounds (seconds) of the connect-latency histogram.
pub const CONNECT_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// One core's metrics.
#[derive(Debug, Default)]
pub struct CoreMetrics {
    /// (listener index, protocol) → connections.
    pub accepted: Mutex<AHashMap<(usize, &'static str), u64>>,
    pub active: AtomicI64,
    /// Status code → connections/requests that ended with it (0..600).
    /// By (status code, how it ended).
    pub outcomes: Mutex<AHashMap<(u16, &'static str), u64>>,
    /// Network → (up, down) bytes.
    pub network_bytes: Pairs,
    /// Account → (up, down) bytes (when per-account metrics are on).
    pub account_bytes: Pairs,
    /// Exit → (attempts, failures).
    pub exit_connects: Pairs,
    pub connect_buckets: [Counter; CONNECT_BUCKETS.len()],
    /// Slower than the last bucket.
    pub connect_overflow: Counter,
    pub connect_count: Counter,
    /// Microseconds.
    pub connect_sum_us: Counter,
    pub dns_hits: Counter,
    pub dns_misses: Counter,
    pub lease_refills: Counter,
    pub panics: Counter,
    /// Milliseconds since the process epoch at this core's last tick.
    pub heartbeat_ms: AtomicU64,
}

impl CoreMetrics {
    pub fn observe_connect(&self, d: Duration) {
        // Per-bucket counts; the encoder makes them cumulative.
        let s = d.as_secs_f64();
        match CONNECT_BUCKETS.iter().position(|b| s <= *b) {
            Some(i) => self.connect_buckets[i].inc(),
            None => self.connect_overflow.inc(),
        }
        self.connect_count.inc();
        self.connect_sum_us.add(d.as_micros() as u64);
    }

    pub fn exit_attempt(&self, exit: &str, failed: bool) {
        bump(&mut self.exit_connects.lock(), exit, |e| {
            e.0 += 1;
            e.1 += u64::from(failed);
        });
    }

    /// One finished connection or request: its outcome (status code, how it ended) and
    /// its bytes `(up, down)`; per account when `per_account`.
    pub fn finished(
        &self,
        outcome: (u16, &'static str),
        network: Option<&str>,
        account: Option<&str>,
        (up, down): (u64, u64),
        per_account: bool,
    ) {
        *self.outcomes.lock().entry(outcome).or_default() += 1;
        if let Some(n) = network {
            bump(&mut self.network_bytes.lock(), n, |e| {
                e.0 += up;
                e.1 += down;
            });
        }
        if let (true, Some(a)) = (per_account, account) {
            bump(&mut self.account_bytes.lock(), a, |e| {
                e.0 += up;
                e.1 += down;
            });
        }
    }
}

/// Apply `f` to `map[key]` (default the first time): the key is copied only then, so
/// counting a known name allocates nothing.
fn bump<V: Default>(map: &mut AHashMap<String, V>, key: &str, f: impl FnOnce(&mut V)) {
    match map.get_mut(key) {
        Some(v) => f(v),
        None => {
            let mut v = V::default();
            f(&mut v);
            map.insert(key.to_owned(), v);
        }
    }
}

/// Per-account live state a scrape reads; the plan ledger provides it (metrics sit below
/// plans, which count into [`CoreMetrics`]).
pub trait LiveAccounts: Send + Sync + std::fmt::Debug {
    /// (account, concurrent connections, bytes leased to cores and unspent).
    fn live_by_account(&self) -> Vec<(String, u32, u64)>;
}

/// Everything a scrape reads.
#[derive(Debug)]
pub struct Metrics {
    pub cores: Vec<Arc<CoreMetrics>>,
    pub accounts: Arc<dyn LiveAccounts>,
    /// Set on a cluster node: the Redis link's counters.
    pub cluster: Option<Arc<crate::cluster::Stats>>,
    /// Listener index → address, for labels.
    pub listeners: Vec<String>,
    pub per_account: bool,
}

fn sum_map<K: Clone + Eq + std::hash::Hash, V: Copy + Default>(
    cores: &[Arc<CoreMetrics>],
    pick: impl Fn(&CoreMetrics) -> Vec<(K, V)>,
    add: impl Fn(&mut V, V),
) -> Vec<(K, V)> {
    let mut out: AHashMap<K, V> = AHashMap::new();
    for c in cores {
        for (k, v) in pick(c) {
            add(out.entry(k).or_default(), v);
        }
    }
    out.into_iter().collect()
}

/// Per-core labelled pairs of counters: name → (up, down) or (attempts, failures).
type Pairs = Mutex<AHashMap<String, (u64, u64)>>;

/// Per-core `name → (a, b)` maps summed over cores.
fn sum_pairs(
    cores: &[Arc<CoreMetrics>],
    field: fn(&CoreMetrics) -> &Pairs,
) -> Vec<(String, (u64, u64))> {
    sum_map(
        cores,
        |c| {
            field(c)
                .lock()
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect()
        },
        |a, b| {
            a.0 += b.0;
            a.1 += b.1
        },
    )
}

/// A counter family split by `direction` (up/down), keyed by `label`.
fn directional(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &'static str,
    rows: Vec<(String, (u64, u64))>,
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (key, (up, down)) in rows {
        for (dir, v) in [("up", up), ("down", down)] {
            let labels = [(label, key.clone()), ("direction", dir.to_string())];
            ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
        }
    }
    Ok(())
}

fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    ConstCounter::new(value).encode(m)
}

impl Collector for Metrics {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let cores = &self.cores;
        let sum = |f: fn(&CoreMetrics) -> u64| cores.iter().map(|c| f(c)).sum::<u64>();

        let accepted = sum_map(
            cores,
            |c| c.accepted.lock().iter().map(|(k, v)| (*k, *v)).collect(),
            |a, b| *a += b,
        );
        let mut m = enc.encode_descriptor(
            "tollgate_connections_accepted",
            "Client connections accepted, by listener and sniffed protocol",
            None,
            MetricType::Counter,
        )?;
        for ((l, proto), v) in accepted {
            let listener = self.listeners.get(l).cloned().unwrap_or_default();
            let labels = [("listener", listener), ("protocol", proto.to_string())];
            ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
        }

        let active: i64 = cores.iter().map(|c| c.active.load(Ordering::Relaxed)).sum();
        let m = enc.encode_descriptor(
            "tollgate_connections_active",
            "Client connections open now",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(active).encode(m)?;

        let outcomes = sum_map(
            cores,
            |c| c.outcomes.lock().iter().map(|(k, v)| (*k, *v)).collect(),
            |a, b| *a += b,
        );
        let mut m = enc.encode_descriptor(
            "tollgate_outcomes",
            "Proxied connections and forwarded requests, by status code (200 = tunnel served, 499 = client left mid-request) and how they ended (closed, idle, quota, upstream_reset, client_reset, drain, refused)",
            None,
            MetricType::Counter,
        )?;
        for ((code, end), v) in outcomes {
            ConstCounter::new(v).encode(
                m.encode_family(&[("code", code.to_string()), ("end", end.to_string())])?,
            )?;
        }

        directional(
            &mut enc,
            "tollgate_network_bytes",
            "Bytes at the client side, by network and direction (up = from clients)",
            "network",
            sum_pairs(cores, |c| &c.network_bytes),
        )?;

        if self.per_account {
            directional(
                &mut enc,
                "tollgate_account_bytes",
                "Bytes at the client side, by account and direction",
                "account",
                sum_pairs(cores, |c| &c.account_bytes),
            )?;
            let mut m = enc.encode_descriptor(
                "tollgate_account_threads_active",
                "Concurrent proxied connections held, by account",
                None,
                MetricType::Gauge,
            )?;
            let live = self.accounts.live_by_account();
            for (name, active, _) in &live {
                ConstGauge::new(i64::from(*active))
                    .encode(m.encode_family(&[("account", name.clone())])?)?;
            }
            let mut m = enc.encode_descriptor(
                "tollgate_account_lease_outstanding_bytes",
                "Bandwidth leased to cores and not yet spent, by account",
                None,
                MetricType::Gauge,
            )?;
            for (name, _, outstanding) in live {
                ConstGauge::new(outstanding as i64)
                    .encode(m.encode_family(&[("account", name)])?)?;
            }
        }

        let exits = sum_pairs(cores, |c| &c.exit_connects);
        let mut m = enc.encode_descriptor(
            "tollgate_exit_connect_attempts",
            "Outbound connect attempts, by exit",
            None,
            MetricType::Counter,
        )?;
        for (e, (attempts, _)) in &exits {
            ConstCounter::new(*attempts).encode(m.encode_family(&[("exit", e.clone())])?)?;
        }
        let mut m = enc.encode_descriptor(
            "tollgate_exit_connect_failures",
            "Outbound connect attempts that failed, by exit",
            None,
            MetricType::Counter,
        )?;
        for (e, (_, failures)) in &exits {
            ConstCounter::new(*failures).encode(m.encode_family(&[("exit", e.clone())])?)?;
        }

        let m = enc.encode_descriptor(
            "tollgate_exit_connect_seconds",
            "Time to establish an outbound connection (through the exit, handshakes included)",
            None,
            MetricType::Histogram,
        )?;
        let buckets: Vec<(f64, u64)> = CONNECT_BUCKETS
            .iter()
            .enumerate()
            .map(|(i, b)| (*b, cores.iter().map(|c| c.connect_buckets[i].get()).sum()))
            .chain(std::iter::once((
                f64::MAX,
                sum(|c| c.connect_overflow.get()),
            )))
            .collect();
        let mut m = m;
        m.encode_histogram::<()>(
            sum(|c| c.connect_sum_us.get()) as f64 / 1e6,
            sum(|c| c.connect_count.get()),
            &buckets,
            None,
        )?;

        counter(
            &mut enc,
            "tollgate_dns_cache_hits",
            "DNS lookups answered by a core's cache",
            sum(|c| c.dns_hits.get()),
        )?;
        counter(
            &mut enc,
            "tollgate_dns_cache_misses",
            "DNS lookups that queried the resolver",
            sum(|c| c.dns_misses.get()),
        )?;
        counter(
            &mut enc,
            "tollgate_quota_lease_refills",
            "Bandwidth leases taken from the global ledger",
            sum(|c| c.lease_refills.get()),
        )?;
        counter(
            &mut enc,
            "tollgate_panics",
            "Panics caught at a connection boundary",
            sum(|c| c.panics.get()),
        )?;
        if let Some(c) = &self.cluster {
            let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
            let m = enc.encode_descriptor(
                "tollgate_cluster_redis_up",
                "1 while this node reaches Redis",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(i64::from(c.up.load(Ordering::Relaxed))).encode(m)?;
            for (name, help, value) in [
                (
                    "tollgate_cluster_redis_round_trips",
                    "Round trips to Redis (each a pipelined batch)",
                    load(&c.round_trips),
                ),
                (
                    "tollgate_cluster_redis_commands",
                    "Commands sent to Redis",
                    load(&c.commands),
                ),
                (
                    "tollgate_cluster_redis_errors",
                    "Failed Redis connects and calls",
                    load(&c.errors),
                ),
                (
                    "tollgate_cluster_admitted_while_down",
                    "Connections admitted under fail-open while Redis was down",
                    load(&c.admitted_down),
                ),
                (
                    "tollgate_cluster_refused_while_down",
                    "Connections refused under fail-closed while Redis was down",
                    load(&c.refused_down),
                ),
            ] {
                counter(&mut enc, name, help, value)?;
            }
        }
        Ok(())
    }
}

/// Render the full exposition.
pub fn render(metrics: Arc<Metrics>) -> String {
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(Shared(metrics)));
    let mut out = String::new();
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}

#[derive(Debug)]
struct Shared(Arc<Metrics>);

impl Collector for Shared {
    fn encode(&self, enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(enc)
    }
}
