//! `tern-loadgen send` against a tiny in-test SMTP server: messages arrive
//! with distinct sequence numbers and valid stamps, the JSON report has the
//! documented fields, and failover between priorities works.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tern_loadgen::stamp;

/// A server answering 250 to everything, recording every message.
struct Server {
    port: u16,
    messages: Arc<Mutex<Vec<Vec<u8>>>>,
}

fn server(chunking: bool) -> Server {
    server_on(TcpListener::bind("127.0.0.1:0").unwrap(), chunking)
}

fn server_on(listener: TcpListener, chunking: bool) -> Server {
    let port = listener.local_addr().unwrap().port();
    let messages = Arc::new(Mutex::new(Vec::new()));
    let store = messages.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let store = store.clone();
            std::thread::spawn(move || {
                let _ = session(stream, &store, chunking);
            });
        }
    });
    Server { port, messages }
}

fn session(stream: TcpStream, store: &Mutex<Vec<Vec<u8>>>, chunking: bool) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut w = stream.try_clone()?;
    let mut r = BufReader::new(stream);
    w.write_all(b"220 test ESMTP\r\n")?;
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let upper = line.to_ascii_uppercase();
        if upper.starts_with("EHLO") {
            let chunk = if chunking { "250-CHUNKING\r\n" } else { "" };
            w.write_all(
                format!("250-test\r\n250-PIPELINING\r\n{chunk}250 SIZE 100000000\r\n").as_bytes(),
            )?;
        } else if upper.starts_with("DATA") {
            w.write_all(b"354 go\r\n")?;
            let mut msg = Vec::new();
            let mut l = Vec::new();
            loop {
                l.clear();
                if r.read_until(b'\n', &mut l)? == 0 {
                    return Ok(());
                }
                if l == b".\r\n" {
                    break;
                }
                let unstuffed = if l.first() == Some(&b'.') {
                    &l[1..]
                } else {
                    &l[..]
                };
                msg.extend_from_slice(unstuffed);
            }
            store.lock().unwrap().push(msg);
            w.write_all(b"250 2.0.0 queued\r\n")?;
        } else if upper.starts_with("BDAT") {
            let mut parts = line.split_whitespace().skip(1);
            let n: usize = parts.next().unwrap().parse().unwrap();
            let last = parts.next().is_some_and(|p| p.eq_ignore_ascii_case("LAST"));
            assert!(last, "the sender sends one chunk");
            let mut msg = vec![0; n];
            r.read_exact(&mut msg)?;
            store.lock().unwrap().push(msg);
            w.write_all(b"250 2.0.0 queued\r\n")?;
        } else if upper.starts_with("QUIT") {
            w.write_all(b"221 bye\r\n")?;
            return Ok(());
        } else {
            w.write_all(b"250 2.0.0 ok\r\n")?;
        }
    }
}

/// The child process, killed if the test fails before it exits.
struct Loadgen(Child);

impl Drop for Loadgen {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `send` with `args`; returns (success, stdout, stderr).
fn send(args: &[&str]) -> (bool, String, String) {
    let child = Command::new(env!("CARGO_BIN_EXE_tern-loadgen"))
        .arg("send")
        .args(args)
        .arg("--quiet")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = Loadgen(child);
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "send did not finish");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut out = String::new();
    let mut err = String::new();
    child
        .0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status.success(), out, err)
}

/// Verifies every stamp; returns the sequence numbers.
fn seqs(messages: &[Vec<u8>], run: u64) -> BTreeSet<u64> {
    let mut seen = BTreeSet::new();
    for m in messages {
        let s = stamp::verify(m).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(m)));
        assert_eq!(s.run, run);
        assert!(seen.insert(s.seq), "duplicate seq {}", s.seq);
    }
    seen
}

fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn closed_loop_delivers_stamped_messages_and_reports_json() {
    let srv = server(false);
    let dir = temp_dir();
    let json = dir.path().join("report.json");
    let plot = dir.path().join("plot");
    let target = format!("127.0.0.1:{}", srv.port);
    let (ok, out, err) = send(&[
        "--target",
        &target,
        "--concurrency",
        "4",
        "--per-conn",
        "30",
        "--messages",
        "200",
        "--rcpts",
        "2",
        "--size",
        "1KiB:50,8KiB:50",
        "--run-id",
        "00000000deadbeef",
        "--json",
        json.to_str().unwrap(),
        "--plot",
        plot.to_str().unwrap(),
    ]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("run 00000000deadbeef"), "{out}");
    let messages = srv.messages.lock().unwrap().clone();
    assert_eq!(messages.len(), 200);
    assert_eq!(seqs(&messages, 0xdead_beef), (0..200).collect());

    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(j["run"], "00000000deadbeef");
    assert_eq!(j["messages"]["ok"], 200);
    for k in ["temp_fail", "perm_fail", "conn_errors"] {
        assert_eq!(j["messages"][k], 0, "{k}");
    }
    assert!(j["seconds"].as_f64().unwrap() > 0.0);
    assert!(j["messages_per_second"].as_f64().unwrap() > 0.0);
    assert!(j["bytes"].as_u64().unwrap() > 200 * 1024);
    // 200 MAIL + 400 RCPT + 200 end of data, plus EHLO per connection.
    assert!(j["replies"]["250"].as_u64().unwrap() >= 800);
    assert_eq!(j["replies"]["354"], 200);
    for phase in [
        "transaction",
        "connect",
        "banner",
        "ehlo",
        "mail",
        "rcpt",
        "data",
        "eod",
    ] {
        let p = &j["latency_us"][phase];
        for k in ["p50", "p90", "p99", "p999", "max", "mean"] {
            assert!(p[k].is_number(), "{phase}.{k}: {p}");
        }
    }
    assert_eq!(j["latency_us"]["transaction"]["count"], 200);
    let per_second: u64 = j["per_second"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(per_second, 200);
    assert_eq!(j["targets"][0]["addr"], target.as_str());
    assert_eq!(j["targets"][0]["priority"], 0);
    assert_eq!(j["targets"][0]["messages"], 200);
    assert_eq!(j["targets"][0]["connect_failures"], 0);
    assert!(j["open_loop"].is_null());

    let hgrm = std::fs::read_to_string(plot.join("transaction.hgrm")).unwrap();
    assert!(hgrm.contains("Value") && hgrm.contains("Percentile"));
    let svg = std::fs::read_to_string(plot.join("send.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("polyline"));
}

#[test]
fn bdat_and_no_pipelining() {
    let srv = server(true);
    let target = format!("127.0.0.1:{}", srv.port);
    for extra in [
        &["--bdat"][..],
        &["--bdat", "--no-pipelining"],
        &["--no-pipelining"],
    ] {
        srv.messages.lock().unwrap().clear();
        let mut args = vec![
            "--target",
            &target,
            "--messages",
            "30",
            "--concurrency",
            "3",
            "--run-id",
            "1",
        ];
        args.extend_from_slice(extra);
        let (ok, out, err) = send(&args);
        assert!(ok, "{extra:?}\n{out}\n{err}");
        let messages = srv.messages.lock().unwrap().clone();
        assert_eq!(seqs(&messages, 1), (0..30).collect(), "{extra:?}");
    }
}

#[test]
fn fails_over_to_the_next_priority() {
    // A port with nothing listening.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let srv = server(false);
    let dir = temp_dir();
    let json = dir.path().join("r.json");
    let first = format!("127.0.0.1:{closed_port},10");
    let second = format!("127.0.0.1:{},20", srv.port);
    let (ok, out, err) = send(&[
        "--target",
        &first,
        "--target",
        &second,
        "--messages",
        "100",
        "--concurrency",
        "5",
        "--per-conn",
        "10",
        "--run-id",
        "2",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(ok, "{out}\n{err}");
    let messages = srv.messages.lock().unwrap().clone();
    assert_eq!(seqs(&messages, 2), (0..100).collect());
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(j["targets"][0]["priority"], 10);
    assert_eq!(j["targets"][0]["messages"], 0);
    assert!(j["targets"][0]["connect_failures"].as_u64().unwrap() >= 1);
    assert_eq!(j["targets"][1]["priority"], 20);
    assert_eq!(j["targets"][1]["messages"], 100);
    assert_eq!(j["messages"]["ok"], 100);
}

#[test]
fn open_loop_sends_the_scheduled_messages() {
    let srv = server(false);
    let dir = temp_dir();
    let json = dir.path().join("r.json");
    let target = format!("127.0.0.1:{}", srv.port);
    let (ok, out, err) = send(&[
        "--target",
        &target,
        "--rate",
        "500",
        "--messages",
        "100",
        "--concurrency",
        "4",
        "--run-id",
        "3",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(ok, "{out}\n{err}");
    let messages = srv.messages.lock().unwrap().clone();
    assert_eq!(seqs(&messages, 3), (0..100).collect());
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(j["open_loop"]["rate"], 500.0);
    assert_eq!(j["open_loop"]["scheduled"], 100);
    // Rate accuracy is reported, not asserted.
    assert!(out.contains("open loop: asked 500"), "{out}");
}

#[test]
fn failures_exit_nonzero() {
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let target = format!("127.0.0.1:{port}");
    let (ok, out, err) = send(&["--target", &target, "--messages", "3", "--timeout", "2s"]);
    assert!(!ok, "{out}\n{err}");
    assert!(out.contains("3 conn_errors"), "{out}");
    assert!(err.contains("failed"), "{err}");
}

#[test]
fn fails_back_to_a_better_priority_with_unlimited_per_conn() {
    // The preferred target is down at the start and comes up after 1.5 s.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let backup = server(false);
    let dir = temp_dir();
    let json = dir.path().join("r.json");
    let first = format!("127.0.0.1:{port},10");
    let second = format!("127.0.0.1:{},20", backup.port);
    let late = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        server_on(TcpListener::bind(("127.0.0.1", port)).unwrap(), false)
    });
    let (ok, out, err) = send(&[
        "--target",
        &first,
        "--target",
        &second,
        "--duration",
        "5s",
        "--concurrency",
        "2",
        "--per-conn",
        "0",
        "--size",
        "256",
        "--run-id",
        "5",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(ok, "{out}\n{err}");
    let preferred = late.join().unwrap();
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert!(j["targets"][1]["messages"].as_u64().unwrap() > 0, "{j}");
    let back = preferred.messages.lock().unwrap().len() as u64;
    assert!(back > 0, "no failback: {}", j["targets"]);
    assert_eq!(j["targets"][0]["messages"].as_u64().unwrap(), back);
    // After failing back, the preferred target takes the traffic.
    let after = backup.messages.lock().unwrap().len() as u64;
    assert_eq!(back + after, j["messages"]["ok"].as_u64().unwrap());
}

#[test]
fn stops_soon_when_every_target_is_down() {
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let target = format!("127.0.0.1:{port}");
    let dir = temp_dir();
    let json = dir.path().join("r.json");
    let t = Instant::now();
    let (ok, out, err) = send(&[
        "--target",
        &target,
        "--messages",
        "500",
        "--concurrency",
        "4",
        "--timeout",
        "1s",
        "--json",
        json.to_str().unwrap(),
    ]);
    let took = t.elapsed();
    assert!(!ok, "{out}\n{err}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(err.contains("every target was down"), "{err}");
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(j["messages"]["conn_errors"], 500, "{j}");
    assert_eq!(j["messages"]["ok"], 0);
}
