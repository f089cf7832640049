//! `GET /metrics` of a real node after traffic, parsed with the
//! `prometheus-parse` crate: every line is a comment or a sample, every
//! family has samples and is declared once, histograms have `_bucket`,
//! `_sum` and `_count` with `le="+Inf"` equal to `_count`, no unit but
//! seconds for durations, and the node-wide gauges (log state, free disk
//! bytes, oldest queued message age, queue per destination with the
//! largest 20 and `other`, shadow copies held per peer) have plausible
//! values.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use prometheus_parse::{LineInfo, Scrape, Value};
use tern_tests::server::{free_addr, wait_until, Options, TernProcess};
use tern_tests::sink::TestSink;
use tern_tests::smtp::message;
use tern_tests::tls;

/// Pools `d00` .. `d20` (one domain each) point here: nothing listens, so
/// their mail waits behind ten-minute backoffs.
fn down_pools(down: SocketAddr, n: usize) -> String {
    let mut out = String::new();
    for i in 0..n {
        out.push_str(&format!(
            "[pools.d{i:02}]\nhosts = [ {{ address = \"{down}\", priority = 0, weight = 1 }} ]\n"
        ));
    }
    out
}

/// Domains routed: `d{i}.test` to pool `d{i}`, `ok.test` to pool `ok`.
fn routes(n: usize) -> String {
    let mut out = String::from("[routes]\n\"ok.test\" = \"ok\"\n");
    for i in 0..n {
        out.push_str(&format!("\"d{i:02}.test\" = \"d{i:02}\"\n"));
    }
    out
}

/// The body of an HTTP response.
fn body(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or(response, |(_, b)| b)
}

/// Value of a non-histogram sample.
fn number(v: &Value) -> f64 {
    match v {
        Value::Counter(x) | Value::Gauge(x) | Value::Untyped(x) => *x,
        other => panic!("not a number: {other:?}"),
    }
}

/// The family a sample line belongs to: its name, or for `_sum` and
/// `_count` of a histogram, the histogram's.
fn family<'a>(name: &'a str, histograms: &[&str]) -> &'a str {
    for suffix in ["_sum", "_count", "_bucket"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if histograms.contains(&base) {
                return base;
            }
        }
    }
    name
}

/// Checks the text format line by line; returns the families' types.
fn check_lines(text: &str) -> HashMap<String, String> {
    let mut types: HashMap<String, String> = HashMap::new();
    let mut helps: HashMap<String, usize> = HashMap::new();
    let mut samples: HashMap<String, usize> = HashMap::new();
    let mut histograms: Vec<String> = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        assert!(!line.trim().is_empty(), "empty line in the exposition");
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap().to_string();
            *helps.entry(name).or_insert(0) += 1;
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
            assert!(
                types.insert(name.into(), kind.into()).is_none(),
                "{name}: TYPE twice"
            );
            if kind == "histogram" {
                histograms.push(name.into());
            }
            current = name.into();
            continue;
        }
        let LineInfo::Sample { metric_name, .. } = LineInfo::parse(line) else {
            panic!("not a sample line: {line:?}");
        };
        let refs: Vec<&str> = histograms.iter().map(String::as_str).collect();
        let fam = family(metric_name, &refs);
        assert_eq!(fam, current, "{line:?} outside its family's block");
        *samples.entry(fam.to_string()).or_insert(0) += 1;
    }
    for (name, kind) in &types {
        assert_eq!(helps.get(name), Some(&1), "{name}: HELP once");
        assert!(
            samples.get(name).is_some_and(|n| *n > 0),
            "{name} ({kind}) has no sample"
        );
    }
    assert_eq!(helps.len(), types.len(), "a HELP without TYPE");
    types
}

#[test]
fn metrics_parse_every_family_has_samples_and_the_new_gauges_are_plausible() {
    const DOWN: usize = 21;
    let hop = TestSink::start("127.0.0.1:0".parse().unwrap());
    let down = free_addr();
    // A shadow peer that is not there: copies fail (accepted without
    // redundancy), and the peer still has its held-copies sample.
    let config = format!(
        "[delivery]\nretry_initial = \"10m\"\nretry_max = \"1h\"\nhost_down_initial = \"10m\"\n\
         host_down_max = \"1h\"\nconnect_timeout = \"2s\"\nmaintenance_interval = \"200ms\"\n\
         [pools.ok]\nhosts = [ {{ address = \"{}\", priority = 0, weight = 1 }} ]\n{}{}\
         [cluster]\nnode_id = \"a\"\nshadow_timeout = \"2s\"\npeers = [ {} ]\n{}",
        hop.addr(),
        down_pools(down, DOWN),
        routes(DOWN),
        tls::peer("b", free_addr(), None),
        tls::tls_section()
    );
    let tern = TernProcess::start(Options {
        cores: 2,
        ..Options::with_config(&config)
    });
    // d00 gets 4 messages, d01 .. d20 one each, ok.test 3 (delivered).
    let mut rcpts: Vec<String> = (0..DOWN).map(|i| format!("r@d{i:02}.test")).collect();
    rcpts.extend((0..3).map(|_| "r@d00.test".to_string()));
    rcpts.extend((0..3).map(|_| "r@ok.test".to_string()));
    for (i, rcpt) in rcpts.iter().enumerate() {
        let mut c = tern.ehlo();
        c.send_message(
            "s@origin.test",
            &[rcpt.as_str()],
            &message(&format!("m{i}"), &["x"]),
        );
        c.quit();
    }
    hop.wait_for(3, Duration::from_secs(20));
    let queued = (DOWN + 3) as u64;
    wait_until(
        "the waiting mail to be a few seconds old",
        Duration::from_secs(30),
        || {
            let m = tern.metrics();
            tern_tests::server::sum_samples(&m, "tern_queue_oldest_message_age_seconds ") >= 2
                && tern_tests::server::sum_samples(&m, "tern_queue_messages{") == queued
                && tern_tests::server::sum_samples(&m, "tern_queue_in_flight{") == 0
        },
    );

    let response = tern.metrics();
    assert!(
        response.contains("text/plain; version=0.0.4"),
        "content type: {response}"
    );
    let text = body(&response);
    let types = check_lines(text);
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("parse");
    for name in types.keys() {
        assert!(
            !name.contains("microseconds") && !name.contains("milliseconds"),
            "{name}: durations in seconds"
        );
        assert!(scrape.docs.contains_key(name), "{name}: HELP not parsed");
    }

    // Histograms: buckets ascending and cumulative, +Inf = _count, a _sum.
    let get = |metric: &str, core: &str| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == metric && s.labels.get("core") == Some(core))
            .map(|s| number(&s.value))
            .unwrap_or_else(|| panic!("{metric}{{core={core}}} missing"))
    };
    let mut histograms = 0;
    for s in &scrape.samples {
        let Value::Histogram(buckets) = &s.value else {
            continue;
        };
        histograms += 1;
        assert_eq!(types.get(&s.metric).map(String::as_str), Some("histogram"));
        let core = s.labels.get("core").expect("core label");
        assert!(buckets
            .windows(2)
            .all(|w| w[0].less_than < w[1].less_than && w[0].count <= w[1].count));
        let inf = buckets.last().expect("buckets");
        assert!(inf.less_than.is_infinite(), "{}: no le=\"+Inf\"", s.metric);
        let count = get(&format!("{}_count", s.metric), core);
        assert_eq!(inf.count, count, "{} core {core}: +Inf != _count", s.metric);
        let sum = get(&format!("{}_sum", s.metric), core);
        assert!(sum.is_finite() && sum >= 0.0, "{}: _sum {sum}", s.metric);
    }
    // Three histograms on each of the two cores.
    assert_eq!(histograms, 6);
    let commits: f64 = ["0", "1"]
        .iter()
        .map(|c| get("tern_log_commit_seconds_count", c))
        .sum();
    assert!(
        commits >= (queued + 3) as f64 / 8.0,
        "group commits: {commits}"
    );
    let commit_seconds: f64 = ["0", "1"]
        .iter()
        .map(|c| get("tern_log_commit_seconds_sum", c))
        .sum();
    assert!(
        commit_seconds < commits * 10.0,
        "commits in seconds, not microseconds: {commit_seconds}"
    );
    let copies: f64 = ["0", "1"]
        .iter()
        .map(|c| get("tern_shadow_copy_seconds_count", c))
        .sum();
    assert_eq!(copies, rcpts.len() as f64, "a copy attempt per message");
    let records: f64 = ["0", "1"]
        .iter()
        .map(|c| get("tern_log_batch_records_sum", c))
        .sum();
    let log_records: f64 = ["0", "1"]
        .iter()
        .map(|c| get("tern_log_records_total", c))
        .sum();
    assert_eq!(records, log_records, "batch records _sum = records");

    // The gauges.
    let node = |metric: &str| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == metric)
            .map(|s| number(&s.value))
            .unwrap_or_else(|| panic!("{metric} missing"))
    };
    for core in ["0", "1"] {
        assert_eq!(get("tern_log_state", core), 0.0);
    }
    assert_eq!(node("tern_store_failed"), 0.0);
    let (free, size) = (node("tern_disk_free_bytes"), node("tern_disk_size_bytes"));
    assert!(free > 0.0 && free <= size, "disk free {free} of {size}");
    let age = node("tern_queue_oldest_message_age_seconds");
    assert!((2.0..600.0).contains(&age), "oldest queued age {age}");
    let per_destination: BTreeMap<String, f64> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "tern_queue_destination_messages")
        .map(|s| {
            (
                s.labels.get("destination").unwrap().to_string(),
                number(&s.value),
            )
        })
        .collect();
    // The largest 20: d00 (4), then d01 .. d19 by name; d20 is "other".
    assert_eq!(per_destination.len(), 21, "{per_destination:?}");
    assert_eq!(per_destination.get("pool:d00"), Some(&4.0));
    for i in 1..20 {
        assert_eq!(per_destination.get(&format!("pool:d{i:02}")), Some(&1.0));
    }
    assert_eq!(
        per_destination.get("other"),
        Some(&1.0),
        "{per_destination:?}"
    );
    assert!(
        !per_destination.contains_key("pool:ok"),
        "delivered: not queued"
    );
    let held: Vec<_> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "tern_shadow_queue_messages")
        .map(|s| {
            (
                s.labels.get("primary").unwrap().to_string(),
                number(&s.value),
            )
        })
        .collect();
    assert_eq!(held, vec![("b".to_string(), 0.0)]);
}
