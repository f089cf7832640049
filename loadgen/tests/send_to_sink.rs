//! Both real binaries: `tern-loadgen send` into `tern-loadgen sink`.
//! Counts, checksums, zero lost or duplicated; and sink fault injection
//! seen by the sender as the right reply codes.

use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_tern-loadgen");

mod common;
use common::Sink;

fn sink(args: &[&str]) -> Sink {
    Sink::start(args)
}

fn send(target: &str, extra: &[&str], json: &std::path::Path) -> i32 {
    let status = Command::new(BIN)
        .arg("send")
        .args(["--target", target, "--quiet", "--json"])
        .arg(json)
        .args(extra)
        .stdout(Stdio::null())
        .status()
        .expect("run send");
    status.code().unwrap_or(-1)
}

fn json(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("report")).expect("json")
}

#[test]
fn every_message_arrives_once_and_intact() {
    let dir = tempfile::tempdir().unwrap();
    let sink_json = dir.path().join("sink.json");
    let mut s = sink(&[
        "--expect",
        "600",
        "--timeout",
        "60s",
        "--json",
        sink_json.to_str().unwrap(),
    ]);
    let send_json = dir.path().join("send.json");
    let args = [
        "--messages",
        "600",
        "--concurrency",
        "8",
        "--per-conn",
        "50",
        "--size",
        "512:3,8KiB:1",
        "--rcpts",
        "2",
    ];
    assert_eq!(send(&s.addr, &args, &send_json), 0);
    assert_eq!(s.wait(), 0, "sink saw all 600");
    let sent = json(&send_json);
    let got = json(&sink_json);
    assert_eq!(sent["messages"]["ok"], 600);
    let runs = got["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1);
    let r = &runs[0];
    assert_eq!(r["run"], sent["run"]);
    assert_eq!(r["distinct"], 600);
    assert_eq!(r["received"], 600);
    assert_eq!(r["duplicates"], 0);
    assert_eq!(r["lost"], 0);
    assert_eq!(r["bad_stamps"], 0);
    assert_eq!(got["bad_stamps"], 0);
}

#[test]
fn injected_failures_reach_the_sender_as_reply_codes() {
    let dir = tempfile::tempdir().unwrap();
    // Temporary failure at the end of data.
    let s = sink(&[
        "--fail-rate",
        "1",
        "--fail-code",
        "451",
        "--duration",
        "60s",
    ]);
    let out = dir.path().join("a.json");
    assert_eq!(
        send(&s.addr, &["--messages", "20", "--concurrency", "2"], &out),
        1
    );
    let r = json(&out);
    assert_eq!(r["messages"]["temp_fail"], 20);
    assert_eq!(r["messages"]["ok"], 0);
    assert_eq!(r["replies"]["451"], 20);
    drop(s);
    // Permanent refusal of every recipient.
    let s = sink(&[
        "--fail-on",
        "rcpt",
        "--fail-code",
        "550",
        "--duration",
        "60s",
    ]);
    let out = dir.path().join("b.json");
    assert_eq!(
        send(&s.addr, &["--messages", "10", "--concurrency", "1"], &out),
        1
    );
    let r = json(&out);
    assert_eq!(r["messages"]["perm_fail"], 10);
    assert!(r["replies"]["550"].as_u64().unwrap() >= 10);
}
