//! `GET /shadow` (`tern shadow status`).

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use super::Admin;
use crate::metrics::CoreMetrics;
use crate::shadow::lock;

/// This node, its peers (database ids, last heartbeat, copies held for
/// each, how many of our messages each took over), our messages that may
/// be delivered twice, and the shadow counters.
pub(super) fn status(a: &Admin) -> String {
    let c = &a.config.cluster;
    let db = a.shadow.database_id.to_string();
    let sum = |f: fn(&CoreMetrics) -> u64| a.cores.iter().map(|m| f(m)).sum::<u64>();
    let mut out = format!(
        "node {} site {} database {db} shadow_redundancy {} preference {}\n",
        c.node_id,
        c.site,
        c.shadow_redundancy,
        c.shadow_preference.as_str()
    );
    out.push_str(&format!(
        "our messages: {} shadowed, {} without a shadow, {} shadow failures\n",
        sum(|m| m.shadow_copies_made.load(Relaxed)),
        sum(|m| m.non_redundant_accepts.load(Relaxed)),
        sum(|m| m.shadow_copies_failed.load(Relaxed)),
    ));
    let held = a.shadow.replica.held_per_primary();
    let primaries = lock(&a.shadow.replica.primaries).clone();
    let taken_over = lock(&a.shadow.primary.taken_over).clone();
    let taken_total: u64 = taken_over.values().sum();
    if taken_total > 0 {
        out.push_str(&format!(
            "taken over by shadows: {taken_total} of our messages (we were unreachable; we deliver them too, so they may be delivered twice, SPEC 4)\n"
        ));
    }
    for p in &c.peers {
        let state = primaries.get(&p.node_id);
        let seen = state.map_or("never".to_string(), |s| {
            crate::received::rfc5322_date(
                std::time::SystemTime::UNIX_EPOCH + Duration::from_millis(s.last_ok_ms),
            )
        });
        out.push_str(&format!(
            "peer {} {} site {} database {} last-heartbeat {seen} held-for-it {} took-over-ours {}\n",
            p.node_id,
            p.addr,
            p.site,
            state
                .and_then(|s| s.database.clone())
                .unwrap_or_else(|| "unknown".into()),
            held.get(&p.node_id).copied().unwrap_or(0),
            taken_over.get(&p.node_id).copied().unwrap_or(0)
        ));
    }
    out.push_str(&format!(
        "takeovers {} discards {} duplicates {}\n",
        sum(|m| m.takeovers.load(Relaxed)),
        sum(|m| m.shadow_discards.load(Relaxed)),
        sum(|m| m.duplicates.load(Relaxed)),
    ));
    out
}
