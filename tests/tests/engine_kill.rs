//! Kill test of the real binary: `tern serve --cores 2` is SIGKILLed at a
//! random moment while 8 clients send; after a restart every message that
//! received 250 is in the queue under its id, byte-exact. Three rounds on
//! the same data directory, so later rounds also recover logs that were
//! killed before.
//!
//! Seed: `TERN_KILL_SEED=<u64>` reproduces a run's kill delays and
//! message contents.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tern_tests::queue::{stored, strip_received};
use tern_tests::server::{describe, Options, TernProcess};
use tern_tests::smtp::{dot_stuff, Client, Reply};

const ROUNDS: u64 = 3;
const CLIENTS: u64 = 8;
/// Each client stops after this many messages...
const MESSAGES_MAX: usize = 300;
/// ...or after this long, whichever comes first.
const SEND_TIME_MAX: Duration = Duration::from_secs(3);
/// The kill comes this long after the clients start (uniform).
const KILL_AFTER_MS: std::ops::Range<u64> = 100..2500;
/// Messages per connection before a client reconnects (spreads the
/// clients over both cores' SO_REUSEPORT listeners).
const PER_CONNECTION: usize = 25;
/// `tern queue show` (a process each) for this many acknowledged messages
/// per round; all of them are checked through the library reader.
const SHOW_SAMPLE: usize = 10;

/// A message of random size (up to ~8 KiB) and shape: dot lines, empty
/// lines, 8-bit octets; unique by its Message-ID.
fn content(rng: &mut StdRng, round: u64, client: u64, n: usize) -> Vec<u8> {
    let mut m =
        format!("Message-ID: <{round}.{client}.{n}@kill.test>\r\nSubject: kill test\r\n\r\n")
            .into_bytes();
    let lines = rng.gen_range(1..80);
    for _ in 0..lines {
        match rng.gen_range(0..10) {
            0 => m.extend_from_slice(b".\r\n"),
            1 => m.extend_from_slice(b"\r\n"),
            2 => m.extend_from_slice(b"..dot-stuffed on the wire\r\n"),
            _ => {
                let len = rng.gen_range(1..200);
                for _ in 0..len {
                    let b = match rng.gen_range(0..20) {
                        0 => 0xC3,
                        1 => 0xA9,
                        _ => rng.gen_range(b' '..=b'~'),
                    };
                    m.push(b);
                }
                m.extend_from_slice(b"\r\n");
            }
        }
    }
    m
}

/// Reads one reply; `Err` when the connection broke (the server died).
fn reply(c: &mut Client) -> io::Result<Reply> {
    c.try_reply()?
        .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "closed"))
}

/// One transaction, pipelined up to DATA. `Ok(id)` on 250; `Err` when the
/// connection broke; panics on any other reply (the server was alive and
/// answered something other than success).
fn send_one(c: &mut Client, content: &[u8]) -> io::Result<String> {
    c.try_send(b"MAIL FROM:<kill@example.test>\r\nRCPT TO:<sink@example.test>\r\nDATA\r\n")?;
    reply(c)?.expect(250, "2.1.0");
    reply(c)?.expect(250, "2.1.5");
    reply(c)?.assert(354, None);
    c.try_send(&dot_stuff(content))?;
    Ok(reply(c)?.queue_id())
}

/// A client's loop: returns every (id, content) that got a 250.
fn client(
    addr: std::net::SocketAddr,
    seed: u64,
    round: u64,
    id: u64,
    active: Arc<AtomicUsize>,
) -> Vec<(String, Vec<u8>)> {
    let mut rng = StdRng::seed_from_u64(seed ^ (round << 32) ^ id);
    let started = Instant::now();
    let mut acked = Vec::new();
    'connections: while acked.len() < MESSAGES_MAX && started.elapsed() < SEND_TIME_MAX {
        let Ok(mut c) = Client::connect(addr) else {
            break;
        };
        let greeted = reply(&mut c).and_then(|g| {
            g.assert(220, None);
            c.try_send(b"EHLO kill.test\r\n")?;
            reply(&mut c)
        });
        match greeted {
            Ok(r) => {
                r.assert(250, None);
            }
            Err(_) => break,
        }
        for _ in 0..PER_CONNECTION {
            if acked.len() >= MESSAGES_MAX || started.elapsed() >= SEND_TIME_MAX {
                break 'connections;
            }
            let m = content(&mut rng, round, id, acked.len());
            match send_one(&mut c, &m) {
                Ok(queue_id) => acked.push((queue_id, m)),
                Err(_) => break 'connections,
            }
        }
        let _ = c.try_send(b"QUIT\r\n");
        let _ = reply(&mut c);
    }
    active.fetch_sub(1, Ordering::SeqCst);
    acked
}

#[test]
fn sigkill_while_clients_send_loses_no_acknowledged_message() {
    let seed = std::env::var("TERN_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    println!("kill test seed: TERN_KILL_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut tern = TernProcess::start(Options {
        cores: 2,
        ..Options::default()
    });
    let mut all: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for round in 0..ROUNDS {
        if round > 0 {
            tern.restart();
        }
        let addr = tern.addr();
        let active = Arc::new(AtomicUsize::new(CLIENTS as usize));
        let clients: Vec<_> = (0..CLIENTS)
            .map(|id| {
                let active = active.clone();
                std::thread::spawn(move || client(addr, seed, round, id, active))
            })
            .collect();
        let delay = Duration::from_millis(rng.gen_range(KILL_AFTER_MS));
        std::thread::sleep(delay);
        let sending_at_kill = active.load(Ordering::SeqCst);
        let status = tern.kill();
        let mut acked = Vec::new();
        for c in clients {
            acked.extend(c.join().expect("client thread panicked"));
        }

        tern.restart();
        let queued = stored(&tern.data_dir());
        let listed: BTreeSet<String> = tern.queue_ids().into_iter().collect();
        assert_eq!(
            listed,
            queued.keys().cloned().collect::<BTreeSet<_>>(),
            "tern queue list and the queue reader disagree"
        );
        for (id, m) in &acked {
            assert!(
                all.insert(id.clone(), m.clone()).is_none(),
                "round {round}: queue id {id} acknowledged twice"
            );
        }
        // Every message acknowledged in this round or an earlier one.
        for (id, m) in &all {
            let stored = queued
                .get(id)
                .unwrap_or_else(|| panic!("round {round}: acknowledged message {id} lost"));
            assert!(
                strip_received(stored) == &m[..],
                "round {round}: message {id} differs from what was acknowledged"
            );
        }
        let sample: Vec<&(String, Vec<u8>)> =
            acked.choose_multiple(&mut rng, SHOW_SAMPLE).collect();
        for (id, m) in sample {
            assert_eq!(
                tern.queue_show(id).content(),
                &m[..],
                "tern queue show {id}"
            );
        }
        println!(
            "round {round}: killed after {delay:?} ({}) with {sending_at_kill}/{CLIENTS} clients \
             sending; {} acknowledged this round, {} acknowledged in all, {} queued \
             ({} stored without a 250 reaching the client)",
            describe(status),
            acked.len(),
            all.len(),
            queued.len(),
            queued.len() - all.len()
        );
        tern.kill();
    }
    tern.restart();
    let mut c = tern.ehlo();
    let id = c.send_message("a@example.test", &["b@example.test"], b"after\r\n");
    c.quit();
    assert!(!all.contains_key(&id), "queue id {id} reused");
    let status = tern.stop_gracefully();
    assert_eq!(status.code(), Some(0), "{}", describe(status));
}
