//! Every metric of `GET /metrics`, one row each ([`METRICS`]): the name,
//! type and help are written here and nowhere else; `render.rs` walks the
//! table. README's metrics table lists the same names (a test checks).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::render::{Field, Kind, Metric, Read, Samples, Sources};
use crate::metrics::CoreMetrics;
use crate::pressure::Level;
use crate::tls::stats::{Direction, FAILURES};

/// Destinations with a sample of their own in
/// `tern_queue_destination_messages`, the largest first; the rest are
/// summed into `destination="other"`. Bounds the series a large queue
/// makes (a scraper stores every label value as a series).
pub(super) const DESTINATIONS_MAX: usize = 20;

const fn counter(name: &'static str, help: &'static str, get: fn(&CoreMetrics) -> u64) -> Metric {
    Metric {
        name,
        kind: Kind::Counter,
        help,
        read: Read::Core(get),
    }
}

const fn gauge(name: &'static str, help: &'static str, get: fn(&CoreMetrics) -> u64) -> Metric {
    Metric {
        name,
        kind: Kind::Gauge,
        help,
        read: Read::Core(get),
    }
}

const fn node(
    name: &'static str,
    kind: Kind,
    help: &'static str,
    f: fn(&Sources, &mut Samples),
) -> Metric {
    Metric {
        name,
        kind,
        help,
        read: Read::Node(f),
    }
}

/// Is this node a front end, or has it proxied (its families have
/// samples then; a relay's are left out)?
fn is_front_end(s: &Sources) -> bool {
    s.live.get().role == crate::config::Role::FrontEnd || l(&s.frontend.sessions) > 0
}

fn l(a: &AtomicU64) -> u64 {
    a.load(Relaxed)
}

/// Upper bound of a power-of-two microsecond bucket `b` (2^b us), in
/// seconds.
fn us_bound(b: usize) -> f64 {
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

/// The results of `tern_xclient_total`.
const XCLIENT_RESULTS: &[(&str, Field)] = &[
    ("accepted", |c| &c.xclient_accepted),
    ("refused", |c| &c.xclient_refused),
];

const DIRECTIONS: [Direction; 2] = [Direction::In, Direction::Out];

/// Every metric, in the order `render` writes them.
pub(super) static METRICS: &[Metric] = &[
    // Receiving.
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
        read: Read::CoreLabelled {
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
        read: Read::CoreLabelled {
            label: "result",
            values: AUTH_RESULTS,
        },
    },
    Metric {
        name: "tern_xclient_total",
        kind: Kind::Counter,
        help: "XCLIENT from front ends by result (refused: the real client over smtp.connections_per_ip_max)",
        read: Read::CoreLabelled {
            label: "result",
            values: XCLIENT_RESULTS,
        },
    },
    counter(
        "tern_greetings_delayed_total",
        "Greetings delayed by back pressure (pressure.greeting_delay)",
        |c| l(&c.greetings_delayed),
    ),
    // The log.
    gauge(
        "tern_log_state",
        "State of the core's log: 0 ok, 1 failed for good (the node stops)",
        |c| l(&c.log_failed),
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
    Metric {
        name: "tern_log_commit_seconds",
        kind: Kind::Histogram,
        help: "Group commit latency: the batch's write(s) and fdatasync",
        read: Read::CoreHistogram {
            get: |c| (c.commit_us.counts().to_vec(), c.commit_us.sum()),
            bound: us_bound,
            scale: 1e-6,
        },
    },
    Metric {
        name: "tern_log_batch_records",
        kind: Kind::Histogram,
        help: "Records per group commit",
        read: Read::CoreHistogram {
            get: |c| (c.batch_records.counts().to_vec(), c.batch_records.sum()),
            bound: batch_bound,
            scale: 1.0,
        },
    },
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
    counter(
        "tern_unreadable_messages_total",
        "Queued message records that could not be read",
        |c| l(&c.unreadable),
    ),
    // The queue and delivery.
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
    node(
        "tern_queue_destination_messages",
        Kind::Gauge,
        "Queued messages with recipients pending per destination (the largest 20, the rest as other)",
        |s, out| {
            for (d, n) in s.queue.iter().flat_map(|q| &q.destinations) {
                out.add(&[("destination", d)], n);
            }
        },
    ),
    node(
        "tern_queue_oldest_message_age_seconds",
        Kind::Gauge,
        "Age of the oldest queued message with recipients pending (0: none)",
        |s, out| {
            if let Some(q) = &s.queue {
                out.add(&[], q.oldest_age_s);
            }
        },
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
        "tern_delivery_attempts_held_back_total",
        "Scheduler passes that started no attempt though messages were due, because their outcome could not be recorded",
        |c| l(&c.attempts_held_back),
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
        "tern_downgraded_total",
        "Messages converted to 7 bit (quoted-printable) for a next hop without 8BITMIME",
        |c| l(&c.downgraded),
    ),
    counter(
        "tern_eight_bit_as_is_total",
        "8-bit messages sent as is to a next hop without 8BITMIME (not convertible)",
        |c| l(&c.eight_bit_as_is),
    ),
    // Shadow redundancy.
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
    Metric {
        name: "tern_shadow_copy_seconds",
        kind: Kind::Histogram,
        help: "Time to make a shadow copy of one of our messages (over every peer tried)",
        read: Read::CoreHistogram {
            get: |c| (c.shadow_copy_us.counts().to_vec(), c.shadow_copy_us.sum()),
            bound: us_bound,
            scale: 1e-6,
        },
    },
    counter(
        "tern_shadow_copies_held_total",
        "Shadow copies of peers' messages stored here",
        |c| l(&c.shadow_copies_held),
    ),
    node(
        "tern_shadow_queue_messages",
        Kind::Gauge,
        "Shadow copies held here per primary",
        |s, out| {
            for (primary, n) in &s.shadow_held {
                out.add(&[("primary", primary)], n);
            }
        },
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
        "tern_shadow_untrusted_total",
        "XSHADOW or XQDISCARD refused: the client did not show a pinned peer certificate",
        |c| l(&c.shadow_untrusted),
    ),
    // TLS and MTA-STS.
    node(
        "tern_tls_sessions_total",
        Kind::Counter,
        "TLS sessions by direction, version and cipher suite",
        |s, out| {
            for d in DIRECTIONS {
                for (version, cipher, n) in s.tls.sessions(d) {
                    let labels = [
                        ("direction", d.as_str()),
                        ("version", version),
                        ("cipher", cipher),
                    ];
                    out.add(&labels, n);
                }
            }
        },
    ),
    node(
        "tern_tls_resumed_total",
        Kind::Counter,
        "TLS sessions resumed (no full handshake)",
        |s, out| {
            for d in DIRECTIONS {
                out.add(&[("direction", d.as_str())], s.tls.resumed(d));
            }
        },
    ),
    node(
        "tern_tls_handshake_failures_total",
        Kind::Counter,
        "Failed TLS handshakes by direction and reason",
        |s, out| {
            for d in DIRECTIONS {
                for f in FAILURES {
                    let labels = [("direction", d.as_str()), ("reason", f.as_str())];
                    out.add(&labels, s.tls.failures(d, f));
                }
            }
        },
    ),
    node(
        "tern_tls_cleartext_fallbacks_total",
        Kind::Counter,
        "Deliveries retried in clear text after a failed handshake (tls_policy = \"may\")",
        |s, out| out.add(&[], l(&s.tls.cleartext_fallbacks)),
    ),
    node(
        "tern_mta_sts_total",
        Kind::Counter,
        "MTA-STS policy lookups and what delivery did under them, by outcome",
        |s, out| {
            for (outcome, n) in s.mta_sts.counts() {
                out.add(&[("outcome", outcome)], n);
            }
            // Counted by the TLS room (the verifier that only reports).
            let reported = l(&s.tls.verify_reported);
            out.add(&[("outcome", "testing_tls_failure")], reported);
        },
    ),
    // The operator.
    node(
        "tern_operator_actions_total",
        Kind::Counter,
        "Operator actions done through the admin API",
        |s, out| {
            for (action, n) in s.ops.actions() {
                out.add(&[("action", action)], n);
            }
        },
    ),
    node(
        "tern_admin_unauthorized_total",
        Kind::Counter,
        "Admin requests refused for a missing or wrong token",
        |s, out| out.add(&[], l(&s.ops.unauthorized)),
    ),
    node(
        "tern_resubmitted_messages_total",
        Kind::Counter,
        "Safety Net messages queued again by resubmission requests",
        |s, out| out.add(&[], l(&s.ops.resubmitted)),
    ),
    // Back pressure and the store.
    node(
        "tern_pressure_level",
        Kind::Gauge,
        "Back pressure level of the node: 0 normal, 1 elevated, 2 high",
        |s, out| out.add(&[], s.pressure.level() as u64),
    ),
    node(
        "tern_pressure_resource_level",
        Kind::Gauge,
        "Back pressure level per resource",
        |s, out| {
            for (res, level) in s.pressure.resource_levels() {
                out.add(&[("resource", res.name())], level as u64);
            }
        },
    ),
    node(
        "tern_pressure_entered_total",
        Kind::Counter,
        "Times the node entered each back pressure level",
        |s, out| {
            for level in [Level::Normal, Level::Elevated, Level::High] {
                out.add(&[("level", level.name())], s.pressure.entered(level));
            }
        },
    ),
    node(
        "tern_store_failed",
        Kind::Gauge,
        "1 once a core's log failed for good (the node stops and exits non-zero)",
        |s, out| out.add(&[], u64::from(s.pressure.failed().is_some())),
    ),
    node(
        "tern_disk_free_bytes",
        Kind::Gauge,
        "Free bytes of the data directory's file system (as an unprivileged writer sees them)",
        |s, out| out.add(&[], s.pressure.reading().disk_free),
    ),
    node(
        "tern_disk_size_bytes",
        Kind::Gauge,
        "Size of the data directory's file system",
        |s, out| out.add(&[], s.pressure.reading().disk_total),
    ),
    node(
        "tern_memory_available_bytes",
        Kind::Gauge,
        "MemAvailable of the machine",
        |s, out| out.add(&[], s.pressure.reading().memory_available),
    ),
    node(
        "tern_config_reloads_total",
        Kind::Counter,
        "Config reloads (SIGHUP, tern reload): applied, or refused for problems in the file",
        |s, out| {
            out.add(&[("result", "applied")], l(&s.live.applied));
            out.add(&[("result", "refused")], l(&s.live.failed));
        },
    ),
    // The front end (server.role = "front-end"); no samples on a relay.
    node(
        "tern_frontend_sessions_total",
        Kind::Counter,
        "Client sessions the front end proxied",
        |s, out| {
            if is_front_end(s) {
                out.add(&[], l(&s.frontend.sessions));
            }
        },
    ),
    node(
        "tern_frontend_transactions_total",
        Kind::Counter,
        "Transactions forwarded (MAIL accepted by a back end)",
        |s, out| {
            if is_front_end(s) {
                out.add(&[], l(&s.frontend.transactions));
            }
        },
    ),
    node(
        "tern_frontend_messages_total",
        Kind::Counter,
        "End-of-data replies of the back ends passed to clients: accepted (2xx) or refused (5xx)",
        |s, out| {
            if is_front_end(s) {
                out.add(&[("result", "accepted")], l(&s.frontend.messages));
                out.add(&[("result", "refused")], l(&s.frontend.refused));
            }
        },
    ),
    node(
        "tern_frontend_backend_failures_total",
        Kind::Counter,
        "Back-end failures by reason (connect, session, xclient, lost, deferred, unavailable)",
        |s, out| {
            if is_front_end(s) {
                for (reason, n) in s.frontend.failures() {
                    out.add(&[("reason", reason)], n);
                }
            }
        },
    ),
    node(
        "tern_frontend_backend_connections_total",
        Kind::Counter,
        "Connections opened to the back ends of each pool",
        |s, out| {
            for (pool, p) in s.frontend.pools() {
                out.add(&[("pool", &pool)], l(&p.connections));
            }
        },
    ),
    node(
        "tern_frontend_eod_seconds",
        Kind::Histogram,
        "From the end of a client's data to the back end's reply, per pool",
        |s, out| {
            for (pool, p) in s.frontend.pools() {
                let sum = p.eod_us.sum() as f64 * 1e-6;
                out.histogram_labelled(&[("pool", &pool)], &p.eod_us.counts(), sum, us_bound);
            }
        },
    ),
    node(
        "tern_frontend_route_pool",
        Kind::Gauge,
        "The pool each route's transactions went to last (1): the route's own, or a failover pool",
        |s, out| {
            for (route, pool) in s.frontend.routes() {
                out.add(&[("route", &route), ("pool", &pool)], 1);
            }
        },
    ),
    node(
        "tern_log_held_bytes",
        Kind::Gauge,
        "Bytes the node's logs hold on disk (queue, shadow copies, Safety Net)",
        |s, out| out.add(&[], s.pressure.reading().queued),
    ),
];
