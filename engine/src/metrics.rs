//! Counters per core (atomics written only by their own core, so never
//! contended). The admin listener renders them (`admin/metric_table.rs`:
//! one table row per exported metric).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use tern_storage::{LogStats, BATCH_BUCKETS, SYNC_BUCKETS};

/// Buckets of the shadow copy latency: power-of-two microseconds up to
/// 2^25 us (about 34 s, beyond `cluster.shadow_timeout`'s default), then
/// the rest.
pub const SHADOW_BUCKETS: usize = 27;

/// A histogram of power-of-two buckets and the sum of what was observed
/// (Prometheus `_bucket`, `_sum`, `_count`). Bucket `i` counts values
/// below `2^i` and not below `2^(i-1)` (bucket 0: zero; the last bucket:
/// everything larger). Written by one core only.
#[derive(Debug)]
pub struct Histogram<const N: usize> {
    buckets: [AtomicU64; N],
    sum: AtomicU64,
}

impl<const N: usize> Default for Histogram<N> {
    fn default() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum: AtomicU64::new(0),
        }
    }
}

impl<const N: usize> Histogram<N> {
    /// Counts one value. No allocation, two relaxed atomic adds.
    pub fn observe(&self, v: u64) {
        let i = ((u64::BITS - v.leading_zeros()) as usize).min(N - 1);
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum.fetch_add(v, Relaxed);
    }

    /// Replaces the counts and the sum (a copy of the log's histogram).
    pub fn set(&self, buckets: &[u64; N], sum: u64) {
        for (a, v) in self.buckets.iter().zip(buckets) {
            a.store(*v, Relaxed);
        }
        self.sum.store(sum, Relaxed);
    }

    /// Per-bucket counts (not cumulative).
    pub fn counts(&self) -> [u64; N] {
        std::array::from_fn(|i| self.buckets[i].load(Relaxed))
    }

    /// The sum of the values.
    pub fn sum(&self) -> u64 {
        self.sum.load(Relaxed)
    }
}

/// One core's counters.
#[derive(Debug, Default)]
pub struct CoreMetrics {
    /// Connections accepted.
    pub connections_total: AtomicU64,
    /// Connections closed (open = total - closed).
    pub connections_closed: AtomicU64,
    /// Connections refused at a limit (421 4.7.0).
    pub connections_refused: AtomicU64,
    /// Messages made durable and answered 250.
    pub messages_accepted: AtomicU64,
    /// Message bytes (as stored: trace header + content) accepted.
    pub bytes_accepted: AtomicU64,
    /// Messages refused because the log failed (452 4.3.1).
    pub rejected_storage: AtomicU64,
    /// Recipients refused by relay control (554 5.7.1).
    pub rejected_relay: AtomicU64,
    /// Sessions refused because message memory was over budget.
    pub rejected_memory: AtomicU64,
    /// Transactions refused by back pressure (452 4.3.1 at MAIL) and
    /// sessions refused because the store failed (421 at the greeting).
    pub rejected_pressure: AtomicU64,
    /// Greetings delayed by back pressure.
    pub greetings_delayed: AtomicU64,
    /// Scheduler passes with messages due that started no attempt because
    /// the log could not record their outcome (only the reserve left, or
    /// the log failed).
    pub attempts_held_back: AtomicU64,
    /// 1 once this core's log failed for good (gauge).
    pub log_failed: AtomicU64,
    /// Other error replies (syntax, sequence, limits).
    pub rejected_protocol: AtomicU64,
    /// Sessions ended by a timeout.
    pub timeouts: AtomicU64,
    /// SMTP AUTH logins accepted.
    pub auth_successes: AtomicU64,
    /// SMTP AUTH logins refused (bad user or password).
    pub auth_failures: AtomicU64,
    /// SMTP AUTH attempts refused by the failed-attempt limit (421).
    pub auth_refused: AtomicU64,
    /// XCLIENT from a front end taken (the session is the real client's).
    pub xclient_accepted: AtomicU64,
    /// XCLIENT from a front end refused: the real client is over
    /// `smtp.connections_per_ip_max` (421 4.7.0).
    pub xclient_refused: AtomicU64,
    /// XSHADOW or XQDISCARD from a client that is not a pinned peer.
    pub shadow_untrusted: AtomicU64,
    /// Recipients delivered to a next hop.
    pub delivered_rcpts: AtomicU64,
    /// Recipients bounced (permanent failure).
    pub bounced_rcpts: AtomicU64,
    /// Recipients bounced because the message expired.
    pub expired_rcpts: AtomicU64,
    /// Attempts that left recipients for a retry.
    pub deferred: AtomicU64,
    /// Delivery status notifications queued.
    pub dsns_queued: AtomicU64,
    /// Messages converted to 7 bit (quoted-printable) for a next hop
    /// without 8BITMIME.
    pub downgraded: AtomicU64,
    /// 8-bit messages sent as is to a next hop without 8BITMIME (the
    /// conversion could not handle them).
    pub eight_bit_as_is: AtomicU64,
    /// Outbound transactions (MAIL FROM) started.
    pub delivery_transactions: AtomicU64,
    /// Outbound connections attempted.
    pub outbound_connections: AtomicU64,
    /// Outbound connections that failed (connect, greeting, EHLO).
    pub outbound_connect_failures: AtomicU64,
    /// Queued message records that could not be read (damaged).
    pub unreadable: AtomicU64,
    /// Shadow copies of our messages made on a peer.
    pub shadow_copies_made: AtomicU64,
    /// Messages for which no peer took a shadow copy.
    pub shadow_copies_failed: AtomicU64,
    /// Messages accepted without a shadow copy (reject_on_shadow_failure
    /// off).
    pub non_redundant_accepts: AtomicU64,
    /// Time to make a shadow copy (one attempt over the peers), in
    /// microseconds.
    pub shadow_copy_us: Histogram<SHADOW_BUCKETS>,
    /// Shadow copies of peers' messages stored here.
    pub shadow_copies_held: AtomicU64,
    /// Shadow copies dropped on their primary's discard notification.
    pub shadow_discards: AtomicU64,
    /// Resent messages recognised and not queued again.
    pub duplicates: AtomicU64,
    /// Discard queries (heartbeats) answered by primaries.
    pub heartbeats: AtomicU64,
    /// Shadow copies taken over (primary lost its store or stayed
    /// unreachable).
    pub takeovers: AtomicU64,
    /// Messages copied forward out of old segments.
    pub copied_forward: AtomicU64,
    /// Log segments deleted.
    pub segments_reclaimed: AtomicU64,
    /// Messages queued (gauge).
    pub queue_messages: AtomicU64,
    /// Messages being delivered now (gauge).
    pub queue_in_flight: AtomicU64,
    /// Group commits of the core's log (copied from `Log::stats`).
    pub(crate) log_batches: AtomicU64,
    /// Records the log committed.
    pub(crate) log_records: AtomicU64,
    /// Bytes the log committed.
    pub(crate) log_bytes: AtomicU64,
    /// Group commit latency in microseconds (copied from `LogStats`).
    pub(crate) commit_us: Histogram<SYNC_BUCKETS>,
    /// Records per group commit (the sum: every record committed).
    pub(crate) batch_records: Histogram<BATCH_BUCKETS>,
}

impl CoreMetrics {
    /// Adds one to a counter.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    /// Copies the log's durability counters (called periodically).
    pub fn set_log_stats(&self, s: &LogStats) {
        self.log_batches.store(s.batches, Relaxed);
        self.log_records.store(s.records, Relaxed);
        self.log_bytes.store(s.bytes_written, Relaxed);
        self.commit_us.set(&s.sync_us_buckets, s.sync_us_total);
        self.batch_records.set(&s.batch_records_buckets, s.records);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_and_sum() {
        let h = Histogram::<4>::default();
        for v in [0, 1, 2, 3, 4, 100] {
            h.observe(v);
        }
        // 0 | 1 | 2..3 | the rest
        assert_eq!(h.counts(), [1, 1, 2, 2]);
        assert_eq!(h.sum(), 110);
        h.set(&[0, 0, 1, 0], 3);
        assert_eq!((h.counts(), h.sum()), ([0, 0, 1, 0], 3));
    }
}
