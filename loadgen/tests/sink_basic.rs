//! Runs the real `tern-loadgen sink` on a loopback port and talks SMTP to
//! it with a tiny blocking client: counts (received, duplicates, lost, bad
//! stamps) in the JSON report, and fault injection reply codes.

use tern_loadgen::stamp::build_message;

mod common;
use common::{report, Client, Sink};

const RUN: u64 = 0x0123_4567_89ab_cdef;

fn msg(seq: u64) -> Vec<u8> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    build_message(RUN, seq, now, 2000, "a@x.test", "b@y.test")
}

#[test]
fn counts_duplicates_gaps_and_bad_stamps() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let mut sink = Sink::start(&[
        "--expect",
        "4",
        "--timeout",
        "30s",
        "--json",
        json.to_str().unwrap(),
    ]);
    let mut c = Client::connect(&sink.addr);
    // 0, 1, 1 again (duplicate), no 2 (gap), an unstamped message, 3, 4.
    for seq in [0, 1, 1] {
        assert_eq!(c.ehlo_send(&msg(seq)), [250, 250, 250, 354, 250]);
    }
    assert_eq!(
        c.ehlo_send(b"Subject: no stamp\r\n\r\n.leading dot\r\n"),
        [250, 250, 250, 354, 250]
    );
    c.quit();
    let mut c = Client::connect(&sink.addr);
    assert_eq!(c.ehlo_send(&msg(3)), [250, 250, 250, 354, 250]);
    assert_eq!(c.ehlo_send(&msg(4)), [250, 250, 250, 354, 250]);
    // The 4th distinct message of the run: the sink exits by itself.
    assert_eq!(sink.wait(), 0);
    let r = report(&json);
    assert_eq!(r["messages"], 6);
    assert_eq!(r["bad_stamps"], 1);
    assert_eq!(r["bad_stamp_kinds"]["missing"], 1);
    let run = &r["runs"][0];
    assert_eq!(run["run"], "0123456789abcdef");
    assert_eq!(run["received"], 5);
    assert_eq!(run["distinct"], 4);
    assert_eq!(run["duplicates"], 1);
    assert_eq!(run["lost"], 1);
    assert_eq!(run["lost_first"], serde_json::json!([2]));
    for k in ["p50", "p90", "p99", "p999", "max", "mean"] {
        assert!(run["latency_us"][k].is_number(), "{k}");
    }
    assert_eq!(r["faults"]["failed"], 0);
}

#[test]
fn expect_unmet_exits_3() {
    let mut sink = Sink::start(&["--expect", "2", "--timeout", "300ms"]);
    let mut c = Client::connect(&sink.addr);
    assert_eq!(c.ehlo_send(&msg(0)), [250, 250, 250, 354, 250]);
    c.quit();
    assert_eq!(sink.wait(), 3);
}

#[test]
fn fail_on_rcpt_with_code() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let mut sink = Sink::start(&[
        "--fail-on",
        "rcpt",
        "--fail-code",
        "550",
        "--json",
        json.to_str().unwrap(),
    ]);
    let mut c = Client::connect(&sink.addr);
    assert_eq!(c.ehlo_send(&msg(0)), [250, 250, 550]);
    c.quit();
    assert_eq!(sink.terminate(), 0);
    let r = report(&json);
    assert_eq!(r["faults"]["failed"], 1);
    assert_eq!(r["messages"], 0);
}

#[test]
fn fail_rate_one_fails_end_of_data() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let mut sink = Sink::start(&["--fail-rate", "1", "--json", json.to_str().unwrap()]);
    let mut c = Client::connect(&sink.addr);
    assert_eq!(c.ehlo_send(&msg(0)), [250, 250, 250, 354, 451]);
    assert_eq!(c.ehlo_send(&msg(0)), [250, 250, 250, 354, 451]);
    c.quit();
    assert_eq!(sink.terminate(), 0);
    let r = report(&json);
    assert_eq!(r["faults"]["failed"], 2);
    assert_eq!(r["messages"], 0);
    // The refused message's run is listed: refused (seq 0 twice), not lost.
    let run = &r["runs"][0];
    assert_eq!(run["received"], 0);
    assert_eq!(run["refused"], 1);
    assert_eq!(run["lost"], 0);
}

#[test]
fn fail_on_ehlo_and_data_and_drop() {
    let sink = Sink::start(&["--fail-on", "data", "--fail-code", "554"]);
    let mut c = Client::connect(&sink.addr);
    assert_eq!(c.ehlo_send(&msg(0)), [250, 250, 250, 554]);
    assert_eq!(c.cmd("RSET"), 250);
    c.quit();
    drop(sink);

    let sink = Sink::start(&["--fail-on", "ehlo"]);
    let mut c = Client::connect(&sink.addr);
    assert_eq!(c.cmd("EHLO client.test"), 451);
    assert_eq!(c.cmd("HELO client.test"), 451);
    c.quit();
    drop(sink);

    let sink = Sink::start(&["--drop-rate", "1"]);
    let mut c = Client::connect(&sink.addr);
    // The connection closes after the data, with no reply (EOF: 0).
    assert_eq!(c.ehlo_send(&msg(0)), [250, 250, 250, 354, 0]);
}
