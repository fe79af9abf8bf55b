//! The `/metrics` scrape: sums every core's [`CoreMetrics`] (and the ledger's and the
//! cluster link's live figures) into Prometheus / OpenMetrics text with prometheus-client's
//! encoder. Read-only: a scrape never writes a counter a core owns.

use crate::cluster::Stats as ClusterStats;
use crate::metrics::{CoreMetrics, Pairs, CONNECT_BUCKETS};
use crate::plan::Ledger;
use ahash::AHashMap;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

type Enc<'a, 'b> = &'a mut DescriptorEncoder<'b>;
type Res = Result<(), std::fmt::Error>;
/// A table row: metric name, help, and where its value comes from.
type Row<F> = (&'static str, &'static str, F);
type CoreField = fn(&CoreMetrics) -> u64;
type ClusterField = fn(&ClusterStats) -> &AtomicU64;

/// Everything a scrape reads.
#[derive(Debug)]
pub struct Metrics {
    pub cores: Vec<Arc<CoreMetrics>>,
    pub ledger: Arc<Ledger>,
    /// Set on a cluster node: the Redis link's counters.
    pub cluster: Option<Arc<ClusterStats>>,
    /// Listener index → address, for labels.
    pub listeners: Vec<String>,
    pub per_account: bool,
}

/// Plain counters summed over cores: (name, help, field).
#[rustfmt::skip]
const CORE_COUNTERS: [Row<CoreField>; 4] = [
    ("tollgate_dns_cache_hits",      "DNS lookups answered by a core's cache",         |c| c.dns_hits.get()),
    ("tollgate_dns_cache_misses",    "DNS lookups that queried the resolver",          |c| c.dns_misses.get()),
    ("tollgate_quota_lease_refills", "Bandwidth leases taken from the global ledger",  |c| c.lease_refills.get()),
    ("tollgate_panics",              "Panics caught at a connection boundary",         |c| c.panics.get()),
];

/// The cluster link's counters: (name, help, field).
#[rustfmt::skip]
const CLUSTER_COUNTERS: [Row<ClusterField>; 5] = [
    ("tollgate_cluster_redis_round_trips",    "Round trips to Redis (each a pipelined batch)",              |c| &c.round_trips),
    ("tollgate_cluster_redis_commands",       "Commands sent to Redis",                                     |c| &c.commands),
    ("tollgate_cluster_redis_errors",         "Failed Redis connects and calls",                            |c| &c.errors),
    ("tollgate_cluster_admitted_while_down",  "Connections admitted under fail-open while Redis was down",  |c| &c.admitted_down),
    ("tollgate_cluster_refused_while_down",   "Connections refused under fail-closed while Redis was down", |c| &c.refused_down),
];

const OUTCOMES_HELP: &str = "Proxied connections and forwarded requests, by status code \
    (200 = tunnel served, 499 = client left mid-request) and how they ended (closed, idle, \
    quota, upstream_reset, client_reset, drain, refused)";

impl Collector for Metrics {
    fn encode(&self, mut enc: DescriptorEncoder) -> Res {
        self.connections(&mut enc)?;
        self.bytes(&mut enc)?;
        if self.per_account {
            self.accounts(&mut enc)?;
        }
        self.exits(&mut enc)?;
        for (name, help, field) in CORE_COUNTERS {
            counter(&mut enc, name, help, self.sum(field))?;
        }
        if let Some(c) = &self.cluster {
            gauge(
                &mut enc,
                "tollgate_cluster_redis_up",
                "1 while this node reaches Redis",
                i64::from(c.up.load(Ordering::Relaxed)),
            )?;
            gauge(
                &mut enc,
                "tollgate_cluster_nodes",
                "Nodes alive at this node's last heartbeat, itself included",
                c.nodes.load(Ordering::Relaxed) as i64,
            )?;
            for (name, help, field) in CLUSTER_COUNTERS {
                counter(&mut enc, name, help, field(c).load(Ordering::Relaxed))?;
            }
        }
        Ok(())
    }
}

impl Metrics {
    fn sum(&self, field: fn(&CoreMetrics) -> u64) -> u64 {
        self.cores.iter().map(|c| field(c)).sum()
    }

    /// Accepted (by listener and protocol), active, and how each one ended.
    fn connections(&self, enc: Enc) -> Res {
        let accepted = sum_map(&self.cores, |c| {
            c.accepted.lock().iter().map(|(k, v)| (*k, *v)).collect()
        });
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
        let refused = sum_map(&self.cores, |c| {
            c.proxy_header_refused
                .lock()
                .iter()
                .map(|(k, v)| (*k, *v))
                .collect()
        });
        let mut m = enc.encode_descriptor(
            "tollgate_proxy_header_refused",
            "Connections closed for their PROXY protocol header: untrusted_sender, missing, malformed",
            None,
            MetricType::Counter,
        )?;
        for ((l, why), v) in refused {
            let listener = self.listeners.get(l).cloned().unwrap_or_default();
            let labels = [("listener", listener), ("reason", why.to_string())];
            ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
        }
        let tls = sum_map(&self.cores, |c| {
            c.tls_handshakes
                .lock()
                .iter()
                .map(|(k, v)| (*k, *v))
                .collect()
        });
        let mut m = enc.encode_descriptor(
            "tollgate_tls_handshakes",
            "TLS ClientHellos (HTTPS proxy clients) by result: ok, failed, timeout, no_certificate",
            None,
            MetricType::Counter,
        )?;
        for ((l, result), v) in tls {
            let listener = self.listeners.get(l).cloned().unwrap_or_default();
            let labels = [("listener", listener), ("result", result.to_string())];
            ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
        }
        let udp = sum_map(&self.cores, |c| {
            c.udp_dropped.lock().iter().map(|(k, v)| (*k, *v)).collect()
        });
        let mut m = enc.encode_descriptor(
            "tollgate_udp_dropped",
            "SOCKS5 UDP datagrams not relayed, by reason: stranger (not the client, or an answer from a target it did not send to), fragmented, malformed, forbidden_target, no_route, too_large",
            None,
            MetricType::Counter,
        )?;
        for (why, v) in udp {
            ConstCounter::new(v).encode(m.encode_family(&[("reason", why.to_string())])?)?;
        }
        let active = self.cores.iter().map(|c| c.active.load(Ordering::Relaxed));
        gauge(
            enc,
            "tollgate_connections_active",
            "Client connections open now",
            active.sum(),
        )?;
        let outcomes = sum_map(&self.cores, |c| {
            c.outcomes.lock().iter().map(|(k, v)| (*k, *v)).collect()
        });
        let mut m = enc.encode_descriptor(
            "tollgate_outcomes",
            OUTCOMES_HELP,
            None,
            MetricType::Counter,
        )?;
        for ((code, end), v) in outcomes {
            let labels = [("code", code.to_string()), ("end", end.to_string())];
            ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
        }
        Ok(())
    }

    fn bytes(&self, enc: Enc) -> Res {
        directional(
            enc,
            "tollgate_network_bytes",
            "Bytes at the client side, by network and direction (up = from clients)",
            "network",
            sum_pairs(&self.cores, |c| &c.network_bytes),
        )
    }

    /// Per-account bytes, threads held and unspent leases (`per_account_metrics`).
    fn accounts(&self, enc: Enc) -> Res {
        directional(
            enc,
            "tollgate_account_bytes",
            "Bytes at the client side, by account and direction",
            "account",
            sum_pairs(&self.cores, |c| &c.account_bytes),
        )?;
        let live = self.ledger.live_by_account();
        let mut m = enc.encode_descriptor(
            "tollgate_account_threads_active",
            "Concurrent proxied connections held, by account",
            None,
            MetricType::Gauge,
        )?;
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
            ConstGauge::new(outstanding as i64).encode(m.encode_family(&[("account", name)])?)?;
        }
        Ok(())
    }

    /// Connect attempts and failures by exit, and the connect-time histogram.
    fn exits(&self, enc: Enc) -> Res {
        let exits = sum_pairs(&self.cores, |c| &c.exit_connects);
        for (name, help, pick) in [
            (
                "tollgate_exit_connect_attempts",
                "Outbound connect attempts, by exit",
                (|p| p.0) as fn(&(u64, u64)) -> u64,
            ),
            (
                "tollgate_exit_connect_failures",
                "Outbound connect attempts that failed, by exit",
                |p| p.1,
            ),
        ] {
            let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (e, pair) in &exits {
                ConstCounter::new(pick(pair)).encode(m.encode_family(&[("exit", e.clone())])?)?;
            }
        }
        let mut m = enc.encode_descriptor(
            "tollgate_exit_connect_seconds",
            "Time to establish an outbound connection (through the exit, handshakes included)",
            None,
            MetricType::Histogram,
        )?;
        let buckets: Vec<(f64, u64)> = CONNECT_BUCKETS
            .iter()
            .enumerate()
            .map(|(i, b)| {
                (
                    *b,
                    self.cores.iter().map(|c| c.connect_buckets[i].get()).sum(),
                )
            })
            .chain(std::iter::once((
                f64::MAX,
                self.sum(|c| c.connect_overflow.get()),
            )))
            .collect();
        m.encode_histogram::<()>(
            self.sum(|c| c.connect_sum_us.get()) as f64 / 1e6,
            self.sum(|c| c.connect_count.get()),
            &buckets,
            None,
        )
    }
}

/// Per-core maps summed over cores.
fn sum_map<K: Clone + Eq + std::hash::Hash>(
    cores: &[Arc<CoreMetrics>],
    pick: impl Fn(&CoreMetrics) -> Vec<(K, u64)>,
) -> Vec<(K, u64)> {
    let mut out: AHashMap<K, u64> = AHashMap::new();
    for c in cores {
        for (k, v) in pick(c) {
            *out.entry(k).or_default() += v;
        }
    }
    out.into_iter().collect()
}

/// Per-core `name → (a, b)` maps summed over cores.
impl Metrics {
    /// (connect attempts, failures) per exit name, every core's summed.
    pub fn exit_connects(&self) -> AHashMap<String, (u64, u64)> {
        sum_pairs(&self.cores, |c| &c.exit_connects)
            .into_iter()
            .collect()
    }
}

fn sum_pairs(
    cores: &[Arc<CoreMetrics>],
    field: fn(&CoreMetrics) -> &Pairs,
) -> Vec<(String, (u64, u64))> {
    let mut out: AHashMap<String, (u64, u64)> = AHashMap::new();
    for c in cores {
        for (k, (a, b)) in field(c).lock().iter() {
            let e = out.entry(k.clone()).or_default();
            e.0 += a;
            e.1 += b;
        }
    }
    out.into_iter().collect()
}

/// A counter family split by `direction` (up/down), keyed by `label`.
fn directional(
    enc: Enc,
    name: &str,
    help: &str,
    label: &'static str,
    rows: Vec<(String, (u64, u64))>,
) -> Res {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (key, (up, down)) in rows {
        for (dir, v) in [("up", up), ("down", down)] {
            let labels = [(label, key.clone()), ("direction", dir.to_string())];
            ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
        }
    }
    Ok(())
}

fn counter(enc: Enc, name: &str, help: &str, value: u64) -> Res {
    let m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    ConstCounter::new(value).encode(m)
}

fn gauge(enc: Enc, name: &str, help: &str, value: i64) -> Res {
    let m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(value).encode(m)
}

/// Render the full exposition.
pub fn render(metrics: Arc<Metrics>) -> String {
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(Scrape(metrics)));
    let mut out = String::new();
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}

#[derive(Debug)]
struct Scrape(Arc<Metrics>);

impl Collector for Scrape {
    fn encode(&self, enc: DescriptorEncoder) -> Res {
        self.0.encode(enc)
    }
}
