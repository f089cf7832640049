//! Shadow redundancy, first part (issue 6): two real nodes on loopback.
//! A message answered 250 by node A is already a shadow copy on node B
//! (checked right after each 250, and after SIGKILLing A); without a
//! reachable peer, A accepts without redundancy (counted) or, with
//! `reject_on_shadow_failure`, answers 451 4.4.0 and keeps nothing.

use std::net::SocketAddr;
use std::path::Path;

use tern_tests::server::{Options, PortReservation, TernProcess};
use tern_tests::smtp::message;
use tern_tests::tls;

fn node_config(node: &str, peer: &str, peer_addr: SocketAddr, extra: &str) -> String {
    format!(
        "[delivery]\nhold = true\n\
         [cluster]\nnode_id = \"{node}\"\nshadow_timeout = \"2s\"\n{extra}\n\
         peers = [ {} ]\n{}",
        tls::peer(peer, peer_addr, None),
        tls::tls_section()
    )
}

/// `cfg` delivering to `to` instead of holding the queue.
fn relay(to: SocketAddr, cfg: String) -> String {
    cfg.replace(
        "[delivery]\nhold = true\n",
        &format!("[server]\nrelay_to = \"{to}\"\n[delivery]\nmaintenance_interval = \"200ms\"\n"),
    )
}

/// Nodes A and B on their reserved ports, shadowing each other, with
/// `timers` in both `[cluster]` sections; each delivers to its address
/// (`Some`) or holds its queue (`None`).
fn pair(
    a: (PortReservation, Option<SocketAddr>),
    b: (PortReservation, Option<SocketAddr>),
    timers: &str,
) -> (TernProcess, TernProcess) {
    let config = |node: &str, peer: &str, peer_addr: SocketAddr, to: Option<SocketAddr>| {
        let cfg = node_config(node, peer, peer_addr, timers);
        Options::with_config(&match to {
            Some(to) => relay(to, cfg),
            None => cfg,
        })
    };
    let (a_addr, b_addr) = (a.0.addr(), b.0.addr());
    let b = TernProcess::start_on(config("b", "a", a_addr, b.1), b.0);
    let a = TernProcess::start_on(config("a", "b", b_addr, a.1), a.0);
    (a, b)
}

/// Five messages, subjects m0..m4, through `node`.
fn send_five(node: &TernProcess) {
    let mut c = node.ehlo();
    for i in 0..5 {
        c.send_message(
            "sender@example.org",
            &["rcpt@example.com"],
            &message(&format!("m{i}"), &["x"]),
        );
    }
    c.quit();
}

/// (primary node, primary queue id, message bytes) of every shadow copy
/// held in `data_dir`, read as `tern queue shadow` does.
fn shadow_copies(data_dir: &Path) -> Vec<(String, String, Vec<u8>)> {
    tern_engine::cli::queue::shadow_copies(data_dir)
        .expect("read shadow copies")
        .into_iter()
        .map(|(_, origin, m)| (origin.node, origin.queue_id, m.message.to_vec()))
        .collect()
}

#[test]
fn every_250_has_a_shadow_copy_on_the_peer() {
    let (ra, rb) = (PortReservation::new(), PortReservation::new());
    let (a_addr, b_addr) = (ra.addr(), rb.addr());
    let b = TernProcess::start_on(Options::with_config(&node_config("b", "a", a_addr, "")), rb);
    let mut a = TernProcess::start_on(Options::with_config(&node_config("a", "b", b_addr, "")), ra);
    let mut c = a.ehlo();
    let mut ids = Vec::new();
    for i in 0..10 {
        let id = c.send_message(
            "sender@example.org",
            &["rcpt@example.com", "other@example.net"],
            &message(&format!("m{i}"), &["body"]),
        );
        // The 250 came after B's 250, which came after B's group commit.
        let copies = shadow_copies(&b.data_dir());
        assert!(
            copies
                .iter()
                .any(|(node, qid, _)| node == "a" && *qid == id),
            "{id} not on B right after A's 250"
        );
        ids.push(id);
    }
    c.quit();
    // B holds exactly what A stored (A's Received header included).
    let stored = tern_tests::queue::stored(&a.data_dir());
    for (node, qid, bytes) in shadow_copies(&b.data_dir()) {
        assert_eq!(node, "a");
        assert_eq!(Some(&bytes), stored.get(&qid), "copy of {qid} differs");
    }
    assert_eq!(a.counter("tern_shadow_copies_made_total"), 10);
    assert_eq!(b.counter("tern_shadow_copies_held_total"), 10);
    assert_eq!(a.counter("tern_non_redundant_accepts_total"), 0);
    // Stop A the hard way right after a 250: B still has that copy.
    let mut c = a.ehlo();
    let last = c.send_message(
        "sender@example.org",
        &["rcpt@example.com"],
        &message("last", &["x"]),
    );
    a.kill();
    let copies = shadow_copies(&b.data_dir());
    assert_eq!(copies.len(), 11);
    assert!(copies.iter().any(|(_, qid, _)| *qid == last));
}

#[test]
fn without_a_reachable_peer_the_message_is_accepted_without_redundancy() {
    let nobody = PortReservation::new(); // reserved, never listening
    let a = TernProcess::start(Options::with_config(&node_config(
        "a",
        "b",
        nobody.addr(),
        "",
    )));
    let mut c = a.ehlo();
    let id = c.send_message(
        "sender@example.org",
        &["rcpt@example.com"],
        &message("m", &["x"]),
    );
    c.quit();
    assert_eq!(a.queue_ids(), vec![id]);
    assert_eq!(a.counter("tern_non_redundant_accepts_total"), 1);
    assert_eq!(a.counter("tern_shadow_copies_failed_total"), 1);
    assert!(a.stderr().contains("accepted without redundancy"));
}

#[test]
fn reject_on_shadow_failure_answers_451_and_keeps_nothing() {
    let nobody = PortReservation::new();
    let mut a = TernProcess::start(Options::with_config(&node_config(
        "a",
        "b",
        nobody.addr(),
        "reject_on_shadow_failure = true",
    )));
    let mut c = a.ehlo();
    let r = c.data_message(
        "sender@example.org",
        &["rcpt@example.com"],
        &message("m", &["x"]),
    );
    r.expect(451, "4.4.0");
    assert!(
        r.text().contains("Message failed to be made redundant"),
        "{}",
        r.text()
    );
    c.quit();
    assert!(a.queue_ids().is_empty(), "nothing kept");
    assert!(a.stop_gracefully().success());
    a.restart();
    assert!(
        a.queue_ids().is_empty(),
        "nothing kept after a restart either"
    );
}

#[test]
fn shadow_copies_are_discarded_after_the_primary_delivers() {
    let sink = tern_tests::sink::TestSink::start("127.0.0.1:0".parse().unwrap());
    let (ra, rb) = (PortReservation::new(), PortReservation::new());
    let timers = "shadow_heartbeat_frequency = \"300ms\"";
    // A delivers to the sink, B holds.
    let (a, b) = pair((ra, Some(sink.addr())), (rb, None), timers);
    send_five(&a);
    sink.wait_for(5, std::time::Duration::from_secs(10));
    // Within a few heartbeats B's shadow queue drains.
    tern_tests::server::wait_until(
        "B to drop its copies",
        std::time::Duration::from_secs(10),
        || b.counter("tern_shadow_discards_total") == 5,
    );
    tern_tests::server::wait_until(
        "the shadow cursor to pass them",
        std::time::Duration::from_secs(10),
        || shadow_copies(&b.data_dir()).is_empty(),
    );
    assert!(b.counter("tern_shadow_heartbeats_total") >= 1);
    assert_eq!(sink.messages().len(), 5, "delivered once, by A");
}

/// More handled messages between two heartbeats than one `XQDISCARD`
/// answer can list (100 reply lines): the shadow asks again until it has
/// them all, and drops every copy.
#[test]
fn more_discards_than_one_answer_holds() {
    const N: u64 = 150;
    let sink = tern_tests::sink::TestSink::start("127.0.0.1:0".parse().unwrap());
    let (ra, rb) = (PortReservation::new(), PortReservation::new());
    let timers = "shadow_heartbeat_frequency = \"1s\"";
    let (a, b) = pair((ra, Some(sink.addr())), (rb, None), timers);
    let mut c = a.ehlo();
    for i in 0..N {
        c.send_message(
            "sender@example.org",
            &["rcpt@example.com"],
            &message(&format!("m{i}"), &["x"]),
        );
    }
    c.quit();
    sink.wait_for(N as usize, std::time::Duration::from_secs(30));
    tern_tests::server::wait_until(
        "B to drop every copy",
        std::time::Duration::from_secs(15),
        || b.counter("tern_shadow_discards_total") == N,
    );
    assert!(
        !b.stderr().contains("malformed XQDISCARD"),
        "{}",
        b.stderr()
    );
}

/// A next hop that refuses `rcpt@example.com` (550 5.1.1): every message
/// to it bounces.
fn refusing_sink() -> tern_tests::sink::TestSink {
    let sink = tern_tests::sink::TestSink::start("127.0.0.1:0".parse().unwrap());
    sink.set_behavior(tern_tests::sink::Behavior {
        rcpt: vec![("rcpt@example.com".into(), 550, "5.1.1 no such user".into())],
        ..Default::default()
    });
    sink
}

/// SPEC 3: a message is released only with its DSN redundant too. A's
/// next hop refuses the recipient (550): A queues a DSN for the sender and
/// makes a shadow copy of it on B before the original's `done`.
#[test]
fn a_bounce_gets_a_shadow_copy_too() {
    let sink = refusing_sink();
    let (ra, rb) = (PortReservation::new(), PortReservation::new());
    // No discards during the test: B keeps what it got.
    let quiet = "shadow_heartbeat_frequency = \"1h\"";
    let (a, b) = pair((ra, Some(sink.addr())), (rb, None), quiet);
    let mut c = a.ehlo();
    let id = c.send_message(
        "sender@example.org",
        &["rcpt@example.com"],
        &message("bounces", &["x"]),
    );
    c.quit();
    // The DSN reaches the sink (to the sender) once A bounced the original.
    sink.wait_for(1, std::time::Duration::from_secs(15));
    tern_tests::server::wait_until(
        "A to count the bounce",
        std::time::Duration::from_secs(10),
        || a.counter("tern_dsns_queued_total") == 1,
    );
    let copies = shadow_copies(&b.data_dir());
    assert!(
        copies.iter().any(|(_, qid, _)| *qid == id),
        "the original's copy"
    );
    let dsn = copies
        .iter()
        .find(|(_, qid, _)| *qid != id)
        .expect("a shadow copy of the DSN on B");
    let text = String::from_utf8_lossy(&dsn.2);
    assert!(text.contains("message/delivery-status"), "{text}");
    assert_eq!(a.counter("tern_shadow_copies_made_total"), 2);
}

/// With a peer that takes connections but never answers, the DSNs of a
/// batch of bounces wait one `shadow_timeout` for their shadow copies, not
/// one each: A's status writer makes the copies side by side (before, 8
/// bounces stalled it for 8 x 4 s, and every other delivery result with
/// them).
#[test]
fn dsn_copies_to_a_silent_peer_wait_together() {
    let sink = refusing_sink();
    // The kernel completes connections into the backlog; nobody accepts
    // or greets.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let cfg = node_config(
        "a",
        "b",
        silent.local_addr().unwrap(),
        "shadow_heartbeat_frequency = \"1h\"",
    )
    .replace("shadow_timeout = \"2s\"", "shadow_timeout = \"4s\"");
    let a = TernProcess::start(Options::with_config(&relay(sink.addr(), cfg)));
    const N: usize = 8;
    // One session each, at once: every 250 waits for the silent peer too
    // (then the message is kept without redundancy).
    std::thread::scope(|scope| {
        for i in 0..N {
            let addr = a.addr();
            scope.spawn(move || {
                let mut c = tern_tests::smtp::Client::ehlo(addr);
                c.send_message(
                    "sender@example.org",
                    &["rcpt@example.com"],
                    &message(&format!("b{i}"), &["x"]),
                );
                c.quit();
            });
        }
    });
    assert_eq!(a.counter("tern_non_redundant_accepts_total"), N as u64);
    tern_tests::server::wait_until(
        "A to queue a DSN",
        std::time::Duration::from_secs(30),
        || a.counter("tern_dsns_queued_total") >= 1,
    );
    // From the first DSN: side by side, one to three writer passes of
    // ~4 s; one after the other it took N x 4 s = 32 s.
    tern_tests::server::wait_until(
        "every DSN's shadow copy to give up",
        std::time::Duration::from_secs(20),
        || a.counter("tern_shadow_copies_failed_total") == 2 * N as u64,
    );
    assert_eq!(a.counter("tern_dsns_queued_total"), N as u64);
    // The DSNs still go out (without redundancy).
    sink.wait_for(N, std::time::Duration::from_secs(30));
    drop(silent);
}

/// SPEC 3: a shadow asks for discards on any session it has open to the
/// primary anyway, not only on heartbeats. Heartbeats every hour here:
/// B learns that A delivered its 5 messages when B sends its own mail to
/// A over the shadow link.
#[test]
fn discards_are_asked_on_the_shadow_link_too() {
    let sink = tern_tests::sink::TestSink::start("127.0.0.1:0".parse().unwrap());
    let (ra, rb) = (PortReservation::new(), PortReservation::new());
    let quiet = "shadow_heartbeat_frequency = \"1h\"";
    // A delivers to the sink, B holds.
    let (a, b) = pair((ra, Some(sink.addr())), (rb, None), quiet);
    send_five(&a);
    sink.wait_for(5, std::time::Duration::from_secs(10));
    // B's own message goes to A as a shadow copy; that session asks.
    let mut c = b.ehlo();
    c.send_message(
        "s@example.org",
        &["r@example.com"],
        &message("b's own", &["x"]),
    );
    c.quit();
    tern_tests::server::wait_until(
        "B to drop the copies A delivered",
        std::time::Duration::from_secs(10),
        || b.counter("tern_shadow_discards_total") == 5,
    );
    assert_eq!(
        b.counter("tern_shadow_heartbeats_total"),
        0,
        "no heartbeat ran"
    );
    assert_eq!(
        a.counter("tern_shadow_copies_held_total"),
        1,
        "B's message on A"
    );
}

/// The ids of handled messages live in A's memory only; A's discard
/// watermark is rebuilt from its log. A delivers 5 messages while B does
/// not ask (heartbeat every hour), then A is SIGKILLed and restarted with
/// the same store: B (restarted to ask often) still learns that the copies
/// may go, from the watermark, and drops them without a takeover.
#[test]
fn discards_survive_a_primary_restart() {
    let sink = tern_tests::sink::TestSink::start("127.0.0.1:0".parse().unwrap());
    let (ra, rb) = (PortReservation::new(), PortReservation::new());
    let quiet = "shadow_heartbeat_frequency = \"1h\"";
    // A delivers to the sink, B holds.
    let (mut a, mut b) = pair((ra, Some(sink.addr())), (rb, None), quiet);
    send_five(&a);
    sink.wait_for(5, std::time::Duration::from_secs(10));
    assert_eq!(shadow_copies(&b.data_dir()).len(), 5);
    a.kill();
    a.restart();
    b.stop_gracefully();
    let chatty = "shadow_heartbeat_frequency = \"300ms\"";
    // (The harness restarts A on a new port: B's new config names it.)
    b.restart_with(Options::with_config(&node_config(
        "b",
        "a",
        a.addr(),
        chatty,
    )));
    tern_tests::server::wait_until(
        "B to drop the copies A handled before its restart",
        std::time::Duration::from_secs(10),
        || b.counter("tern_shadow_discards_total") == 5,
    );
    tern_tests::server::wait_until(
        "the shadow cursor to pass them",
        std::time::Duration::from_secs(10),
        || shadow_copies(&b.data_dir()).is_empty(),
    );
    assert_eq!(b.counter("tern_shadow_takeovers_total"), 0);
    assert_eq!(sink.messages().len(), 5, "delivered once, by A");
}

/// A (its next hop down) holds 5 messages; B holds their copies. A dies
/// for good: after `shadow_resubmit_time_span` B delivers them, once.
#[test]
fn shadow_takes_over_when_the_primary_is_gone_for_good() {
    let sink = tern_tests::sink::TestSink::start("127.0.0.1:0".parse().unwrap());
    let dead = PortReservation::new();
    let (ra, rb) = (PortReservation::new(), PortReservation::new());
    let timers = "shadow_heartbeat_frequency = \"300ms\"\nshadow_resubmit_time_span = \"2s\"";
    // A's next hop is down; B delivers to the sink.
    let (mut a, b) = pair((ra, Some(dead.addr())), (rb, Some(sink.addr())), timers);
    send_five(&a);
    assert_eq!(shadow_copies(&b.data_dir()).len(), 5);
    a.kill();
    let got = sink.wait_for(5, std::time::Duration::from_secs(20));
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert_eq!(sink.messages().len(), 5, "each message once");
    let mut subjects: Vec<String> = got.iter().map(|m| m.subject()).collect();
    subjects.sort();
    assert_eq!(subjects, vec!["m0", "m1", "m2", "m3", "m4"]);
    assert_eq!(b.counter("tern_shadow_takeovers_total"), 5);
    tern_tests::server::wait_until(
        "B's shadow queue to empty",
        std::time::Duration::from_secs(10),
        || shadow_copies(&b.data_dir()).is_empty(),
    );
    // A takeover is recorded: B restarting does not take them over again.
    let mut b = b;
    assert!(b.stop_gracefully().success());
    b.restart();
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_eq!(sink.messages().len(), 5, "no second takeover after restart");
}

/// B is SIGKILLed and restarted while it holds A's copies (their records
/// sit before B's queue cursor, held only by its `shadow` cursor); then A
/// dies for good. B must still know the copies and take them over.
#[test]
fn a_restarted_shadow_still_holds_and_takes_over_its_copies() {
    let sink = tern_tests::sink::TestSink::start("127.0.0.1:0".parse().unwrap());
    let dead = PortReservation::new();
    let (ra, rb) = (PortReservation::new(), PortReservation::new());
    let timers = "shadow_heartbeat_frequency = \"300ms\"\nshadow_resubmit_time_span = \"2s\"";
    // A's next hop is down; B delivers to the sink.
    let (mut a, mut b) = pair((ra, Some(dead.addr())), (rb, Some(sink.addr())), timers);
    send_five(&a);
    // B's maintenance moves its queue cursor past the copies.
    std::thread::sleep(std::time::Duration::from_millis(600));
    b.kill();
    b.restart();
    assert_eq!(
        shadow_copies(&b.data_dir()).len(),
        5,
        "the shadow cursor still holds them"
    );
    a.kill();
    let got = sink.wait_for(5, std::time::Duration::from_secs(20));
    let mut subjects: Vec<String> = got.iter().map(|m| m.subject()).collect();
    subjects.sort();
    assert_eq!(subjects, vec!["m0", "m1", "m2", "m3", "m4"]);
    assert_eq!(b.counter("tern_shadow_takeovers_total"), 5);
}

/// A loses its store (killed, started again on the same address with an
/// empty data directory: a new database id). B notices the new id at its
/// next heartbeat and delivers A's messages, once.
#[test]
fn shadow_takes_over_when_the_primary_comes_back_with_a_new_store() {
    let sink = tern_tests::sink::TestSink::start("127.0.0.1:0".parse().unwrap());
    let dead = PortReservation::new();
    let (ra, rb) = (PortReservation::new(), PortReservation::new());
    let (a_addr, b_addr) = (ra.addr(), rb.addr());
    // A long resubmit span: only the new database id can trigger this.
    let timers = "shadow_heartbeat_frequency = \"300ms\"\nshadow_resubmit_time_span = \"1h\"";
    let a_config = relay(dead.addr(), node_config("a", "b", b_addr, timers));
    let b = TernProcess::start_on(
        Options::with_config(&relay(sink.addr(), node_config("b", "a", a_addr, timers))),
        rb,
    );
    let mut a = TernProcess::start_on(Options::with_config(&a_config), ra);
    send_five(&a);
    a.kill();
    drop(a);
    // A again, same address, new (empty) store.
    let a2 = TernProcess::start_on(Options::with_config(&a_config), PortReservation::at(a_addr));
    let got = sink.wait_for(5, std::time::Duration::from_secs(20));
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert_eq!(sink.messages().len(), 5, "each message once");
    assert_eq!(got.len(), 5);
    assert_eq!(b.counter("tern_shadow_takeovers_total"), 5);
    assert!(a2.queue_ids().is_empty(), "the new store has nothing");
}

/// A sender that retries (its session timed out after the message was
/// stored) must not cause a second delivery: same client, Message-ID,
/// envelope and content within `duplicate_window` -> the first one's
/// queue id, nothing queued; different content is another message.
/// (Part of shadow redundancy: only a node that shadows to a peer checks;
/// `engine_commands::resend_without_peers_is_queued_again`.)
#[test]
fn a_resent_message_is_accepted_once() {
    let (a, _b) = pair(
        (PortReservation::new(), None),
        (PortReservation::new(), None),
        "",
    );
    let mut with_id = b"Message-ID: <retry-1@example.org>\r\n".to_vec();
    with_id.extend_from_slice(&message("retry", &["x"]));
    let first = a
        .ehlo()
        .send_message("s@example.org", &["r@example.com"], &with_id);
    let again = a
        .ehlo()
        .send_message("s@example.org", &["r@example.com"], &with_id);
    assert_eq!(first, again, "answered with the first queue id");
    // Another envelope, or no Message-ID: a different message.
    let other = a
        .ehlo()
        .send_message("s@example.org", &["q@example.com"], &with_id);
    assert_ne!(other, first);
    // Another message under the same Message-ID and envelope (someone
    // sending first with a later message's id): queued, not swallowed.
    let mut forged = b"Message-ID: <retry-1@example.org>\r\n".to_vec();
    forged.extend_from_slice(&message("not the retry", &["y"]));
    let different = a
        .ehlo()
        .send_message("s@example.org", &["r@example.com"], &forged);
    assert_ne!(different, first, "different content is a different message");
    let plain = message("no id", &["x"]);
    let p1 = a
        .ehlo()
        .send_message("s@example.org", &["r@example.com"], &plain);
    let p2 = a
        .ehlo()
        .send_message("s@example.org", &["r@example.com"], &plain);
    assert_ne!(p1, p2);
    let mut ids = a.queue_ids();
    ids.sort();
    let mut want = vec![first, other, different, p1, p2];
    want.sort();
    assert_eq!(ids, want);
    assert_eq!(a.counter("tern_duplicates_total"), 1);
}

fn shadow_status(node: &TernProcess) -> String {
    let out = std::process::Command::new(tern_tests::server::tern_bin())
        .args(["shadow", "status", "--admin"])
        .arg(node.admin_addr().to_string())
        .output()
        .expect("run tern shadow status");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn shadow_status_shows_peers_their_database_ids_and_copies_held() {
    let (ra, rb) = (PortReservation::new(), PortReservation::new());
    let (a_addr, b_addr) = (ra.addr(), rb.addr());
    let timers = "shadow_heartbeat_frequency = \"300ms\"";
    let b = TernProcess::start_on(
        Options::with_config(&node_config("b", "a", a_addr, timers)),
        rb,
    );
    let a = TernProcess::start_on(
        Options::with_config(&node_config("a", "b", b_addr, timers)),
        ra,
    );
    let mut c = a.ehlo();
    for i in 0..3 {
        c.send_message(
            "s@example.org",
            &["r@example.com"],
            &message(&format!("m{i}"), &["x"]),
        );
    }
    c.quit();
    let a_db = std::fs::read_to_string(a.data_dir().join("database-id")).unwrap();
    let want = format!("database {} last-heartbeat", a_db.trim());
    tern_tests::server::wait_until(
        "B's status to show A",
        std::time::Duration::from_secs(10),
        || {
            let s = shadow_status(&b);
            s.contains(&want) && s.contains("held-for-it 3")
        },
    );
    assert!(shadow_status(&a).contains("our messages: 3 shadowed, 0 without a shadow"));
    assert!(b
        .metrics()
        .contains("tern_shadow_queue_messages{primary=\"a\"} 3"));
}
