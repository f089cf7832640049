//! Prometheus text exposition (format 0.0.4) for `GET /metrics`.
//!
//! Every exported metric is one row of `METRICS` (`metric_table.rs`:
//! name, type, help and how its samples are read, per core or node-wide);
//! [`render`] walks the table, so a metric is added or renamed in one
//! place and written once. A family without samples (no TLS session yet,
//! no shadow peer) is left out entirely: no `# HELP` without a sample.
//! Durations are exported in seconds, sizes in bytes.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::metric_table::METRICS;
use crate::metrics::CoreMetrics;
use crate::mta_sts::StsStats;
use crate::ops::OpsStats;
use crate::pressure::Pressure;
use crate::tls::TlsStats;

/// A metric's Prometheus type (its `# TYPE` line).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// Picks one counter out of a core's.
pub(super) type Field = fn(&CoreMetrics) -> &AtomicU64;

/// How a metric's samples are read.
#[derive(Clone, Copy)]
pub(super) enum Read {
    /// One sample per core: `name{core="i"} value`.
    Core(fn(&CoreMetrics) -> u64),
    /// One sample per core and label value, in this order:
    /// `name{core="i",label="value"} count`.
    CoreLabelled {
        label: &'static str,
        values: &'static [(&'static str, Field)],
    },
    /// One histogram per core: per-bucket counts and the sum of what was
    /// observed. Rendered cumulative as `name_bucket` with `bound(b)` as
    /// bucket `b`'s `le` (the last one is `+Inf`), then `name_sum` (the
    /// sum times `scale`) and `name_count`.
    CoreHistogram {
        get: fn(&CoreMetrics) -> (Vec<u64>, u64),
        bound: fn(usize) -> f64,
        scale: f64,
    },
    /// Node-wide samples, written by the function.
    Node(fn(&Sources, &mut Samples)),
}

/// One metric of the exposition: its name, type and help are written here
/// and nowhere else.
pub(super) struct Metric {
    pub(super) name: &'static str,
    pub(super) kind: Kind,
    pub(super) help: &'static str,
    pub(super) read: Read,
}

/// The queue gauges, merged over the cores' queue summaries.
#[derive(Clone, Debug, Default)]
pub(super) struct QueueGauges {
    /// Messages per destination, the largest first, at most
    /// `metric_table::DESTINATIONS_MAX`, then `other` (the rest summed).
    pub(super) destinations: Vec<(String, u64)>,
    /// Age of the oldest queued message, in seconds (0: none queued).
    pub(super) oldest_age_s: u64,
}

/// What the node-wide rows read.
pub(super) struct Sources<'a> {
    /// Every core's counters, by core.
    pub(super) cores: Vec<&'a CoreMetrics>,
    pub(super) tls: &'a TlsStats,
    pub(super) mta_sts: &'a StsStats,
    pub(super) ops: &'a OpsStats,
    pub(super) pressure: &'a Pressure,
    /// The config in force and its reloads.
    pub(super) live: &'a crate::reload::Live,
    /// Copies held here per primary node (every configured peer, 0
    /// included).
    pub(super) shadow_held: BTreeMap<String, u64>,
    /// `None`: a core did not answer in time (the queue gauges are left
    /// out of this scrape).
    pub(super) queue: Option<QueueGauges>,
    /// The front end's counters (zero on a relay: its families are left
    /// out).
    pub(super) frontend: &'a crate::frontend::stats::Stats,
}

/// The sample lines of one metric.
pub(super) struct Samples {
    name: &'static str,
    lines: String,
}

impl Samples {
    /// `name{labels} value` (`name value` without labels).
    pub(super) fn add(&mut self, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.add_suffixed("", labels, value);
    }

    fn add_suffixed(
        &mut self,
        suffix: &str,
        labels: &[(&str, &str)],
        value: impl std::fmt::Display,
    ) {
        let _ = write!(self.lines, "{}{suffix}", self.name);
        for (i, (k, v)) in labels.iter().enumerate() {
            let open = if i == 0 { "{" } else { "," };
            let _ = write!(self.lines, "{open}{k}=\"{}\"", escape(v));
        }
        if !labels.is_empty() {
            self.lines.push('}');
        }
        let _ = writeln!(self.lines, " {value}");
    }

    /// One core's histogram: cumulative buckets, the sum, the count.
    fn histogram(&mut self, core: &str, counts: &[u64], sum: f64, bound: fn(usize) -> f64) {
        self.histogram_labelled(&[("core", core)], counts, sum, bound);
    }

    /// A histogram with `labels`: cumulative buckets, the sum, the count.
    pub(super) fn histogram_labelled(
        &mut self,
        labels: &[(&str, &str)],
        counts: &[u64],
        sum: f64,
        bound: fn(usize) -> f64,
    ) {
        let mut cumulative = 0;
        for (b, count) in counts.iter().enumerate() {
            cumulative += count;
            let le = if b + 1 == counts.len() {
                "+Inf".to_string()
            } else {
                bound(b).to_string()
            };
            let mut with_le = labels.to_vec();
            with_le.push(("le", &le));
            self.add_suffixed("_bucket", &with_le, cumulative);
        }
        self.add_suffixed("_sum", labels, sum);
        self.add_suffixed("_count", labels, cumulative);
    }
}

/// A label value as the text format wants it: `\`, `"` and newlines
/// escaped.
fn escape(v: &str) -> std::borrow::Cow<'_, str> {
    if !v.contains(['\\', '"', '\n']) {
        return v.into();
    }
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
        .into()
}

impl Metric {
    /// The samples of this metric.
    fn samples(&self, src: &Sources) -> Samples {
        let mut s = Samples {
            name: self.name,
            lines: String::new(),
        };
        for (i, c) in src.cores.iter().enumerate() {
            let core = i.to_string();
            match self.read {
                Read::Core(get) => s.add(&[("core", &core)], get(c)),
                Read::CoreLabelled { label, values } => {
                    for (value, get) in values {
                        s.add(&[("core", &core), (label, value)], get(c).load(Relaxed));
                    }
                }
                Read::CoreHistogram { get, bound, scale } => {
                    let (counts, sum) = get(c);
                    s.histogram(&core, &counts, sum as f64 * scale, bound);
                }
                Read::Node(_) => break,
            }
        }
        if let Read::Node(f) = self.read {
            f(src, &mut s);
        }
        s
    }

    /// `# HELP`, `# TYPE`, then the samples; nothing without samples.
    fn render(&self, out: &mut String, src: &Sources) {
        let s = self.samples(src);
        if s.lines.is_empty() {
            return;
        }
        let name = self.name;
        let _ = writeln!(
            out,
            "# HELP {name} {}\n# TYPE {name} {}",
            self.help,
            self.kind.as_str()
        );
        out.push_str(&s.lines);
    }
}

/// The text exposition: every metric of `METRICS` that has samples, in the
/// table's order.
pub(super) fn render(src: &Sources) -> String {
    let mut out = String::new();
    for metric in METRICS {
        metric.render(&mut out, src);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_storage::LogStats;

    struct Fixture {
        cores: Vec<CoreMetrics>,
        tls: TlsStats,
        mta_sts: StsStats,
        ops: OpsStats,
        pressure: Pressure,
        live: crate::reload::Live,
        frontend: crate::frontend::stats::Stats,
    }

    impl Fixture {
        fn new(cores: usize) -> Fixture {
            let config =
                crate::config::Config::from_toml("", &Default::default()).expect("defaults");
            Fixture {
                live: crate::reload::Live::new(std::sync::Arc::new(config)),
                cores: (0..cores).map(|_| CoreMetrics::default()).collect(),
                tls: TlsStats::default(),
                mta_sts: StsStats::default(),
                ops: OpsStats::default(),
                frontend: Default::default(),
                pressure: Pressure::new(
                    crate::config::Config::from_toml("", &Default::default())
                        .expect("defaults")
                        .pressure,
                    "/".into(),
                    cores,
                ),
            }
        }

        fn render(&self, held: &[(&str, u64)], queue: Option<QueueGauges>) -> String {
            render(&Sources {
                cores: self.cores.iter().collect(),
                tls: &self.tls,
                mta_sts: &self.mta_sts,
                ops: &self.ops,
                pressure: &self.pressure,
                live: &self.live,
                shadow_held: held.iter().map(|(n, c)| (n.to_string(), *c)).collect(),
                queue,
                frontend: &self.frontend,
            })
        }
    }

    #[test]
    fn counters_and_cumulative_histograms_with_sum_in_seconds() {
        let f = Fixture::new(1);
        let m = &f.cores[0];
        CoreMetrics::inc(&m.messages_accepted);
        let mut stats = LogStats::default();
        stats.sync_us_buckets[8] = 3;
        stats.sync_us_buckets[9] = 1;
        stats.sync_us_total = 1000;
        stats.batches = 4;
        stats.records = 9;
        m.set_log_stats(&stats);
        m.shadow_copy_us.observe(1500);
        let text = f.render(&[], None);
        assert!(text.contains("tern_messages_accepted_total{core=\"0\"} 1\n"));
        assert!(text.contains("tern_log_commit_seconds_bucket{core=\"0\",le=\"0.000256\"} 3\n"));
        assert!(text.contains("tern_log_commit_seconds_bucket{core=\"0\",le=\"0.000512\"} 4\n"));
        assert!(text.contains("tern_log_commit_seconds_bucket{core=\"0\",le=\"+Inf\"} 4\n"));
        assert!(text.contains("tern_log_commit_seconds_sum{core=\"0\"} 0.001\n"));
        assert!(text.contains("tern_log_commit_seconds_count{core=\"0\"} 4\n"));
        assert!(text.contains("tern_log_batch_records_sum{core=\"0\"} 9\n"));
        assert!(text.contains("tern_shadow_copy_seconds_sum{core=\"0\"} 0.0015\n"));
        assert!(text.contains("tern_shadow_copy_seconds_count{core=\"0\"} 1\n"));
        assert!(text.contains("tern_rejected_total{core=\"0\",reason=\"storage\"} 0\n"));
        assert!(!text.contains("microseconds"));
    }

    #[test]
    fn node_wide_families_shadow_queue_and_destinations() {
        let f = Fixture::new(2);
        // No peers, no queue answer, no TLS session: those families are
        // left out, HELP and TYPE included.
        let text = f.render(&[], None);
        for name in [
            "tern_shadow_queue_messages",
            "tern_queue_destination_messages",
            "tern_queue_oldest_message_age_seconds",
            "tern_tls_sessions_total",
        ] {
            assert!(!text.contains(name), "{name}:\n{text}");
        }
        let queue = QueueGauges {
            destinations: vec![("mx:b\"x.test".into(), 3), ("other".into(), 0)],
            oldest_age_s: 42,
        };
        let text = f.render(&[("a", 0), ("b", 7)], Some(queue));
        assert!(text.contains("tern_shadow_queue_messages{primary=\"a\"} 0\n"));
        assert!(text.contains("tern_shadow_queue_messages{primary=\"b\"} 7\n"));
        assert!(
            text.contains("tern_queue_destination_messages{destination=\"mx:b\\\"x.test\"} 3\n")
        );
        assert!(text.contains("tern_queue_destination_messages{destination=\"other\"} 0\n"));
        assert!(text.contains("tern_queue_oldest_message_age_seconds 42\n"));
        assert!(text.contains("tern_log_state{core=\"1\"} 0\n"));
        assert!(text.contains("tern_pressure_level 0\n"));
    }

    #[test]
    fn every_metric_of_the_table_is_written_once_with_samples() {
        let f = Fixture::new(2);
        f.tls.session(
            crate::tls::stats::Direction::In,
            crate::tls::TlsInfo {
                version: "TLSv1.3",
                cipher: "TLS13_AES_256_GCM_SHA384",
                resumed: false,
                peer: None,
            },
        );
        let queue = QueueGauges {
            destinations: vec![("other".into(), 0)],
            oldest_age_s: 0,
        };
        // A front end's figures (a relay has none).
        CoreMetrics::inc(&f.frontend.sessions);
        f.frontend.pool("site1").eod_us.observe(1500);
        f.frontend.route_uses("site1", "site2");
        let text = f.render(&[("a", 1)], Some(queue));
        let lines: Vec<&str> = text.lines().collect();
        let count = |wanted: &str| lines.iter().filter(|l| **l == wanted).count();
        let mut names = std::collections::HashSet::new();
        for m in METRICS {
            let name = m.name;
            assert!(names.insert(name), "{name} twice in the table");
            assert!(
                m.kind == Kind::Histogram || !matches!(m.read, Read::CoreHistogram { .. }),
                "{name}: histogram samples need the histogram type"
            );
            if m.kind == Kind::Histogram {
                assert!(
                    lines
                        .iter()
                        .any(|l| l.starts_with(&format!("{name}_bucket{{"))),
                    "{name}: a histogram has buckets"
                );
            }
            assert!(
                !name.contains("micro") && !name.contains("millis"),
                "{name}: seconds"
            );
            assert_eq!(count(&format!("# HELP {name} {}", m.help)), 1, "{name}");
            assert_eq!(
                count(&format!("# TYPE {name} {}", m.kind.as_str())),
                1,
                "{name}"
            );
            assert!(
                lines
                    .iter()
                    .any(|l| !l.starts_with('#') && l.starts_with(name)),
                "{name} has no sample"
            );
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

    #[test]
    fn readme_lists_every_metric_of_the_table() {
        let readme = include_str!("../../../README.md");
        let section = readme
            .split("\n## Metrics\n")
            .nth(1)
            .and_then(|s| s.split("\n## ").next())
            .expect("README has a Metrics section");
        let listed: Vec<&str> = section
            .lines()
            .filter_map(|l| l.strip_prefix("| `")?.split('`').next())
            .collect();
        let table: Vec<&str> = METRICS.iter().map(|m| m.name).collect();
        assert_eq!(
            listed, table,
            "README's metrics table, in the table's order"
        );
    }
}
