//! What `tern queue list/show` tell an operator (issue 17), with the real
//! binary: per pending recipient its state, attempts, next attempt and
//! the next hop's last reply (as `mailq` does); a handled message shown
//! from the Safety Net with each recipient's final outcome and reply; a
//! reader that closes the pipe early (`tern queue list | head`) ends the
//! command quietly. Every wait is bounded; sinks and `tern` stop when
//! dropped.

use std::io::Read;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use tern_tests::server::{tern_bin, wait_until, Options, PortReservation, TernProcess};
use tern_tests::sink::{Behavior, TestSink};
use tern_tests::smtp::message;

/// Relay everything to `next_hop`; a deferred message is tried again
/// after 2-4 s.
fn config(next_hop: SocketAddr) -> String {
    format!(
        "[server]\nrelay_to = \"{next_hop}\"\n[delivery]\nretry_initial = \"2s\"\nretry_max = \"4s\"\n\
         connection_idle = \"500ms\"\nmaintenance_interval = \"200ms\"\n"
    )
}

/// An RFC 5322 date as `tern queue` prints them (UTC).
fn is_date(s: &str) -> bool {
    s.ends_with(" +0000") && s.len() >= "1 Jan 2026 00:00:00 +0000".len()
}

#[test]
fn deferred_recipients_show_attempts_reply_and_next_attempt_then_the_safety_net_outcome() {
    let sink = TestSink::start("127.0.0.1:0".parse().unwrap());
    sink.set_behavior(Behavior {
        rcpt: vec![(
            "later@example.com".into(),
            451,
            "4.3.0 mailbox busy, try again".into(),
        )],
        ..Behavior::default()
    });
    let tern = TernProcess::start(Options::with_config(&config(sink.addr())));
    let mut c = tern.ehlo();
    let id = c.send_message(
        "sender@example.org",
        &["ok@example.com", "later@example.com"],
        &message("inspect", &["x"]),
    );
    c.quit();
    sink.wait_for(1, Duration::from_secs(10));
    wait_until(
        "the deferral to be recorded",
        Duration::from_secs(10),
        || tern.queue_show(&id).field("attempts") != "0",
    );

    // `queue list`: only the pending recipient, with its state, attempts,
    // next attempt and the 451 in parentheses.
    let list = tern.queue_list();
    let entry = list.iter().find(|e| e.id == id).expect("queued");
    assert_eq!(entry.details.len(), 2, "{:?}", entry.details);
    let (rcpt, state) = entry.details[0].split_once(": ").expect("RCPT: STATE");
    assert_eq!(rcpt, "later@example.com");
    let parts: Vec<&str> = state.splitn(3, ", ").collect();
    assert_eq!(parts[0], "deferred", "{state}");
    let attempts: u32 = parts[1]
        .strip_prefix("attempts ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("attempts in {state:?}"));
    assert!(attempts >= 1, "{state}");
    let next = parts[2]
        .strip_prefix("next attempt ")
        .expect("next attempt");
    assert!(is_date(next), "next attempt is a date: {next:?}");
    let reply = &entry.details[1];
    assert!(
        reply.starts_with('(')
            && reply.ends_with(')')
            && reply.contains(" said: 451 4.3.0 mailbox busy, try again"),
        "last reply with the host: {reply:?}"
    );

    // `queue show`: the delivered recipient with its 250, the deferred one
    // with its last reply.
    let shown = tern.queue_show(&id);
    assert_eq!(shown.field("state"), "deferred");
    assert_eq!(shown.field("pending"), "later@example.com");
    assert!(is_date(shown.field("next attempt")));
    let ok = shown.field("recipient ok@example.com");
    assert!(
        ok.starts_with("delivered at ") && ok.contains(" said: 250 "),
        "{ok:?}"
    );
    let later = shown.field("recipient later@example.com");
    assert!(
        later.starts_with("deferred, last reply ")
            && later.contains(" said: 451 4.3.0 mailbox busy, try again)"),
        "{later:?}"
    );

    // Delivered: out of the queue, shown from the Safety Net with each
    // recipient's final outcome and when the message was handled.
    sink.set_behavior(Behavior::default());
    sink.wait_for(2, Duration::from_secs(15));
    wait_until("the queue to empty", Duration::from_secs(10), || {
        tern.queue_ids().is_empty()
    });
    let handled = tern.queue_show(&id);
    assert_eq!(handled.field("state"), "handled (in the Safety Net)");
    assert!(is_date(handled.field("handled")));
    assert_eq!(handled.field("from"), "<sender@example.org>");
    for rcpt in ["ok@example.com", "later@example.com"] {
        let outcome = handled.field(&format!("recipient {rcpt}"));
        assert!(
            outcome.starts_with("delivered at ") && outcome.contains(" said: 250 "),
            "{rcpt}: {outcome:?}"
        );
    }
    assert!(handled.content().ends_with(b"x\r\n"));
}

#[test]
fn a_permanent_failure_is_shown_bounced_with_its_code() {
    let sink = TestSink::start("127.0.0.1:0".parse().unwrap());
    sink.set_behavior(Behavior {
        rcpt_default: Some((550, "5.1.1 no such user".into())),
        ..Behavior::default()
    });
    let tern = TernProcess::start(Options::with_config(&config(sink.addr())));
    let mut c = tern.ehlo();
    // Null sender: no DSN, so the queue holds nothing else.
    let id = c.send_message("", &["gone@example.com"], &message("bounce", &["x"]));
    c.quit();
    wait_until("the bounce to be recorded", Duration::from_secs(10), || {
        tern.queue_ids().is_empty()
    });
    let shown = tern.queue_show(&id);
    let outcome = shown.field("recipient gone@example.com");
    assert!(
        outcome.starts_with("bounced at ") && outcome.contains(" said: 550 5.1.1 no such user)"),
        "{outcome:?}"
    );
}

#[test]
fn queue_list_into_a_pipe_closed_early_exits_quietly() {
    // A next hop that refuses connections: everything stays queued.
    let nobody = PortReservation::new();
    let tern = TernProcess::start(Options::with_config(&config(nobody.addr())));
    let mut c = tern.ehlo();
    let rcpts: Vec<String> = (0..1000).map(|i| format!("r{i}@example.com")).collect();
    let rcpts: Vec<&str> = rcpts.iter().map(String::as_str).collect();
    for i in 0..3 {
        c.send_message(
            "sender@example.org",
            &rcpts,
            &message(&format!("m{i}"), &["x"]),
        );
    }
    c.quit();
    // Far more than a pipe holds (64 KiB): tern is still writing when the
    // reader goes.
    let full = Command::new(tern_bin())
        .args(["queue", "list", "--data-dir"])
        .arg(tern.data_dir())
        .output()
        .expect("run tern queue list");
    assert!(full.status.success());
    assert!(full.stdout.len() > 4 * 65536, "{} bytes", full.stdout.len());

    let mut child = Command::new(tern_bin())
        .args(["queue", "list", "--data-dir"])
        .arg(tern.data_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tern queue list");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut first = [0u8; 10];
    stdout.read_exact(&mut first).expect("the first 10 bytes");
    drop(stdout);
    // Bounded: a tern blocked on the pipe would get EPIPE now.
    let status = child.wait().expect("wait for tern queue list");
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    assert!(status.success(), "exit {status}, stderr {stderr:?}");
    assert_eq!(stderr, "", "nothing on stderr");
}

/// The store's transport database id (32 lowercase hex digits).
fn database_id(tern: &TernProcess) -> String {
    let text = std::fs::read_to_string(tern.data_dir().join("database-id")).expect("database-id");
    text.trim_end().to_string()
}

#[test]
fn queue_ids_differ_between_nodes_and_after_a_wipe() {
    let nobody = PortReservation::new();
    let mut a = TernProcess::start(Options::with_config(&config(nobody.addr())));
    let b = TernProcess::start(Options::with_config(&config(nobody.addr())));
    let first = |tern: &TernProcess| {
        let mut c = tern.ehlo();
        let id = c.send_message("s@example.org", &["r@example.com"], &message("id", &["x"]));
        c.quit();
        id
    };
    let id_a = first(&a);
    let id_b = first(&b);
    // The same shard and sequence (each store's first message): the store
    // tag, the database id's first six digits, tells them apart.
    assert_eq!(id_a[6..], id_b[6..], "{id_a} {id_b}");
    assert_ne!(id_a, id_b);
    assert_eq!(id_a[..6], database_id(&a)[..6].to_uppercase());
    assert_eq!(id_b[..6], database_id(&b)[..6].to_uppercase());
    // The Received header and `queue list` carry the same id.
    let shown = b.queue_show(&id_b);
    assert!(
        String::from_utf8_lossy(shown.received()).contains(&format!(" id {id_b}\r\n")),
        "{:?}",
        String::from_utf8_lossy(shown.received())
    );
    assert_eq!(b.queue_ids(), vec![id_b.clone()]);
    // The old 14-digit form names this node's message.
    assert_eq!(b.queue_show(&id_b[6..]).field("id"), id_b);

    // A wiped store starts its sequences again, under a new tag.
    a.stop_gracefully();
    std::fs::remove_dir_all(a.data_dir()).expect("wipe the data directory");
    a.restart();
    let id_wiped = first(&a);
    assert_eq!(id_wiped[6..], id_a[6..], "{id_wiped} {id_a}");
    assert_ne!(id_wiped, id_a);
    assert_eq!(id_wiped[..6], database_id(&a)[..6].to_uppercase());
}
