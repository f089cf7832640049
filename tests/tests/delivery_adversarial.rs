//! Adversarial delivery tests against the real binary: restarts (SIGTERM
//! and SIGKILL) in the middle of slow deliveries, next hops that drop the
//! connection mid-data, refuse at the banner, close after a few messages
//! or answer 452, bounces whose own delivery fails, one message whose
//! recipients meet 250, 451 and 550 at three pools, expiry while the next
//! hop refuses connections, held queues released by a restart, a
//! copied-forward message across restarts, and 5 MiB messages over BDAT
//! and DATA.
//!
//! Every message carries a unique Subject; the sink counts arrivals per
//! Subject, so losses and duplicates are both visible. Every wait is
//! bounded; sinks and servers stop when dropped.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tern_tests::queue::strip_received;
use tern_tests::server::{wait_until, Options, PortReservation, TernProcess};
use tern_tests::sink::{Behavior, SinkMessage, TestSink};
use tern_tests::smtp::{message, Client};

/// Bound on a batch of messages reaching a sink.
const ARRIVE_WAIT: Duration = Duration::from_secs(60);

/// After everything arrived: how long to keep watching for duplicates
/// (longer than `retry_max` below, so a stray retry would show).
const SETTLE: Duration = Duration::from_millis(2500);

/// The `[delivery]` timers for tests, plus `extra` lines.
fn delivery(extra: &str) -> String {
    format!(
        "[delivery]\nretry_initial = \"1s\"\nretry_max = \"2s\"\nconnection_idle = \"500ms\"\n\
         maintenance_interval = \"200ms\"\nhost_down_initial = \"500ms\"\nhost_down_max = \"1s\"\n\
         connect_timeout = \"2s\"\n{extra}\n"
    )
}

/// Everything relayed to `sink`; `server` lines go to `[server]`.
fn relay(sink: SocketAddr, server: &str, delivery_extra: &str) -> String {
    format!(
        "[server]\nrelay_to = \"{sink}\"\nshutdown_grace = \"10s\"\n{server}\n{}",
        delivery(delivery_extra)
    )
}

fn pool(name: &str, addr: SocketAddr) -> String {
    format!("[pools.{name}]\nhosts = [ {{ address = \"{addr}\", priority = 0, weight = 1 }} ]\n")
}

fn start_sink() -> TestSink {
    TestSink::start("127.0.0.1:0".parse().unwrap())
}

/// Arrivals per Subject, DSNs (null sender) left out.
fn counts(msgs: &[SinkMessage]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for m in msgs.iter().filter(|m| !m.mail_from.is_empty()) {
        *out.entry(m.subject()).or_insert(0) += 1;
    }
    out
}

fn dsns(msgs: &[SinkMessage]) -> Vec<SinkMessage> {
    msgs.iter()
        .filter(|m| m.mail_from.is_empty())
        .cloned()
        .collect()
}

/// Sends `n` messages named `prefix-I` over `threads` connections; each
/// must be queued. Returns the names.
fn send_batch(addr: SocketAddr, prefix: &str, n: usize, threads: usize) -> Vec<String> {
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let prefix = prefix.to_string();
            std::thread::spawn(move || {
                let mut c = Client::ehlo(addr);
                for i in (t..n).step_by(threads) {
                    c.send_message(
                        "sender@example.org",
                        &["rcpt@example.com"],
                        &message(&format!("{prefix}-{i}"), &["body", ".dot line"]),
                    );
                }
                c.quit();
            })
        })
        .collect();
    for h in handles {
        h.join().expect("sender thread");
    }
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

/// Waits until every name in `sent` arrived at least once, lets
/// stragglers come, and returns the arrivals per name.
#[track_caller]
fn wait_all(sink: &TestSink, sent: &[String], limit: Duration) -> BTreeMap<String, usize> {
    let end = Instant::now() + limit;
    loop {
        let got = counts(&sink.messages());
        let missing: Vec<&String> = sent.iter().filter(|s| !got.contains_key(*s)).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < end,
            "{} of {} messages never arrived within {limit:?}, e.g. {:?}",
            missing.len(),
            sent.len(),
            &missing[..missing.len().min(5)]
        );
        std::thread::sleep(Duration::from_millis(25));
    }
    std::thread::sleep(SETTLE);
    counts(&sink.messages())
}

/// Asserts every name in `sent` arrived exactly once and nothing else did.
#[track_caller]
fn assert_exactly_once(got: &BTreeMap<String, usize>, sent: &[String], what: &str) {
    let dups: Vec<(&String, &usize)> = got.iter().filter(|(_, &c)| c != 1).collect();
    assert!(dups.is_empty(), "{what}: duplicates {dups:?}");
    let mut want: Vec<&String> = sent.iter().collect();
    want.sort();
    let have: Vec<&String> = got.keys().collect();
    assert_eq!(have, want, "{what}: each message exactly once");
}

#[track_caller]
fn wait_queue_empty(tern: &TernProcess) {
    wait_until("the queue to empty", Duration::from_secs(20), || {
        tern.queue_ids().is_empty()
    });
}

/// Per-recipient blocks of a delivery-status report: lower-case field
/// name -> value.
fn recipient_blocks(report: &str) -> Vec<BTreeMap<String, String>> {
    report
        .trim_end()
        .split("\r\n\r\n")
        .skip(1)
        .map(|block| {
            block
                .lines()
                .filter_map(|l| l.split_once(": "))
                .map(|(n, v)| (n.to_ascii_lowercase(), v.to_string()))
                .collect()
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Restarts
// ---------------------------------------------------------------------------

/// SIGTERM three times while a slow next hop has transactions in flight
/// (two cores, new mail accepted between the restarts): every message
/// arrives, none twice.
#[test]
fn sigterm_cycles_during_slow_delivery_deliver_each_message_once() {
    let sink = start_sink();
    let slow = Behavior {
        reply_delay: Duration::from_millis(100),
        ..Behavior::default()
    };
    sink.set_behavior(slow.clone());
    let mut tern = TernProcess::start(Options {
        cores: 2,
        config: Some(relay(sink.addr(), "", "concurrency_per_destination = 4")),
        ..Options::default()
    });
    let mut sent = send_batch(tern.addr(), "first", 120, 4);
    for cycle in 0..3 {
        let before = sink.messages().len();
        wait_until("progress before the stop", ARRIVE_WAIT, || {
            sink.messages().len() >= before + 8
        });
        let status = tern.stop_gracefully();
        assert!(status.success(), "cycle {cycle}: clean exit: {status:?}");
        let at_exit = sink.messages().len();
        // A transaction abandoned at exit would still be recorded by the
        // (slow) sink after this.
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(
            sink.messages().len(),
            at_exit,
            "cycle {cycle}: a transaction was still in flight when tern exited"
        );
        let got = counts(&sink.messages());
        assert!(
            got.values().all(|&c| c == 1),
            "cycle {cycle}: duplicates after a clean stop: {:?}",
            got.iter().filter(|(_, &c)| c > 1).collect::<Vec<_>>()
        );
        assert!(
            got.len() < sent.len(),
            "cycle {cycle}: the stop must land mid-delivery"
        );
        tern.restart();
        sent.extend(send_batch(tern.addr(), &format!("cycle{cycle}"), 15, 3));
    }
    sink.set_behavior(Behavior::default());
    let got = wait_all(&sink, &sent, ARRIVE_WAIT);
    assert_exactly_once(&got, &sent, "after three clean restarts");
    wait_queue_empty(&tern);
    assert!(dsns(&sink.messages()).is_empty(), "no bounce");
}

/// SIGKILL three times under load (two cores): nothing is lost; duplicates only from
/// what was in flight at each kill.
#[test]
fn repeated_sigkill_under_load_loses_nothing() {
    let sink = start_sink();
    sink.set_behavior(Behavior {
        reply_delay: Duration::from_millis(10),
        ..Behavior::default()
    });
    // Two cores: each delivers (and replays) its own log.
    let mut tern = TernProcess::start(Options {
        cores: 2,
        config: Some(relay(sink.addr(), "", "concurrency_per_destination = 4")),
        ..Options::default()
    });
    let mut sent = send_batch(tern.addr(), "load", 300, 4);
    for kill in 0..3 {
        let before = counts(&sink.messages()).len();
        wait_until("progress before the kill", ARRIVE_WAIT, || {
            counts(&sink.messages()).len() >= before + 30
        });
        tern.kill();
        assert!(
            counts(&sink.messages()).len() < sent.len(),
            "kill {kill} must land mid-delivery"
        );
        tern.restart();
        sent.extend(send_batch(tern.addr(), &format!("kill{kill}"), 20, 2));
    }
    sink.set_behavior(Behavior::default());
    let got = wait_all(&sink, &sent, ARRIVE_WAIT);
    let dups: usize = got.values().map(|c| c - 1).sum();
    eprintln!(
        "3 SIGKILLs, {} messages: {dups} duplicate deliveries",
        sent.len()
    );
    assert_eq!(got.len(), sent.len(), "every message, nothing else");
    // At-least-once: per kill and core, at most the transactions in
    // flight (4 connections) and one unrecorded status batch.
    assert!(dups <= 3 * 2 * (2 * 4 + 8), "{dups} duplicates");
    wait_queue_empty(&tern);
}

/// `hold = true` keeps everything queued; a restart without it delivers
/// every message once.
#[test]
fn held_queue_is_delivered_once_after_restart_without_hold() {
    let sink = start_sink();
    let held = relay(sink.addr(), "", "hold = true");
    let mut tern = TernProcess::start(Options::with_config(&held));
    let sent = send_batch(tern.addr(), "held", 25, 2);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(sink.connections(), 0, "held: no delivery attempt");
    assert_eq!(tern.queue_ids().len(), 25);
    assert!(tern.stop_gracefully().success());
    // Still held after a restart with hold.
    tern.restart();
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(sink.connections(), 0, "held after restart");
    assert!(tern.stop_gracefully().success());
    tern.restart_with(Options::with_config(&relay(sink.addr(), "", "")));
    let got = wait_all(&sink, &sent, ARRIVE_WAIT);
    assert_exactly_once(&got, &sent, "released");
    wait_queue_empty(&tern);
    // And nothing again after one more restart.
    assert!(tern.stop_gracefully().success());
    tern.restart();
    std::thread::sleep(Duration::from_millis(1500));
    assert_exactly_once(&counts(&sink.messages()), &sent, "after another restart");
}

// ---------------------------------------------------------------------------
// Next hops misbehaving
// ---------------------------------------------------------------------------

fn drop_mid_data_then_recover(base: Behavior) {
    let sink = start_sink();
    sink.set_behavior(Behavior {
        drop_mid_data: true,
        ..base.clone()
    });
    let tern = TernProcess::start(Options::with_config(&relay(
        sink.addr(),
        "",
        "concurrency_per_destination = 4",
    )));
    let sent = send_batch(tern.addr(), "drop", 30, 2);
    wait_until("several dropped sessions", ARRIVE_WAIT, || {
        sink.connections() >= 8
    });
    assert!(
        sink.messages().is_empty(),
        "nothing completed while dropping"
    );
    assert!(tern.counter("tern_deferred_total") >= 1);
    assert_eq!(tern.queue_ids().len(), 30, "everything still queued");
    sink.set_behavior(base.clone());
    let got = wait_all(&sink, &sent, ARRIVE_WAIT);
    assert_exactly_once(&got, &sent, "after the drops");
    assert!(dsns(&sink.messages()).is_empty(), "no bounce");
    let chunked = !base.no_chunking;
    assert!(sink.messages().iter().all(|m| m.bdat == chunked));
    wait_queue_empty(&tern);
    assert_eq!(tern.counter("tern_delivered_recipients_total"), 30);
    assert_eq!(tern.counter("tern_bounced_recipients_total"), 0);
}

#[test]
fn dropped_sessions_mid_bdat_lose_and_duplicate_nothing() {
    drop_mid_data_then_recover(Behavior::default());
}

#[test]
fn dropped_sessions_mid_data_lose_and_duplicate_nothing() {
    drop_mid_data_then_recover(Behavior {
        no_chunking: true,
        no_pipelining: true,
        ..Behavior::default()
    });
}

/// 421 at the banner for a while, then a next hop that closes every
/// connection after two messages, then 452 for one recipient: every
/// recipient gets each message once.
#[test]
fn banner_421_connection_limits_and_452_deliver_each_recipient_once() {
    let sink = start_sink();
    sink.set_behavior(Behavior {
        banner: Some((421, "4.3.2 busy, try later".into())),
        ..Behavior::default()
    });
    let tern = TernProcess::start(Options::with_config(&relay(sink.addr(), "", "")));
    let first = send_batch(tern.addr(), "banner", 10, 1);
    wait_until("refused sessions", ARRIVE_WAIT, || sink.connections() >= 3);
    assert!(sink.messages().is_empty());
    sink.set_behavior(Behavior::default());
    let got = wait_all(&sink, &first, ARRIVE_WAIT);
    assert_exactly_once(&got, &first, "after 421 banners");

    sink.clear();
    sink.set_behavior(Behavior {
        close_after_messages: Some(2),
        ..Behavior::default()
    });
    let second = send_batch(tern.addr(), "limit", 20, 2);
    let got = wait_all(&sink, &second, ARRIVE_WAIT);
    assert_exactly_once(&got, &second, "two messages per connection");
    assert!(
        sink.connections() >= 10,
        "{} connections",
        sink.connections()
    );
    assert_eq!(tern.counter("tern_bounced_recipients_total"), 0);

    sink.clear();
    sink.set_behavior(Behavior {
        rcpt: vec![(
            "r2@example.com".into(),
            452,
            "4.5.3 Too many recipients".into(),
        )],
        ..Behavior::default()
    });
    let mut c = tern.ehlo();
    for i in 0..5 {
        c.send_message(
            "sender@example.org",
            &["r1@example.com", "r2@example.com", "r3@example.com"],
            &message(&format!("three-{i}"), &["x"]),
        );
    }
    c.quit();
    wait_until("r1 and r3", ARRIVE_WAIT, || sink.messages().len() >= 5);
    wait_until("a retry of r2", ARRIVE_WAIT, || {
        sink.rcpt_replies()
            .iter()
            .filter(|(r, _)| r == "r2@example.com")
            .count()
            >= 10
    });
    sink.set_behavior(Behavior::default());
    wait_until("r2", ARRIVE_WAIT, || sink.messages().len() >= 10);
    std::thread::sleep(SETTLE);
    let mut per: BTreeMap<(String, String), usize> = BTreeMap::new();
    for m in sink.messages() {
        for r in &m.rcpts {
            *per.entry((m.subject(), r.clone())).or_insert(0) += 1;
        }
    }
    assert_eq!(per.len(), 15, "{per:?}");
    assert!(
        per.values().all(|&c| c == 1),
        "each recipient once: {per:?}"
    );
    for (r, code) in sink.rcpt_replies() {
        if r != "r2@example.com" {
            assert_eq!(code, 250, "{r} was only tried until delivered");
        }
    }
    let r1_tries = sink
        .rcpt_replies()
        .iter()
        .filter(|(r, _)| r == "r1@example.com")
        .count();
    assert_eq!(r1_tries, 5, "delivered recipients are not sent again");
    wait_queue_empty(&tern);
}

// ---------------------------------------------------------------------------
// Bounces
// ---------------------------------------------------------------------------

/// 554 at the end of data for a two-recipient transaction: one DSN
/// listing both, no retry.
#[test]
fn data_end_554_bounces_once_with_one_dsn_for_every_recipient() {
    let bad = start_sink();
    bad.set_behavior(Behavior {
        data_end: Some((554, "5.6.0 content rejected".into())),
        ..Behavior::default()
    });
    let home = start_sink();
    let tern = TernProcess::start(Options::with_config(&format!(
        "[server]\nrelay_to = \"{}\"\n{}{}[routes]\n\"example.com\" = \"bad\"\n",
        home.addr(),
        delivery(""),
        pool("bad", bad.addr()),
    )));
    let mut c = tern.ehlo();
    c.send_message(
        "sender@origin.test",
        &["a@example.com", "b@example.com"],
        &message("refused", &["x"]),
    );
    c.quit();
    home.wait_for(1, ARRIVE_WAIT);
    std::thread::sleep(SETTLE);
    let got = home.messages();
    assert_eq!(got.len(), 1, "exactly one DSN");
    let dsn = &got[0];
    assert_eq!(dsn.mail_from, "");
    assert_eq!(dsn.rcpts, vec!["sender@origin.test".to_string()]);
    let report = dsn.delivery_status().1;
    let blocks = recipient_blocks(&report);
    let finals: Vec<&str> = blocks
        .iter()
        .map(|b| b.get("final-recipient").map_or("", String::as_str))
        .collect();
    assert_eq!(
        finals,
        vec!["rfc822; a@example.com", "rfc822; b@example.com"],
        "{report}"
    );
    for b in &blocks {
        assert_eq!(b.get("action").map(String::as_str), Some("failed"));
        assert_eq!(b.get("status").map(String::as_str), Some("5.6.0"));
        assert_eq!(
            b.get("diagnostic-code").map(String::as_str),
            Some("smtp; 554 5.6.0 content rejected"),
            "{report}"
        );
    }
    assert_eq!(bad.rejected(), 1, "a permanent failure is not retried");
    assert_eq!(tern.counter("tern_dsns_queued_total"), 1);
    assert_eq!(tern.counter("tern_bounced_recipients_total"), 2);
    wait_queue_empty(&tern);
}

/// The next hop refuses everything at the end of data, the bounces too:
/// each original makes one DSN, each DSN fails once and makes no further
/// DSN, and everything leaves the queue.
#[test]
fn a_bounce_whose_delivery_fails_is_never_bounced() {
    let sink = start_sink();
    sink.set_behavior(Behavior {
        data_end: Some((554, "5.7.1 no thanks".into())),
        rcpt: vec![(
            "nobody@example.org".into(),
            550,
            "5.1.1 no such user".into(),
        )],
        ..Behavior::default()
    });
    let tern = TernProcess::start(Options::with_config(&relay(sink.addr(), "", "")));
    let mut c = tern.ehlo();
    for i in 0..3 {
        c.send_message(
            "sender@example.org",
            &["rcpt@example.com"],
            &message(&format!("b{i}"), &["x"]),
        );
    }
    // A sender whose bounce is refused at RCPT.
    c.send_message(
        "nobody@example.org",
        &["rcpt@example.com"],
        &message("b-nobody", &["x"]),
    );
    c.quit();
    wait_until("originals and bounces refused", ARRIVE_WAIT, || {
        tern.counter("tern_bounced_recipients_total") >= 8
    });
    wait_queue_empty(&tern);
    std::thread::sleep(SETTLE);
    assert_eq!(
        tern.counter("tern_dsns_queued_total"),
        4,
        "one per original"
    );
    assert_eq!(tern.counter("tern_bounced_recipients_total"), 8);
    assert!(sink.messages().is_empty());
    // 4 originals + 3 DSNs refused at the end of data; the 4th DSN at RCPT.
    assert_eq!(sink.rejected(), 7, "no retry, no bounce of a bounce");
    let to_nobody = sink
        .rcpt_replies()
        .iter()
        .filter(|(r, _)| r == "nobody@example.org")
        .count();
    assert_eq!(to_nobody, 1);
    assert!(tern.queue_ids().is_empty());
}

/// One message, three recipients at three pools answering 250, 451 and
/// 550: the 250 one is delivered once, the 550 one bounces once (one DSN
/// naming only it), only the 451 one is retried (visible in `tern queue
/// show`), and the message leaves the queue once it is delivered.
#[test]
fn mixed_outcomes_across_three_pools() {
    let a = start_sink();
    let b = start_sink();
    b.set_behavior(Behavior {
        rcpt_default: Some((451, "4.2.1 mailbox busy".into())),
        ..Behavior::default()
    });
    let c_sink = start_sink();
    c_sink.set_behavior(Behavior {
        rcpt_default: Some((550, "5.1.1 unknown user".into())),
        ..Behavior::default()
    });
    let home = start_sink();
    let tern = TernProcess::start(Options::with_config(&format!(
        "[server]\nrelay_to = \"{}\"\n{}{}{}{}\
         [routes]\n\"a.test\" = \"a\"\n\"b.test\" = \"b\"\n\"c.test\" = \"c\"\n",
        home.addr(),
        delivery(""),
        pool("a", a.addr()),
        pool("b", b.addr()),
        pool("c", c_sink.addr()),
    )));
    let mut c = tern.ehlo();
    let id = c.send_message(
        "sender@origin.test",
        &["ra@a.test", "rb@b.test", "rc@c.test"],
        &message("mixed", &["x"]),
    );
    c.quit();
    a.wait_for(1, ARRIVE_WAIT);
    home.wait_for(1, ARRIVE_WAIT);
    wait_until("two retries of rb", ARRIVE_WAIT, || {
        b.rcpt_replies().len() >= 3
    });
    let shown = tern.queue_show(&id);
    assert_eq!(shown.field("pending"), "rb@b.test", "{:?}", shown.fields);
    assert_eq!(shown.field("to"), "ra@a.test, rb@b.test, rc@c.test");
    let attempts: u32 = shown.field("attempts").parse().expect("attempts");
    assert!(attempts >= 2, "attempts {attempts}");
    assert_ne!(shown.field("next attempt"), "now");
    assert_eq!(tern.queue_ids(), vec![id.clone()]);
    // Only the 451 recipient was retried.
    assert_eq!(a.messages().len(), 1);
    assert_eq!(a.messages()[0].rcpts, vec!["ra@a.test".to_string()]);
    assert_eq!(a.rcpt_replies().len(), 1, "ra is not sent again");
    assert_eq!(c_sink.rcpt_replies().len(), 1, "rc is not sent again");
    let d = home.messages();
    assert_eq!(d.len(), 1, "one DSN");
    let report = d[0].delivery_status().1;
    let blocks = recipient_blocks(&report);
    assert_eq!(blocks.len(), 1, "only the refused recipient: {report}");
    assert_eq!(
        blocks[0].get("final-recipient").map(String::as_str),
        Some("rfc822; rc@c.test")
    );
    assert_eq!(blocks[0].get("status").map(String::as_str), Some("5.1.1"));

    b.set_behavior(Behavior::default());
    let got = b.wait_for(1, ARRIVE_WAIT);
    assert_eq!(got[0].rcpts, vec!["rb@b.test".to_string()]);
    wait_queue_empty(&tern);
    std::thread::sleep(SETTLE);
    assert_eq!(a.messages().len(), 1);
    assert_eq!(b.messages().len(), 1);
    assert_eq!(home.messages().len(), 1, "still one DSN");
    assert_eq!(c_sink.rcpt_replies().len(), 1);
    // ra, rb and the DSN.
    assert_eq!(tern.counter("tern_delivered_recipients_total"), 3);
    assert_eq!(tern.counter("tern_bounced_recipients_total"), 1);
    assert_eq!(tern.counter("tern_dsns_queued_total"), 1);
}

/// The only next hop refuses connections until the message expires: one
/// DSN with 5.4.7 that carries the connection failure.
#[test]
fn expiry_while_the_next_hop_refuses_connections() {
    // Bound, never listening: connections to it are refused.
    let dead = PortReservation::new();
    let home = start_sink();
    let tern = TernProcess::start(Options::with_config(&format!(
        "[server]\nrelay_to = \"{}\"\n{}{}[routes]\n\"example.com\" = \"dead\"\n",
        home.addr(),
        delivery("message_expiration_timeout = \"3s\""),
        pool("dead", dead.addr()),
    )));
    let mut c = tern.ehlo();
    let sent_at = Instant::now();
    c.send_message(
        "sender@origin.test",
        &["rcpt@example.com"],
        &message("expiring", &["x"]),
    );
    c.quit();
    let got = home.wait_for(1, ARRIVE_WAIT);
    let elapsed = sent_at.elapsed();
    assert!(
        elapsed >= Duration::from_secs(3),
        "bounced early: {elapsed:?}"
    );
    let dsn = &got[0];
    assert_eq!(dsn.mail_from, "");
    let report = dsn.delivery_status().1;
    let blocks = recipient_blocks(&report);
    assert_eq!(blocks.len(), 1, "{report}");
    let r = &blocks[0];
    assert_eq!(r.get("action").map(String::as_str), Some("failed"));
    assert_eq!(
        r.get("status").map(String::as_str),
        Some("5.4.7"),
        "{report}"
    );
    // The last error is the refused connection (or the host marked down
    // because of it), naming the host.
    let whole = String::from_utf8_lossy(&dsn.content).replace("\r\n ", " ");
    let port = dead.addr().port().to_string();
    assert!(
        whole.contains(&port) || whole.contains("are down"),
        "the DSN does not carry the connection failure:\n{whole}"
    );
    assert!(tern.counter("tern_outbound_connect_failures_total") >= 2);
    assert_eq!(tern.counter("tern_expired_recipients_total"), 1);
    wait_queue_empty(&tern);
    std::thread::sleep(SETTLE);
    assert_eq!(home.messages().len(), 1, "one DSN");
}

// ---------------------------------------------------------------------------
// Copy-forward across restarts
// ---------------------------------------------------------------------------

/// A partially delivered message, deferred and copied forward again and
/// again, survives graceful stops and SIGKILLs: after each restart it is
/// queued once with only its pending recipient; finally it is delivered
/// once and the delivered recipient is never sent again.
#[test]
fn copied_forward_message_survives_restarts_and_is_delivered_once() {
    let sink = start_sink();
    sink.set_behavior(Behavior {
        rcpt: vec![("stuck@example.com".into(), 451, "4.2.0 mailbox busy".into())],
        ..Behavior::default()
    });
    let config = format!(
        "[server]\nrelay_to = \"{}\"\nshutdown_grace = \"10s\"\n\
         [smtp]\nmessage_size_max = \"64KiB\"\nrecipients_max = 100\n\
         [storage]\nsegment_size = \"2MiB\"\nsegment_age_max = \"1s\"\nretention_min = \"0s\"\n\
         io = \"buffered\"\nzero_fill_ahead = 0\n{}",
        sink.addr(),
        delivery("copy_forward_after = \"1s\"\nsafety_net_hold_time = \"1s\""),
    );
    let mut tern = TernProcess::start(Options::with_config(&config));
    let mut c = tern.ehlo();
    let stuck = c.send_message(
        "sender@example.org",
        &["good@example.com", "stuck@example.com"],
        &message("stuck", &["x"]),
    );
    c.quit();
    let mut filler = send_batch(tern.addr(), "fill0", 10, 1);
    for round in 0..4 {
        wait_until("a copy-forward", Duration::from_secs(30), || {
            tern.counter("tern_copied_forward_total") >= 1
        });
        // Land the stop at different points of the copy cycle.
        std::thread::sleep(Duration::from_millis(150 * round));
        if round % 2 == 0 {
            assert!(tern.stop_gracefully().success());
        } else {
            tern.kill();
        }
        let queued = tern.queue_list();
        assert_eq!(
            queued.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
            vec![stuck.as_str()],
            "round {round}: queued once while stopped"
        );
        tern.restart();
        assert_eq!(tern.queue_ids(), vec![stuck.clone()], "round {round}");
        let shown = tern.queue_show(&stuck);
        assert_eq!(
            shown.field("pending"),
            "stuck@example.com",
            "round {round}: {:?}",
            shown.fields
        );
        filler.extend(send_batch(tern.addr(), &format!("fill{}", round + 1), 5, 1));
    }
    wait_until("another copy-forward", Duration::from_secs(30), || {
        tern.counter("tern_copied_forward_total") >= 1
    });
    sink.set_behavior(Behavior::default());
    let mut sent = filler.clone();
    sent.push("stuck".into());
    let got = wait_all(&sink, &sent, ARRIVE_WAIT);
    // "stuck" arrives twice: once for good@ at first, once for stuck@.
    let stuck_msgs: Vec<SinkMessage> = sink
        .messages()
        .into_iter()
        .filter(|m| m.subject() == "stuck")
        .collect();
    let rcpts: Vec<Vec<String>> = stuck_msgs.iter().map(|m| m.rcpts.clone()).collect();
    assert_eq!(
        rcpts,
        vec![
            vec!["good@example.com".to_string()],
            vec!["stuck@example.com".to_string()]
        ],
        "each recipient of the copied message exactly once"
    );
    for m in &stuck_msgs {
        assert!(String::from_utf8_lossy(&m.content).contains(&format!("id {stuck}")));
        assert_eq!(strip_received(&m.content), &message("stuck", &["x"])[..]);
    }
    let mut others = got.clone();
    others.remove("stuck");
    assert_exactly_once(&others, &filler, "filler");
    wait_queue_empty(&tern);
}

// ---------------------------------------------------------------------------
// Size
// ---------------------------------------------------------------------------

/// About 5 MiB: 100-byte lines, some starting with a dot, one lone dot.
fn big_message(name: &str) -> Vec<u8> {
    let mut m = message(name, &[]);
    let mut i = 0usize;
    while m.len() < 5 * 1024 * 1024 {
        let line = match i % 97 {
            0 => ".".to_string(),
            1 | 50 => format!(".{i:0>97}"),
            _ => format!("{name}:{i:0>90}"),
        };
        m.extend_from_slice(line.as_bytes());
        m.extend_from_slice(b"\r\n");
        i += 1;
    }
    m
}

#[test]
fn five_mib_messages_arrive_byte_exact_over_bdat_and_data() {
    let sink = start_sink();
    let tern = TernProcess::start(Options::with_config(&relay(sink.addr(), "", "")));
    let bdat = big_message("big-bdat");
    let mut c = tern.ehlo();
    c.send_message("sender@example.org", &["rcpt@example.com"], &bdat);
    c.quit();
    let got = sink.wait_for(1, ARRIVE_WAIT);
    assert!(got[0].bdat, "sent with BDAT");
    assert!(!got[0].bare_newline);
    assert!(
        strip_received(&got[0].content) == &bdat[..],
        "BDAT content differs ({} vs {} bytes)",
        strip_received(&got[0].content).len(),
        bdat.len()
    );
    // New connections see no CHUNKING (the idle one is gone by then).
    sink.set_behavior(Behavior {
        no_chunking: true,
        ..Behavior::default()
    });
    std::thread::sleep(Duration::from_millis(1200));
    let data = big_message("big-data");
    let mut c = tern.ehlo();
    c.send_message("sender@example.org", &["rcpt@example.com"], &data);
    c.quit();
    let got = sink.wait_for(2, ARRIVE_WAIT);
    assert!(!got[1].bdat, "sent with DATA");
    assert!(!got[1].bare_newline);
    assert!(
        strip_received(&got[1].content) == &data[..],
        "DATA content differs ({} vs {} bytes)",
        strip_received(&got[1].content).len(),
        data.len()
    );
    wait_queue_empty(&tern);
    std::thread::sleep(SETTLE);
    assert_eq!(sink.messages().len(), 2);
}

// ---------------------------------------------------------------------------
// Shutdown details
// ---------------------------------------------------------------------------

/// A next hop slow to greet (a tarpit) must not hold up a graceful stop:
/// no transaction has started, so the job is "not tried" at once.
// Regression: `Delivery::stop` used to wait for jobs held by a connection
// still greeting (up to `shutdown_grace`).
#[test]
fn graceful_stop_does_not_wait_for_a_slow_greeting() {
    let sink = start_sink();
    sink.set_behavior(Behavior {
        reply_delay: Duration::from_secs(4),
        ..Behavior::default()
    });
    let mut tern = TernProcess::start(Options::with_config(&relay(sink.addr(), "", "")));
    let sent = send_batch(tern.addr(), "tarpit", 1, 1);
    wait_until("a connection to the tarpit", ARRIVE_WAIT, || {
        sink.connections() >= 1
    });
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    assert!(tern.stop_gracefully().success());
    let took = t.elapsed();
    sink.set_behavior(Behavior::default());
    tern.restart();
    let got = wait_all(&sink, &sent, ARRIVE_WAIT);
    assert_exactly_once(&got, &sent, "after the stop");
    assert!(
        took < Duration::from_secs(3),
        "graceful stop took {took:?} waiting for a next hop's greeting"
    );
}

/// Jobs that never reached a next hop at a graceful stop (waiting for
/// the destination's only connection) are recorded as not tried: no
/// attempt counted, tried at once after the restart. A message split into
/// transactions keeps what its finished transactions delivered.
#[test]
fn graceful_stop_records_untried_jobs_without_an_attempt() {
    let sink = start_sink();
    sink.set_behavior(Behavior {
        reply_delay: Duration::from_millis(150),
        ..Behavior::default()
    });
    let mut tern = TernProcess::start(Options::with_config(&relay(
        sink.addr(),
        "",
        "concurrency_per_destination = 1\nrecipients_per_transaction_max = 2",
    )));
    let rcpts: Vec<String> = (0..6).map(|i| format!("r{i}@example.com")).collect();
    let refs: Vec<&str> = rcpts.iter().map(String::as_str).collect();
    let mut c = tern.ehlo();
    let split = c.send_message("sender@example.org", &refs, &message("split", &["x"]));
    c.quit();
    let others = send_batch(tern.addr(), "waiting", 10, 1);
    // The first transaction of the split message finished: stop.
    sink.wait_for(1, ARRIVE_WAIT);
    assert!(tern.stop_gracefully().success());
    assert!(
        !tern.stderr().contains("grace period over"),
        "the stop must not need the whole grace period"
    );
    let before: usize = sink.messages().iter().map(|m| m.rcpts.len()).sum();
    assert!(before < 6 + 10, "the stop must land mid-delivery");
    let queued = tern.queue_ids();
    assert!(queued.contains(&split));
    for id in &queued {
        let shown = tern.queue_show(id);
        if *id == split {
            let pending = shown.field("pending").split(", ").count();
            assert_eq!(
                pending + before.min(6),
                6,
                "delivered transactions are recorded: {:?}",
                shown.fields
            );
        }
        assert_eq!(
            shown.field("attempts"),
            "0",
            "{id}: not tried (or delivered in part), yet an attempt was counted: {:?}",
            shown.fields
        );
    }
    sink.set_behavior(Behavior::default());
    tern.restart();
    let mut sent = others.clone();
    sent.push("split".into());
    wait_all(&sink, &sent, ARRIVE_WAIT);
    wait_queue_empty(&tern);
    let per = per_recipient(&sink, "split");
    assert_eq!(per.len(), 6, "every recipient: {per:?}");
    let twice: Vec<_> = per.iter().filter(|(_, &c)| c != 1).collect();
    assert!(twice.is_empty(), "recipients sent twice: {twice:?}");
    let mut other_counts = counts(&sink.messages());
    other_counts.remove("split");
    assert_exactly_once(&other_counts, &others, "the waiting messages");
}

/// Arrivals per recipient of the message with this Subject.
fn per_recipient(sink: &TestSink, name: &str) -> BTreeMap<String, usize> {
    let mut per = BTreeMap::new();
    for m in sink.messages().iter().filter(|m| m.subject() == name) {
        for r in &m.rcpts {
            *per.entry(r.clone()).or_insert(0) += 1;
        }
    }
    per
}

/// When `shutdown_grace` ends with a transaction still waiting for its
/// replies, only that transaction's outcome is unknown (ARCHITECTURE:
/// "its outcome is unknown, so it runs again after restart"). The
/// transactions of the same message that finished before the stop were
/// answered 250 and must not be sent again.
// Regression: the finished transactions' 250s used to be dropped with the
// attempt when the grace period ended, and re-sent after the restart.
#[test]
fn grace_ending_mid_transaction_resends_only_that_transaction() {
    let sink = start_sink();
    sink.set_behavior(Behavior {
        reply_delay: Duration::from_millis(400),
        ..Behavior::default()
    });
    let mut tern = TernProcess::start(Options::with_config(&format!(
        "[server]\nrelay_to = \"{}\"\nshutdown_grace = \"1s\"\n{}",
        sink.addr(),
        delivery("concurrency_per_destination = 1\nrecipients_per_transaction_max = 2"),
    )));
    let rcpts: Vec<String> = (0..6).map(|i| format!("r{i}@example.com")).collect();
    let refs: Vec<&str> = rcpts.iter().map(String::as_str).collect();
    let mut c = tern.ehlo();
    c.send_message("sender@example.org", &refs, &message("split", &["x"]));
    c.quit();
    // The first transaction (2 recipients) finished; the second one takes
    // 4 replies of 400 ms, longer than the grace period.
    let first = sink.wait_for(1, ARRIVE_WAIT);
    let done_before: Vec<String> = first[0].rcpts.clone();
    assert!(tern.stop_gracefully().success());
    assert!(
        tern.stderr().contains("grace period over"),
        "the stop must end the grace period mid-transaction"
    );
    sink.set_behavior(Behavior::default());
    tern.restart();
    wait_until("every recipient", ARRIVE_WAIT, || {
        per_recipient(&sink, "split").len() == 6
    });
    wait_queue_empty(&tern);
    std::thread::sleep(SETTLE);
    let per = per_recipient(&sink, "split");
    for r in &done_before {
        assert_eq!(
            per[r], 1,
            "{r} was answered 250 before the stop and got the message again: {per:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// Expiry details
// ---------------------------------------------------------------------------

/// The next hop refuses connections and stays marked down (long host
/// backoff) until the message expires: the DSN should still carry the
/// connection failure that put the host down, not only "all hosts are
/// down".
// Regression: the deferral used to carry only "all hosts ... are down".
#[test]
fn expiry_dsn_carries_the_connection_error_while_the_host_is_marked_down() {
    let dead = PortReservation::new();
    let home = start_sink();
    let tern = TernProcess::start(Options::with_config(&format!(
        "[server]\nrelay_to = \"{}\"\n{}{}[routes]\n\"example.com\" = \"dead\"\n",
        home.addr(),
        delivery(
            "message_expiration_timeout = \"3s\"\nhost_down_initial = \"30s\"\nhost_down_max = \"30s\""
        )
        .replace("host_down_initial = \"500ms\"\nhost_down_max = \"1s\"\n", ""),
        pool("dead", dead.addr()),
    )));
    let mut c = tern.ehlo();
    c.send_message(
        "sender@origin.test",
        &["rcpt@example.com"],
        &message("expiring", &["x"]),
    );
    c.quit();
    let got = home.wait_for(1, ARRIVE_WAIT);
    let report = got[0].delivery_status().1;
    let blocks = recipient_blocks(&report);
    assert_eq!(
        blocks[0].get("status").map(String::as_str),
        Some("5.4.7"),
        "{report}"
    );
    let port = dead.addr().port().to_string();
    assert!(
        report.contains(&port) && report.to_lowercase().contains("refused"),
        "the DSN lost the connection failure:\n{report}"
    );
}

/// The sender's own next hop is unreachable too: the original expires
/// with one DSN, the DSN expires in turn and is never bounced, and both
/// leave the queue.
#[test]
fn an_expiring_bounce_is_never_bounced() {
    let dead = PortReservation::new();
    let tern = TernProcess::start(Options::with_config(&format!(
        "[server]\nrelay_to = \"{}\"\nshutdown_grace = \"10s\"\n{}",
        dead.addr(),
        delivery("message_expiration_timeout = \"2s\""),
    )));
    let mut c = tern.ehlo();
    c.send_message(
        "sender@example.org",
        &["rcpt@example.com"],
        &message("lost", &["x"]),
    );
    c.quit();
    wait_until("the original and its DSN to expire", ARRIVE_WAIT, || {
        tern.counter("tern_expired_recipients_total") >= 2
    });
    wait_queue_empty(&tern);
    std::thread::sleep(SETTLE);
    assert_eq!(tern.counter("tern_dsns_queued_total"), 1);
    assert_eq!(tern.counter("tern_expired_recipients_total"), 2);
    assert!(tern.queue_ids().is_empty());
}

/// A 5 MiB message refused at the end of data: one DSN, which returns
/// only the header section (above `dsn_return_content_max`).
#[test]
fn bounce_of_a_five_mib_message_returns_its_headers_only() {
    let bad = start_sink();
    bad.set_behavior(Behavior {
        data_end: Some((552, "5.3.4 too big for this mailbox".into())),
        ..Behavior::default()
    });
    let home = start_sink();
    let tern = TernProcess::start(Options::with_config(&format!(
        "[server]\nrelay_to = \"{}\"\n{}{}[routes]\n\"example.com\" = \"bad\"\n",
        home.addr(),
        delivery(""),
        pool("bad", bad.addr()),
    )));
    let big = big_message("big-bounce");
    let mut c = tern.ehlo();
    c.send_message("sender@origin.test", &["rcpt@example.com"], &big);
    c.quit();
    home.wait_for(1, ARRIVE_WAIT);
    wait_queue_empty(&tern);
    std::thread::sleep(SETTLE);
    let got = home.messages();
    assert_eq!(got.len(), 1, "one DSN");
    let dsn = &got[0];
    assert!(
        dsn.content.len() < 64 * 1024,
        "DSN of {} bytes",
        dsn.content.len()
    );
    let text = String::from_utf8_lossy(&dsn.content);
    assert!(text.contains("Subject: big-bounce"), "{text}");
    assert!(
        !text.contains("big-bounce:0000"),
        "the body is not returned"
    );
    let blocks = recipient_blocks(&dsn.delivery_status().1);
    assert_eq!(blocks[0].get("status").map(String::as_str), Some("5.3.4"));
    assert_eq!(bad.rejected(), 1);
}
