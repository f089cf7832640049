//! Running out of file descriptors (issue 16): a flood of connections
//! beyond the process's descriptor limit makes accept fail (EMFILE); the
//! node logs it rate-limited, backs off instead of spinning, and serves
//! again, SMTP and the admin listener both, once descriptors are free.
//! Idle admin connections do not cost a thread each.

use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use tern_tests::server::{admin_get, first_reply, wait_until, Options, TernProcess};

fn threads(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

#[test]
fn out_of_descriptors_backs_off_and_serves_again() {
    let mut tern = TernProcess::start(Options::default());
    let pid = tern.pid();
    // Lower the running node's limit to a little above what it uses.
    let limit = open_fds(pid) + 40;
    let set = Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={limit}:{limit}"))
        .status();
    if !set.is_ok_and(|s| s.success()) {
        println!("SKIPPED: prlimit is not available to lower the node's descriptor limit");
        return;
    }
    // A flood of connections: some are served, then accept fails.
    let mut flood = Vec::new();
    for _ in 0..200 {
        if let Ok(s) = TcpStream::connect_timeout(&tern.addr(), Duration::from_millis(500)) {
            flood.push(s);
        }
    }
    wait_until("accept fails", Duration::from_secs(10), || {
        tern.stderr().contains("accept failed")
    });
    // Seconds at the limit: the failure is logged once, not every try.
    std::thread::sleep(Duration::from_secs(3));
    assert!(tern.is_running());
    let lines = tern.stderr().matches("accept failed").count();
    assert!(lines <= 2, "{lines} accept failure lines in 3 s");
    drop(flood);
    // Both listeners serve again.
    wait_until("SMTP greets again", Duration::from_secs(10), || {
        first_reply(tern.addr()).is_some_and(|r| r.code == 220)
    });
    let metrics = admin_get(tern.admin_addr(), "/metrics");
    assert!(metrics.contains("tern_connections_total"), "{metrics}");
    // Idle admin connections wait for one of a few workers; no thread each.
    let before = threads(pid);
    let idle: Vec<TcpStream> = (0..30)
        .filter_map(|_| TcpStream::connect(tern.admin_addr()).ok())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let during = threads(pid);
    assert!(
        during <= before + 1,
        "threads {before} -> {during} with 30 idle admin connections"
    );
    drop(idle);
    let metrics = admin_get(tern.admin_addr(), "/metrics");
    assert!(metrics.contains("tern_connections_total"));
    tern.stop_gracefully();
}
