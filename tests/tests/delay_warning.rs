//! Delay warnings (`delivery.delay_warning_time`) against the real
//! binary: one "delayed" report to the sender of a message still being
//! retried past the threshold, never a second one; none when off.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use tern_tests::server::{Options, TernProcess};
use tern_tests::sink::{Behavior, SinkMessage, TestSink};

const WAIT: Duration = Duration::from_secs(20);

fn sink_on(last: u8) -> TestSink {
    TestSink::start(SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)),
        0,
    ))
}

/// A sink that takes everything but `busy@x.test` (451, for ever), and a
/// node relaying to it with retries every 0.5 s, 1 s, 2 s, ...
fn setup(last: u8, warning: &str) -> (TestSink, TernProcess) {
    let sink = sink_on(last);
    sink.set_behavior(Behavior {
        rcpt: vec![("busy@x.test".into(), 451, "4.2.1 mailbox busy".into())],
        ..Behavior::default()
    });
    let config = format!(
        "[server]\nrelay_to = \"{}\"\n[delivery]\nretry_initial = \"500ms\"\nretry_max = \"2s\"\n\
         maintenance_interval = \"200ms\"\ndelay_warning_time = \"{warning}\"\n",
        sink.addr()
    );
    let tern = TernProcess::start(Options::with_config(&config));
    let mut c = tern.ehlo();
    c.send_message(
        "sender@y.test",
        &["ok@x.test", "busy@x.test"],
        b"Subject: slow\r\nMessage-ID: <slow@delay.test>\r\n\r\nbody\r\n",
    );
    c.quit();
    (sink, tern)
}

fn reports(sink: &TestSink) -> Vec<SinkMessage> {
    sink.messages()
        .into_iter()
        .filter(|m| m.mail_from.is_empty())
        .collect()
}

#[test]
fn one_delay_warning_after_the_threshold_and_no_second() {
    let (sink, tern) = setup(71, "1500ms");
    // The original reached ok@ at once; the warning follows once the
    // message has waited 1.5 s (deferrals at +0, +0.5, +1.5: the third).
    let arrived = sink.wait_for(2, WAIT);
    let warning = arrived
        .iter()
        .find(|m| m.mail_from.is_empty())
        .expect("a report from the null sender");
    assert_eq!(warning.rcpts, ["sender@y.test"]);
    let (subject, status) = warning.delivery_status();
    assert_eq!(subject, "Delayed Mail (still being retried)");
    assert!(status.contains("Action: delayed"), "{status}");
    assert!(
        status.contains("Final-Recipient: rfc822; busy@x.test"),
        "{status}"
    );
    assert!(
        !status.contains("ok@x.test"),
        "only the pending recipient: {status}"
    );
    assert!(status.contains("4.2.1"), "{status}");
    // More deferrals (every 2 s at most): still one warning.
    let deferred = |t: &TernProcess| t.stderr().matches("message=deferred").count();
    let before = deferred(&tern);
    tern_tests::server::wait_until("two more deferrals", WAIT, || deferred(&tern) >= before + 2);
    assert_eq!(reports(&sink).len(), 1, "a second warning");
}

#[test]
fn no_delay_warning_when_off() {
    let (sink, tern) = setup(72, "0s");
    sink.wait_for(1, WAIT);
    tern_tests::server::wait_until("four deferrals", WAIT, || {
        tern.stderr().matches("message=deferred").count() >= 4
    });
    assert!(reports(&sink).is_empty(), "a report with warnings off");
}
