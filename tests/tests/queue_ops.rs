//! Operating the queue (issue 15) against the real binary: retry now
//! (`tern queue flush`), suspend and resume a destination under load,
//! hold and release across a SIGKILL, bounce and delete by destination
//! with a dry run first, and the admin token that every state-changing
//! request needs.
//!
//! Next hops are [`TestSink`]s in pools routed by recipient domain, so
//! every destination has a `pool:NAME`. A next hop is "down" by answering
//! every connection with a 421 greeting (or every RCPT with 451) and
//! "back" with the default behaviour; backoffs are set to ten minutes, so
//! a message that arrives within seconds after a flush or a release was
//! sent by the operator action, not by its retry timer. Every wait is
//! bounded; sinks and `tern` stop when dropped.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde_json::json;
use tern_tests::admin::{self, count, message_ids, Admin, Cli};
use tern_tests::server::{wait_until, Options, TernProcess};
use tern_tests::sink::{Behavior, SinkMessage, TestSink};
use tern_tests::smtp::Client;

/// Bound on a batch of messages reaching a sink after an operator action.
/// Far below the ten-minute backoffs of [`LONG`].
const ARRIVE_WAIT: Duration = Duration::from_secs(15);

/// After the expected messages arrived (or while nothing may arrive): how
/// long to keep watching for strays and duplicates. Deliveries on
/// loopback take milliseconds; maintenance runs every 200 ms.
const SETTLE: Duration = Duration::from_millis(1500);

/// Delivery timers with ten-minute retry and host-down backoffs: without
/// an operator action nothing deferred is tried again during a test.
const LONG: &[(&str, &str)] = &[
    ("retry_initial", "\"10m\""),
    ("retry_max", "\"1h\""),
    ("host_down_initial", "\"10m\""),
    ("host_down_max", "\"1h\""),
];

/// A `[delivery]` section with short timers for tests, `keys` (name, TOML
/// value) added or replacing those.
fn delivery(keys: &[(&str, &str)]) -> String {
    let mut all: BTreeMap<&str, &str> = BTreeMap::from([
        ("connect_timeout", "\"2s\""),
        ("retry_initial", "\"1s\""),
        ("retry_max", "\"2s\""),
        ("host_down_initial", "\"500ms\""),
        ("host_down_max", "\"1s\""),
        ("connection_idle", "\"500ms\""),
        ("maintenance_interval", "\"200ms\""),
    ]);
    all.extend(keys.iter().copied());
    let mut out = String::from("[delivery]\n");
    for (k, v) in all {
        out.push_str(&format!("{k} = {v}\n"));
    }
    out
}

/// `[pools.NAME]` with one host per (pool, sink address, recipient domain)
/// and `[routes]` sending each domain to its pool.
fn pools(list: &[(&str, SocketAddr, &str)]) -> String {
    let mut out = String::new();
    for (pool, addr, _) in list {
        out.push_str(&format!(
            "[pools.{pool}]\nhosts = [ {{ address = \"{addr}\", priority = 0, weight = 1 }} ]\n"
        ));
    }
    out.push_str("[routes]\n");
    for (pool, _, domain) in list {
        out.push_str(&format!("\"{domain}\" = \"{pool}\"\n"));
    }
    out
}

fn sink() -> TestSink {
    TestSink::start("127.0.0.1:0".parse().unwrap())
}

/// A next hop that answers every connection with 421 (host down).
fn refusing_connections() -> Behavior {
    Behavior {
        banner: Some((421, "4.3.2 not now".into())),
        ..Behavior::default()
    }
}

/// A next hop that answers every RCPT with 451 (recipient deferred; the
/// host stays up).
fn deferring_recipients() -> Behavior {
    Behavior {
        rcpt_default: Some((451, "4.3.0 try later".into())),
        ..Behavior::default()
    }
}

/// A message with Subject and Message-ID `name`.
fn content(from: &str, rcpt: &str, name: &str) -> Vec<u8> {
    format!(
        "From: <{from}>\r\nTo: <{rcpt}>\r\nSubject: {name}\r\n\
         Message-ID: <{name}@queue-ops.test>\r\n\r\nbody of {name}\r\n"
    )
    .into_bytes()
}

/// One message handed to tern.
#[derive(Clone, Debug)]
struct Sent {
    name: String,
    id: String,
    rcpt: String,
}

/// Sends `count` messages named `prefix-N` from `from` to `rcpt` on one
/// connection; each must be queued.
fn send(addr: SocketAddr, from: &str, rcpt: &str, prefix: &str, count: usize) -> Vec<Sent> {
    let mut c = Client::ehlo(addr);
    let sent = (0..count)
        .map(|i| {
            let name = format!("{prefix}-{i}");
            let id = c.send_message(from, &[rcpt], &content(from, rcpt, &name));
            Sent {
                name,
                id,
                rcpt: rcpt.to_string(),
            }
        })
        .collect();
    c.quit();
    sent
}

fn names(sent: &[Sent]) -> Vec<String> {
    let mut n: Vec<String> = sent.iter().map(|s| s.name.clone()).collect();
    n.sort();
    n
}

fn ids(sent: &[Sent]) -> Vec<String> {
    let mut n: Vec<String> = sent.iter().map(|s| s.id.clone()).collect();
    n.sort();
    n
}

/// Sorted subjects of `messages`, which must all be originals (not DSNs).
#[track_caller]
fn subjects(messages: &[SinkMessage]) -> Vec<String> {
    let mut s: Vec<String> = messages
        .iter()
        .map(|m| {
            assert!(
                !m.mail_from.is_empty(),
                "unexpected DSN: {}",
                m.content.escape_ascii()
            );
            m.subject()
        })
        .collect();
    s.sort();
    s
}

/// Waits for `sent.len()` messages at `sink`, lets stragglers arrive, and
/// asserts the sink got exactly `sent`, each once.
#[track_caller]
fn expect_exactly(sink: &TestSink, sent: &[Sent], what: &str) {
    sink.wait_for(sent.len(), ARRIVE_WAIT);
    std::thread::sleep(SETTLE);
    assert_eq!(
        subjects(&sink.messages()),
        names(sent),
        "{what}: each message exactly once"
    );
}

/// Waits until `n` delivery attempts left recipients for a retry (so no
/// message is still on its first attempt).
#[track_caller]
fn wait_deferred(tern: &TernProcess, n: u64) {
    wait_until(
        &format!("{n} messages deferred"),
        Duration::from_secs(30),
        || tern.counter("tern_deferred_total") >= n,
    );
}

/// Waits (bounded) until `destination`'s line in `/queue/summary` has
/// `state`, and returns it. (The deferral counter moves before the
/// message's attempt has ended in the queue, so a line can still show a
/// message in flight for a moment.)
#[track_caller]
fn wait_state(admin: &Admin, destination: &str, state: &str) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let entry = admin.summary_of(destination);
        if let Some(e) = &entry {
            if e["state"] == state {
                return e.clone();
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{destination} not {state:?} in the summary; last: {entry:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sorted queue ids in `tern queue list`.
fn queued(tern: &TernProcess) -> Vec<String> {
    let mut ids = tern.queue_ids();
    ids.sort();
    ids
}

/// Next hop down, 100 messages queued behind ten-minute backoffs; the hop
/// comes back and nothing moves (the backoff holds); `tern queue flush`
/// delivers all 100 within seconds, each once.
#[test]
fn flush_delivers_everything_at_once_after_the_next_hop_is_back() {
    let hop = sink();
    hop.set_behavior(refusing_connections());
    let tern = TernProcess::start(Options::with_config(&format!(
        "{}{}",
        delivery(LONG),
        pools(&[("main", hop.addr(), "example.com")])
    )));
    let sent = send(
        tern.addr(),
        "sender@origin.test",
        "rcpt@example.com",
        "m",
        100,
    );
    wait_deferred(&tern, 100);
    let admin = Admin::of(&tern);
    let entry = wait_state(&admin, "pool:main", "deferred");
    assert_eq!(count(&entry, "messages"), 100, "{entry}");
    assert_eq!(count(&entry, "in_flight"), 0, "{entry}");

    hop.set_behavior(Behavior::default());
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        hop.messages().is_empty(),
        "the hop is back, but nothing may be tried before its backoff ends"
    );

    let cli = Cli::of(&tern);
    cli.ok(&["queue", "flush"]);
    expect_exactly(&hop, &sent, "after the flush");
    wait_until("the queue to empty", Duration::from_secs(10), || {
        tern.queue_ids().is_empty()
    });
    assert_eq!(tern.counter("tern_delivered_recipients_total"), 100);
    assert_eq!(tern.counter("tern_bounced_recipients_total"), 0);
}

/// Two destinations down; `flush --destination pool:one` retries only
/// that one (its answer lists its messages), the other keeps waiting;
/// then the other is flushed by its bare recipient domain.
#[test]
fn flush_of_one_destination_leaves_the_other_waiting() {
    let one = sink();
    let two = sink();
    one.set_behavior(refusing_connections());
    two.set_behavior(refusing_connections());
    let tern = TernProcess::start(Options::with_config(&format!(
        "{}{}",
        delivery(LONG),
        pools(&[
            ("one", one.addr(), "one.test"),
            ("two", two.addr(), "two.test")
        ])
    )));
    let to_one = send(tern.addr(), "sender@origin.test", "r@one.test", "one", 10);
    let to_two = send(tern.addr(), "sender@origin.test", "r@two.test", "two", 10);
    wait_deferred(&tern, 20);
    one.set_behavior(Behavior::default());
    two.set_behavior(Behavior::default());

    let cli = Cli::of(&tern);
    let dry = cli.json(&["queue", "flush", "--destination", "pool:one", "--dry-run"]);
    assert_eq!(dry["dry_run"], true, "{dry}");
    assert_eq!(
        message_ids(&dry),
        ids(&to_one),
        "dry run lists pool:one's messages"
    );
    std::thread::sleep(SETTLE);
    assert!(one.messages().is_empty(), "a dry run flushes nothing");

    let answer = cli.json(&["queue", "flush", "--destination", "pool:one"]);
    assert_eq!(answer["action"], "flush", "{answer}");
    assert_eq!(count(&answer, "matched"), 10, "{answer}");
    assert_eq!(message_ids(&answer), ids(&to_one), "{answer}");
    expect_exactly(&one, &to_one, "pool:one after its flush");
    assert!(two.messages().is_empty(), "pool:two was not flushed");
    assert_eq!(queued(&tern), ids(&to_two));

    cli.ok(&["queue", "flush", "--destination", "two.test"]);
    expect_exactly(&two, &to_two, "two.test after its flush");
    assert_eq!(one.messages().len(), 10, "nothing more to pool:one");
}

/// Sets the flag when dropped, so a panicking test stops its load thread
/// (a scoped thread that never ends would hang the test).
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Connections per destination (one core): at most this many
/// transactions can be under way when a suspension starts.
const CONCURRENCY: usize = 4;

/// Messages to one.test and two.test alternate on one connection for a
/// few seconds. `pool:one` is suspended in the middle: after the
/// transactions under way finished, nothing more reaches it while two.test
/// keeps receiving; the summary and `/destinations` show the suspension;
/// after `resume` every message reached its hop exactly once.
#[test]
fn suspend_under_load_stops_one_destination_and_resume_delivers_all_once() {
    let one = sink();
    let two = sink();
    let tern = TernProcess::start(Options::with_config(&format!(
        "{}{}",
        delivery(&[("concurrency_per_destination", &CONCURRENCY.to_string())]),
        pools(&[
            ("one", one.addr(), "one.test"),
            ("two", two.addr(), "two.test")
        ])
    )));
    let admin = Admin::of(&tern);
    let cli = Cli::of(&tern);
    let addr = tern.addr();
    let stop = AtomicBool::new(false);
    let sent: Mutex<Vec<Sent>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        s.spawn(|| {
            let from = "sender@origin.test";
            let mut c = Client::ehlo(addr);
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                for d in ["one", "two"] {
                    let name = format!("{d}-{i}");
                    let rcpt = format!("r@{d}.test");
                    let id = c.send_message(from, &[&rcpt], &content(from, &rcpt, &name));
                    sent.lock().unwrap().push(Sent { name, id, rcpt });
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            c.quit();
        });
        wait_until(
            "pool:one to receive under load",
            Duration::from_secs(15),
            || one.messages().len() >= 20 && two.messages().len() >= 20,
        );
        let answer = cli.json(&["destination", "suspend", "pool:one"]);
        let at_answer = one.messages().len();
        assert_eq!(
            answer["destination"], "pool:one",
            "the suspension: {answer}"
        );
        // Transactions under way finish; nothing new starts.
        std::thread::sleep(Duration::from_secs(1));
        let settled = one.messages().len();
        assert!(
            settled - at_answer <= CONCURRENCY,
            "{} messages reached pool:one after the suspend answered (at most {CONCURRENCY} \
             transactions can have been under way)",
            settled - at_answer
        );
        let two_settled = two.messages().len();
        let sent_settled = sent.lock().unwrap().len();

        std::thread::sleep(Duration::from_secs(3));
        assert_eq!(
            one.messages().len(),
            settled,
            "pool:one is suspended: nothing new may reach it"
        );
        let sent_now = sent.lock().unwrap().len();
        assert!(
            sent_now >= sent_settled + 20,
            "the load went on ({sent_settled} -> {sent_now} sent)"
        );
        assert!(
            two.messages().len() >= two_settled + 5,
            "pool:two goes on receiving ({two_settled} -> {})",
            two.messages().len()
        );
        let entry = admin
            .summary_of("pool:one")
            .unwrap_or_else(|| panic!("pool:one not in {}", admin.summary()));
        assert_eq!(entry["state"], "suspended", "{entry}");
        assert!(
            count(&entry, "messages") >= 10,
            "mail waits for pool:one: {entry}"
        );
        assert_eq!(admin.suspended(), vec!["pool:one".to_string()]);
        stop.store(true, Ordering::SeqCst);
    });
    std::thread::sleep(SETTLE);
    let sent = sent.into_inner().unwrap();
    let (to_one, to_two): (Vec<Sent>, Vec<Sent>) =
        sent.into_iter().partition(|s| s.rcpt == "r@one.test");
    assert!(
        one.messages().len() < to_one.len(),
        "some mail waits for pool:one"
    );
    cli.ok(&["destination", "resume", "pool:one"]);
    assert!(admin.suspended().is_empty(), "resumed");
    expect_exactly(&one, &to_one, "pool:one after the resume");
    expect_exactly(&two, &to_two, "pool:two");
    wait_until("the queue to empty", Duration::from_secs(10), || {
        tern.queue_ids().is_empty()
    });
    assert_eq!(
        tern.counter("tern_bounced_recipients_total"),
        0,
        "nothing bounces"
    );
}

/// `--for` ends a suspension by itself: mail to the destination waits,
/// then goes without a resume; other destinations are not affected.
#[test]
fn suspension_for_a_duration_ends_by_itself() {
    let one = sink();
    let two = sink();
    let tern = TernProcess::start(Options::with_config(&format!(
        "{}{}",
        delivery(&[]),
        pools(&[
            ("one", one.addr(), "one.test"),
            ("two", two.addr(), "two.test")
        ])
    )));
    let admin = Admin::of(&tern);
    let cli = Cli::of(&tern);
    cli.ok(&["destination", "suspend", "one.test", "--for", "4s"]);
    assert_eq!(admin.suspended().len(), 1, "one suspension");
    let to_one = send(tern.addr(), "sender@origin.test", "r@one.test", "one", 5);
    let to_two = send(tern.addr(), "sender@origin.test", "r@two.test", "two", 5);
    expect_exactly(&two, &to_two, "two.test is not suspended");
    assert!(one.messages().is_empty(), "one.test is suspended");
    // The suspension ends about 4 s after it began, far below the bound.
    expect_exactly(&one, &to_one, "one.test after the suspension ended");
    assert!(admin.suspended().is_empty(), "the suspension is over");
}

/// A message held with `tern queue hold ID` is never attempted, also
/// after a SIGKILL and a restart on the same data directory (another
/// message, not held, is delivered meanwhile); `release` delivers it.
#[test]
fn hold_survives_sigkill_and_release_delivers() {
    let hop = sink();
    hop.set_behavior(deferring_recipients());
    let mut tern = TernProcess::start(Options::with_config(&format!(
        "{}{}",
        delivery(&[]),
        pools(&[("main", hop.addr(), "example.com")])
    )));
    let held = send(
        tern.addr(),
        "sender@origin.test",
        "rcpt@example.com",
        "held",
        1,
    );
    let free = send(
        tern.addr(),
        "sender@origin.test",
        "rcpt@example.com",
        "free",
        1,
    );
    wait_deferred(&tern, 2);
    let answer = Cli::of(&tern).json(&["queue", "hold", &held[0].id]);
    assert_eq!(answer["action"], "hold", "{answer}");
    assert_eq!(count(&answer, "matched"), 1, "{answer}");
    assert_eq!(message_ids(&answer), ids(&held), "{answer}");

    hop.set_behavior(Behavior::default());
    expect_exactly(&hop, &free, "the message not held, at its retry");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        subjects(&hop.messages()),
        names(&free),
        "the held one is not tried"
    );
    let entry = Admin::of(&tern)
        .summary_of("pool:main")
        .expect("pool:main in the summary");
    assert_eq!(entry["state"], "held", "{entry}");
    assert_eq!(count(&entry, "held"), 1, "{entry}");

    tern.kill();
    tern.restart();
    assert_eq!(
        queued(&tern),
        ids(&held),
        "the held message survives the SIGKILL"
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        subjects(&hop.messages()),
        names(&free),
        "still held after the restart: not tried"
    );
    let admin = Admin::of(&tern);
    let entry = admin
        .summary_of("pool:main")
        .expect("pool:main in the summary");
    assert_eq!(entry["state"], "held", "after the restart: {entry}");

    let answer = Cli::of(&tern).json(&["queue", "release", &held[0].id]);
    assert_eq!(count(&answer, "matched"), 1, "{answer}");
    let mut both = free.clone();
    both.extend(held);
    expect_exactly(&hop, &both, "released");
    wait_until("the queue to empty", Duration::from_secs(10), || {
        tern.queue_ids().is_empty()
    });
}

/// Unfolded text of a message (header continuation lines joined).
fn unfolded(m: &SinkMessage) -> String {
    String::from_utf8_lossy(&m.content)
        .replace("\r\n ", " ")
        .replace("\r\n\t", " ")
}

/// Three destinations whose hops defer every recipient (ten-minute
/// retries) and the senders' domain routed to a fourth hop that accepts.
/// `bounce --destination pool:alpha --reason R`: a dry run lists alpha's
/// messages and changes nothing; then one DSN per message to the sender,
/// with status 5.0.0 and the reason. `delete --destination pool:beta`
/// (dry run first): beta's messages are gone, no DSN. gamma's messages
/// are untouched by both and delivered when flushed.
#[test]
fn bounce_and_delete_a_destination_and_nothing_else() {
    const REASON: &str = "operator cleanup for ticket 4711";
    let (alpha, beta, gamma, home) = (sink(), sink(), sink(), sink());
    for s in [&alpha, &beta, &gamma] {
        s.set_behavior(deferring_recipients());
    }
    let tern = TernProcess::start(Options::with_config(&format!(
        "{}{}",
        delivery(LONG),
        pools(&[
            ("alpha", alpha.addr(), "alpha.test"),
            ("beta", beta.addr(), "beta.test"),
            ("gamma", gamma.addr(), "gamma.test"),
            ("home", home.addr(), "sender.test"),
        ])
    )));
    let from = "someone@sender.test";
    let mut to_alpha = Vec::new();
    for i in 0..3 {
        to_alpha.extend(send(
            tern.addr(),
            from,
            &format!("a{i}@alpha.test"),
            &format!("alpha{i}"),
            1,
        ));
    }
    let to_beta = send(tern.addr(), from, "b@beta.test", "beta", 3);
    let to_gamma = send(tern.addr(), from, "c@gamma.test", "gamma", 2);
    wait_deferred(&tern, 8);
    let mut all: Vec<String> = [ids(&to_alpha), ids(&to_beta), ids(&to_gamma)].concat();
    all.sort();
    assert_eq!(queued(&tern), all);

    let cli = Cli::of(&tern);
    let dry = cli.json(&[
        "queue",
        "bounce",
        "--destination",
        "pool:alpha",
        "--reason",
        REASON,
        "--dry-run",
    ]);
    assert_eq!(dry["dry_run"], true, "{dry}");
    assert_eq!(count(&dry, "matched"), 3, "{dry}");
    assert_eq!(
        message_ids(&dry),
        ids(&to_alpha),
        "dry run lists alpha's messages"
    );
    std::thread::sleep(SETTLE);
    assert!(home.messages().is_empty(), "a dry run sends no DSN");
    assert_eq!(queued(&tern), all, "a dry run changes nothing");

    let answer = cli.json(&[
        "queue",
        "bounce",
        "--destination",
        "pool:alpha",
        "--reason",
        REASON,
    ]);
    assert_eq!(answer["action"], "bounce", "{answer}");
    assert_eq!(answer["dry_run"], false, "{answer}");
    assert_eq!(message_ids(&answer), ids(&to_alpha), "{answer}");
    home.wait_for(3, ARRIVE_WAIT);
    std::thread::sleep(SETTLE);
    let dsns = home.messages();
    assert_eq!(dsns.len(), 3, "one DSN per bounced message");
    let mut bounced: Vec<String> = Vec::new();
    for dsn in &dsns {
        assert_eq!(dsn.mail_from, "", "a DSN has the null reverse path");
        assert_eq!(dsn.rcpts, vec![from.to_string()], "to the sender");
        let (_, report) = dsn.delivery_status();
        assert!(report.contains("Action: failed"), "{report}");
        assert!(report.contains("Status: 5.0.0"), "{report}");
        assert!(
            unfolded(dsn).contains(REASON),
            "the operator's reason is in the DSN:\n{}",
            unfolded(dsn)
        );
        let rcpt = report
            .lines()
            .find_map(|l| l.strip_prefix("Final-Recipient: rfc822; "))
            .unwrap_or_else(|| panic!("no Final-Recipient in {report}"))
            .trim()
            .to_string();
        bounced.push(rcpt);
    }
    bounced.sort();
    assert_eq!(
        bounced,
        vec!["a0@alpha.test", "a1@alpha.test", "a2@alpha.test"]
    );
    let mut left: Vec<String> = [ids(&to_beta), ids(&to_gamma)].concat();
    left.sort();
    wait_until(
        "alpha's messages to leave the queue",
        Duration::from_secs(10),
        || queued(&tern) == left,
    );
    assert_eq!(tern.counter("tern_bounced_recipients_total"), 3);

    let dry = cli.json(&["queue", "delete", "--destination", "pool:beta", "--dry-run"]);
    assert_eq!(message_ids(&dry), ids(&to_beta), "{dry}");
    std::thread::sleep(SETTLE);
    assert_eq!(queued(&tern), left, "a dry run deletes nothing");
    let answer = cli.json(&["queue", "delete", "--destination", "pool:beta"]);
    assert_eq!(answer["action"], "delete", "{answer}");
    assert_eq!(message_ids(&answer), ids(&to_beta), "{answer}");
    wait_until(
        "beta's messages to leave the queue",
        Duration::from_secs(10),
        || queued(&tern) == ids(&to_gamma),
    );
    std::thread::sleep(SETTLE);
    assert_eq!(home.messages().len(), 3, "delete sends no DSN");
    assert_eq!(tern.counter("tern_dsns_queued_total"), 3);

    gamma.set_behavior(Behavior::default());
    cli.ok(&["queue", "flush", "--destination", "pool:gamma"]);
    expect_exactly(&gamma, &to_gamma, "gamma, untouched by bounce and delete");
    assert!(alpha.messages().is_empty() && beta.messages().is_empty());
}

/// A wrong token, for [`Admin::with_token`].
const WRONG_TOKEN: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Every state-changing admin request without the token or with a wrong
/// one gets 401 (a JSON error) and changes nothing: the message stays
/// queued and not held, nothing is suspended, no resubmission request or
/// route override exists. `GET /metrics` needs no token on loopback. The
/// same requests with the token work.
#[test]
fn admin_api_without_the_token_is_refused_and_changes_nothing() {
    let hop = sink();
    hop.set_behavior(deferring_recipients());
    let other = sink();
    let tern = TernProcess::start(Options::with_config(&format!(
        "{}{}",
        delivery(LONG),
        pools(&[
            ("alpha", hop.addr(), "alpha.test"),
            ("beta", other.addr(), "beta.test")
        ])
    )));
    let sent = send(tern.addr(), "sender@origin.test", "r@alpha.test", "m", 1);
    let id = sent[0].id.clone();
    wait_deferred(&tern, 1);
    let now = SystemTime::now();
    let window = json!({
        "start": admin::rfc3339(now - Duration::from_secs(3600)),
        "end": admin::rfc3339(now - Duration::from_secs(1)),
    });
    let requests: Vec<(&str, String, Option<String>)> = vec![
        (
            "POST",
            "/queue/hold".into(),
            Some(json!({"id": id}).to_string()),
        ),
        (
            "POST",
            "/queue/delete".into(),
            Some(json!({"id": id}).to_string()),
        ),
        (
            "POST",
            "/queue/bounce".into(),
            Some(json!({"id": id, "reason": "no"}).to_string()),
        ),
        (
            "POST",
            "/queue/flush".into(),
            Some(json!({"all": true}).to_string()),
        ),
        (
            "POST",
            "/destinations/suspend".into(),
            Some(json!({"destination": "pool:alpha"}).to_string()),
        ),
        ("POST", "/resubmit".into(), Some(window.to_string())),
        ("PUT", "/routes/alpha.test".into(), Some("beta".into())),
        ("DELETE", "/routes/alpha.test".into(), None),
    ];
    for client in [
        Admin::anonymous(tern.admin_addr()),
        Admin::with_token(tern.admin_addr(), WRONG_TOKEN),
    ] {
        for (method, path, body) in &requests {
            let r = client.request(method, path, body.as_deref());
            assert_eq!(
                r.code, 401,
                "{method} {path} with token {:?}: {} {}",
                client.token, r.code, r.body
            );
            let err = r.json();
            assert!(
                err["error"].is_string(),
                "401 body is a JSON error: {}",
                r.body
            );
        }
    }
    // A wrong token through the CLI too.
    let wrong = tern.data_dir().join("..").join("wrong-token");
    std::fs::write(&wrong, format!("{WRONG_TOKEN}\n")).unwrap();
    let mut cli = Cli::of(&tern);
    cli.token_file = Some(wrong);
    cli.fails(&["queue", "hold", &id]);
    cli.fails(&["destination", "suspend", "pool:alpha"]);

    // Nothing changed.
    let admin = Admin::of(&tern);
    assert_eq!(queued(&tern), vec![id.clone()], "still queued");
    let entry = admin
        .summary_of("pool:alpha")
        .expect("pool:alpha in the summary");
    assert_ne!(entry["state"], "held", "not held: {entry}");
    assert_eq!(count(&entry, "held"), 0, "not held: {entry}");
    assert!(admin.suspended().is_empty(), "nothing suspended");
    assert!(
        admin.resubmit_requests().is_empty(),
        "no resubmission request"
    );
    let routes = admin.get("/routes");
    assert_eq!(routes.code, 200);
    assert!(
        !routes.body.contains("override"),
        "no route override: {}",
        routes.body
    );
    assert!(hop.messages().is_empty() && other.messages().is_empty());

    // Metrics on loopback need no token.
    let metrics = Admin::anonymous(tern.admin_addr()).get("/metrics");
    assert_eq!(metrics.code, 200, "{}", metrics.body);
    assert!(metrics.body.contains("tern_messages_accepted_total"));

    // With the token the same requests work.
    let answer = admin.post("/queue/hold", &json!({"id": id})).ok();
    assert_eq!(count(&answer, "matched"), 1, "{answer}");
    let entry = admin
        .summary_of("pool:alpha")
        .expect("pool:alpha in the summary");
    assert_eq!(count(&entry, "held"), 1, "held with the token: {entry}");
    let r = admin.request("PUT", "/routes/alpha.test", Some("beta"));
    assert_eq!(r.code, 200, "route PUT with the token: {}", r.body);
    let r = admin.post(
        "/destinations/suspend",
        &json!({"destination": "pool:beta"}),
    );
    assert_eq!(r.code, 200, "suspend with the token: {}", r.body);
    assert_eq!(admin.suspended(), vec!["pool:beta".to_string()]);
}

/// One message bounced by its queue id (`tern queue bounce ID`, no
/// reason given): one DSN, to its sender only; the messages of another
/// sender deleted by `--sender` (no DSN); `--recipient` with `--sender`
/// matches only messages that match both (here none).
#[test]
fn bounce_by_id_and_delete_by_sender_or_recipient() {
    let (alpha, home) = (sink(), sink());
    alpha.set_behavior(deferring_recipients());
    let tern = TernProcess::start(Options::with_config(&format!(
        "{}{}",
        delivery(LONG),
        pools(&[
            ("alpha", alpha.addr(), "alpha.test"),
            ("home", home.addr(), "sender.test"),
        ])
    )));
    let first = send(tern.addr(), "one@sender.test", "r@alpha.test", "first", 2);
    let second = send(tern.addr(), "two@sender.test", "r@alpha.test", "second", 2);
    let third = send(tern.addr(), "one@sender.test", "q@alpha.test", "third", 1);
    wait_deferred(&tern, 5);
    let cli = Cli::of(&tern);

    let answer = cli.json(&["queue", "bounce", &first[0].id]);
    assert_eq!(message_ids(&answer), vec![first[0].id.clone()], "{answer}");
    let dsns = home.wait_for(1, ARRIVE_WAIT);
    assert_eq!(dsns[0].mail_from, "");
    assert_eq!(dsns[0].rcpts, vec!["one@sender.test".to_string()]);
    let (_, report) = dsns[0].delivery_status();
    assert!(report.contains("Status: 5.0.0"), "{report}");
    assert!(
        report.contains("Final-Recipient: rfc822; r@alpha.test"),
        "{report}"
    );

    let answer = cli.json(&["queue", "delete", "--sender", "two@sender.test"]);
    assert_eq!(message_ids(&answer), ids(&second), "{answer}");
    let answer = cli.json(&[
        "queue",
        "delete",
        "--recipient",
        "q@alpha.test",
        "--sender",
        "two@sender.test",
    ]);
    assert_eq!(count(&answer, "matched"), 0, "both must match: {answer}");
    let mut left = [ids(&first[1..]), ids(&third)].concat();
    left.sort();
    wait_until(
        "the bounced and deleted messages to go",
        Duration::from_secs(10),
        || queued(&tern) == left,
    );
    std::thread::sleep(SETTLE);
    assert_eq!(home.messages().len(), 1, "one DSN, for the bounce only");
    assert_eq!(tern.counter("tern_dsns_queued_total"), 1);
    assert!(alpha.messages().is_empty());
}
