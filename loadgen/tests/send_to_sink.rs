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

/// (ok, temp_fail, perm_fail, conn_errors) of a report.
fn counts(r: &serde_json::Value) -> (u64, u64, u64, u64) {
    let m = &r["messages"];
    let n = |k: &str| m[k].as_u64().unwrap();
    (n("ok"), n("temp_fail"), n("perm_fail"), n("conn_errors"))
}

#[test]
fn a_421_at_end_of_data_counts_each_message_once() {
    let dir = tempfile::tempdir().unwrap();
    for extra in [&[][..], &["--no-pipelining"]] {
        let s = sink(&[
            "--fail-on",
            "dot",
            "--fail-code",
            "421",
            "--duration",
            "60s",
        ]);
        let out = dir.path().join("421.json");
        let mut args = vec!["--messages", "10", "--concurrency", "1"];
        args.extend_from_slice(extra);
        assert_eq!(send(&s.addr, &args, &out), 1);
        let (ok, temp, perm, conn) = counts(&json(&out));
        assert_eq!(
            ok + temp + perm + conn,
            10,
            "{extra:?}: {ok} {temp} {perm} {conn}"
        );
        assert!(temp >= 5, "{extra:?}: {temp} temp_fail");
        assert_eq!((ok, perm), (0, 0), "{extra:?}");
    }
}

#[test]
fn a_4xx_on_mail_or_rcpt_is_temporary_pipelined_or_not() {
    let dir = tempfile::tempdir().unwrap();
    for on in ["mail", "rcpt"] {
        let s = sink(&["--fail-on", on, "--fail-code", "451", "--duration", "60s"]);
        for extra in [
            &[][..],
            &["--no-pipelining"],
            &["--rcpts", "3"],
            &["--bdat"],
            &["--bdat", "--no-pipelining"],
        ] {
            let out = dir.path().join("451.json");
            let mut args = vec!["--messages", "10", "--concurrency", "2"];
            args.extend_from_slice(extra);
            assert_eq!(send(&s.addr, &args, &out), 1);
            assert_eq!(counts(&json(&out)), (0, 10, 0, 0), "{on} {extra:?}");
        }
    }
}

#[test]
fn acked_file_lists_exactly_the_accepted_messages() {
    let dir = tempfile::tempdir().unwrap();
    // Half of the messages get 451 at the end of data.
    let s = sink(&[
        "--fail-rate",
        "0.5",
        "--fail-code",
        "451",
        "--seed",
        "7",
        "--duration",
        "60s",
    ]);
    let out = dir.path().join("a.json");
    let acked = dir.path().join("acked.txt");
    let code = Command::new(BIN)
        .arg("send")
        .args(["--target", &s.addr, "--quiet", "--json"])
        .arg(&out)
        .args(["--messages", "60", "--concurrency", "3", "--acked"])
        .arg(&acked)
        .stdout(Stdio::null())
        .status()
        .expect("run send")
        .code();
    assert_eq!(code, Some(1), "some messages failed");
    let r = json(&out);
    let (ok, temp, _, _) = counts(&r);
    assert!(ok > 0 && temp > 0, "{r}");
    assert_eq!(ok + temp, 60);
    let text = std::fs::read_to_string(&acked).expect("acked file");
    let mut lines = text.lines();
    let run = r["run"].as_str().expect("run id in the report");
    assert_eq!(lines.next(), Some(format!("run {run}").as_str()));
    let seqs: Vec<u64> = lines.map(|l| l.parse().expect("a number")).collect();
    assert_eq!(seqs.len() as u64, ok, "one line per accepted message");
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "ascending, no repeats"
    );
    assert!(seqs.iter().all(|&q| q < 60));
}
