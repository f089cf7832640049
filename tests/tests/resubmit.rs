//! Safety Net resubmission (issue 15, SPEC 5) against the real binary:
//! messages delivered to a sink, the sink's store wiped
//! ([`TestSink::clear`]), and `tern resubmit add` bringing back exactly
//! the messages whose arrival falls in the window (and matches the
//! filters), once, without DSNs; requests with counts that survive a
//! restart; windows that are refused; and a shadow resubmitting the
//! delivered messages of a primary that was SIGKILLed.
//!
//! Windows are separated from the messages around them by sleeps of
//! 1.5 s, and the times are RFC 3339 with milliseconds, taken from the
//! clock the server uses too. The senders' domain is routed to a sink
//! as well, so any DSN would show up there (null reverse path).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};
use tern_tests::admin::{self, count, message_id, request_id, Admin, Cli};
use tern_tests::server::{sum_samples, wait_until, Options, PortReservation, TernProcess};
use tern_tests::sink::{SinkMessage, TestSink};
use tern_tests::smtp::Client;
use tern_tests::tls;

/// Bound on a batch of messages reaching a sink.
const ARRIVE_WAIT: Duration = Duration::from_secs(30);

/// After the expected messages arrived (or while nothing may arrive): how
/// long to keep watching for strays and duplicates.
const SETTLE: Duration = Duration::from_millis(2000);

/// Between the messages around a window and the window itself.
const GAP: Duration = Duration::from_millis(1500);

/// Bound on a request's counts reaching their final values.
const COUNTS_WAIT: Duration = Duration::from_secs(30);

fn delivery() -> String {
    "[delivery]\nconnect_timeout = \"2s\"\nretry_initial = \"1s\"\nretry_max = \"2s\"\n\
     host_down_initial = \"500ms\"\nhost_down_max = \"1s\"\nconnection_idle = \"500ms\"\n\
     maintenance_interval = \"200ms\"\n"
        .to_string()
}

/// `[pools.NAME]` with one host per (pool, sink address, recipient
/// domains) and `[routes]` sending each domain to its pool.
fn pools(list: &[(&str, SocketAddr, &[&str])]) -> String {
    let mut out = String::new();
    for (pool, addr, _) in list {
        out.push_str(&format!(
            "[pools.{pool}]\nhosts = [ {{ address = \"{addr}\", priority = 0, weight = 1 }} ]\n"
        ));
    }
    out.push_str("[routes]\n");
    for (pool, _, domains) in list {
        for d in *domains {
            out.push_str(&format!("\"{d}\" = \"{pool}\"\n"));
        }
    }
    out
}

fn sink() -> TestSink {
    TestSink::start("127.0.0.1:0".parse().unwrap())
}

/// The sender of every message (its domain is routed to a sink).
const FROM: &str = "sender@origin.test";

/// A message with Subject `name` and Message-ID `name@resubmit.test`.
fn content(rcpt: &str, name: &str) -> Vec<u8> {
    format!(
        "From: <{FROM}>\r\nTo: <{rcpt}>\r\nSubject: {name}\r\n\
         Message-ID: <{name}@resubmit.test>\r\n\r\nbody of {name}\r\n"
    )
    .into_bytes()
}

/// Sends messages `prefix-N` for N in `range` to `rcpt` on one connection.
fn send(addr: SocketAddr, rcpt: &str, prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    let mut c = Client::ehlo(addr);
    let names = range
        .map(|i| {
            let name = format!("{prefix}-{i}");
            c.send_message(FROM, &[rcpt], &content(rcpt, &name));
            name
        })
        .collect();
    c.quit();
    names
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// Sorted subjects of `messages`; each must be an original (no DSN) to
/// `rcpt_domain` with its Message-ID matching its subject.
#[track_caller]
fn originals(messages: &[SinkMessage], rcpt_domain: &str) -> Vec<String> {
    sorted(
        messages
            .iter()
            .map(|m| {
                assert!(
                    !m.mail_from.is_empty(),
                    "a DSN was sent: {}",
                    m.content.escape_ascii()
                );
                assert_eq!(m.mail_from, FROM);
                assert!(
                    m.rcpts.len() == 1 && m.rcpts[0].ends_with(&format!("@{rcpt_domain}")),
                    "recipients {:?}",
                    m.rcpts
                );
                let subject = m.subject();
                assert_eq!(
                    message_id(m),
                    format!("{subject}@resubmit.test"),
                    "Message-ID"
                );
                subject
            })
            .collect(),
    )
}

/// Waits for `want.len()` messages at `sink`, lets stragglers arrive and
/// asserts the sink holds exactly `want` (originals to `rcpt_domain`),
/// each once.
#[track_caller]
fn expect_exactly(sink: &TestSink, want: &[String], rcpt_domain: &str, what: &str) {
    sink.wait_for(want.len(), ARRIVE_WAIT);
    std::thread::sleep(SETTLE);
    assert_eq!(
        originals(&sink.messages(), rcpt_domain),
        sorted(want.to_vec()),
        "{what}: each message exactly once"
    );
}

/// The request `id` in `tern resubmit list --json`.
#[track_caller]
fn listed(cli: &Cli, id: &str) -> Value {
    let list = cli.resubmit_list();
    list.iter()
        .find(|r| request_id(r) == id)
        .cloned()
        .unwrap_or_else(|| panic!("request {id} not listed: {list:?}"))
}

/// Waits until request `id` is `done` with these counts (matched,
/// resubmitted, delivered); panics showing the last listing.
#[track_caller]
fn wait_counts(cli: &Cli, id: &str, want: (u64, u64, u64)) -> Value {
    let deadline = std::time::Instant::now() + COUNTS_WAIT;
    loop {
        let last = listed(cli, id);
        let got = (
            count(&last, "matched"),
            count(&last, "resubmitted"),
            count(&last, "delivered"),
        );
        if got == want && last["state"] == "done" {
            return last;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "request {id}: want done with (matched, resubmitted, delivered) = {want:?}; \
             last listed: {last}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A window around what `f` sends: (start, end) as RFC 3339, start taken
/// just before, end just after (1 ms later, so the last arrival is inside
/// at millisecond precision).
fn window<T>(f: impl FnOnce() -> T) -> (String, String, T) {
    let start = SystemTime::now() - Duration::from_millis(1);
    let out = f();
    let end = SystemTime::now() + Duration::from_millis(2);
    (admin::rfc3339(start), admin::rfc3339(end), out)
}

/// Deliver 3 messages, wait, 50 messages (the window), wait, 3 more; the
/// sink forgets everything; `resubmit add` for the window brings back
/// exactly the 50 (same subjects and Message-IDs, once each), no DSN and
/// nothing from before or after the window; the request ends `done` with
/// 50 matched, resubmitted and delivered.
#[test]
fn resubmit_by_window_brings_back_exactly_the_window() {
    let hop = sink();
    let tern = TernProcess::start(Options::with_config(&format!(
        "{}{}",
        delivery(),
        pools(&[("main", hop.addr(), &["example.com", "origin.test"])])
    )));
    let rcpt = "rcpt@example.com";
    let before = send(tern.addr(), rcpt, "before", 0..3);
    hop.wait_for(3, ARRIVE_WAIT);
    std::thread::sleep(GAP);
    let (start, end, inside) = window(|| send(tern.addr(), rcpt, "in", 0..50));
    std::thread::sleep(GAP);
    let after = send(tern.addr(), rcpt, "after", 0..3);
    let mut all = [before, inside.clone(), after].concat();
    all.sort();
    expect_exactly(&hop, &all, "example.com", "first delivery");
    wait_until("the queue to empty", Duration::from_secs(10), || {
        tern.queue_ids().is_empty()
    });

    hop.clear();
    let cli = Cli::of(&tern);
    let request = cli.json(&["resubmit", "add", "--start", &start, "--end", &end]);
    let id = request_id(&request);
    assert!(
        ["running", "done"].contains(&request["state"].as_str().unwrap_or("")),
        "a new request: {request}"
    );
    expect_exactly(&hop, &inside, "example.com", "resubmitted");
    wait_counts(&cli, &id, (50, 50, 50));
    assert_eq!(tern.counter("tern_dsns_queued_total"), 0, "no DSN");
    assert_eq!(tern.counter("tern_bounced_recipients_total"), 0);
}

/// Messages to x.test and y.test in one window; `--recipient-domain
/// x.test` brings back only x.test's. A second identical request
/// resubmits nothing (a message is resubmitted once). Both requests,
/// their states and counts survive a restart, and the restart resubmits
/// nothing again.
#[test]
fn resubmit_by_recipient_domain_once_and_across_a_restart() {
    let x = sink();
    let y = sink();
    let mut tern = TernProcess::start(Options::with_config(&format!(
        "{}{}",
        delivery(),
        pools(&[
            ("x", x.addr(), &["x.test", "origin.test"]),
            ("y", y.addr(), &["y.test"]),
        ])
    )));
    let (start, end, (to_x, to_y)) = window(|| {
        let mut to_x = Vec::new();
        let mut to_y = Vec::new();
        for i in 0..10 {
            to_x.extend(send(tern.addr(), "r@x.test", "x", i..i + 1));
            to_y.extend(send(tern.addr(), "r@y.test", "y", i..i + 1));
        }
        (to_x, to_y)
    });
    expect_exactly(&x, &to_x, "x.test", "first delivery to x");
    expect_exactly(&y, &to_y, "y.test", "first delivery to y");
    wait_until("the queue to empty", Duration::from_secs(10), || {
        tern.queue_ids().is_empty()
    });
    std::thread::sleep(GAP);
    x.clear();
    y.clear();

    let cli = Cli::of(&tern);
    let args = [
        "resubmit",
        "add",
        "--start",
        &start,
        "--end",
        &end,
        "--recipient-domain",
        "x.test",
    ];
    let first = request_id(&cli.json(&args));
    expect_exactly(&x, &to_x, "x.test", "x.test resubmitted");
    assert!(y.messages().is_empty(), "y.test does not match the request");
    let first_listed = wait_counts(&cli, &first, (10, 10, 10));
    assert_eq!(first_listed["recipient_domain"], "x.test", "{first_listed}");

    let second = request_id(&cli.json(&args));
    assert_ne!(first, second, "a new request gets a new id");
    let deadline = std::time::Instant::now() + COUNTS_WAIT;
    let second_listed = loop {
        let r = listed(&cli, &second);
        if r["state"] == "done" {
            break r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "second request not done: {r}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    std::thread::sleep(SETTLE);
    assert_eq!(
        x.messages().len(),
        10,
        "the duplicate request resubmits nothing"
    );
    assert_eq!(count(&second_listed, "resubmitted"), 0, "{second_listed}");
    assert_eq!(count(&second_listed, "delivered"), 0, "{second_listed}");

    assert!(tern.stop_gracefully().success());
    tern.restart();
    let cli = Cli::of(&tern);
    let after: BTreeMap<String, Value> = cli
        .resubmit_list()
        .into_iter()
        .map(|r| (request_id(&r), r))
        .collect();
    assert_eq!(
        after.keys().cloned().collect::<Vec<_>>(),
        sorted(vec![first.clone(), second.clone()]),
        "both requests survive the restart"
    );
    for (id, before) in [(&first, &first_listed), (&second, &second_listed)] {
        let now = &after[id];
        for field in [
            "state",
            "matched",
            "resubmitted",
            "delivered",
            "recipient_domain",
        ] {
            assert_eq!(
                now[field], before[field],
                "{field} of request {id} after the restart"
            );
        }
    }
    std::thread::sleep(SETTLE);
    assert_eq!(
        x.messages().len(),
        10,
        "the restart resubmits nothing again"
    );
    assert!(y.messages().is_empty());
    assert_eq!(tern.counter("tern_dsns_queued_total"), 0, "no DSN");

    // disable and remove.
    cli.ok(&["resubmit", "disable", &second]);
    assert_eq!(listed(&cli, &second)["state"], "disabled");
    cli.ok(&["resubmit", "remove", &second]);
    let ids: Vec<String> = cli.resubmit_list().iter().map(request_id).collect();
    assert_eq!(ids, vec![first.clone()], "removed");
}

/// A window with its end before its start, one ending in the future, one
/// starting in the future: the CLI exits non-zero naming the problem, the
/// API answers 400 with a JSON error, and nothing is resubmitted (5
/// delivered messages are in the Safety Net to be resubmitted by
/// mistake) and no request is kept.
#[test]
fn resubmit_refuses_windows_not_in_the_past_or_reversed() {
    let hop = sink();
    let tern = TernProcess::start(Options::with_config(&format!(
        "{}{}",
        delivery(),
        pools(&[("main", hop.addr(), &["example.com", "origin.test"])])
    )));
    let t0 = SystemTime::now() - Duration::from_secs(60);
    let sent = send(tern.addr(), "rcpt@example.com", "m", 0..5);
    expect_exactly(&hop, &sent, "example.com", "first delivery");
    wait_until("the queue to empty", Duration::from_secs(10), || {
        tern.queue_ids().is_empty()
    });
    std::thread::sleep(Duration::from_millis(500));
    hop.clear();
    let now = SystemTime::now();
    let t = admin::rfc3339;
    let cli = Cli::of(&tern);

    // End before start (both in the past, around the messages).
    let (_, err) = cli.fails(&["resubmit", "add", "--start", &t(now), "--end", &t(t0)]);
    let e = err.to_lowercase();
    assert!(
        e.contains("end") && (e.contains("before") || e.contains("after")),
        "the error names the reversed window: {err}"
    );
    // End in the future.
    let future = now + Duration::from_secs(3600);
    let (_, err) = cli.fails(&["resubmit", "add", "--start", &t(t0), "--end", &t(future)]);
    let e = err.to_lowercase();
    assert!(
        e.contains("future") || e.contains("past"),
        "the error names the window not in the past: {err}"
    );
    // Both in the future.
    let (_, err) = cli.fails(&[
        "resubmit",
        "add",
        "--start",
        &t(future),
        "--end",
        &t(future + Duration::from_secs(60)),
    ]);
    let e = err.to_lowercase();
    assert!(e.contains("future") || e.contains("past"), "{err}");
    // Not a time.
    cli.fails(&["resubmit", "add", "--start", "yesterday", "--end", &t(now)]);

    let admin = Admin::of(&tern);
    for body in [
        json!({"start": t(now), "end": t(t0)}),
        json!({"start": t(t0), "end": t(future)}),
    ] {
        let r = admin.post("/resubmit", &body);
        assert_eq!(r.code, 400, "{body}: {} {}", r.code, r.body);
        assert!(r.json()["error"].is_string(), "a JSON error: {}", r.body);
    }

    std::thread::sleep(SETTLE);
    assert!(hop.messages().is_empty(), "nothing resubmitted");
    assert!(tern.queue_ids().is_empty(), "nothing queued");
    assert!(admin.resubmit_requests().is_empty(), "no request kept");
    assert!(cli.resubmit_list().is_empty(), "no request listed");
}

/// `[cluster]` of `node` shadowing with `peer`, relaying to `sink`, with
/// discard notifications every 300 ms.
fn node_config(node: &str, peer: &str, peer_addr: SocketAddr, sink: SocketAddr) -> String {
    format!(
        "[server]\nrelay_to = \"{sink}\"\n{}\
         [cluster]\nnode_id = \"{node}\"\nshadow_timeout = \"2s\"\n\
         shadow_heartbeat_frequency = \"300ms\"\n\
         peers = [ {} ]\n{}",
        delivery(),
        tls::peer(peer, peer_addr, None),
        tls::tls_section()
    )
}

/// Nodes a and b shadow each other and relay to one sink. a delivers 10
/// messages and b learns they were handled (its shadow queue drops
/// them). a is SIGKILLed and the sink forgets everything. On b a window
/// request without `--unresponsive-primary` finds nothing (b delivered
/// nothing itself); with `--unresponsive-primary a` b resubmits a's 10
/// from its shadow Safety Net and they arrive again.
#[test]
fn unresponsive_primary_is_resubmitted_from_the_shadow_safety_net() {
    const N: usize = 10;
    let hop = sink();
    let (ra, rb) = (PortReservation::new(), PortReservation::new());
    let (a_addr, b_addr) = (ra.addr(), rb.addr());
    let b = TernProcess::start_on(
        Options::with_config(&node_config("b", "a", a_addr, hop.addr())),
        rb,
    );
    let mut a = TernProcess::start_on(
        Options::with_config(&node_config("a", "b", b_addr, hop.addr())),
        ra,
    );
    let (start, end, sent) = window(|| send(a.addr(), "rcpt@example.com", "m", 0..N));
    expect_exactly(&hop, &sent, "example.com", "delivered by a");
    assert_eq!(a.counter("tern_shadow_copies_made_total"), N as u64);
    wait_until("b to learn a handled them", Duration::from_secs(20), || {
        b.counter("tern_shadow_discards_total") >= N as u64
    });
    wait_until(
        "b's shadow queue for a to drain",
        Duration::from_secs(20),
        || sum_samples(&b.metrics(), "tern_shadow_queue_messages{primary=\"a\"") == 0,
    );
    std::thread::sleep(GAP);
    a.kill();
    hop.clear();

    let cli = Cli::of(&b);
    let own = request_id(&cli.json(&["resubmit", "add", "--start", &start, "--end", &end]));
    let own_listed = wait_counts(&cli, &own, (0, 0, 0));
    std::thread::sleep(SETTLE);
    assert!(
        hop.messages().is_empty(),
        "b's own Safety Net has none of a's messages: {own_listed}"
    );

    let req = cli.json(&[
        "resubmit",
        "add",
        "--start",
        &start,
        "--end",
        &end,
        "--unresponsive-primary",
        "a",
    ]);
    let id = request_id(&req);
    assert_eq!(req["unresponsive_primary"], "a", "{req}");
    expect_exactly(&hop, &sent, "example.com", "resubmitted by b for a");
    wait_counts(&cli, &id, (N as u64, N as u64, N as u64));
    assert_eq!(b.counter("tern_dsns_queued_total"), 0, "no DSN");
}
