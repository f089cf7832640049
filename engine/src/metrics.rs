//! Counters per core (atomics written only by their own core, so never
//! contended) and their Prometheus text rendering for the admin listener.

use std::fmt::Write as _;
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
    /// Other error replies (syntax, sequence, limits).
    pub rejected_protocol: AtomicU64,
    /// Sessions ended by a timeout.
    pub timeouts: AtomicU64,
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
    log_batches: AtomicU64,
    log_records: AtomicU64,
    log_bytes: AtomicU64,
    sync_us: [AtomicU64; SYNC_BUCKETS],
    batch_records: [AtomicU64; BATCH_BUCKETS],
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

fn counter(
    out: &mut String,
    name: &str,
    help: &str,
    cores: &[&CoreMetrics],
    get: impl Fn(&CoreMetrics) -> u64,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    for (i, c) in cores.iter().enumerate() {
        let _ = writeln!(out, "{name}{{core=\"{i}\"}} {}", get(c));
    }
}

fn histogram(
    out: &mut String,
    name: &str,
    help: &str,
    cores: &[&CoreMetrics],
    bounds: &[f64],
    get: impl Fn(&CoreMetrics, usize) -> u64,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    for (i, c) in cores.iter().enumerate() {
        let mut cumulative = 0;
        for (b, bound) in bounds.iter().enumerate() {
            cumulative += get(c, b);
            let le = if b + 1 == bounds.len() {
                "+Inf".to_string()
            } else {
                bound.to_string()
            };
            let _ = writeln!(
                out,
                "{name}_bucket{{core=\"{i}\",le=\"{le}\"}} {cumulative}"
            );
        }
        let _ = writeln!(out, "{name}_count{{core=\"{i}\"}} {cumulative}");
    }
}

/// Prometheus text exposition of all cores.
pub fn render(cores: &[&CoreMetrics]) -> String {
    let mut out = String::new();
    let l = |a: &AtomicU64| a.load(Relaxed);
    counter(
        &mut out,
        "tern_connections_total",
        "SMTP connections accepted",
        cores,
        |c| l(&c.connections_total),
    );
    let _ = writeln!(
        out,
        "# HELP tern_connections_open SMTP connections open\n# TYPE tern_connections_open gauge"
    );
    for (i, c) in cores.iter().enumerate() {
        let open = l(&c.connections_total).saturating_sub(l(&c.connections_closed));
        let _ = writeln!(out, "tern_connections_open{{core=\"{i}\"}} {open}");
    }
    counter(
        &mut out,
        "tern_connections_refused_total",
        "Connections refused at a limit",
        cores,
        |c| l(&c.connections_refused),
    );
    counter(
        &mut out,
        "tern_messages_accepted_total",
        "Messages made durable and answered 250",
        cores,
        |c| l(&c.messages_accepted),
    );
    counter(
        &mut out,
        "tern_bytes_accepted_total",
        "Bytes of accepted messages",
        cores,
        |c| l(&c.bytes_accepted),
    );
    let _ = writeln!(
        out,
        "# HELP tern_rejected_total Refusals by reason\n# TYPE tern_rejected_total counter"
    );
    for (i, c) in cores.iter().enumerate() {
        for (reason, v) in [
            ("storage", &c.rejected_storage),
            ("relay", &c.rejected_relay),
            ("protocol", &c.rejected_protocol),
        ] {
            let _ = writeln!(
                out,
                "tern_rejected_total{{core=\"{i}\",reason=\"{reason}\"}} {}",
                l(v)
            );
        }
    }
    counter(
        &mut out,
        "tern_session_timeouts_total",
        "Sessions closed by a timeout",
        cores,
        |c| l(&c.timeouts),
    );
    counter(
        &mut out,
        "tern_log_batches_total",
        "Group commits (one write + one fdatasync)",
        cores,
        |c| l(&c.log_batches),
    );
    counter(
        &mut out,
        "tern_log_records_total",
        "Records made durable",
        cores,
        |c| l(&c.log_records),
    );
    counter(
        &mut out,
        "tern_log_bytes_written_total",
        "Bytes written to the log",
        cores,
        |c| l(&c.log_bytes),
    );
    let sync_bounds: Vec<f64> = (0..SYNC_BUCKETS)
        .map(|i| (1u64 << i) as f64 / 1e6)
        .collect();
    histogram(
        &mut out,
        "tern_log_commit_seconds",
        "group commit latency: the batch's write(s) and fdatasync",
        cores,
        &sync_bounds,
        |c, b| l(&c.sync_us[b]),
    );
    let batch_bounds: Vec<f64> = (0..BATCH_BUCKETS)
        .map(|i| ((1u64 << i) - 1) as f64)
        .collect();
    histogram(
        &mut out,
        "tern_log_batch_records",
        "Records per group commit",
        cores,
        &batch_bounds,
        |c, b| l(&c.batch_records[b]),
    );
    for (name, help, get) in [
        (
            "tern_delivered_recipients_total",
            "Recipients accepted by the next hop",
            (|c: &CoreMetrics| c.delivered_rcpts.load(Relaxed)) as fn(&CoreMetrics) -> u64,
        ),
        (
            "tern_bounced_recipients_total",
            "Recipients that failed permanently",
            |c| c.bounced_rcpts.load(Relaxed),
        ),
        (
            "tern_expired_recipients_total",
            "Recipients bounced because the message expired",
            |c| c.expired_rcpts.load(Relaxed),
        ),
        (
            "tern_deferred_total",
            "Delivery attempts that left recipients for a retry",
            |c| c.deferred.load(Relaxed),
        ),
        (
            "tern_dsns_queued_total",
            "Delivery status notifications queued",
            |c| c.dsns_queued.load(Relaxed),
        ),
        (
            "tern_delivery_transactions_total",
            "Outbound transactions started",
            |c| c.delivery_transactions.load(Relaxed),
        ),
        (
            "tern_outbound_connections_total",
            "Outbound connections attempted",
            |c| c.outbound_connections.load(Relaxed),
        ),
        (
            "tern_outbound_connect_failures_total",
            "Outbound connections that failed before a transaction",
            |c| c.outbound_connect_failures.load(Relaxed),
        ),
        (
            "tern_unreadable_messages_total",
            "Queued message records that could not be read",
            |c| c.unreadable.load(Relaxed),
        ),
        (
            "tern_shadow_copies_made_total",
            "Shadow copies of our messages made on a peer",
            |c| c.shadow_copies_made.load(Relaxed),
        ),
        (
            "tern_shadow_copies_failed_total",
            "Messages for which no peer took a shadow copy",
            |c| c.shadow_copies_failed.load(Relaxed),
        ),
        (
            "tern_non_redundant_accepts_total",
            "Messages accepted without a shadow copy",
            |c| c.non_redundant_accepts.load(Relaxed),
        ),
        (
            "tern_shadow_latency_microseconds_total",
            "Time spent making shadow copies",
            |c| c.shadow_latency_us.load(Relaxed),
        ),
        (
            "tern_shadow_discards_total",
            "Shadow copies dropped on their primary's discard notification",
            |c| c.shadow_discards.load(Relaxed),
        ),
        (
            "tern_shadow_heartbeats_total",
            "Discard queries answered by primaries",
            |c| c.heartbeats.load(Relaxed),
        ),
        (
            "tern_shadow_takeovers_total",
            "Shadow copies taken over and queued here",
            |c| c.takeovers.load(Relaxed),
        ),
        (
            "tern_duplicates_total",
            "Resent messages recognised and not queued again",
            |c| c.duplicates.load(Relaxed),
        ),
        (
            "tern_shadow_copies_held_total",
            "Shadow copies of peers' messages stored here",
            |c| c.shadow_copies_held.load(Relaxed),
        ),
        (
            "tern_copied_forward_total",
            "Queued messages copied out of old segments",
            |c| c.copied_forward.load(Relaxed),
        ),
        (
            "tern_segments_reclaimed_total",
            "Log segments deleted",
            |c| c.segments_reclaimed.load(Relaxed),
        ),
    ] {
        counter(&mut out, name, help, cores, get);
    }
    for (name, help, get) in [
        (
            "tern_queue_messages",
            "Messages in the delivery queue",
            (|c: &CoreMetrics| c.queue_messages.load(Relaxed)) as fn(&CoreMetrics) -> u64,
        ),
        (
            "tern_queue_in_flight",
            "Messages being delivered now",
            |c| c.queue_in_flight.load(Relaxed),
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (i, c) in cores.iter().enumerate() {
            let _ = writeln!(out, "{name}{{core=\"{i}\"}} {}", get(c));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_cumulative_histograms() {
        let m = CoreMetrics::default();
        CoreMetrics::inc(&m.messages_accepted);
        let mut stats = LogStats::default();
        stats.sync_us_buckets[8] = 3;
        stats.sync_us_buckets[9] = 1;
        stats.batches = 4;
        m.set_log_stats(&stats);
        let text = render(&[&m]);
        assert!(text.contains("tern_messages_accepted_total{core=\"0\"} 1\n"));
        assert!(text.contains("tern_log_commit_seconds_bucket{core=\"0\",le=\"0.000256\"} 3\n"));
        assert!(text.contains("tern_log_commit_seconds_bucket{core=\"0\",le=\"0.000512\"} 4\n"));
        assert!(text.contains("tern_log_commit_seconds_count{core=\"0\"} 4\n"));
        // Every delivery and shadow counter is rendered.
        for name in [
            "tern_delivered_recipients_total",
            "tern_unreadable_messages_total",
            "tern_shadow_copies_made_total",
            "tern_shadow_copies_failed_total",
            "tern_non_redundant_accepts_total",
            "tern_shadow_latency_microseconds_total",
            "tern_shadow_copies_held_total",
            "tern_copied_forward_total",
            "tern_queue_messages",
        ] {
            assert!(
                text.contains(&format!("{name}{{core=\"0\"}} 0\n")),
                "{name}"
            );
        }
        assert!(text.contains("tern_rejected_total{core=\"0\",reason=\"storage\"} 0\n"));
    }
}
