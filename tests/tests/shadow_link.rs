//! The pipelined shadow link (issue 6). On the shadow side: copies that
//! arrive pipelined in one write are queued together and answered after
//! one group commit, and no 250 of a batch goes out if that commit fails.
//! On the primary side: concurrent sessions share at most
//! `LINKS_PER_PEER` connections per core to a peer.

use std::net::SocketAddr;

use std::time::Duration;

use tern_tests::server::{wait_until, Options, PortReservation, TernProcess};
use tern_tests::smtp::{message, Client, Reply};
use tern_tests::tls;

/// A shadow node "b" whose only peer is "a" at `a_addr` (so a test
/// client showing the cluster certificate is a peer and may use XSHADOW).
fn shadow_node(a_addr: SocketAddr) -> String {
    format!(
        "[delivery]\nhold = true\n\
         [cluster]\nnode_id = \"b\"\n\
         peers = [ {} ]\n{}",
        tls::peer("a", a_addr, None),
        tls::tls_section()
    )
}

/// `n` complete shadow transactions (MAIL with XSHADOW, RCPT, BDAT LAST),
/// as a primary pipelines them; copy `i` has primary queue id
/// `{prefix}{i}`.
fn batch(prefix: &str, n: usize) -> (Vec<u8>, Vec<String>) {
    batch_of(prefix, n, 1)
}

/// [`batch`] with `lines` body lines of 100 bytes per copy.
fn batch_of(prefix: &str, n: usize, lines: usize) -> (Vec<u8>, Vec<String>) {
    let line = "x".repeat(98);
    let body = vec![line.as_str(); lines];
    let mut out = Vec::new();
    let mut ids = Vec::new();
    for i in 0..n {
        let id = format!("{prefix}{i}");
        let content = message(&format!("copy {id}"), &body);
        out.extend_from_slice(
            format!("MAIL FROM:<s@example.org> XSHADOW=a,db-a,{id}\r\nRCPT TO:<r@example.com>\r\n")
                .as_bytes(),
        );
        out.extend_from_slice(format!("BDAT {} LAST\r\n", content.len()).as_bytes());
        out.extend_from_slice(&content);
        ids.push(id);
    }
    (out, ids)
}

fn held_ids(b: &TernProcess) -> Vec<String> {
    let mut ids: Vec<String> = tern_engine::cli::queue::shadow_copies(&b.data_dir())
        .expect("read shadow copies")
        .into_iter()
        .map(|(_, origin, _)| origin.queue_id)
        .collect();
    ids.sort();
    ids
}

#[test]
fn a_pipelined_batch_of_copies_is_answered_after_one_commit() {
    one_batch_one_commit(1);
}

/// 8 copies of 100 KiB: the shadow needs several reads for the batch, and
/// still commits once (it reads on while a copy's content is incomplete).
#[test]
fn a_batch_larger_than_one_read_still_shares_one_commit() {
    one_batch_one_commit(1000);
}

fn one_batch_one_commit(lines: usize) {
    let a = PortReservation::new(); // never listens: B only needs the address
    let b = TernProcess::start(Options::with_config(&shadow_node(a.addr())));
    let mut c = tls::peer_client(b.addr());
    // The log counters are published about every second: wait for them.
    let published = |records: u64| {
        wait_until("log counters published", Duration::from_secs(5), || {
            b.counter("tern_log_records_total") >= records
        });
        b.counter("tern_log_batches_total")
    };
    // Nothing else writes to B's log: after one publication period the
    // counters are current.
    std::thread::sleep(Duration::from_millis(1200));
    let records_before = b.counter("tern_log_records_total");
    let batches_before = published(records_before);
    let (bytes, mut ids) = batch_of("q", 8, lines);
    c.send(&bytes);
    let replies = c.replies(8 * 3);
    for (i, r) in replies.iter().enumerate() {
        assert_eq!(r.code, 250, "reply {i}: {r:?}");
    }
    assert!(replies[2].text().contains("queued as"), "{:?}", replies[2]);
    // Eight copies, one read, one commit (two or three if the kernel or
    // TLS records split the write right between two copies while the
    // sender was still encrypting). Committing each copy before reading
    // the next would be eight.
    let batches = published(records_before + 8) - batches_before;
    assert!(
        batches <= 3,
        "{batches} group commits for one pipelined batch of 8"
    );
    assert_eq!(b.counter("tern_shadow_copies_held_total"), 8);
    ids.sort();
    assert_eq!(held_ids(&b), ids);
    c.quit();
}

#[test]
fn no_250_of_a_batch_goes_out_when_its_commit_fails() {
    let a = PortReservation::new();
    let failing = Options {
        env: vec![("TERN_FAILPOINT_STORAGE".into(), "fail-sync-after=6".into())],
        ..Options::with_config(&shadow_node(a.addr()))
    };
    let mut b = TernProcess::start(failing);
    let mut c = tls::peer_client(b.addr());
    let mut acknowledged = Vec::new();
    let mut failed_batch = None;
    for round in 0..20 {
        let (bytes, ids) = batch(&format!("r{round}x"), 3);
        c.send(&bytes);
        let mut got: Vec<Reply> = Vec::new();
        let mut closed = false;
        while got.len() < 9 {
            match c.try_reply() {
                Ok(Some(r)) => got.push(r),
                Ok(None) | Err(_) => {
                    closed = true;
                    break;
                }
            }
        }
        if closed || got.iter().any(|r| r.code != 250) {
            failed_batch = Some((round, got, closed));
            break;
        }
        acknowledged.extend(ids);
    }
    let (round, got, closed) = failed_batch.expect("the failpoint never fired in 20 batches");
    // The batch whose commit failed: the link closes without a single
    // reply (its MAIL and RCPT 250s were held with the copies' 250s), or,
    // when the log had already failed before the batch was read, every
    // copy is refused. Never a 250 for a copy of that batch.
    assert!(
        (closed && got.is_empty())
            || got
                .iter()
                .all(|r| r.code != 250 || !r.text().contains("queued")),
        "batch {round}: {got:?} (closed: {closed})"
    );
    assert!(!acknowledged.is_empty(), "the first batches should pass");
    drop(c);
    b.kill();
    // Every acknowledged copy is there after a restart without the
    // failpoint.
    b.restart_with(Options::with_config(&shadow_node(a.addr())));
    let held = held_ids(&b);
    for id in &acknowledged {
        assert!(held.contains(id), "acknowledged copy {id} lost");
    }
}

#[test]
fn concurrent_sessions_share_a_few_pipelined_links() {
    let (ra, rb) = (PortReservation::new(), PortReservation::new());
    let (a_addr, b_addr) = (ra.addr(), rb.addr());
    let cfg = |node: &str, peer: &str, addr: SocketAddr| {
        format!(
            "[delivery]\nhold = true\n\
             [cluster]\nnode_id = \"{node}\"\n\
             peers = [ {} ]\n{}",
            tls::peer(peer, addr, None),
            tls::tls_section()
        )
    };
    let b = TernProcess::start_on(Options::with_config(&cfg("b", "a", a_addr)), rb);
    let a = TernProcess::start_on(Options::with_config(&cfg("a", "b", b_addr)), ra);
    let b_connections_before = b.counter("tern_connections_total");
    const SESSIONS: usize = 16;
    const EACH: usize = 10;
    let threads: Vec<_> = (0..SESSIONS)
        .map(|s| {
            let addr = a.addr();
            std::thread::spawn(move || {
                let mut c = Client::ehlo(addr);
                for i in 0..EACH {
                    c.send_message(
                        "sender@example.org",
                        &["rcpt@example.com"],
                        &message(&format!("s{s} m{i}"), &["x"]),
                    );
                }
                c.quit();
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    let n = (SESSIONS * EACH) as u64;
    assert_eq!(a.counter("tern_shadow_copies_made_total"), n);
    assert_eq!(b.counter("tern_shadow_copies_held_total"), n);
    // A (one core) opened at most LINKS_PER_PEER links to B, however many
    // sessions waited for copies at once; B's only other visitor could be
    // A's heartbeat (every 2 min by default, one connection).
    let opened = b.counter("tern_connections_total") - b_connections_before;
    assert!(
        opened <= tern_engine::shadow::link::LINKS_PER_PEER as u64 + 1,
        "{opened} connections from A to B for {SESSIONS} concurrent sessions"
    );
    // Drain: the pair stays healthy (a later message still gets its copy).
    let mut c = a.ehlo();
    c.send_message(
        "s@example.org",
        &["r@example.com"],
        &message("after", &["x"]),
    );
    c.quit();
}

/// A copy by BDAT, then a second one by DATA in the same write: the DATA
/// waits for its 354, so the shadow must commit the first copy and send
/// its replies (354 included) instead of waiting for more input.
#[test]
fn data_after_a_held_copy_gets_its_354() {
    let a = PortReservation::new();
    let b = TernProcess::start(Options::with_config(&shadow_node(a.addr())));
    let mut c = tls::peer_client(b.addr());
    let (mut bytes, _) = batch("d", 1);
    bytes.extend_from_slice(
        b"MAIL FROM:<s@example.org> XSHADOW=a,db-a,d1\r\nRCPT TO:<r@example.com>\r\nDATA\r\n",
    );
    c.send(&bytes);
    let replies = c.replies(6);
    let codes: Vec<u16> = replies.iter().map(|r| r.code).collect();
    assert_eq!(codes, vec![250, 250, 250, 250, 250, 354], "{replies:?}");
    c.send(&[message("copy d1", &["body"]), b".\r\n".to_vec()].concat());
    assert_eq!(c.reply().code, 250);
    assert_eq!(held_ids(&b), vec!["d0".to_string(), "d1".to_string()]);
    c.quit();
}
