//! Measurements of `send`: per-core (no locks on the hot path), merged at
//! the end into the text report and the JSON report (the plot files are
//! in `send_plot.rs`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use hdrhistogram::Histogram;
use serde::Serialize;

/// The measured phases, in wire order; `Transaction` is MAIL .. final reply
/// (closed loop) or scheduled start .. final reply (open loop).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// TCP connect.
    Connect = 0,
    /// TLS handshake: from connect (`--tls`) or from the STARTTLS command
    /// (`--starttls`, its 220 included) to the handshake done.
    Tls,
    /// Connected (implicit TLS: handshake done) .. greeting.
    Banner,
    /// EHLO .. its reply (with STARTTLS: both EHLOs).
    Ehlo,
    /// AUTH PLAIN .. its reply (`--auth`).
    Auth,
    /// MAIL .. its reply.
    Mail,
    /// RCPT .. its reply (each recipient; pipelined: from the group's write).
    Rcpt,
    /// DATA .. 354.
    Data,
    /// End of data (".") or BDAT LAST .. final reply.
    Eod,
    /// The whole transaction.
    Transaction,
}

/// Number of phases.
pub const PHASES: usize = 10;

impl Phase {
    /// All, in order.
    pub const ALL: [Phase; PHASES] = [
        Phase::Connect,
        Phase::Tls,
        Phase::Banner,
        Phase::Ehlo,
        Phase::Auth,
        Phase::Mail,
        Phase::Rcpt,
        Phase::Data,
        Phase::Eod,
        Phase::Transaction,
    ];

    /// Stable name (JSON key, file name).
    pub fn name(self) -> &'static str {
        match self {
            Phase::Connect => "connect",
            Phase::Tls => "tls",
            Phase::Banner => "banner",
            Phase::Ehlo => "ehlo",
            Phase::Auth => "auth",
            Phase::Mail => "mail",
            Phase::Rcpt => "rcpt",
            Phase::Data => "data",
            Phase::Eod => "eod",
            Phase::Transaction => "transaction",
        }
    }
}

/// What one core measured.
#[derive(Debug)]
pub struct CoreStats {
    /// Latency histograms in microseconds, indexed by `Phase as usize`.
    pub latency: Vec<Histogram<u64>>,
    /// Replies by code (index = code, 0..600).
    pub replies: Vec<u64>,
    /// Messages accepted (final 250 and no rejected recipient).
    pub ok: u64,
    /// Messages with a 4xx (and no 5xx).
    pub temp_fail: u64,
    /// Messages with a 5xx.
    pub perm_fail: u64,
    /// Messages lost to a connection error (connect, I/O, timeout, bad reply).
    pub conn_errors: u64,
    /// Message bytes (headers + body, before dot-stuffing) accepted.
    pub bytes: u64,
    /// Completed messages (any outcome) per second since the start.
    pub per_second: Vec<u64>,
    /// Transactions attempted per target.
    pub target_messages: Vec<u64>,
    /// Failed connects (refused, timeout, greeting or EHLO not 2xx) per target.
    pub target_connect_failures: Vec<u64>,
    /// First few failure descriptions, for the report.
    pub errors: Vec<String>,
    /// When this core's last connection finished, since the start.
    pub elapsed: std::time::Duration,
    /// Sequence numbers of the accepted messages (`--acked` only).
    pub acked: Option<Vec<u64>>,
    /// TLS handshakes (`--starttls`, `--tls`).
    pub tls: crate::tls_stats::Handshakes,
}

/// Kept failure descriptions per core.
const ERRORS_KEPT: usize = 5;

impl CoreStats {
    /// Empty stats for `targets` targets.
    pub fn new(targets: usize) -> CoreStats {
        CoreStats {
            latency: (0..PHASES).map(|_| crate::latency::histogram()).collect(),
            replies: vec![0; 600],
            ok: 0,
            temp_fail: 0,
            perm_fail: 0,
            conn_errors: 0,
            bytes: 0,
            per_second: Vec::new(),
            target_messages: vec![0; targets],
            target_connect_failures: vec![0; targets],
            errors: Vec::new(),
            elapsed: std::time::Duration::ZERO,
            acked: None,
            tls: crate::tls_stats::Handshakes::default(),
        }
    }

    /// Records a latency.
    #[inline]
    pub fn record(&mut self, phase: Phase, us: u64) {
        self.latency[phase as usize].saturating_record(us.max(1));
    }

    /// Counts a reply code.
    #[inline]
    pub fn reply(&mut self, code: u16) {
        if let Some(c) = self.replies.get_mut(code as usize) {
            *c += 1;
        }
    }

    /// Counts a completed message in second `sec` of the run.
    #[inline]
    pub fn completed_at(&mut self, sec: usize) {
        if self.per_second.len() <= sec {
            self.per_second.resize(sec + 1, 0);
        }
        self.per_second[sec] += 1;
    }

    /// Keeps a failure description (the first few only).
    pub fn error(&mut self, what: impl FnOnce() -> String) {
        if self.errors.len() < ERRORS_KEPT {
            self.errors.push(what());
        }
    }

    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: CoreStats) {
        for (a, b) in self.latency.iter_mut().zip(&other.latency) {
            a.add(b).expect("same bounds");
        }
        for (a, b) in self.replies.iter_mut().zip(&other.replies) {
            *a += b;
        }
        self.ok += other.ok;
        if let Some(theirs) = other.acked {
            self.acked.get_or_insert_with(Vec::new).extend(theirs);
        }
        self.temp_fail += other.temp_fail;
        self.perm_fail += other.perm_fail;
        self.conn_errors += other.conn_errors;
        self.bytes += other.bytes;
        self.tls.merge(&other.tls);
        self.elapsed = self.elapsed.max(other.elapsed);
        if self.per_second.len() < other.per_second.len() {
            self.per_second.resize(other.per_second.len(), 0);
        }
        for (a, b) in self.per_second.iter_mut().zip(&other.per_second) {
            *a += b;
        }
        for (a, b) in self.target_messages.iter_mut().zip(&other.target_messages) {
            *a += b;
        }
        for (a, b) in self
            .target_connect_failures
            .iter_mut()
            .zip(&other.target_connect_failures)
        {
            *a += b;
        }
        for e in other.errors {
            if self.errors.len() < ERRORS_KEPT * 2 {
                self.errors.push(e);
            }
        }
    }

    /// Failed messages of any kind.
    pub fn failed(&self) -> u64 {
        self.temp_fail + self.perm_fail + self.conn_errors
    }
}

/// Live counters one core publishes for the progress line (written only by
/// that core, read by the progress thread).
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct Live {
    /// Messages accepted.
    pub ok: AtomicU64,
    /// Messages failed.
    pub failed: AtomicU64,
    /// Transaction p50, microseconds (refreshed a few times a second).
    pub p50_us: AtomicU64,
    /// Transaction p99, microseconds.
    pub p99_us: AtomicU64,
}

impl Live {
    /// Publishes the counters and percentiles of `s`.
    pub fn publish(&self, s: &CoreStats) {
        self.ok.store(s.ok, Ordering::Relaxed);
        self.failed.store(s.failed(), Ordering::Relaxed);
        let h = &s.latency[Phase::Transaction as usize];
        if !h.is_empty() {
            self.p50_us
                .store(h.value_at_quantile(0.5), Ordering::Relaxed);
            self.p99_us
                .store(h.value_at_quantile(0.99), Ordering::Relaxed);
        }
    }
}

/// The JSON report (`--json FILE`). Stable names; times in microseconds.
///
/// ```text
/// {
///   "run": "<16 hex>",                       run id (also in every stamp)
///   "messages": {"ok": n, "temp_fail": n, "perm_fail": n, "conn_errors": n},
///   "seconds": f,                            wall time of the run
///   "messages_per_second": f,                ok messages / seconds
///   "bytes": n,                              bytes of accepted messages
///   "replies": {"250": n, "354": n, ...},    every reply received, by code
///   "latency_us": {                          hdrhistogram, microseconds
///     "transaction": {"count","p50","p90","p99","p999","max","mean"},
///     "connect": {...}, "tls": {...}, "banner": {...}, "ehlo": {...},
///     "auth": {...}, "mail": {...}, "rcpt": {...}, "data": {...}, "eod": {...}
///   },
///   "per_second": [n, ...],                  messages completed in each second
///   "targets": [{"addr": "h:p", "priority": p, "messages": n,
///                "connect_failures": n}],
///   "open_loop": {"rate": r, "scheduled": n} or null,
///   "tls": {"handshakes": n, "full": n, "hello_retry": n, "resumed": n, "failed": n,
///           "suites": [{"version": v, "cipher_suite": c, "count": n}]} or null
/// }
/// ```
///
/// `transaction` is MAIL .. final reply in the closed loop, and scheduled
/// start .. final reply in the open loop (so waiting for a connection and
/// connecting count: coordinated omission is not hidden). With pipelining,
/// `mail`, `rcpt` and `data` are measured from the write of the group.
/// `tls` is the handshake, from connect (`--tls`) or from the STARTTLS
/// command (`--starttls`) to the handshake done; `tls` in the report's top
/// level counts handshakes (null without TLS), see
/// [`crate::tls_stats::TlsReport`].
#[derive(Debug, Serialize)]
pub struct JsonReport {
    /// Run id, 16 hex digits.
    pub run: String,
    /// Outcomes.
    pub messages: JsonMessages,
    /// Wall time.
    pub seconds: f64,
    /// Accepted messages per second.
    pub messages_per_second: f64,
    /// Bytes of accepted messages.
    pub bytes: u64,
    /// Replies by code.
    pub replies: BTreeMap<String, u64>,
    /// Latency summaries by phase name.
    pub latency_us: BTreeMap<String, JsonLatency>,
    /// Messages completed per second.
    pub per_second: Vec<u64>,
    /// Per target.
    pub targets: Vec<JsonTarget>,
    /// Open-loop parameters, null in the closed loop.
    pub open_loop: Option<JsonOpenLoop>,
    /// TLS handshakes, null without TLS.
    pub tls: Option<crate::tls_stats::TlsReport>,
}

/// Outcome counts.
#[derive(Debug, Serialize)]
pub struct JsonMessages {
    /// Accepted.
    pub ok: u64,
    /// 4xx.
    pub temp_fail: u64,
    /// 5xx.
    pub perm_fail: u64,
    /// Connection errors.
    pub conn_errors: u64,
}

/// A latency summary, microseconds (shared with the sink's report).
pub type JsonLatency = crate::latency::Summary;

/// One target.
#[derive(Debug, Serialize)]
pub struct JsonTarget {
    /// HOST:PORT.
    pub addr: String,
    /// Priority (lower preferred).
    pub priority: u32,
    /// Transactions attempted through it.
    pub messages: u64,
    /// Failed connects.
    pub connect_failures: u64,
}

/// Open-loop parameters.
#[derive(Debug, Serialize)]
pub struct JsonOpenLoop {
    /// Messages per second asked.
    pub rate: f64,
    /// Messages scheduled (sent or failed).
    pub scheduled: u64,
}

/// Everything the final report needs besides the stats.
pub struct RunInfo<'a> {
    /// Run id.
    pub run: u64,
    /// Wall time.
    pub seconds: f64,
    /// (addr, priority) per target.
    pub targets: &'a [(String, u32)],
    /// `--rate`.
    pub rate: Option<f64>,
}

/// Builds the JSON report.
pub fn json_report(s: &CoreStats, info: &RunInfo<'_>) -> JsonReport {
    let replies = s
        .replies
        .iter()
        .enumerate()
        .filter(|(_, &n)| n > 0)
        .map(|(c, &n)| (c.to_string(), n))
        .collect();
    let latency_us = Phase::ALL
        .iter()
        .map(|&p| (p.name().to_owned(), JsonLatency::of(&s.latency[p as usize])))
        .collect();
    JsonReport {
        run: format!("{:016x}", info.run),
        messages: JsonMessages {
            ok: s.ok,
            temp_fail: s.temp_fail,
            perm_fail: s.perm_fail,
            conn_errors: s.conn_errors,
        },
        seconds: info.seconds,
        messages_per_second: s.ok as f64 / info.seconds.max(1e-9),
        bytes: s.bytes,
        replies,
        latency_us,
        per_second: s.per_second.clone(),
        targets: info
            .targets
            .iter()
            .enumerate()
            .map(|(i, (addr, priority))| JsonTarget {
                addr: addr.clone(),
                priority: *priority,
                messages: s.target_messages[i],
                connect_failures: s.target_connect_failures[i],
            })
            .collect(),
        open_loop: info.rate.map(|rate| JsonOpenLoop {
            rate,
            scheduled: s.ok + s.failed(),
        }),
        tls: s.tls.report(),
    }
}

fn ms(us: u64) -> String {
    format!("{:.3}", us as f64 / 1000.0)
}

/// The text report.
pub fn text_report(s: &CoreStats, info: &RunInfo<'_>) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "run {:016x}: {:.3} s", info.run, info.seconds);
    let _ = writeln!(
        t,
        "messages: {} ok, {} temp_fail (4xx), {} perm_fail (5xx), {} conn_errors",
        s.ok, s.temp_fail, s.perm_fail, s.conn_errors
    );
    let secs = info.seconds.max(1e-9);
    let _ = writeln!(
        t,
        "throughput: {:.0} msgs/s, {:.2} MB/s",
        s.ok as f64 / secs,
        s.bytes as f64 / secs / 1e6
    );
    if let Some(rate) = info.rate {
        let done = (s.ok + s.failed()) as f64;
        let _ = writeln!(
            t,
            "open loop: asked {rate} msgs/s, achieved {:.1} msgs/s ({:+.1}%)",
            done / secs,
            (done / secs / rate - 1.0) * 100.0
        );
    }
    let replies: Vec<String> = s
        .replies
        .iter()
        .enumerate()
        .filter(|(_, &n)| n > 0)
        .map(|(c, n)| format!("{c}:{n}"))
        .collect();
    let _ = writeln!(t, "replies: {}", replies.join(" "));
    let _ = writeln!(
        t,
        "latency (ms)   {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "count", "p50", "p90", "p99", "p99.9", "max", "mean"
    );
    for p in Phase::ALL {
        let h = &s.latency[p as usize];
        if h.is_empty() {
            continue;
        }
        let _ = writeln!(
            t,
            "  {:<12} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9.3}",
            p.name(),
            h.len(),
            ms(h.value_at_quantile(0.5)),
            ms(h.value_at_quantile(0.9)),
            ms(h.value_at_quantile(0.99)),
            ms(h.value_at_quantile(0.999)),
            ms(h.max()),
            h.mean() / 1000.0
        );
    }
    for (i, (addr, prio)) in info.targets.iter().enumerate() {
        let _ = writeln!(
            t,
            "target {addr} (priority {prio}): {} messages, {} connect failures",
            s.target_messages[i], s.target_connect_failures[i]
        );
    }
    if let Some(tls) = s.tls.report() {
        let _ = writeln!(t, "{}", tls.text());
    }
    for e in &s.errors {
        let _ = writeln!(t, "error: {e}");
    }
    t
}

#[cfg(test)]
mod tests {
    use super::super::send_plot::{hgrm, svg};
    use super::*;

    #[test]
    fn merge_and_reports() {
        let mut a = CoreStats::new(2);
        let mut b = CoreStats::new(2);
        for v in 1..=1000 {
            a.record(Phase::Transaction, v);
            b.record(Phase::Eod, v);
        }
        a.reply(250);
        b.reply(250);
        b.reply(451);
        a.ok = 3;
        b.temp_fail = 1;
        a.completed_at(2);
        b.completed_at(0);
        b.target_messages[1] = 4;
        a.merge(b);
        assert_eq!(a.replies[250], 2);
        assert_eq!(a.per_second, vec![1, 0, 1]);
        assert_eq!(a.failed(), 1);
        let targets = [("a:1".to_owned(), 0), ("b:2".to_owned(), 5)];
        let info = RunInfo {
            run: 0xab,
            seconds: 1.0,
            targets: &targets,
            rate: Some(10.0),
        };
        let j = serde_json::to_value(json_report(&a, &info)).unwrap();
        assert_eq!(j["run"], "00000000000000ab");
        assert_eq!(j["replies"]["451"], 1);
        assert_eq!(j["targets"][1]["messages"], 4);
        assert_eq!(j["open_loop"]["scheduled"], 4);
        let p50 = j["latency_us"]["transaction"]["p50"].as_u64().unwrap();
        assert!((495..=505).contains(&p50), "{p50}");
        let text = text_report(&a, &info);
        assert!(text.contains("3 ok"), "{text}");
        let g = hgrm(&a.latency[Phase::Transaction as usize]);
        assert!(g.starts_with("       Value     Percentile TotalCount"));
        assert!(g.contains("Total count    =         1000"));
        assert!(svg(&a, "t").contains("<polyline"));
    }
}
