//! What the sink counts: per core, without locks (one `CoreStats` per
//! executor, merged at the end), the allocation-free stamp check, and the
//! report (text and JSON). The sequence sets and the exact cross-core
//! `--expect` tracker are in `sink_seqs.rs`.

use std::sync::Arc;
use std::time::Instant;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::sink_seqs::{combine, ExpectTracker, RunBits, SeqSet, LOST_FIRST};
use crate::stamp::{now_us, Stamp, StampError, HEADER};

/// Counters of one run (per core, then merged).
pub struct RunStats {
    /// Run id.
    pub run: u64,
    /// Verified messages.
    pub received: u64,
    /// Sequence numbers seen.
    pub seqs: SeqSet,
    /// Sequence numbers the sink itself refused at the end of data.
    pub refused: SeqSet,
    /// Stamps of this run whose body checksum failed.
    pub bad_stamps: u64,
    /// End-to-end latency, microseconds.
    pub latency: Histogram<u64>,
    expect: Option<Arc<RunBits>>,
}

impl RunStats {
    fn new(run: u64) -> RunStats {
        RunStats {
            run,
            received: 0,
            seqs: SeqSet::default(),
            refused: SeqSet::default(),
            bad_stamps: 0,
            latency: crate::latency::histogram(),
            expect: None,
        }
    }
}

/// Counters of one core.
#[derive(Default)]
pub struct CoreStats {
    /// Per run, in order of first arrival (few runs: linear search).
    pub runs: Vec<RunStats>,
    /// Messages answered 250.
    pub messages: u64,
    /// Their content bytes.
    pub bytes: u64,
    /// Messages without a stamp.
    pub missing: u64,
    /// Messages whose stamp does not parse.
    pub malformed: u64,
    /// Messages whose body checksum differs.
    pub bad_sum: u64,
    /// Injected failure replies.
    pub failed: u64,
    /// Connections dropped mid-DATA.
    pub dropped: u64,
    /// When the sink started listening (set on the merged counters):
    /// `seconds` runs from it, else from the first accepted message.
    pub start: Option<Instant>,
    /// First accepted message.
    pub first: Option<Instant>,
    /// Last accepted message.
    pub last: Option<Instant>,
    /// TLS handshakes (`--starttls`, `--tls`).
    pub tls: crate::tls_stats::Handshakes,
}

impl CoreStats {
    fn run_mut(&mut self, run: u64, expect: Option<&ExpectTracker>) -> &mut RunStats {
        let i = match self.runs.iter().position(|r| r.run == run) {
            Some(i) => i,
            None => {
                self.runs.push(RunStats::new(run));
                self.runs.len() - 1
            }
        };
        let r = &mut self.runs[i];
        // A run first seen through a refusal or a bad stamp has no
        // tracker bitmap yet.
        if r.expect.is_none() {
            r.expect = expect.map(|e| e.run(run));
        }
        r
    }

    /// A message is about to be answered 250: verify and count it.
    pub fn record(&mut self, content: &[u8], expect: Option<&ExpectTracker>) {
        let now = Instant::now();
        self.first.get_or_insert(now);
        self.last = Some(now);
        self.messages += 1;
        self.bytes += content.len() as u64;
        match verify(content) {
            Ok(stamp) => {
                let lat = now_us().saturating_sub(stamp.sent_us);
                let r = self.run_mut(stamp.run, expect);
                r.received += 1;
                r.latency.saturating_record(lat);
                if r.seqs.insert(stamp.seq) {
                    if let (Some(e), Some(bits)) = (expect, &r.expect) {
                        e.mark(bits, stamp.seq);
                    }
                }
            }
            Err((StampError::Missing, _)) => self.missing += 1,
            Err((StampError::Malformed, _)) => self.malformed += 1,
            Err((StampError::BadSum, run)) => {
                self.bad_sum += 1;
                if let Some(run) = run {
                    self.run_mut(run, expect).bad_stamps += 1;
                }
            }
        }
    }

    /// The sink refused this message at the end of data (fault
    /// injection): count it, and remember its sequence number when the
    /// stamp verifies, so the report tells it apart from a loss.
    pub fn refused(&mut self, content: &[u8]) {
        self.failed += 1;
        if let Ok(stamp) = verify(content) {
            self.run_mut(stamp.run, None).refused.insert(stamp.seq);
        }
    }

    /// Adds another core's counters.
    pub fn merge(&mut self, other: CoreStats) {
        for o in other.runs {
            let r = self.run_mut(o.run, None);
            r.received += o.received;
            r.bad_stamps += o.bad_stamps;
            r.seqs.merge(&o.seqs);
            r.refused.merge(&o.refused);
            let _ = r.latency.add(&o.latency);
        }
        self.messages += other.messages;
        self.bytes += other.bytes;
        self.missing += other.missing;
        self.malformed += other.malformed;
        self.bad_sum += other.bad_sum;
        self.failed += other.failed;
        self.dropped += other.dropped;
        self.tls.merge(&other.tls);
        self.start = combine(self.start, other.start, Instant::min);
        self.first = combine(self.first, other.first, Instant::min);
        self.last = combine(self.last, other.last, Instant::max);
    }
}

/// Like [`crate::stamp::verify`] (same header, same checksum) but without
/// allocating, and it tells the run id of a stamp whose checksum fails so
/// the failure can be counted against that run.
pub fn verify(message: &[u8]) -> Result<Stamp, (StampError, Option<u64>)> {
    let prefix = HEADER.as_bytes();
    let mut pos = 0;
    let mut line_found: Option<&[u8]> = None;
    let mut body: &[u8] = &[];
    while pos < message.len() {
        let rest = &message[pos..];
        let (line, next) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => (&rest[..i], pos + i + 1),
            None => (rest, message.len()),
        };
        if line == b"\r" {
            body = &message[next..];
            break;
        }
        if line_found.is_none()
            && line.len() > prefix.len() + 1
            && line[prefix.len()] == b':'
            && line[..prefix.len()].eq_ignore_ascii_case(prefix)
        {
            line_found = Some(&line[prefix.len() + 1..]);
        }
        pos = next;
    }
    let text = line_found.ok_or((StampError::Missing, None))?;
    let (mut run, mut seq, mut sent, mut sum) = (None, None, None, None);
    for field in text.split(|&b| b == b';') {
        let field = field.trim_ascii();
        if field.is_empty() {
            continue;
        }
        let eq = field
            .iter()
            .position(|&b| b == b'=')
            .ok_or((StampError::Malformed, None))?;
        let (k, v) = (field[..eq].trim_ascii(), field[eq + 1..].trim_ascii());
        match k {
            b"run" => run = parse_num(v, 16),
            b"seq" => seq = parse_num(v, 10),
            b"sent" => sent = parse_num(v, 10),
            b"sum" => sum = parse_num(v, 16).and_then(|s| u32::try_from(s).ok()),
            _ => {}
        }
    }
    let malformed = (StampError::Malformed, None);
    let stamp = Stamp {
        run: run.ok_or(malformed)?,
        seq: seq.ok_or(malformed)?,
        sent_us: sent.ok_or(malformed)?,
        sum: sum.ok_or(malformed)?,
    };
    if crc32fast::hash(body) != stamp.sum {
        return Err((StampError::BadSum, Some(stamp.run)));
    }
    Ok(stamp)
}

fn parse_num(v: &[u8], radix: u32) -> Option<u64> {
    if v.is_empty() || v.len() > 20 {
        return None;
    }
    let mut n: u64 = 0;
    for &b in v {
        let d = (b as char).to_digit(radix)?;
        n = n.checked_mul(u64::from(radix))?.checked_add(u64::from(d))?;
    }
    Some(n)
}

/// The JSON report (`--json FILE`). Field names are stable:
///
/// ```json
/// {
///   "runs": [ {
///       "run": "<16 hex>",        // run id from the stamp
///       "received": n,             // verified messages (duplicates included)
///       "distinct": n,             // distinct sequence numbers
///       "duplicates": n,           // received - distinct
///       "lost": n,                 // sequence numbers missing below max(highest seen + 1, --expect N),
///                                  // excluding those in "refused"
///       "lost_first": [seq, ...],  // the first 20 of them
///       "refused": n,              // distinct sequence numbers the sink refused at the end of
///                                  // data (fault injection) and never accepted
///       "bad_stamps": n,           // stamps of this run with a wrong body checksum
///       "latency_us": {"count": n, "p50": n, "p90": n, "p99": n, "p999": n, "max": n, "mean": f}
///   } ],
///   "messages": n,                 // messages answered 250 (stamped or not)
///   "bytes": n,                    // their content bytes
///   "seconds": f,                  // sink start (listening) to the last accepted message
///   "messages_per_second": f,      // messages / seconds
///   "bad_stamps": n,               // missing + malformed + bad_sum, all runs
///   "bad_stamp_kinds": {"missing": n, "malformed": n, "bad_sum": n},
///   "faults": {"failed": n, "dropped": n}, // injected failure replies; connections dropped mid-DATA
///   "tls": {"handshakes": n, "full": n, "hello_retry": n, "resumed": n, "failed": n,
///           "suites": [...]} or null   // TLS sessions (see tls_stats::TlsReport); null without TLS
/// }
/// ```
///
/// Messages refused by fault injection or dropped mid-DATA are not
/// counted in `messages`, `received` or latency (a correct sender retries
/// them). `lost` excludes the refusals the sink can attribute (those at the
/// end of data, whose stamp it has read: `refused`); refusals injected at
/// EHLO, MAIL, RCPT or DATA and connections dropped mid-DATA carry no
/// stamp the sink could read, so a message the sender never retried after
/// one of those shows up as lost (their totals are in `faults`). Latency is arrival time minus the stamp's send time (same host
/// clock, or synchronised clocks).
#[derive(Serialize, Debug, Clone)]
pub struct Report {
    /// Per run.
    pub runs: Vec<RunReport>,
    /// Messages answered 250.
    pub messages: u64,
    /// Content bytes of those.
    pub bytes: u64,
    /// Sink start to the last accepted message.
    pub seconds: f64,
    /// messages / seconds.
    pub messages_per_second: f64,
    /// All bad stamps.
    pub bad_stamps: u64,
    /// Bad stamps by kind.
    pub bad_stamp_kinds: BadStamps,
    /// Injected faults.
    pub faults: Faults,
    /// TLS sessions, null without TLS.
    pub tls: Option<crate::tls_stats::TlsReport>,
}

/// Bad stamps by kind.
#[derive(Serialize, Debug, Clone, Default)]
pub struct BadStamps {
    /// No stamp header.
    pub missing: u64,
    /// Unparsable stamp header.
    pub malformed: u64,
    /// Body checksum mismatch.
    pub bad_sum: u64,
}

/// Injected faults.
#[derive(Serialize, Debug, Clone, Default)]
pub struct Faults {
    /// Failure replies injected (any command or end of data).
    pub failed: u64,
    /// Connections closed mid-DATA.
    pub dropped: u64,
}

/// One run in the report.
#[derive(Serialize, Debug, Clone)]
pub struct RunReport {
    /// 16 hex digits.
    pub run: String,
    /// Verified messages.
    pub received: u64,
    /// Distinct sequence numbers.
    pub distinct: u64,
    /// received - distinct.
    pub duplicates: u64,
    /// Missing below the highest seen (or `--expect N`), refusals excluded.
    pub lost: u64,
    /// First missing ones.
    pub lost_first: Vec<u64>,
    /// Refused at the end of data by the sink and never accepted.
    pub refused: u64,
    /// Bad checksums attributed to this run.
    pub bad_stamps: u64,
    /// Latency, microseconds.
    pub latency_us: Latency,
}

/// Latency summary, microseconds (shared with the sender's report).
pub type Latency = crate::latency::Summary;

impl Report {
    /// Builds the report from the merged counters.
    pub fn new(s: &CoreStats) -> Report {
        Report::with_expect(s, None)
    }

    /// Builds the report; with `--expect N`, every sequence number below N
    /// not received counts as lost (or refused).
    pub fn with_expect(s: &CoreStats, expect: Option<u64>) -> Report {
        let seconds = match (s.start.or(s.first), s.last) {
            (Some(a), Some(b)) => b.saturating_duration_since(a).as_secs_f64(),
            _ => 0.0,
        };
        let runs = s
            .runs
            .iter()
            .map(|r| {
                let (lost, lost_first) = r.seqs.missing(expect.unwrap_or(0), &r.refused);
                let latency_us = Latency::of(&r.latency);
                RunReport {
                    run: format!("{:016x}", r.run),
                    received: r.received,
                    distinct: r.seqs.len(),
                    duplicates: r.received - r.seqs.len(),
                    lost,
                    lost_first,
                    refused: r.refused.count_not_in(&r.seqs),
                    bad_stamps: r.bad_stamps,
                    latency_us,
                }
            })
            .collect();
        Report {
            runs,
            messages: s.messages,
            bytes: s.bytes,
            seconds,
            messages_per_second: if seconds > 0.0 {
                s.messages as f64 / seconds
            } else {
                0.0
            },
            bad_stamps: s.missing + s.malformed + s.bad_sum,
            bad_stamp_kinds: BadStamps {
                missing: s.missing,
                malformed: s.malformed,
                bad_sum: s.bad_sum,
            },
            faults: Faults {
                failed: s.failed,
                dropped: s.dropped,
            },
            tls: s.tls.report(),
        }
    }

    /// The human-readable report.
    pub fn text(&self) -> String {
        use std::fmt::Write;
        let mut t = String::new();
        let _ = writeln!(
            t,
            "sink: {} messages, {} bytes in {:.3} s: {:.0} msg/s",
            self.messages, self.bytes, self.seconds, self.messages_per_second
        );
        let k = &self.bad_stamp_kinds;
        let _ = writeln!(
            t,
            "bad stamps: {} (missing {}, malformed {}, bad checksum {}); faults: {} failed, {} dropped",
            self.bad_stamps, k.missing, k.malformed, k.bad_sum, self.faults.failed, self.faults.dropped
        );
        for r in &self.runs {
            let l = &r.latency_us;
            let _ = writeln!(
                t,
                "run {}: received {}, distinct {}, duplicates {}, lost {}, refused {}, bad stamps {}",
                r.run, r.received, r.distinct, r.duplicates, r.lost, r.refused, r.bad_stamps
            );
            let _ = writeln!(
                t,
                "  latency us: p50 {} p90 {} p99 {} p99.9 {} max {} mean {:.0}",
                l.p50, l.p90, l.p99, l.p999, l.max, l.mean
            );
            if !r.lost_first.is_empty() {
                let _ = writeln!(t, "  lost (first {}): {:?}", LOST_FIRST, r.lost_first);
            }
        }
        if let Some(tls) = &self.tls {
            let _ = writeln!(t, "{}", tls.text());
        }
        t
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn latencies_of_seconds_are_recorded_not_clamped() {
        // Regression: an auto-resizing histogram with saturating_record
        // clamped every latency above its initial range to 2 us.
        let sent = now_us() - 5_000_000;
        let msg = crate::stamp::build_message(7, 0, sent, 1000, "a@x", "b@y");
        let mut core = CoreStats::default();
        core.record(&msg, None);
        let r = Report::new(&core);
        let p50 = r.runs[0].latency_us.p50;
        assert!((4_900_000..6_000_000).contains(&p50), "{p50}");
    }

    use super::super::sink_seqs::DENSE_MAX;
    use super::*;
    use crate::stamp::build_message;
    use std::sync::atomic::Ordering;

    fn report_of(arrivals: &[&[u64]]) -> Report {
        // One CoreStats per core, as the executors would have them.
        let mut total = CoreStats::default();
        for core in arrivals {
            let mut s = CoreStats::default();
            for &seq in *core {
                s.record(&build_message(7, seq, 0, 100, "a@x", "b@y"), None);
            }
            total.merge(s);
        }
        Report::new(&total)
    }

    #[test]
    #[allow(clippy::type_complexity)]
    fn lost_and_duplicates_table() {
        // (arrivals per core, received, distinct, duplicates, lost, lost_first)
        let table: &[(&[&[u64]], u64, u64, u64, u64, &[u64])] = &[
            (&[&[0, 1, 2, 3]], 4, 4, 0, 0, &[]),
            (&[&[3, 2, 1, 0]], 4, 4, 0, 0, &[]),
            (&[&[0, 1, 1, 2]], 4, 3, 1, 0, &[]),
            (&[&[0, 2, 5]], 3, 3, 0, 3, &[1, 3, 4]),
            (&[&[0, 1], &[1, 2]], 4, 3, 1, 0, &[]),
            (&[&[0, 4], &[2, 2]], 4, 3, 1, 2, &[1, 3]),
            (&[&[5]], 1, 1, 0, 5, &[0, 1, 2, 3, 4]),
            (
                &[&[0, 100]],
                2,
                2,
                0,
                99,
                &[
                    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20,
                ],
            ),
        ];
        for (i, &(arrivals, received, distinct, dups, lost, first)) in table.iter().enumerate() {
            let r = report_of(arrivals);
            let run = &r.runs[0];
            assert_eq!(run.run, "0000000000000007");
            assert_eq!(
                (
                    run.received,
                    run.distinct,
                    run.duplicates,
                    run.lost,
                    &run.lost_first[..]
                ),
                (received, distinct, dups, lost, first),
                "row {i}"
            );
            assert_eq!(r.messages, received);
        }
    }

    #[test]
    fn verify_agrees_with_stamp_module() {
        for size in [0, 100, 5000] {
            let msg = build_message(0xfeed, 3, 12345, size, "a@x", "b@y");
            assert_eq!(verify(&msg).unwrap(), crate::stamp::verify(&msg).unwrap());
            let mut bad = msg.clone();
            let last = bad.len() - 3;
            bad[last] ^= 1;
            assert_eq!(verify(&bad), Err((StampError::BadSum, Some(0xfeed))));
        }
        assert_eq!(
            verify(b"Subject: x\r\n\r\nX-Tern-Loadgen: run=1\r\n"),
            Err((StampError::Missing, None))
        );
        assert_eq!(
            verify(b"x-tern-loadgen: run=zz\r\n\r\n"),
            Err((StampError::Malformed, None))
        );
        assert_eq!(verify(b""), Err((StampError::Missing, None)));
    }

    #[test]
    fn bad_stamps_are_counted_not_received() {
        let mut s = CoreStats::default();
        s.record(b"Subject: unstamped\r\n\r\nhello\r\n", None);
        let mut bad = build_message(9, 0, 0, 100, "a@x", "b@y");
        let last = bad.len() - 3;
        bad[last] ^= 1;
        s.record(&bad, None);
        let r = Report::new(&s);
        assert_eq!(r.messages, 2);
        assert_eq!(r.bad_stamps, 2);
        assert_eq!(r.runs[0].received, 0);
        assert_eq!(r.runs[0].bad_stamps, 1);
        assert_eq!(r.bad_stamp_kinds.missing, 1);
    }

    #[test]
    fn expect_tracker_counts_across_cores_once() {
        let e = ExpectTracker::new(3);
        let mut a = CoreStats::default();
        let mut b = CoreStats::default();
        let m = |seq| build_message(1, seq, 0, 10, "a@x", "b@y");
        a.record(&m(0), Some(&e));
        b.record(&m(0), Some(&e));
        a.record(&m(1), Some(&e));
        assert!(!e.reached.load(Ordering::SeqCst));
        b.record(&m(2), Some(&e));
        assert!(e.reached.load(Ordering::SeqCst));
    }

    #[test]
    fn expect_fires_on_distinct_count_whatever_the_seqs() {
        // Regression: only seqs 0..N-1 counted, so a run whose
        // first messages were refused never met --expect.
        let e = ExpectTracker::new(4);
        let mut a = CoreStats::default();
        let mut b = CoreStats::default();
        let m = |seq| build_message(1, seq, 0, 10, "a@x", "b@y");
        a.record(&m(5), Some(&e));
        b.record(&m(5), Some(&e));
        a.record(&m(70_000), Some(&e));
        b.record(&m(DENSE_MAX + 9), Some(&e));
        assert!(!e.reached.load(Ordering::SeqCst));
        a.record(&m(DENSE_MAX + 9), Some(&e));
        assert!(!e.reached.load(Ordering::SeqCst));
        b.record(&m(2), Some(&e));
        assert!(e.reached.load(Ordering::SeqCst));
    }

    #[test]
    fn lost_counts_up_to_expect_and_excludes_refusals() {
        let m = |seq| build_message(7, seq, 0, 10, "a@x", "b@y");
        let mut a = CoreStats::default();
        let mut b = CoreStats::default();
        for seq in [0, 1] {
            a.record(&m(seq), None);
        }
        // Refused at the end of data: 2 (never retried), 3 (accepted
        // later, on another core), 6 (above everything received).
        a.refused(&m(2));
        a.refused(&m(3));
        b.record(&m(3), None);
        b.refused(&m(6));
        a.refused(b"Subject: unstamped\r\n\r\nx\r\n");
        a.merge(b);
        let r = Report::with_expect(&a, Some(9));
        let run = &r.runs[0];
        assert_eq!((run.distinct, run.refused), (3, 2));
        assert_eq!((run.lost, &run.lost_first[..]), (4, &[4, 5, 7, 8][..]));
        assert_eq!(r.faults.failed, 4);
        // Without --expect: missing below the highest seen (6), refusals
        // still excluded.
        let run = &Report::new(&a).runs[0];
        assert_eq!((run.lost, &run.lost_first[..]), (2, &[4, 5][..]));
    }

    #[test]
    fn seconds_run_from_the_sink_start() {
        // Regression: first to last message, so one message made 0 msg/s.
        let mut s = CoreStats::default();
        s.record(&build_message(1, 0, 0, 10, "a@x", "b@y"), None);
        assert_eq!(Report::new(&s).messages_per_second, 0.0);
        s.start = Some(Instant::now() - std::time::Duration::from_secs(2));
        let r = Report::new(&s);
        assert!(r.seconds >= 1.9 && r.seconds < 10.0, "{}", r.seconds);
        assert!(r.messages_per_second > 0.0);
    }
}
