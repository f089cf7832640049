//! Delivery end to end with real processes: tern relays to an in-process
//! test sink (`tern_tests::sink`) that records what arrives and answers as
//! told. Byte-exact delivery over DATA and BDAT, retries, bounces (DSN
//! content parsed with mail-parser), expiry, restarts.

use std::net::SocketAddr;

use std::time::Duration;

use tern_tests::queue::strip_received;
use tern_tests::server::{wait_until, Options, TernProcess};
use tern_tests::sink::{Behavior, SinkMessage, TestSink};
use tern_tests::smtp::message;

/// Relay everything to `sink`, with short timers.
fn config(sink: SocketAddr, delivery_extra: &str) -> String {
    format!(
        "[server]\nrelay_to = \"{sink}\"\n[delivery]\nretry_initial = \"1s\"\nretry_max = \"2s\"\n\
         connection_idle = \"500ms\"\nmaintenance_interval = \"200ms\"\n{delivery_extra}\n"
    )
}

fn start_sink() -> TestSink {
    TestSink::start("127.0.0.1:0".parse().unwrap())
}

/// Content with the lines that break naive relays: leading dots, a lone
/// dot, an empty line, a long line and 8-bit bytes.
fn tricky(i: usize) -> Vec<u8> {
    let long = "x".repeat(990);
    let mut m = message(
        &format!("m{i}"),
        &[".leading dot", ".", "", &long, "..two dots", "end"],
    );
    m.extend_from_slice("caf\u{e9} 8-bit line\r\n".as_bytes());
    m
}

fn deliver_byte_exact(behavior: Behavior, bdat: bool) {
    let sink = start_sink();
    sink.set_behavior(behavior);
    let tern = TernProcess::start(Options::with_config(&config(sink.addr(), "")));
    let mut c = tern.ehlo();
    let n = 20;
    for i in 0..n {
        c.send_message("sender@example.org", &["rcpt@example.com"], &tricky(i));
    }
    c.quit();
    let got = sink.wait_for(n, Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(300));
    let got_all = sink.messages();
    assert_eq!(got_all.len(), n, "each message exactly once");
    let _ = got;
    let mut subjects: Vec<String> = got_all.iter().map(SinkMessage::subject).collect();
    subjects.sort();
    subjects.dedup();
    assert_eq!(subjects.len(), n);
    for m in &got_all {
        let i: usize = m.subject()[1..].parse().unwrap();
        assert_eq!(strip_received(&m.content), &tricky(i)[..], "byte-exact");
        assert!(m.content.starts_with(b"Received: from "));
        assert!(!m.bare_newline, "no bare CR or LF on the wire");
        assert_eq!(m.mail_from, "sender@example.org");
        assert_eq!(m.rcpts, vec!["rcpt@example.com".to_string()]);
        assert_eq!(m.bdat, bdat);
    }
    // Connections are reused: far fewer than messages.
    assert!(
        sink.connections() < n as u64,
        "{} connections",
        sink.connections()
    );
    wait_until("the queue to empty", Duration::from_secs(10), || {
        tern.queue_ids().is_empty()
    });
    assert_eq!(tern.counter("tern_delivered_recipients_total"), n as u64);
}

#[test]
fn delivers_byte_exact_with_bdat_and_pipelining() {
    deliver_byte_exact(Behavior::default(), true);
}

#[test]
fn delivers_byte_exact_with_data() {
    deliver_byte_exact(
        Behavior {
            no_chunking: true,
            ..Behavior::default()
        },
        false,
    );
}

#[test]
fn delivers_byte_exact_without_pipelining() {
    deliver_byte_exact(
        Behavior {
            no_chunking: true,
            no_pipelining: true,
            ..Behavior::default()
        },
        false,
    );
}

#[test]
fn temporary_failure_is_retried_and_delivered_once() {
    let sink = start_sink();
    sink.set_behavior(Behavior {
        rcpt_default: Some((451, "4.3.0 try again later".into())),
        ..Behavior::default()
    });
    let tern = TernProcess::start(Options::with_config(&config(sink.addr(), "")));
    let mut c = tern.ehlo();
    let id = c.send_message(
        "sender@example.org",
        &["rcpt@example.com"],
        &message("retry", &["x"]),
    );
    c.quit();
    wait_until("a first attempt", Duration::from_secs(10), || {
        !sink.rcpt_replies().is_empty()
    });
    // The deferral is durable (status record) and visible in `tern queue`.
    wait_until(
        "the deferral to be recorded",
        Duration::from_secs(10),
        || tern.queue_show(&id).field("attempts") != "0",
    );
    assert_eq!(tern.queue_show(&id).field("pending"), "rcpt@example.com");
    assert!(tern.counter("tern_deferred_total") >= 1);
    sink.set_behavior(Behavior::default());
    sink.wait_for(1, Duration::from_secs(15));
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(sink.messages().len(), 1, "delivered exactly once");
    wait_until("the queue to empty", Duration::from_secs(10), || {
        tern.queue_ids().is_empty()
    });
}

#[test]
fn permanent_failure_bounces_with_a_dsn_and_null_sender_is_never_bounced() {
    let sink = start_sink();
    sink.set_behavior(Behavior {
        rcpt: vec![(
            "bad@example.com".into(),
            550,
            "5.1.1 no such user here".into(),
        )],
        ..Behavior::default()
    });
    let tern = TernProcess::start(Options::with_config(&config(sink.addr(), "")));
    let mut c = tern.ehlo();
    c.send_message(
        "sender@example.org",
        &["good@example.com", "bad@example.com"],
        &message("partial", &["hello"]),
    );
    let got = sink.wait_for(2, Duration::from_secs(15));
    let original = got
        .iter()
        .find(|m| !m.mail_from.is_empty())
        .expect("original");
    assert_eq!(
        original.rcpts,
        vec!["good@example.com".to_string()],
        "partial success"
    );
    let dsn = got
        .iter()
        .find(|m| m.mail_from.is_empty())
        .expect("a DSN with the null sender");
    assert_eq!(dsn.rcpts, vec!["sender@example.org".to_string()]);
    assert!(!dsn.bare_newline);
    let (subject, report) = dsn.delivery_status();
    assert_eq!(subject, "Undelivered Mail Returned to Sender");
    for want in [
        "Final-Recipient: rfc822; bad@example.com",
        "Action: failed",
        "Status: 5.1.1",
        "Diagnostic-Code: smtp; 550 5.1.1 no such user here",
    ] {
        assert!(report.contains(want), "{want:?} missing in:\n{report}");
    }
    assert!(
        !report.contains("good@example.com"),
        "only the failed recipient"
    );
    // A bounce is never bounced: null sender, refused recipient.
    c.send_message(
        "",
        &["bad@example.com"],
        &message("bounce of a bounce", &["x"]),
    );
    c.quit();
    wait_until("the second refusal", Duration::from_secs(10), || {
        tern.counter("tern_bounced_recipients_total") >= 2
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(sink.messages().len(), 2, "no DSN for the null sender");
    assert_eq!(tern.counter("tern_dsns_queued_total"), 1);
    wait_until("the queue to empty", Duration::from_secs(10), || {
        tern.queue_ids().is_empty()
    });
}

#[test]
fn undeliverable_message_expires_with_a_dsn() {
    let sink = start_sink();
    sink.set_behavior(Behavior {
        rcpt: vec![("stuck@example.com".into(), 451, "4.2.0 mailbox busy".into())],
        ..Behavior::default()
    });
    let tern = TernProcess::start(Options::with_config(&config(
        sink.addr(),
        "message_expiration_timeout = \"3s\"",
    )));
    let mut c = tern.ehlo();
    c.send_message(
        "sender@example.org",
        &["stuck@example.com"],
        &message("expire", &["x"]),
    );
    c.quit();
    let got = sink.wait_for(1, Duration::from_secs(20));
    let dsn = &got[0];
    assert!(dsn.mail_from.is_empty());
    let (_, report) = dsn.delivery_status();
    for want in [
        "Final-Recipient: rfc822; stuck@example.com",
        "Action: failed",
        "Status: 5.4.7",
        "451 4.2.0 mailbox busy",
    ] {
        assert!(report.contains(want), "{want:?} missing in:\n{report}");
    }
    assert!(sink.rcpt_replies().len() >= 2, "retried before expiring");
    assert_eq!(tern.counter("tern_expired_recipients_total"), 1);
}

#[test]
fn clean_restart_delivers_nothing_twice() {
    let sink = start_sink();
    sink.set_behavior(Behavior {
        rcpt_default: Some((451, "4.3.0 later".into())),
        ..Behavior::default()
    });
    let mut tern = TernProcess::start(Options::with_config(&config(sink.addr(), "")));
    let mut c = tern.ehlo();
    for i in 0..10 {
        c.send_message(
            "sender@example.org",
            &["rcpt@example.com"],
            &message(&format!("m{i}"), &["x"]),
        );
    }
    c.quit();
    wait_until("every message attempted", Duration::from_secs(10), || {
        sink.rcpt_replies().len() >= 10
    });
    // Stop mid-queue (every message deferred), start again, then accept.
    assert!(tern.stop_gracefully().success());
    tern.restart();
    assert_eq!(tern.queue_ids().len(), 10, "the queue survives the restart");
    sink.set_behavior(Behavior::default());
    sink.wait_for(10, Duration::from_secs(20));
    // Everything delivered: a second clean restart sends nothing again.
    wait_until("the queue to empty", Duration::from_secs(10), || {
        tern.queue_ids().is_empty()
    });
    assert!(tern.stop_gracefully().success());
    tern.restart();
    std::thread::sleep(Duration::from_secs(2));
    let got = sink.messages();
    let mut subjects: Vec<String> = got.iter().map(SinkMessage::subject).collect();
    subjects.sort();
    subjects.dedup();
    assert_eq!(
        (got.len(), subjects.len()),
        (10, 10),
        "each message exactly once"
    );
}

fn safety_net(tern: &TernProcess) -> Vec<String> {
    let out = std::process::Command::new(tern_tests::server::tern_bin())
        .args(["queue", "safety-net", "--data-dir"])
        .arg(tern.data_dir())
        .output()
        .expect("run tern queue safety-net");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("--"))
        .map(|l| l.split(' ').next().unwrap().to_string())
        .collect()
}

#[test]
fn delivered_messages_stay_in_the_safety_net_for_the_hold_time() {
    let sink = start_sink();
    let tern = TernProcess::start(Options::with_config(&config(
        sink.addr(),
        "safety_net_hold_time = \"3s\"",
    )));
    let mut c = tern.ehlo();
    let ids: Vec<String> = (0..3)
        .map(|i| {
            c.send_message(
                "sender@example.org",
                &["rcpt@example.com"],
                &message(&format!("m{i}"), &["x"]),
            )
        })
        .collect();
    c.quit();
    sink.wait_for(3, Duration::from_secs(10));
    // Handled: out of the queue, in the Safety Net (still on disk).
    wait_until("the queue to empty", Duration::from_secs(10), || {
        tern.queue_ids().is_empty()
    });
    wait_until(
        "the safety net to list them",
        Duration::from_secs(10),
        || safety_net(&tern) == ids,
    );
    // After the hold time the safety-net cursor passes them.
    wait_until("the hold time to pass", Duration::from_secs(15), || {
        safety_net(&tern).is_empty()
    });
}

#[test]
fn many_recipients_are_split_into_transactions() {
    let sink = start_sink();
    let tern = TernProcess::start(Options::with_config(&config(
        sink.addr(),
        "recipients_per_transaction_max = 100",
    )));
    let rcpts: Vec<String> = (0..250).map(|i| format!("r{i}@example.com")).collect();
    let refs: Vec<&str> = rcpts.iter().map(String::as_str).collect();
    let mut c = tern.ehlo();
    c.send_message("sender@example.org", &refs, &message("many", &["x"]));
    c.quit();
    let got = sink.wait_for(3, Duration::from_secs(15));
    let mut sizes: Vec<usize> = got.iter().map(|m| m.rcpts.len()).collect();
    sizes.sort();
    assert_eq!(sizes, vec![50, 100, 100]);
    let mut all: Vec<String> = got.iter().flat_map(|m| m.rcpts.clone()).collect();
    all.sort();
    let mut want = rcpts.clone();
    want.sort();
    assert_eq!(all, want, "every recipient once");
    wait_until("the queue to empty", Duration::from_secs(10), || {
        tern.queue_ids().is_empty()
    });
}

/// RFC 6152 3: an 8-bit message to a next hop without 8BITMIME is
/// converted to quoted-printable (not sent as is); it decodes to the
/// same text.
#[test]
fn eight_bit_content_is_converted_for_a_next_hop_without_8bitmime() {
    let sink = start_sink();
    sink.set_behavior(Behavior {
        no_8bitmime: true,
        ..Behavior::default()
    });
    let tern = TernProcess::start(Options::with_config(&config(sink.addr(), "")));
    let text = "Gr\u{fc}\u{df}e aus K\u{f6}ln, caf\u{e9} = cr\u{e8}me.\r\nZweite Zeile \r\n";
    let m = format!(
        "Subject: 8bit\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Transfer-Encoding: 8bit\r\n\r\n{text}"
    );
    let mut c = tern.ehlo();
    c.expect("MAIL FROM:<a@example.test> BODY=8BITMIME", 250, "2.1.0");
    c.expect("RCPT TO:<b@example.test>", 250, "2.1.5");
    c.cmd("DATA").assert(354, None);
    c.send(&tern_tests::smtp::dot_stuff(m.as_bytes()));
    c.reply().expect(250, "2.0.0");
    c.quit();
    let got = sink.wait_for(1, Duration::from_secs(20));
    let content = &got[0].content;
    assert!(
        content.is_ascii(),
        "8-bit octets reached a next hop without 8BITMIME"
    );
    assert!(
        !got[0].mail_params.contains("8BITMIME"),
        "{}",
        got[0].mail_params
    );
    let shown = String::from_utf8_lossy(content);
    assert!(
        shown.contains("Content-Transfer-Encoding: quoted-printable\r\n"),
        "{shown}"
    );
    let parsed = mail_parser::MessageParser::default()
        .parse(content)
        .expect("parses");
    assert_eq!(parsed.body_text(0).as_deref(), Some(text));
    assert_eq!(tern.counter("tern_downgraded_total"), 1);
}
