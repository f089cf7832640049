//! The operator's trial of issue 16 on a small file system (a tmpfs the
//! test mounts; needs root, so it runs in CI and skips elsewhere with a
//! printed reason): fill it, free it, no restart. Refusals are 452 4.3.1
//! and never a false 250; delivery and its results go on while new mail is
//! refused; the node accepts again by itself; every message is delivered
//! exactly once, also across a restart (no attempt whose result could not
//! be recorded).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use tern_tests::server::{Options, TernProcess};
use tern_tests::sink::{Behavior, TestSink};
use tern_tests::smtp::{message, Client, Reply};

/// A tmpfs of `mib` MiB mounted on a fresh directory; unmounted on drop.
struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    fn mount(mib: u64) -> Option<SmallFs> {
        // SAFETY: plain syscall.
        if unsafe { libc::geteuid() } != 0 {
            println!("SKIPPED: mounting a small file system needs root (CI runs this as root)");
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tern-test"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            println!("SKIPPED: mount -t tmpfs failed (no mount privilege here)");
            return None;
        }
        Some(SmallFs { dir })
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn free(&self) -> u64 {
        tern_engine::pressure::probe::disk(self.dir.path())
            .unwrap()
            .0
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

const BODY_LINES: usize = 1000;

fn content(i: usize) -> Vec<u8> {
    let line = format!("{i:06} {}", "x".repeat(92));
    let lines: Vec<&str> = std::iter::repeat_n(line.as_str(), BODY_LINES).collect();
    message(&format!("m{i}"), &lines)
}

fn config(sink: &TestSink, pressure: &str) -> String {
    format!(
        "[server]\nrelay_to = \"{}\"\n\
         [smtp]\nmessage_size_max = \"1MiB\"\nrecipients_max = 100\n\
         [storage]\nsegment_size = \"4MiB\"\nretention_min = \"0s\"\nreserve = \"256KiB\"\nzero_fill_ahead = \"0\"\nio = \"buffered\"\n\
         [delivery]\nretry_initial = \"1s\"\nretry_max = \"1s\"\nmaintenance_interval = \"200ms\"\n\
         safety_net_hold_time = \"1s\"\n\
         [pressure]\ngreeting_delay = \"100ms\"\n{pressure}\n",
        sink.addr()
    )
}

/// Where a transaction ended.
enum Sent {
    Queued,
    /// Refused at MAIL (the reply).
    AtMail(Reply),
    /// Refused after the content (the reply).
    AfterData(Reply),
}

fn send(c: &mut Client, i: usize) -> Sent {
    let r = c.cmd("MAIL FROM:<a@example.test>");
    if r.code != 250 {
        return Sent::AtMail(r);
    }
    c.expect("RCPT TO:<b@example.test>", 250, "2.1.5");
    c.cmd("DATA").assert(354, None);
    c.send(&tern_tests::smtp::dot_stuff(&content(i)));
    let r = c.reply();
    if r.code == 250 {
        Sent::Queued
    } else {
        Sent::AfterData(r)
    }
}

/// Sends until the first refusal; returns how many were queued and the
/// refusal.
fn fill(tern: &TernProcess) -> (usize, Sent) {
    let mut c = tern.ehlo();
    for i in 0..2000 {
        match send(&mut c, i) {
            Sent::Queued => {}
            refused => return (i, refused),
        }
    }
    panic!("2000 messages of 100 KiB fit a small file system?");
}

fn subjects(sink: &TestSink) -> Vec<String> {
    let mut s: Vec<String> = sink.messages().iter().map(|m| m.subject()).collect();
    s.sort();
    s
}

/// Keeps trying one more message until it is queued (the node recovers
/// by itself); returns how long that took.
fn accepted_again(tern: &TernProcess, i: usize, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let mut c = tern.ehlo();
        match send(&mut c, i) {
            Sent::Queued => return start.elapsed(),
            Sent::AtMail(r) | Sent::AfterData(r) => {
                r.expect(452, "4.3.1");
                assert!(
                    start.elapsed() < limit,
                    "still refused after {limit:?}: {r:?}"
                );
            }
        }
        c.quit();
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// A sink that defers (4xx at the end of data) and tern on `fs`, relaying
/// to it with `pressure` in `[pressure]`.
fn start(fs: &SmallFs, pressure: &str) -> (TestSink, TernProcess) {
    let sink = TestSink::start("127.0.0.1:0".parse().unwrap());
    sink.set_behavior(Behavior {
        data_end: Some((451, "4.3.0 not now".into())),
        ..Behavior::default()
    });
    let options = Options {
        config: Some(config(&sink, pressure)),
        data_dir: Some(fs.data_dir()),
        ..Options::default()
    };
    let tern = TernProcess::start(options);
    (sink, tern)
}

fn check_exactly_once(sink: &TestSink, n: usize) {
    let want: Vec<String> = {
        let mut w: Vec<String> = (0..n).map(|i| format!("m{i}")).collect();
        w.sort();
        w
    };
    assert_eq!(subjects(sink), want, "every message exactly once");
}

/// Without back pressure thresholds: the log itself fills the file
/// system. The message that does not fit gets 452 after its DATA (the
/// last line of defence), the ones queued are delivered and recorded
/// (the log's reserve), and once the Safety Net lets their segments go
/// the node takes mail again, without a restart.
#[test]
fn the_log_fills_the_file_system_then_recovers_without_restart() {
    let Some(fs) = SmallFs::mount(40) else { return };
    let (sink, mut tern) = start(
        &fs,
        "disk_free_elevated = \"0%\"\ndisk_free_high = \"0%\"\n",
    );
    let (queued, refused) = fill(&tern);
    match refused {
        Sent::AfterData(r) | Sent::AtMail(r) => r.expect(452, "4.3.1"),
        Sent::Queued => unreachable!(),
    };
    assert!(queued > 10, "only {queued} messages fit");
    println!(
        "{queued} messages queued before the file system was full ({} bytes free)",
        fs.free()
    );
    // Delivery goes on, and its results are recorded.
    sink.set_behavior(Behavior::default());
    sink.wait_for(queued, Duration::from_secs(60));
    let took = accepted_again(&tern, queued, Duration::from_secs(60));
    println!("accepting again {took:?} after delivery, without a restart");
    sink.wait_for(queued + 1, Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(1));
    check_exactly_once(&sink, queued + 1);
    let stderr = tern.stderr();
    assert!(
        stderr.matches("queue maintenance failed").count() <= 1,
        "maintenance failures repeated: {stderr}"
    );
    // A restart delivers nothing again: every attempt's result was durable.
    tern.stop_gracefully();
    tern.restart();
    std::thread::sleep(Duration::from_secs(3));
    check_exactly_once(&sink, queued + 1);
}

/// With the default kind of thresholds (scaled to this file system): the
/// refusal comes at MAIL, before the file system is full, and goes when
/// the space comes back.
#[test]
fn back_pressure_refuses_at_mail_before_the_file_system_is_full() {
    let Some(fs) = SmallFs::mount(48) else { return };
    let (sink, tern) = start(
        &fs,
        "disk_free_elevated = \"20MiB\"\ndisk_free_high = \"14MiB\"\n",
    );
    let (queued, refused) = fill(&tern);
    match refused {
        Sent::AtMail(r) => r.expect(452, "4.3.1"),
        Sent::AfterData(r) => panic!("refused after DATA, not at MAIL: {r:?}"),
        Sent::Queued => unreachable!(),
    };
    let free = fs.free();
    assert!(
        free > 8 << 20,
        "the file system was filled: {free} bytes free"
    );
    println!("{queued} queued; refused at MAIL with {free} bytes free");
    let m = tern.metrics();
    assert!(m.contains("tern_pressure_level 2\n"), "{m}");
    sink.set_behavior(Behavior::default());
    sink.wait_for(queued, Duration::from_secs(60));
    let took = accepted_again(&tern, queued, Duration::from_secs(60));
    println!("accepting again {took:?} after delivery freed the space");
    sink.wait_for(queued + 1, Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(1));
    check_exactly_once(&sink, queued + 1);
    let stderr = tern.stderr();
    assert!(
        stderr.contains("back pressure: node level rose"),
        "{stderr}"
    );
    assert!(
        stderr.contains("back pressure: node level fell"),
        "{stderr}"
    );
}
