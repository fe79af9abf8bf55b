//! Per-core counters: written only by their core (a plain load + store, no locked
//! instruction, no shared cache line); labelled counters that change once per connection
//! sit behind an uncontended per-core mutex. The admin's scrape sums them
//! (`admin::scrape`). A leaf: it imports nothing of the crate.

use ahash::AHashMap;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
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
    /// Connections closed for their PROXY protocol header: (listener index, why).
    pub proxy_header_refused: Mutex<AHashMap<(usize, &'static str), u64>>,
    /// TLS ClientHellos by (listener index, result): ok, failed, timeout, no_certificate.
    pub tls_handshakes: Mutex<AHashMap<(usize, &'static str), u64>>,
    /// SOCKS5 UDP datagrams not relayed, by reason.
    pub udp_dropped: Mutex<AHashMap<&'static str, u64>>,
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
    /// A SOCKS5 UDP datagram was dropped for `why`.
    pub fn udp_dropped(&self, why: &'static str) {
        *self.udp_dropped.lock().entry(why).or_default() += 1;
    }

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

/// Per-core labelled pairs of counters: name → (up, down) or (attempts, failures).
pub type Pairs = Mutex<AHashMap<String, (u64, u64)>>;
