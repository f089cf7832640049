//! The real `tern-loadgen sink` under fault injection, driven by a tiny
//! blocking client: `--expect` with refusals, lost messages at the end of
//! a run, the session error limit, and command lines split across reads.

use tern_loadgen::stamp::build_message;

mod common;
use common::{report, Client, Sink};

const RUN: u64 = 0x00c0_ffee_0000_0001;

fn msg(seq: u64) -> Vec<u8> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    build_message(RUN, seq, now, 500, "a@x.test", "b@y.test")
}

#[test]
fn expect_counts_distinct_messages_and_refusals_are_not_lost() {
    // Regression: --expect N waited for every seq 0..N-1, so with
    // refusals (never retried here) it was never met; and the refused
    // seqs were reported as lost.
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let mut sink = Sink::start(&[
        "--expect",
        "10",
        "--fail-rate",
        "0.4",
        "--seed",
        "3",
        "--timeout",
        "30s",
        "--json",
        json.to_str().unwrap(),
    ]);
    let mut c = Client::connect(&sink.addr);
    assert_eq!(c.cmd("EHLO client.test"), 250);
    let (mut accepted, mut refused, mut seq) = (0, 0, 0);
    while accepted < 10 {
        assert!(seq < 200, "too many refusals");
        match c.send(&msg(seq))[..] {
            [250, 250, 354, 250] => accepted += 1,
            [250, 250, 354, 451] => refused += 1,
            ref other => panic!("seq {seq}: {other:?}"),
        }
        seq += 1;
    }
    assert!(refused > 0, "the seed refuses none");
    assert_eq!(sink.wait(), 0);
    let r = report(&json);
    let run = &r["runs"][0];
    assert_eq!(run["distinct"], 10);
    assert_eq!(run["refused"], refused);
    assert_eq!(run["lost"], 0);
    assert_eq!(r["faults"]["failed"], refused);
}

#[test]
fn expect_is_met_by_distinct_messages_beyond_n() {
    // Regression: only seqs below N (rounded up to 64) counted.
    let mut sink = Sink::start(&["--expect", "3", "--timeout", "5s"]);
    let mut c = Client::connect(&sink.addr);
    assert_eq!(c.cmd("EHLO client.test"), 250);
    for seq in [70, 2, 70, 1000] {
        assert_eq!(c.send(&msg(seq)), [250, 250, 354, 250]);
    }
    assert_eq!(sink.wait(), 0);
}

#[test]
fn expect_counts_loss_at_the_end_of_the_run() {
    // Regression: lost only counted gaps below the highest seq seen.
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let mut sink = Sink::start(&[
        "--expect",
        "5",
        "--timeout",
        "500ms",
        "--json",
        json.to_str().unwrap(),
    ]);
    let mut c = Client::connect(&sink.addr);
    assert_eq!(c.cmd("EHLO client.test"), 250);
    for seq in 0..3 {
        assert_eq!(c.send(&msg(seq)), [250, 250, 354, 250]);
    }
    assert_eq!(sink.wait(), 3);
    let run = &report(&json)["runs"][0];
    assert_eq!(run["lost"], 2);
    assert_eq!(run["lost_first"], serde_json::json!([3, 4]));
}

#[test]
fn injected_refusals_do_not_hit_the_session_error_limit() {
    // Regression: errors_max 100 answered 421 after ~100 refusals.
    let sink = Sink::start(&["--fail-on", "mail"]);
    let mut c = Client::connect(&sink.addr);
    assert_eq!(c.cmd("EHLO client.test"), 250);
    for i in 0..150 {
        assert_eq!(c.cmd("MAIL FROM:<a@x.test>"), 451, "MAIL #{i}");
    }
    assert_eq!(c.cmd("NOOP"), 250);
}

#[test]
fn refused_command_split_across_reads_leaves_nothing_behind() {
    // Regression: "DA" went to the session at once; the refused "TA"
    // left "DA" there, and the next NOOP was "DANOOP" (500).
    let sink = Sink::start(&["--fail-on", "data", "--fail-code", "554"]);
    let mut c = Client::connect(&sink.addr);
    assert_eq!(c.split(&[b"EH", b"LO client.test\r\n"]), 250);
    assert_eq!(c.cmd("MAIL FROM:<a@x.test>"), 250);
    assert_eq!(c.cmd("RCPT TO:<b@y.test>"), 250);
    assert_eq!(c.split(&[b"DA", b"TA\r\n"]), 554);
    assert_eq!(c.split(&[b"NO", b"O", b"P\r\n"]), 250);
    drop(sink);

    let sink = Sink::start(&["--fail-on", "ehlo"]);
    let mut c = Client::connect(&sink.addr);
    assert_eq!(c.split(&[b"EH", b"LO client.test\r\n"]), 451);
    assert_eq!(c.cmd("NOOP"), 250);
}

#[test]
fn split_lines_and_data_pass_through_when_not_refused() {
    // With --fail-on ehlo at 50%: EHLO until accepted, then a message
    // whose command lines, data and end-of-data marker are all split.
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let mut sink = Sink::start(&[
        "--fail-on",
        "ehlo",
        "--fail-rate",
        "0.5",
        "--seed",
        "1",
        "--json",
        json.to_str().unwrap(),
    ]);
    let mut c = Client::connect(&sink.addr);
    let mut tries = 0;
    while c.split(&[b"EHLO cl", b"ient.test\r\n"]) != 250 {
        tries += 1;
        assert!(tries < 50);
    }
    assert_eq!(c.split(&[b"MAIL FROM:<a@", b"x.test>\r\n"]), 250);
    assert_eq!(c.split(&[b"RCPT TO:<b@y.test>\r", b"\n"]), 250);
    assert_eq!(c.split(&[b"D", b"ATA\r\n"]), 354);
    // Data that looks like commands (never parsed as such), then the
    // end-of-data marker split after its dot.
    let mut data = b"Subject: x\r\n\r\nDATA\r\nEHLO\r\nQUIT\r\n.\r".to_vec();
    data.extend_from_slice(b"\n");
    let (a, b) = data.split_at(20);
    let (b, last) = b.split_at(b.len() - 1);
    assert_eq!(c.split(&[a, b, last]), 250);
    assert_eq!(c.split(&[b"NO", b"OP\r\n"]), 250);
    c.quit();
    assert_eq!(sink.terminate(), 0);
    let r = report(&json);
    assert_eq!(r["messages"], 1);
    assert_eq!(r["bad_stamp_kinds"]["missing"], 1);
}
