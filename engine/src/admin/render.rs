//! Prometheus text rendering of the per-core counters for `GET /metrics`.
//!
//! Every exported metric is one row of `METRICS` (name, type, help and
//! how to read each core's samples); [`render`] walks the table, so a
//! metric is added or renamed in one place.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::metrics::CoreMetrics;
use crate::tls::stats::{Direction, FAILURES};
use crate::tls::TlsStats;

/// A metric's Prometheus type (its `# TYPE` line).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// Picks one counter out of a core's.
type Field = fn(&CoreMetrics) -> &AtomicU64;

/// How one core's samples of a metric are read.
#[derive(Clone, Copy)]
enum Read {
    /// One sample: `name{core="i"} value`.
    Value(fn(&CoreMetrics) -> u64),
    /// One sample per label value, in this order:
    /// `name{core="i",label="value"} count`.
    Labelled {
        label: &'static str,
        values: &'static [(&'static str, Field)],
    },
    /// Per-bucket counts, rendered cumulative as `name_bucket` samples with
    /// `bound(b)` as bucket `b`'s `le` (the last one is `+Inf`), then
    /// `name_count`.
    Buckets {
        counts: fn(&CoreMetrics) -> &[AtomicU64],
        bound: fn(usize) -> f64,
    },
}

/// One metric of the exposition: its name, type and help are written here
/// and nowhere else.
struct Metric {
    name: &'static str,
    kind: Kind,
    help: &'static str,
    read: Read,
}

const fn counter(name: &'static str, help: &'static str, get: fn(&CoreMetrics) -> u64) -> Metric {
    Metric {
        name,
        kind: Kind::Counter,
        help,
        read: Read::Value(get),
    }
}

const fn gauge(name: &'static str, help: &'static str, get: fn(&CoreMetrics) -> u64) -> Metric {
    Metric {
        name,
        kind: Kind::Gauge,
        help,
        read: Read::Value(get),
    }
}

const fn histogram(
    name: &'static str,
    help: &'static str,
    counts: fn(&CoreMetrics) -> &[AtomicU64],
    bound: fn(usize) -> f64,
) -> Metric {
    Metric {
        name,
        kind: Kind::Histogram,
        help,
        read: Read::Buckets { counts, bound },
    }
}

fn l(a: &AtomicU64) -> u64 {
    a.load(Relaxed)
}

/// Upper bound of commit latency bucket `b` (2^b µs), in seconds.
fn sync_bound(b: usize) -> f64 {
    (1u64 << b) as f64 / 1e6
}

/// Upper bound of batch size bucket `b`: 2^b - 1 records.
fn batch_bound(b: usize) -> f64 {
    ((1u64 << b) - 1) as f64
}

/// The reasons of `tern_rejected_total`, in the order rendered.
/// (`rejected_memory` is counted but not exported.)
const REJECTED_REASONS: &[(&str, Field)] = &[
    ("storage", |c| &c.rejected_storage),
    ("relay", |c| &c.rejected_relay),
    ("protocol", |c| &c.rejected_protocol),
    ("pressure", |c| &c.rejected_pressure),
];

/// The results of `tern_auth_total`.
const AUTH_RESULTS: &[(&str, Field)] = &[
    ("success", |c| &c.auth_successes),
    ("failure", |c| &c.auth_failures),
    ("refused", |c| &c.auth_refused),
];

/// Every metric, in the order [`render`] writes them.
static METRICS: &[Metric] = &[
    gauge(
        "tern_log_state",
        "State of the core's log: 0 ok, 1 failed for good (the node stops)",
        |c| l(&c.log_failed),
    ),
    counter(
        "tern_greetings_delayed_total",
        "Greetings delayed by back pressure (pressure.greeting_delay)",
        |c| l(&c.greetings_delayed),
    ),
    counter(
        "tern_downgraded_total",
        "Messages converted to 7 bit (quoted-printable) for a next hop without 8BITMIME",
        |c| l(&c.downgraded),
    ),
    counter(
        "tern_eight_bit_as_is_total",
        "8-bit messages sent as is to a next hop without 8BITMIME (not convertible)",
        |c| l(&c.eight_bit_as_is),
    ),
    counter(
        "tern_delivery_attempts_held_back_total",
        "Scheduler passes that started no attempt though messages were due, because their outcome could not be recorded",
        |c| l(&c.attempts_held_back),
    ),
    counter("tern_connections_total", "SMTP connections accepted", |c| {
        l(&c.connections_total)
    }),
    gauge("tern_connections_open", "SMTP connections open", |c| {
        l(&c.connections_total).saturating_sub(l(&c.connections_closed))
    }),
    counter(
        "tern_connections_refused_total",
        "Connections refused at a limit",
        |c| l(&c.connections_refused),
    ),
    counter(
        "tern_messages_accepted_total",
        "Messages made durable and answered 250",
        |c| l(&c.messages_accepted),
    ),
    counter(
        "tern_bytes_accepted_total",
        "Bytes of accepted messages",
        |c| l(&c.bytes_accepted),
    ),
    Metric {
        name: "tern_rejected_total",
        kind: Kind::Counter,
        help: "Refusals by reason",
        read: Read::Labelled {
            label: "reason",
            values: REJECTED_REASONS,
        },
    },
    counter(
        "tern_session_timeouts_total",
        "Sessions closed by a timeout",
        |c| l(&c.timeouts),
    ),
    Metric {
        name: "tern_auth_total",
        kind: Kind::Counter,
        help: "SMTP AUTH attempts by result (refused: the failed-attempt limit)",
        read: Read::Labelled {
            label: "result",
            values: AUTH_RESULTS,
        },
    },
    counter(
        "tern_shadow_untrusted_total",
        "XSHADOW or XQDISCARD refused: the client did not show a pinned peer certificate",
        |c| l(&c.shadow_untrusted),
    ),
    counter(
        "tern_log_batches_total",
        "Group commits (one write + one fdatasync)",
        |c| l(&c.log_batches),
    ),
    counter("tern_log_records_total", "Records made durable", |c| {
        l(&c.log_records)
    }),
    counter(
        "tern_log_bytes_written_total",
        "Bytes written to the log",
        |c| l(&c.log_bytes),
    ),
    histogram(
        "tern_log_commit_seconds",
        "group commit latency: the batch's write(s) and fdatasync",
        |c| &c.sync_us,
        sync_bound,
    ),
    histogram(
        "tern_log_batch_records",
        "Records per group commit",
        |c| &c.batch_records,
        batch_bound,
    ),
    counter(
        "tern_delivered_recipients_total",
        "Recipients accepted by the next hop",
        |c| l(&c.delivered_rcpts),
    ),
    counter(
        "tern_bounced_recipients_total",
        "Recipients that failed permanently",
        |c| l(&c.bounced_rcpts),
    ),
    counter(
        "tern_expired_recipients_total",
        "Recipients bounced because the message expired",
        |c| l(&c.expired_rcpts),
    ),
    counter(
        "tern_deferred_total",
        "Delivery attempts that left recipients for a retry",
        |c| l(&c.deferred),
    ),
    counter(
        "tern_dsns_queued_total",
        "Delivery status notifications queued",
        |c| l(&c.dsns_queued),
    ),
    counter(
        "tern_delivery_transactions_total",
        "Outbound transactions started",
        |c| l(&c.delivery_transactions),
    ),
    counter(
        "tern_outbound_connections_total",
        "Outbound connections attempted",
        |c| l(&c.outbound_connections),
    ),
    counter(
        "tern_outbound_connect_failures_total",
        "Outbound connections that failed before a transaction",
        |c| l(&c.outbound_connect_failures),
    ),
    counter(
        "tern_unreadable_messages_total",
        "Queued message records that could not be read",
        |c| l(&c.unreadable),
    ),
    counter(
        "tern_shadow_copies_made_total",
        "Shadow copies of our messages made on a peer",
        |c| l(&c.shadow_copies_made),
    ),
    counter(
        "tern_shadow_copies_failed_total",
        "Messages for which no peer took a shadow copy",
        |c| l(&c.shadow_copies_failed),
    ),
    counter(
        "tern_non_redundant_accepts_total",
        "Messages accepted without a shadow copy",
        |c| l(&c.non_redundant_accepts),
    ),
    counter(
        "tern_shadow_latency_microseconds_total",
        "Time spent making shadow copies",
        |c| l(&c.shadow_latency_us),
    ),
    counter(
        "tern_shadow_discards_total",
        "Shadow copies dropped on their primary's discard notification",
        |c| l(&c.shadow_discards),
    ),
    counter(
        "tern_shadow_heartbeats_total",
        "Discard queries answered by primaries",
        |c| l(&c.heartbeats),
    ),
    counter(
        "tern_shadow_takeovers_total",
        "Shadow copies taken over and queued here",
        |c| l(&c.takeovers),
    ),
    counter(
        "tern_duplicates_total",
        "Resent messages recognised and not queued again",
        |c| l(&c.duplicates),
    ),
    counter(
        "tern_shadow_copies_held_total",
        "Shadow copies of peers' messages stored here",
        |c| l(&c.shadow_copies_held),
    ),
    counter(
        "tern_copied_forward_total",
        "Queued messages copied out of old segments",
        |c| l(&c.copied_forward),
    ),
    counter(
        "tern_segments_reclaimed_total",
        "Log segments deleted",
        |c| l(&c.segments_reclaimed),
    ),
    gauge(
        "tern_queue_messages",
        "Messages in the delivery queue",
        |c| l(&c.queue_messages),
    ),
    gauge(
        "tern_queue_in_flight",
        "Messages being delivered now",
        |c| l(&c.queue_in_flight),
    ),
];

impl Metric {
    /// `# HELP`, `# TYPE`, then every core's samples.
    fn render(&self, out: &mut String, cores: &[&CoreMetrics]) {
        let name = self.name;
        let kind = self.kind.as_str();
        let _ = writeln!(out, "# HELP {name} {}\n# TYPE {name} {kind}", self.help);
        for (i, c) in cores.iter().enumerate() {
            match self.read {
                Read::Value(get) => {
                    let _ = writeln!(out, "{name}{{core=\"{i}\"}} {}", get(c));
                }
                Read::Labelled { label, values } => {
                    for (value, get) in values {
                        let v = l(get(c));
                        let _ = writeln!(out, "{name}{{core=\"{i}\",{label}=\"{value}\"}} {v}");
                    }
                }
                Read::Buckets { counts, bound } => buckets(out, name, i, counts(c), bound),
            }
        }
    }
}

/// One core's histogram samples: cumulative buckets, then the count.
fn buckets(
    out: &mut String,
    name: &str,
    core: usize,
    counts: &[AtomicU64],
    bound: fn(usize) -> f64,
) {
    let mut cumulative = 0;
    for (b, count) in counts.iter().enumerate() {
        cumulative += l(count);
        let le = if b + 1 == counts.len() {
            "+Inf".to_string()
        } else {
            bound(b).to_string()
        };
        let _ = writeln!(
            out,
            "{name}_bucket{{core=\"{core}\",le=\"{le}\"}} {cumulative}"
        );
    }
    let _ = writeln!(out, "{name}_count{{core=\"{core}\"}} {cumulative}");
}

/// Prometheus text exposition of all cores: every metric of `METRICS`,
/// in its order.
pub fn render(cores: &[&CoreMetrics]) -> String {
    let mut out = String::new();
    for metric in METRICS {
        metric.render(&mut out, cores);
    }
    out
}

/// The node-wide TLS counters (`crate::tls::TlsStats`).
pub fn render_tls(t: &TlsStats) -> String {
    let mut out = String::new();
    out.push_str("# HELP tern_tls_sessions_total TLS sessions by direction, version and cipher suite\n# TYPE tern_tls_sessions_total counter\n");
    for d in [Direction::In, Direction::Out] {
        for (version, cipher, n) in t.sessions(d) {
            let _ = writeln!(
                out,
                "tern_tls_sessions_total{{direction=\"{}\",version=\"{version}\",cipher=\"{cipher}\"}} {n}",
                d.as_str()
            );
        }
    }
    out.push_str("# HELP tern_tls_resumed_total TLS sessions resumed (no full handshake)\n# TYPE tern_tls_resumed_total counter\n");
    for d in [Direction::In, Direction::Out] {
        let _ = writeln!(
            out,
            "tern_tls_resumed_total{{direction=\"{}\"}} {}",
            d.as_str(),
            t.resumed(d)
        );
    }
    out.push_str("# HELP tern_tls_handshake_failures_total Failed TLS handshakes by direction and reason\n# TYPE tern_tls_handshake_failures_total counter\n");
    for d in [Direction::In, Direction::Out] {
        for f in FAILURES {
            let _ = writeln!(
                out,
                "tern_tls_handshake_failures_total{{direction=\"{}\",reason=\"{}\"}} {}",
                d.as_str(),
                f.as_str(),
                t.failures(d, f)
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP tern_tls_cleartext_fallbacks_total Deliveries retried in clear text after a failed handshake (tls_policy = \"may\")\n# TYPE tern_tls_cleartext_fallbacks_total counter\ntern_tls_cleartext_fallbacks_total {}",
        t.cleartext_fallbacks.load(Relaxed)
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_storage::LogStats;

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

    #[test]
    fn every_metric_of_the_table_has_help_type_and_samples_once() {
        let (a, b) = (CoreMetrics::default(), CoreMetrics::default());
        let text = render(&[&a, &b]);
        let lines: Vec<&str> = text.lines().collect();
        let count = |wanted: &str| lines.iter().filter(|l| **l == wanted).count();
        let mut names = std::collections::HashSet::new();
        for m in METRICS {
            let name = m.name;
            assert!(names.insert(name), "{name} twice in the table");
            assert_eq!(
                m.kind == Kind::Histogram,
                matches!(m.read, Read::Buckets { .. }),
                "{name}: histogram type iff bucket samples"
            );
            assert_eq!(count(&format!("# HELP {name} {}", m.help)), 1, "{name}");
            assert_eq!(
                count(&format!("# TYPE {name} {}", m.kind.as_str())),
                1,
                "{name}"
            );
            for core in ["0", "1"] {
                let sample = match m.read {
                    Read::Value(_) => format!("{name}{{core=\"{core}\"}} "),
                    Read::Labelled { .. } => format!("{name}{{core=\"{core}\","),
                    Read::Buckets { .. } => format!("{name}_count{{core=\"{core}\"}} "),
                };
                assert!(lines.iter().any(|l| l.starts_with(&sample)), "{sample}");
            }
        }
        // Nothing is rendered that the table does not name: every line is
        // a comment or a sample of the metric whose TYPE came last.
        let mut current = "";
        for line in &lines {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                current = rest.split(' ').next().expect("name");
            } else if !line.starts_with("# HELP ") {
                assert!(
                    names.contains(current) && line.starts_with(current),
                    "{line}"
                );
            }
        }
        assert_eq!(
            lines.iter().filter(|l| l.starts_with("# HELP ")).count(),
            METRICS.len()
        );
    }
}
