//! Per-core DNS cache. Lookups run on the executor's blocking pool (getaddrinfo never runs
//! on the executor thread); concurrent lookups of one name share one query.
//!
//! getaddrinfo does not report record TTLs, so answers are kept for `[dns] cache_ttl` and
//! failures for `[dns] negative_ttl`.

use crate::config::DnsSection;
use crate::metrics::CoreMetrics;
use ahash::AHashMap;
use std::cell::RefCell;
use std::net::{IpAddr, ToSocketAddrs};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

/// Why a name did not resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsError(pub String);

type Answer = Result<Rc<[IpAddr]>, DnsError>;

struct Inflight {
    answer: RefCell<Option<Answer>>,
    waiters: RefCell<Vec<Waker>>,
}

enum Slot {
    Ready { answer: Answer, expires: Instant },
    Pending(Rc<Inflight>),
}

pub struct DnsCache {
    map: RefCell<AHashMap<String, Slot>>,
    ttl: Duration,
    negative_ttl: Duration,
    max: usize,
    metrics: Arc<CoreMetrics>,
}

impl DnsCache {
    pub fn new(cfg: &DnsSection, metrics: Arc<CoreMetrics>) -> Self {
        Self {
            map: RefCell::new(AHashMap::new()),
            ttl: cfg.cache_ttl.0,
            negative_ttl: cfg.negative_ttl.0,
            max: cfg.cache_size.max(1),
            metrics,
        }
    }

    /// Resolve `host` (a name; IP literals never get here) to its addresses.
    pub async fn resolve(&self, host: &str) -> Answer {
        // Names usually arrive lowercase: look them up without a copy.
        let key: std::borrow::Cow<'_, str> = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            host.to_ascii_lowercase().into()
        } else {
            host.into()
        };
        let now = Instant::now();
        let inflight = {
            let map = self.map.borrow();
            match map.get(key.as_ref()) {
                Some(Slot::Ready { answer, expires }) if *expires > now => {
                    self.metrics.dns_hits.inc();
                    return answer.clone();
                }
                Some(Slot::Pending(p)) => {
                    self.metrics.dns_hits.inc();
                    Some(p.clone())
                }
                _ => None,
            }
        };
        if let Some(p) = inflight {
            return std::future::poll_fn(|cx| match &*p.answer.borrow() {
                Some(a) => Poll::Ready(a.clone()),
                None => {
                    p.waiters.borrow_mut().push(cx.waker().clone());
                    Poll::Pending
                }
            })
            .await;
        }
        self.metrics.dns_misses.inc();
        let flight = Rc::new(Inflight {
            answer: RefCell::new(None),
            waiters: RefCell::new(Vec::new()),
        });
        {
            let mut map = self.map.borrow_mut();
            if map.len() >= self.max {
                let now = Instant::now();
                map.retain(|_, s| {
                    matches!(s, Slot::Ready { expires, .. } if *expires > now)
                        || matches!(s, Slot::Pending(_))
                });
                if map.len() >= self.max {
                    map.retain(|_, s| matches!(s, Slot::Pending(_)));
                }
            }
            map.insert(key.clone().into_owned(), Slot::Pending(flight.clone()));
        }
        // If this future is dropped mid-lookup, the guard still publishes an answer so
        // that waiters are not stranded.
        let guard = Publish {
            cache: self,
            key: &key,
            flight: &flight,
            answer: None,
        };
        let name = key.clone().into_owned();
        let answer = glommio::executor()
            .spawn_blocking(move || lookup(&name))
            .await
            .map(Rc::from);
        let mut guard = guard;
        guard.answer = Some(answer.clone());
        drop(guard);
        answer
    }
}

struct Publish<'a> {
    cache: &'a DnsCache,
    key: &'a str,
    flight: &'a Rc<Inflight>,
    answer: Option<Answer>,
}

impl Drop for Publish<'_> {
    fn drop(&mut self) {
        // No answer: the lookup's task was dropped before the resolver answered.
        let cancelled = self.answer.is_none();
        let answer = self
            .answer
            .take()
            .unwrap_or_else(|| Err(DnsError("lookup cancelled".into())));
        let ttl = match &answer {
            Ok(_) => self.cache.ttl,
            Err(_) => self.cache.negative_ttl,
        };
        let mut map = self.cache.map.borrow_mut();
        if cancelled {
            map.remove(self.key);
        } else {
            map.insert(
                self.key.to_owned(),
                Slot::Ready {
                    answer: answer.clone(),
                    expires: Instant::now() + ttl,
                },
            );
        }
        *self.flight.answer.borrow_mut() = Some(answer);
        for w in self.flight.waiters.borrow_mut().drain(..) {
            w.wake();
        }
    }
}

fn lookup(host: &str) -> Result<Vec<IpAddr>, DnsError> {
    match (host, 0u16).to_socket_addrs() {
        Ok(it) => {
            let mut v: Vec<IpAddr> = Vec::new();
            for a in it {
                if !v.contains(&a.ip()) {
                    v.push(a.ip());
                }
            }
            if v.is_empty() {
                Err(DnsError(format!("{host}: no addresses")))
            } else {
                Ok(v)
            }
        }
        Err(e) => Err(DnsError(format!("{host}: {e}"))),
    }
}
