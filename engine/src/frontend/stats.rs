//! The front end's counters, node-wide: sessions and transactions
//! proxied, back-end failures by reason, the end-of-data latency per
//! pool, and the pool each route uses now. Written once per session,
//! transaction or failure (atomics); the per-pool and per-route maps take
//! their lock only when a core meets a pool for the first time or a
//! route changes pool.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use crate::metrics::{Histogram, SHADOW_BUCKETS};

/// Why a back end failed (the label of `tern_frontend_backend_failures_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// TCP connect failed or timed out.
    Connect,
    /// It refused the session (greeting, EHLO) or TLS failed.
    Session,
    /// It does not offer or refused XCLIENT.
    Xclient,
    /// The connection was lost or a reply did not come in time.
    Lost,
    /// A transient (4xx) reply at the end of data.
    Deferred,
    /// No back end of the route's pools was up.
    Unavailable,
}

/// Every reason, in the exposition's order.
pub const FAILURES: [Failure; 6] = [
    Failure::Connect,
    Failure::Session,
    Failure::Xclient,
    Failure::Lost,
    Failure::Deferred,
    Failure::Unavailable,
];

impl Failure {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Connect => "connect",
            Failure::Session => "session",
            Failure::Xclient => "xclient",
            Failure::Lost => "lost",
            Failure::Deferred => "deferred",
            Failure::Unavailable => "unavailable",
        }
    }

    fn index(self) -> usize {
        FAILURES.iter().position(|f| *f == self).expect("listed")
    }
}

/// One pool's figures.
#[derive(Debug, Default)]
pub struct PoolStats {
    /// From the end of the client's data to the back end's reply, in
    /// microseconds.
    pub eod_us: Histogram<SHADOW_BUCKETS>,
    /// Connections opened to its hosts.
    pub connections: AtomicU64,
}

/// The front end's counters (all cores).
#[derive(Debug, Default)]
pub struct Stats {
    /// Client sessions proxied (accepted connections).
    pub sessions: AtomicU64,
    /// Transactions forwarded (MAIL accepted by a back end).
    pub transactions: AtomicU64,
    /// Messages the back ends accepted (2xx at the end of data).
    pub messages: AtomicU64,
    /// Messages the back ends refused (5xx at the end of data, passed on).
    pub refused: AtomicU64,
    failures: [AtomicU64; FAILURES.len()],
    pools: Mutex<BTreeMap<String, Arc<PoolStats>>>,
    routes: Mutex<BTreeMap<String, String>>,
}

impl Stats {
    /// Counts a back-end failure.
    pub fn failed(&self, why: Failure) {
        crate::metrics::CoreMetrics::inc(&self.failures[why.index()]);
    }

    /// Failures by reason.
    pub fn failures(&self) -> Vec<(&'static str, u64)> {
        FAILURES
            .iter()
            .map(|f| {
                let n = self.failures[f.index()].load(std::sync::atomic::Ordering::Relaxed);
                (f.as_str(), n)
            })
            .collect()
    }

    /// The figures of pool `name` (made at its first use).
    pub fn pool(&self, name: &str) -> Arc<PoolStats> {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        pools.entry(name.to_owned()).or_default().clone()
    }

    /// Every pool met so far.
    pub fn pools(&self) -> Vec<(String, Arc<PoolStats>)> {
        let pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        pools.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Route `pattern` now goes to `pool` (a failover, or back).
    pub fn route_uses(&self, pattern: &str, pool: &str) {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        if routes.get(pattern).map(String::as_str) != Some(pool) {
            tracing::info!(route = pattern, pool, "front-end route now uses this pool");
            routes.insert(pattern.to_owned(), pool.to_owned());
        }
    }

    /// The pool each route used last.
    pub fn routes(&self) -> BTreeMap<String, String> {
        self.routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}
