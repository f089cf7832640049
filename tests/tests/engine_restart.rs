//! Restarts and graceful shutdown of the real binary: queued messages
//! survive a stop and start on the same data directory, queue ids are never
//! reused, and SIGTERM lets a transaction in flight finish.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use tern_tests::server::{describe, first_reply, Options, TernProcess};
use tern_tests::smtp::{message, Client};

/// Sends `n` messages, a few per connection (so SO_REUSEPORT spreads them
/// over the cores); returns (id, content).
fn send_batch(tern: &TernProcess, tag: &str, n: usize) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < n {
        let mut c = tern.ehlo();
        for _ in 0..3.min(n - i) {
            let content = message(&format!("{tag} {i}"), &[".dot", "body"]);
            out.push((
                c.send_message("a@example.test", &["b@example.test"], &content),
                content,
            ));
            i += 1;
        }
        c.quit();
    }
    out
}

#[test]
fn messages_survive_a_graceful_restart_and_ids_are_not_reused() {
    let mut tern = TernProcess::start(Options {
        cores: 2,
        ..Options::default()
    });
    let first = send_batch(&tern, "before restart", 12);
    let status = tern.stop_gracefully();
    assert_eq!(status.code(), Some(0), "SIGTERM exit: {}", describe(status));
    // Readable while stopped.
    let ids_stopped = tern.queue_ids();
    assert_eq!(ids_stopped.len(), first.len());

    tern.restart();
    let ids: BTreeSet<String> = tern.queue_ids().into_iter().collect();
    for (id, content) in &first {
        assert!(ids.contains(id), "{id} lost over the restart");
        assert_eq!(tern.queue_show(id).content(), &content[..], "{id}");
    }
    let second = send_batch(&tern, "after restart", 12);
    let mut all: BTreeSet<String> = first.iter().map(|(id, _)| id.clone()).collect();
    for (id, _) in &second {
        assert!(all.insert(id.clone()), "queue id {id} reused after restart");
    }
    // Again, and the third generation of ids is new too.
    let status = tern.stop_gracefully();
    assert_eq!(status.code(), Some(0), "SIGTERM exit: {}", describe(status));
    tern.restart();
    let third = send_batch(&tern, "second restart", 6);
    for (id, _) in &third {
        assert!(all.insert(id.clone()), "queue id {id} reused after restart");
    }
    let queued: BTreeSet<String> = tern.queue_ids().into_iter().collect();
    assert_eq!(queued, all);
    let shards: BTreeSet<&str> = all.iter().map(|id| &id[..2]).collect();
    println!("{} messages over shards {shards:?}", all.len());
}

/// Waits (bounded) until a new connection is refused or answered 421.
fn wait_until_refusing(tern: &TernProcess) -> Option<tern_tests::smtp::Reply> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match first_reply(tern.addr()) {
            None => return None,
            Some(r) if r.code == 421 => return Some(r),
            // Accepted in the moment before the core saw the signal.
            Some(r) => assert!(
                Instant::now() < deadline,
                "new connections still get {r} long after SIGTERM"
            ),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sigterm_lets_the_transaction_in_flight_finish() {
    let mut tern = TernProcess::start(Options::with_config("[server]\nshutdown_grace = \"15s\"\n"));
    let mut idle = tern.ehlo();
    let mut c = tern.ehlo();
    c.expect("MAIL FROM:<a@example.test>", 250, "2.1.0");
    c.expect("RCPT TO:<b@example.test>", 250, "2.1.5");
    c.cmd("DATA").assert(354, None);
    let content = message("in flight", &["part one", "part two"]);
    let (head, tail) = content.split_at(content.len() / 2);
    c.send(head);

    tern.signal(libc::SIGTERM);
    // An idle session is told at once.
    idle.reply().expect(421, "4.3.2");
    idle.expect_closed();
    // New connections: refused (listener closed) or 421.
    match wait_until_refusing(&tern) {
        Some(r) => {
            r.expect(421, "4.3.2");
            println!("new connection after SIGTERM: {r}");
        }
        None => println!("new connection after SIGTERM: refused"),
    }
    if let Some(status) = tern.try_wait() {
        panic!(
            "tern exited ({}) with a transaction in flight; stderr:\n{}",
            tern_tests::server::describe(status),
            tern.stderr()
        );
    }

    // The transaction finishes normally and is acknowledged...
    let mut rest = tail.to_vec();
    rest.extend_from_slice(b".\r\n");
    c.send(&rest);
    let id = c.reply().queue_id();
    // ...then the session is closed, being idle during shutdown.
    c.reply().expect(421, "4.3.2");
    c.expect_closed();
    let status = tern
        .wait_exit(Duration::from_secs(20))
        .expect("tern did not exit after the last session ended");
    assert_eq!(status.code(), Some(0), "{}", describe(status));

    tern.restart();
    assert_eq!(tern.queue_ids(), vec![id.clone()]);
    assert_eq!(tern.queue_show(&id).content(), &content[..]);
}

#[test]
fn grace_period_bounds_an_unfinished_transaction() {
    let mut tern = TernProcess::start(Options::with_config("[server]\nshutdown_grace = \"1s\"\n"));
    let mut c = tern.ehlo();
    c.expect("MAIL FROM:<a@example.test>", 250, "2.1.0");
    c.expect("RCPT TO:<b@example.test>", 250, "2.1.5");
    c.cmd("DATA").assert(354, None);
    c.send(b"Subject: never finished\r\n\r\npart");
    tern.signal(libc::SIGTERM);
    let status = tern
        .wait_exit(Duration::from_secs(20))
        .expect("tern did not exit after the grace period");
    assert_eq!(status.code(), Some(0), "{}", describe(status));
    // The client never got a 250; whatever it reads now is not one.
    if let Ok(Some(r)) = c.try_reply() {
        assert_ne!(r.code, 250, "{r}");
    }
    assert!(tern.queue_list().is_empty());
}

#[test]
fn second_signal_exits_at_once() {
    let mut tern = TernProcess::start(Options::with_config("[server]\nshutdown_grace = \"60s\"\n"));
    let mut c = tern.ehlo();
    c.expect("MAIL FROM:<a@example.test>", 250, "2.1.0");
    tern.signal(libc::SIGINT);
    // Bounded wait for the first signal to be seen (new connections stop).
    let _ = wait_until_refusing(&tern);
    tern.signal(libc::SIGTERM);
    let status = tern
        .wait_exit(Duration::from_secs(10))
        .expect("second signal did not stop tern");
    assert_eq!(status.code(), Some(130), "{}", describe(status));
    let _ = c.try_reply();
}

#[test]
fn restart_after_a_kill_keeps_messages() {
    let mut tern = TernProcess::start(Options::default());
    let sent = send_batch(&tern, "before kill", 5);
    tern.kill();
    tern.restart();
    for (id, content) in &sent {
        assert_eq!(tern.queue_show(id).content(), &content[..], "{id}");
    }
    let mut c = Client::ehlo(tern.addr());
    let id = c.send_message("a@example.test", &["b@example.test"], b"x\r\n");
    c.quit();
    assert!(!sent.iter().any(|(s, _)| *s == id), "id {id} reused");
}
