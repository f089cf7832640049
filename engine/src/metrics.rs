//! Counters per core (atomics written only by their own core, so never
//! contended). The admin listener renders them (`admin/render.rs`: one
//! table row per exported metric).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use tern_storage::{LogStats, BATCH_BUCKETS, SYNC_BUCKETS};

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
    /// Microseconds spent making shadow copies (sum; / attempts = mean).
    pub shadow_latency_us: AtomicU64,
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
    /// Group commit latency histogram (buckets of `LogStats`).
    pub(crate) sync_us: [AtomicU64; SYNC_BUCKETS],
    /// Records per group commit histogram.
    pub(crate) batch_records: [AtomicU64; BATCH_BUCKETS],
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
        for (a, v) in self.sync_us.iter().zip(s.sync_us_buckets) {
            a.store(v, Relaxed);
        }
        for (a, v) in self.batch_records.iter().zip(s.batch_records_buckets) {
            a.store(v, Relaxed);
        }
    }
}
