//! Adversarial tests of shadow redundancy (issue 6): the pipelined shadow
//! link against peers that misbehave, many concurrent sessions against a
//! real shadow, discard watermarks that must never drop the copy of a
//! message the primary still has to deliver, and a shadow SIGKILLed while
//! it holds copies.
//!
//! The invariant checked throughout (SPEC 2): a client answered 250 by
//! node A has its copy on the shadow; with `reject_on_shadow_failure` a
//! client answered 451 4.4.0 left nothing in A's queue; and a copy
//! refused in the middle of a pipelined batch decides only its own
//! message's outcome.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tern_tests::node::Node;
use tern_tests::server::{tern_bin, wait_until, Options, PortReservation, TernProcess};
use tern_tests::sink::{Behavior, TestSink};
use tern_tests::smtp::{message, Client, Reply};
use tern_tests::tls;

// ---------------------------------------------------------------------------
// A fake shadow peer
// ---------------------------------------------------------------------------

/// How the fake peer misbehaves. Markers are matched (case-insensitively)
/// against the MAIL line (the envelope sender) or the RCPT address.
#[derive(Clone, Debug, Default)]
struct Rules {
    /// Sleep this long before writing the replies to what one read brought.
    delay: Duration,
    /// RCPT addresses containing one of these get 550.
    refuse_rcpt: Vec<String>,
    /// MAIL lines containing one of these get 550.
    refuse_mail: Vec<String>,
    /// A MAIL line containing one of these: close at once, without a
    /// reply to anything of that read.
    vanish_on: Vec<String>,
    /// A MAIL line containing one of these gets 421 (the replies before it
    /// go out), then the connection closes.
    say_421_on: Vec<String>,
    /// Read everything, answer nothing (after EHLO).
    silent: bool,
    /// A MAIL line containing one of these: its transaction's last BDAT
    /// gets 554 (the content refused).
    refuse_data: Vec<String>,
    /// A MAIL line containing one of these: one unsolicited extra
    /// `250` follows the replies of that read (a desynchronised peer).
    extra_reply_on: Vec<String>,
}

#[derive(Debug, Default)]
struct FakeState {
    rules: Rules,
    /// (primary queue id from XSHADOW=, subject) of every copy whose 250
    /// was written.
    acked: Vec<(String, String)>,
    /// Copies (BDAT LAST) per read, for reads that had any.
    batches: Vec<usize>,
    connections: usize,
}

struct FakePeer {
    addr: SocketAddr,
    state: Arc<Mutex<FakeState>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

const FAKE_DB: &str = "0123456789abcdef0123456789abcdef";

impl FakePeer {
    fn start(rules: Rules) -> FakePeer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind fake peer");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(FakeState {
            rules,
            ..FakeState::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut conns = Vec::new();
            while !sp.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        st.lock().unwrap().connections += 1;
                        let (st, sp) = (st.clone(), sp.clone());
                        conns.push(std::thread::spawn(move || fake_session(s, st, sp)));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            for c in conns {
                let _ = c.join();
            }
        });
        FakePeer {
            addr,
            state,
            stop,
            thread: Some(thread),
        }
    }

    fn set_rules(&self, rules: Rules) {
        self.state.lock().unwrap().rules = rules;
    }

    /// Primary queue id -> subject of every acknowledged copy.
    fn acked(&self) -> BTreeMap<String, String> {
        self.state.lock().unwrap().acked.iter().cloned().collect()
    }

    fn largest_batch(&self) -> usize {
        self.state
            .lock()
            .unwrap()
            .batches
            .iter()
            .copied()
            .max()
            .unwrap_or(0)
    }
}

impl Drop for FakePeer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn has_marker(line: &str, markers: &[String]) -> bool {
    let l = line.to_ascii_lowercase();
    markers.iter().any(|m| l.contains(&m.to_ascii_lowercase()))
}

fn subject_of(content: &[u8]) -> String {
    String::from_utf8_lossy(content)
        .lines()
        .find_map(|l| l.strip_prefix("Subject: "))
        .unwrap_or("")
        .to_string()
}

/// What the fake peer reads and writes: the socket, then TLS after
/// STARTTLS (tern's primaries insist on it, with the pinned cluster
/// certificate the fake peer serves).
trait Duplex: Read + Write + Send {}
impl<T: Read + Write + Send> Duplex for T {}

/// One connection of the fake peer: replies to everything one read
/// brought go out together (after `delay`), like a pipelining server.
fn fake_session(tcp: TcpStream, state: Arc<Mutex<FakeState>>, stop: Arc<AtomicBool>) {
    tcp.set_read_timeout(Some(Duration::from_millis(50))).ok();
    tcp.set_write_timeout(Some(Duration::from_secs(10))).ok();
    let _ = tcp.set_nodelay(true);
    let Ok(shut) = tcp.try_clone() else { return };
    let mut s: Box<dyn Duplex> = Box::new(tcp);
    let mut in_tls = false;
    if s.write_all(b"220 fake.test ESMTP\r\n").is_err() {
        return;
    }
    let mut buf: Vec<u8> = Vec::new();
    let mut greeted = false;
    // Transaction: (MAIL accepted, primary queue id, RCPTs accepted).
    let mut tx: Option<(bool, String, usize)> = None;
    let mut refuse_this_data = false;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
            return;
        }
        let mut chunk = [0u8; 64 * 1024];
        match s.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                continue
            }
            Err(_) => return,
        }
        let rules = state.lock().unwrap().rules.clone();
        let mut out = Vec::new();
        let mut acks: Vec<(String, String)> = Vec::new();
        let mut copies = 0;
        let mut close_after = false;
        let mut extra = false;
        while let Some(lf) = buf.windows(2).position(|w| w == b"\r\n") {
            let line = String::from_utf8_lossy(&buf[..lf]).to_string();
            let upper = line.to_ascii_uppercase();
            if upper.starts_with("BDAT ") {
                let mut words = line[5..].split(' ');
                let n: usize = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
                let last = words.next().is_some_and(|w| w.eq_ignore_ascii_case("LAST"));
                if buf.len() < lf + 2 + n {
                    break; // the chunk is not all here yet
                }
                let data = buf[lf + 2..lf + 2 + n].to_vec();
                buf.drain(..lf + 2 + n);
                if !last {
                    out.extend_from_slice(b"250 2.0.0 chunk\r\n");
                    continue;
                }
                copies += 1;
                match tx.take() {
                    None | Some((false, _, _)) => {
                        out.extend_from_slice(b"503 5.5.1 Error: need MAIL command\r\n")
                    }
                    Some((true, _, 0)) => {
                        out.extend_from_slice(b"554 5.5.1 Error: no valid recipients\r\n")
                    }
                    Some((true, _, _)) if refuse_this_data => {
                        out.extend_from_slice(b"554 5.6.0 content refused by fake peer\r\n")
                    }
                    Some((true, qid, _)) => {
                        out.extend_from_slice(
                            format!("250 2.0.0 Ok: queued as FAKE{qid}\r\n").as_bytes(),
                        );
                        acks.push((qid, subject_of(&data)));
                    }
                }
                continue;
            }
            buf.drain(..lf + 2);
            if upper.starts_with("EHLO") || upper.starts_with("HELO") {
                greeted = true;
                let starttls = if in_tls { "" } else { "250-STARTTLS\r\n" };
                out.extend_from_slice(
                    format!(
                        "250-fake.test\r\n250-PIPELINING\r\n250-CHUNKING\r\n250-8BITMIME\r\n\
                         {starttls}250-SIZE 104857600\r\n250 XSHADOW b {FAKE_DB}\r\n"
                    )
                    .as_bytes(),
                );
            } else if upper == "STARTTLS" && !in_tls {
                out.extend_from_slice(b"220 2.0.0 Ready to start TLS\r\n");
                if s.write_all(&out).is_err() {
                    return;
                }
                out.clear();
                buf.clear();
                let Ok(tcp) = shut.try_clone() else { return };
                let deadline = Instant::now() + Duration::from_secs(10);
                match tls::accept(tcp, tls::cluster().server_config(), deadline) {
                    Ok(t) => s = Box::new(t),
                    Err(_) => return,
                }
                in_tls = true;
                greeted = false;
                break;
            } else if upper.starts_with("MAIL") {
                if has_marker(&line, &rules.vanish_on) {
                    let _ = shut.shutdown(std::net::Shutdown::Both);
                    return;
                }
                if has_marker(&line, &rules.say_421_on) {
                    out.extend_from_slice(b"421 4.3.0 fake peer going away\r\n");
                    close_after = true;
                    break;
                }
                refuse_this_data = has_marker(&line, &rules.refuse_data);
                if has_marker(&line, &rules.extra_reply_on) {
                    extra = true;
                }
                let qid = line
                    .split(' ')
                    .find_map(|w| w.strip_prefix("XSHADOW="))
                    .and_then(|v| v.split(',').nth(2))
                    .unwrap_or("")
                    .to_string();
                if has_marker(&line, &rules.refuse_mail) {
                    tx = Some((false, qid, 0));
                    out.extend_from_slice(b"550 5.7.1 sender refused by fake peer\r\n");
                } else {
                    tx = Some((true, qid, 0));
                    out.extend_from_slice(b"250 2.1.0 Ok\r\n");
                }
            } else if upper.starts_with("RCPT") {
                match &mut tx {
                    Some((true, _, n)) if !has_marker(&line, &rules.refuse_rcpt) => {
                        *n += 1;
                        out.extend_from_slice(b"250 2.1.5 Ok\r\n");
                    }
                    Some((true, _, _)) => {
                        out.extend_from_slice(b"550 5.1.1 recipient refused by fake peer\r\n")
                    }
                    _ => out.extend_from_slice(b"503 5.5.1 Error: need MAIL command\r\n"),
                }
            } else if upper.starts_with("XQDISCARD") {
                out.extend_from_slice(format!("250-{FAKE_DB}\r\n250 0 discard(s)\r\n").as_bytes());
            } else if upper.starts_with("RSET") {
                tx = None;
                out.extend_from_slice(b"250 2.0.0 Ok\r\n");
            } else if upper.starts_with("NOOP") {
                out.extend_from_slice(b"250 2.0.0 Ok\r\n");
            } else if upper.starts_with("QUIT") {
                out.extend_from_slice(b"221 2.0.0 Bye\r\n");
                close_after = true;
                break;
            } else {
                out.extend_from_slice(b"502 5.5.2 Error: command not recognized\r\n");
            }
        }
        if copies > 0 {
            state.lock().unwrap().batches.push(copies);
        }
        if extra {
            out.extend_from_slice(b"250 2.0.0 unsolicited\r\n");
        }
        if out.is_empty() {
            continue;
        }
        if rules.silent && greeted && !out.starts_with(b"250-fake.test") {
            continue;
        }
        if !rules.delay.is_zero() {
            let until = Instant::now() + rules.delay;
            while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        // Recorded before the answer goes out: the primary may answer its
        // client (and the test look here) before this thread runs again.
        state.lock().unwrap().acked.extend(acks);
        if s.write_all(&out).and_then(|()| s.flush()).is_err() {
            return;
        }
        if close_after {
            let _ = s.flush();
            let _ = shut.shutdown(std::net::Shutdown::Both);
            return;
        }
    }
}

// ---------------------------------------------------------------------------
// A node that comes back on the same address with the same store
// ---------------------------------------------------------------------------

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// `[cluster]` of node `node` whose only peer is `peer` at `addr`.
fn cluster(node: &str, peer: &str, addr: SocketAddr, extra: &str) -> String {
    format!(
        "[cluster]\nnode_id = \"{node}\"\n{extra}\n\
         peers = [ {} ]\n{}",
        tls::peer(peer, addr, None),
        tls::tls_section()
    )
}

/// `[server]` + `[delivery]` relaying to `to` with short timers.
fn relay_fast(to: SocketAddr, delivery_extra: &str) -> String {
    format!(
        "[server]\nrelay_to = \"{to}\"\n[delivery]\nmaintenance_interval = \"200ms\"\n\
         retry_initial = \"200ms\"\nretry_max = \"500ms\"\nhost_down_initial = \"200ms\"\n\
         host_down_max = \"500ms\"\n{delivery_extra}\n"
    )
}

/// (primary queue id -> message bytes) of every copy for primary `a`
/// held in `data_dir` from its `shadow` cursor on.
fn copies_for_a(data_dir: &Path) -> BTreeMap<String, Vec<u8>> {
    tern_engine::cli::queue::shadow_copies(data_dir)
        .expect("read shadow copies")
        .into_iter()
        .filter(|(_, o, _)| o.node == "a")
        .map(|(_, o, m)| (o.queue_id, m.message.to_vec()))
        .collect()
}

/// Subjects of the messages queued in `data_dir`.
fn queued_subjects(data_dir: &Path) -> BTreeMap<String, String> {
    tern_tests::queue::stored(data_dir)
        .into_iter()
        .map(|(id, m)| (subject_of(&m), id))
        .collect()
}

/// One message on a new session: the final reply (MAIL and RCPT must be
/// accepted by A).
fn send_one(addr: SocketAddr, from: &str, to: &str, subject: &str, body: &[&str]) -> Reply {
    let mut c = Client::ehlo(addr);
    let r = c.data_message(from, &[to], &message(subject, body));
    let _ = c.try_send(b"QUIT\r\n");
    r
}

/// A client's result: (subject, final reply).
type Outcomes = Vec<(String, Reply)>;

/// `sessions` threads, each one session sending `each` messages; `plan`
/// gives (sender, recipient, body lines) for (session, message).
fn run_clients(
    addr: SocketAddr,
    sessions: usize,
    each: usize,
    plan: impl Fn(usize, usize) -> (String, String, usize) + Send + Sync + 'static,
) -> Outcomes {
    let plan = Arc::new(plan);
    let threads: Vec<_> = (0..sessions)
        .map(|s| {
            let plan = plan.clone();
            std::thread::spawn(move || {
                let mut c = Client::ehlo(addr);
                let mut out = Vec::new();
                for i in 0..each {
                    let (from, to, lines) = plan(s, i);
                    let subject = format!("s{s}-m{i}");
                    let body: Vec<String> = (0..lines)
                        .map(|l| format!("line {l} {}", "x".repeat(70)))
                        .collect();
                    let body: Vec<&str> = body.iter().map(String::as_str).collect();
                    let r = c.data_message(&from, &[to.as_str()], &message(&subject, &body));
                    out.push((subject, r));
                }
                let _ = c.try_send(b"QUIT\r\n");
                out
            })
        })
        .collect();
    threads
        .into_iter()
        .flat_map(|t| t.join().expect("client thread"))
        .collect()
}

/// SPEC 2.3 / 2.5 with `reject_on_shadow_failure`: every 250 has its copy
/// (by A's queue id, with this subject) acknowledged by the shadow and is
/// in A's queue; every 451 4.4.0 left nothing in A's queue; nothing else.
fn check_invariant(
    outcomes: &Outcomes,
    acked: &BTreeMap<String, String>,
    a_queue: &BTreeMap<String, String>,
) {
    for (subject, r) in outcomes {
        match r.code {
            250 => {
                let id = r.queue_id();
                assert_eq!(
                    acked.get(&id).map(String::as_str),
                    Some(subject.as_str()),
                    "{subject}: 250 ({id}) but the shadow acknowledged no copy of it under that id"
                );
                assert_eq!(
                    a_queue.get(subject),
                    Some(&id),
                    "{subject}: 250 but not queued on A"
                );
            }
            451 => {
                r.expect(451, "4.4.0");
                assert!(
                    !a_queue.contains_key(subject),
                    "{subject}: 451 but A kept it as {:?}",
                    a_queue.get(subject)
                );
            }
            _ => panic!("{subject}: unexpected reply {r}"),
        }
    }
}

fn fake_primary_config(fake: SocketAddr, timeout: &str) -> String {
    format!(
        "[delivery]\nhold = true\n{}",
        cluster(
            "a",
            "b",
            fake,
            &format!("shadow_timeout = \"{timeout}\"\nreject_on_shadow_failure = true\nshadow_heartbeat_frequency = \"1h\""),
        )
    )
}

// ---------------------------------------------------------------------------
// 1. The pipelined link against a misbehaving peer
// ---------------------------------------------------------------------------

/// The fake peer refuses some RCPTs (550) and some MAILs (550) in the
/// middle of pipelined batches. Each refused copy's message gets 451 (no
/// other peer, reject_on_shadow_failure), every other message gets 250
/// with its own copy: a refusal must not shift the replies of the copies
/// after it in the batch.
#[test]
fn refusals_in_the_middle_of_a_batch_decide_only_their_own_message() {
    let fake = FakePeer::start(Rules {
        delay: Duration::from_millis(150),
        refuse_rcpt: vec!["refuse-rcpt@".into()],
        refuse_mail: vec!["refuse-mail@".into()],
        ..Rules::default()
    });
    let a = TernProcess::start(Options::with_config(&fake_primary_config(fake.addr, "5s")));
    let outcomes = run_clients(a.addr(), 16, 6, |s, i| match (s + i) % 4 {
        1 => ("s@example.org".into(), "refuse-rcpt@example.com".into(), 1),
        3 if s % 2 == 0 => ("refuse-mail@example.org".into(), "r@example.com".into(), 1),
        _ => ("s@example.org".into(), "r@example.com".into(), 1),
    });
    let acked = fake.acked();
    check_invariant(&outcomes, &acked, &queued_subjects(&a.data_dir()));
    // Each message's outcome is its own.
    for (subject, r) in &outcomes {
        let (s, i): (usize, usize) = {
            let (s, i) = subject[1..].split_once("-m").unwrap();
            (s.parse().unwrap(), i.parse().unwrap())
        };
        let refused = (s + i) % 4 == 1 || ((s + i) % 4 == 3 && s % 2 == 0);
        if refused {
            assert_eq!(r.code, 451, "{subject} was refused by the shadow: {r}");
        } else {
            assert_eq!(
                r.code, 250,
                "{subject} was accepted by the shadow, yet: {r}"
            );
        }
    }
    eprintln!("largest batch: {} copies", fake.largest_batch());
    assert!(
        fake.largest_batch() >= 2,
        "never more than one copy per batch: the test did not exercise pipelining"
    );
}

/// The fake peer closes the link without a word when it reads certain
/// copies, or answers 421 at others (after answering those before it).
/// No client may get 250 without an acknowledged copy; a 451 leaves
/// nothing on A; afterwards the link recovers.
#[test]
fn a_peer_closing_or_421_mid_batch_never_yields_a_250_without_a_copy() {
    let fake = FakePeer::start(Rules {
        delay: Duration::from_millis(100),
        vanish_on: vec!["vanish@".into()],
        say_421_on: vec!["bye421@".into()],
        ..Rules::default()
    });
    let a = TernProcess::start(Options::with_config(&fake_primary_config(fake.addr, "5s")));
    let outcomes = run_clients(a.addr(), 12, 6, |s, i| match (s * 7 + i) % 9 {
        2 => ("vanish@example.org".into(), "r@example.com".into(), 1),
        5 => ("bye421@example.org".into(), "r@example.com".into(), 1),
        _ => ("s@example.org".into(), "r@example.com".into(), 1),
    });
    let acked = fake.acked();
    check_invariant(&outcomes, &acked, &queued_subjects(&a.data_dir()));
    for (subject, r) in &outcomes {
        let (s, i) = subject[1..].split_once("-m").unwrap();
        let k = (s.parse::<usize>().unwrap() * 7 + i.parse::<usize>().unwrap()) % 9;
        if k == 2 || k == 5 {
            assert_eq!(
                r.code, 451,
                "{subject}: the peer never acknowledged it: {r}"
            );
        }
    }
    let ok = outcomes.iter().filter(|(_, r)| r.code == 250).count();
    assert!(ok > 0, "no message got through at all");
    // The pipe recovers: a plain message now gets its copy.
    fake.set_rules(Rules::default());
    let r = send_one(a.addr(), "s@example.org", "r@example.com", "after", &["x"]);
    let id = r.queue_id();
    assert_eq!(fake.acked().get(&id).map(String::as_str), Some("after"));
}

/// A peer that reads and never answers: `shadow_timeout` fires, every
/// client gets 451 4.4.0 and A keeps nothing (also after a restart); a
/// peer slower than `shadow_timeout` likewise; the same peer answering
/// again gets the next messages' copies (the pipe is not wedged by the
/// abandoned batches).
#[test]
fn a_silent_or_slow_peer_times_out_and_the_link_recovers() {
    let fake = FakePeer::start(Rules {
        silent: true,
        ..Rules::default()
    });
    let mut a = TernProcess::start(Options::with_config(&fake_primary_config(fake.addr, "1s")));
    let outcomes = run_clients(a.addr(), 6, 2, |_, _| {
        ("s@example.org".into(), "r@example.com".into(), 1)
    });
    for (subject, r) in &outcomes {
        assert_eq!(r.code, 451, "{subject}: {r}");
    }
    check_invariant(&outcomes, &fake.acked(), &queued_subjects(&a.data_dir()));
    // Slower than shadow_timeout: the late 250s must not count.
    fake.set_rules(Rules {
        delay: Duration::from_millis(1600),
        ..Rules::default()
    });
    let slow = run_clients(a.addr(), 4, 2, |_, _| {
        ("s@example.org".into(), "r@example.com".into(), 1)
    });
    let slow: Outcomes = slow
        .into_iter()
        .map(|(s, r)| (format!("slow-{s}"), r))
        .collect();
    for (subject, r) in &slow {
        assert_eq!(r.code, 451, "{subject}: {r}");
    }
    fake.set_rules(Rules::default());
    let after = run_clients(a.addr(), 4, 3, |_, _| {
        ("s@example.org".into(), "r@example.com".into(), 1)
    });
    let after: Outcomes = after
        .into_iter()
        .map(|(s, r)| (s.replace('s', "after-s"), r))
        .collect();
    let acked = fake.acked();
    for (subject, r) in &after {
        assert_eq!(r.code, 250, "{subject} after the peer recovered: {r}");
        assert!(acked.contains_key(&r.queue_id()), "{subject}: no copy");
    }
    // Nothing of the refused ones is queued, also after a restart.
    let n_ok = after.len();
    assert_eq!(a.queue_ids().len(), n_ok, "only the 250s are queued");
    a.kill();
    a.restart();
    assert_eq!(
        a.queue_ids().len(),
        n_ok,
        "only the 250s are queued after a restart"
    );
}

// ---------------------------------------------------------------------------
// 1b. Many sessions against a real shadow
// ---------------------------------------------------------------------------

/// A (two cores) and a real B whose `message_size_max` is smaller than
/// A's: B refuses the large copies at MAIL (SIZE) in the middle of
/// pipelined batches. 24 concurrent sessions: every 250 has a byte-equal
/// copy on B under its queue id, every large message gets 451 4.4.0, every
/// small one 250, and B holds nothing else.
#[test]
fn concurrent_sessions_with_a_real_shadow_that_refuses_some_copies() {
    let (ra, rb) = (PortReservation::new(), PortReservation::new());
    let (a_addr, b_addr) = (ra.addr(), rb.addr());
    let b = Node::start(
        "b",
        rb,
        1,
        format!(
            "[smtp]\nmessage_size_max = \"16KiB\"\n[delivery]\nhold = true\n{}",
            cluster("b", "a", a_addr, "shadow_heartbeat_frequency = \"1h\"")
        ),
    );
    let a = Node::start(
        "a",
        ra,
        2,
        format!(
            "[delivery]\nhold = true\n{}",
            cluster(
                "a",
                "b",
                b_addr,
                "shadow_timeout = \"10s\"\nreject_on_shadow_failure = true\nshadow_heartbeat_frequency = \"1h\""
            )
        ),
    );
    // Every 5th message is about 36 KiB (over B's limit).
    let big = |s: usize, i: usize| (s + i).is_multiple_of(5);
    let outcomes = run_clients(a.addr(), 24, 8, move |s, i| {
        let lines = if big(s, i) { 500 } else { 2 };
        ("s@example.org".into(), "r@example.com".into(), lines)
    });
    let on_b = copies_for_a(&b.data_dir());
    let stored = tern_tests::queue::stored(&a.data_dir());
    let acked: BTreeMap<String, String> = on_b
        .iter()
        .map(|(id, m)| (id.clone(), subject_of(m)))
        .collect();
    let queue: BTreeMap<String, String> = stored
        .iter()
        .map(|(id, m)| (subject_of(m), id.clone()))
        .collect();
    check_invariant(&outcomes, &acked, &queue);
    let mut answered = BTreeSet::new();
    for (subject, r) in &outcomes {
        let (s, i) = subject[1..].split_once("-m").unwrap();
        let (s, i): (usize, usize) = (s.parse().unwrap(), i.parse().unwrap());
        if big(s, i) {
            assert_eq!(r.code, 451, "{subject} (over B's size limit): {r}");
        } else {
            assert_eq!(r.code, 250, "{subject} (small): {r}");
            let id = r.queue_id();
            assert_eq!(
                on_b.get(&id),
                stored.get(&id),
                "{subject}: copy differs from A's record"
            );
            answered.insert(id);
        }
    }
    let held: BTreeSet<String> = on_b.keys().cloned().collect();
    assert_eq!(held, answered, "B holds exactly the copies of the 250s");
}

// ---------------------------------------------------------------------------
// 2. Discard watermarks
// ---------------------------------------------------------------------------

/// A relays to a sink that defers `stuck@` (451): those messages stay
/// queued on A while the others are delivered. B (heartbeat every 200 ms)
/// must drop exactly the delivered ones' copies, never a stuck one's, also
/// after A is SIGKILLed and restarted with its store and more messages are
/// delivered (new watermarks), and optionally after copy-forward moved the
/// stuck records. Finally A dies for good: B takes over and delivers every
/// stuck message.
fn watermarks_never_drop_a_queued_message(a_cores: usize, copy_forward: bool) {
    let sink = TestSink::start("127.0.0.1:0".parse().unwrap());
    sink.set_behavior(Behavior {
        rcpt: vec![("stuck@example.com".into(), 451, "4.2.0 try later".into())],
        ..Behavior::default()
    });
    let (ra, rb) = (PortReservation::new(), PortReservation::new());
    let (a_addr, b_addr) = (ra.addr(), rb.addr());
    let timers = "shadow_heartbeat_frequency = \"200ms\"\nshadow_timeout = \"1s\"\n\
                  shadow_resubmit_time_span = \"4s\"";
    let b = Node::start(
        "b",
        rb,
        1,
        format!(
            "{}{}",
            relay_fast(sink.addr(), ""),
            cluster("b", "a", a_addr, timers)
        ),
    );
    let storage = if copy_forward {
        "[smtp]\nmessage_size_max = \"64KiB\"\nrecipients_max = 100\n\
         [storage]\nsegment_size = \"2MiB\"\nsegment_age_max = \"1s\"\nretention_min = \"0s\"\n\
         io = \"buffered\"\nzero_fill_ahead = 0\n"
    } else {
        ""
    };
    let cf = if copy_forward {
        "copy_forward_after = \"1s\"\nsafety_net_hold_time = \"1s\""
    } else {
        ""
    };
    let mut a = Node::start(
        "a",
        ra,
        a_cores,
        format!(
            "{}{storage}{}",
            relay_fast(sink.addr(), cf),
            cluster("a", "b", b_addr, timers)
        ),
    );
    // Round 1: stuck, good, and one partly delivered, interleaved over
    // several sessions (so both of A's cores get some).
    let mut stuck: Vec<(String, String)> = Vec::new(); // (subject, A's id)
    let mut good: Vec<String> = Vec::new();
    for i in 0..18 {
        let subject = format!("r1-m{i}");
        let r = match i % 3 {
            0 => {
                let mut c = Client::ehlo(a.addr());
                let r = c.data_message(
                    "s@example.org",
                    &["stuck@example.com"],
                    &message(&subject, &["x"]),
                );
                let _ = c.try_send(b"QUIT\r\n");
                r
            }
            1 if i == 4 => {
                let mut c = Client::ehlo(a.addr());
                let r = c.data_message(
                    "s@example.org",
                    &["good@example.com", "stuck@example.com"],
                    &message(&subject, &["x"]),
                );
                let _ = c.try_send(b"QUIT\r\n");
                r
            }
            _ => send_one(
                a.addr(),
                "s@example.org",
                "good@example.com",
                &subject,
                &["x"],
            ),
        };
        let id = r.queue_id();
        if i % 3 == 0 || i == 4 {
            stuck.push((subject, id));
        } else {
            good.push(subject);
        }
    }
    assert_eq!(a.counter("tern_non_redundant_accepts_total"), 0);
    let delivered_good = |sink: &TestSink| -> usize {
        sink.messages()
            .iter()
            .filter(|m| m.rcpts == vec!["good@example.com".to_string()])
            .count()
    };
    // good ones + the partly delivered one's good@ branch
    wait_until(
        "A to deliver the good ones",
        Duration::from_secs(15),
        || delivered_good(&sink) > good.len(),
    );
    let check_b_holds_stuck = |b: &Node, when: &str| {
        // Several heartbeats and maintenance passes.
        std::thread::sleep(Duration::from_millis(1500));
        let on_b = copies_for_a(&b.data_dir());
        for (subject, id) in &stuck {
            assert!(
                on_b.contains_key(id),
                "{when}: B lost the copy of {subject} ({id})"
            );
        }
        assert_eq!(
            b.held_for("a"),
            stuck.len() as u64,
            "{when}: B's shadow queue for A should hold exactly the {} stuck copies; B stderr:\n{}",
            stuck.len(),
            b.all_stderr()
        );
    };
    wait_until(
        "B to drop the delivered ones' copies",
        Duration::from_secs(15),
        || b.counter("tern_shadow_discards_total") >= good.len() as u64,
    );
    check_b_holds_stuck(&b, "after round 1");
    assert_eq!(b.counter("tern_shadow_discards_total"), good.len() as u64);
    if copy_forward {
        wait_until("a copy-forward on A", Duration::from_secs(20), || {
            a.counter("tern_copied_forward_total") >= 1
        });
    }
    // A SIGKILLed and back with its store: its discard ids are gone, its
    // watermarks are rebuilt.
    a.kill();
    a.restart();
    let mut good2 = Vec::new();
    for i in 0..8 {
        let subject = format!("r2-m{i}");
        send_one(
            a.addr(),
            "s@example.org",
            "good@example.com",
            &subject,
            &["x"],
        )
        .queue_id();
        good2.push(subject);
    }
    wait_until("A to deliver round 2", Duration::from_secs(15), || {
        delivered_good(&sink) >= good.len() + 1 + good2.len()
    });
    wait_until(
        "B to drop round 2's copies",
        Duration::from_secs(15),
        || b.counter("tern_shadow_discards_total") >= (good.len() + good2.len()) as u64,
    );
    check_b_holds_stuck(&b, "after A's restart");
    assert_eq!(
        b.counter("tern_shadow_discards_total"),
        (good.len() + good2.len()) as u64
    );
    // A gone for good: B takes the stuck ones over and delivers them.
    a.kill();
    sink.set_behavior(Behavior::default());
    wait_until(
        "B to take over every stuck message",
        Duration::from_secs(20),
        || {
            let got: BTreeSet<String> = sink
                .messages()
                .iter()
                .filter(|m| m.rcpts.iter().any(|r| r == "stuck@example.com"))
                .map(|m| m.subject())
                .collect();
            stuck.iter().all(|(s, _)| got.contains(s))
        },
    );
    assert_eq!(b.counter("tern_shadow_takeovers_total"), stuck.len() as u64);
}

#[test]
fn watermarks_never_drop_a_queued_message_one_core() {
    watermarks_never_drop_a_queued_message(1, false);
}

#[test]
fn watermarks_never_drop_a_queued_message_two_cores() {
    watermarks_never_drop_a_queued_message(2, false);
}

#[test]
fn watermarks_never_drop_a_queued_message_after_copy_forward() {
    watermarks_never_drop_a_queued_message(1, true);
}

// ---------------------------------------------------------------------------
// 3. A shadow SIGKILLed while it holds copies
// ---------------------------------------------------------------------------

/// Clients keep sending to A (reject_on_shadow_failure) while B is
/// SIGKILLed (mid-batch, some copies durable on B but never acknowledged)
/// and restarted on the same address. Every 250 has its copy on B; the
/// 451s left nothing on A. Then A delivers everything: B, restarted,
/// must drop every copy it holds, including the never-acknowledged ones
/// (A withdrew those messages, so its watermark passes them).
#[test]
fn a_shadow_killed_mid_batch_keeps_every_acknowledged_copy_and_later_drops_all() {
    let sink = TestSink::start("127.0.0.1:0".parse().unwrap());
    sink.set_behavior(Behavior {
        rcpt_default: Some((451, "4.2.0 not yet".into())),
        ..Behavior::default()
    });
    let (ra, rb) = (PortReservation::new(), PortReservation::new());
    let (a_addr, b_addr) = (ra.addr(), rb.addr());
    let timers = "shadow_heartbeat_frequency = \"200ms\"\nshadow_timeout = \"2s\"\n\
                  reject_on_shadow_failure = true";
    let mut b = Node::start(
        "b",
        rb,
        1,
        format!(
            "{}{}",
            relay_fast(sink.addr(), ""),
            cluster("b", "a", a_addr, timers)
        ),
    );
    let a = Node::start(
        "a",
        ra,
        1,
        format!(
            "{}{}",
            relay_fast(sink.addr(), ""),
            cluster("a", "b", b_addr, timers)
        ),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..8)
        .map(|s| {
            let (stop, sent) = (stop.clone(), sent.clone());
            let addr = a.addr();
            std::thread::spawn(move || {
                let mut out: Outcomes = Vec::new();
                let end = Instant::now() + Duration::from_secs(12);
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) && Instant::now() < end && i < 400 {
                    let subject = format!("s{s}-m{i}");
                    let r = send_one(addr, "s@example.org", "r@example.com", &subject, &["x"]);
                    out.push((subject, r));
                    sent.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
                out
            })
        })
        .collect();
    wait_until("some traffic", Duration::from_secs(10), || {
        sent.load(Ordering::Relaxed) >= 60
    });
    b.kill();
    std::thread::sleep(Duration::from_millis(300));
    b.restart();
    let resumed = sent.load(Ordering::Relaxed);
    wait_until("traffic after B is back", Duration::from_secs(10), || {
        sent.load(Ordering::Relaxed) >= resumed + 60
    });
    stop.store(true, Ordering::Relaxed);
    let outcomes: Outcomes = threads
        .into_iter()
        .flat_map(|t| t.join().expect("client thread"))
        .collect();
    let on_b = copies_for_a(&b.data_dir());
    let acked: BTreeMap<String, String> = on_b
        .iter()
        .map(|(id, m)| (id.clone(), subject_of(m)))
        .collect();
    check_invariant(&outcomes, &acked, &queued_subjects(&a.data_dir()));
    let ok: Vec<&String> = outcomes
        .iter()
        .filter(|(_, r)| r.code == 250)
        .map(|(s, _)| s)
        .collect();
    assert!(ok.len() >= 60, "too few messages got through: {}", ok.len());
    // A delivers everything; B must end up holding nothing for A.
    sink.set_behavior(Behavior::default());
    wait_until("A to deliver every 250", Duration::from_secs(20), || {
        sink.messages().len() >= ok.len()
    });
    let b_extra = on_b.len() - ok.len();
    eprintln!(
        "{} answered 250, {} copies on B ({b_extra} never acknowledged)",
        ok.len(),
        on_b.len()
    );
    wait_until(
        &format!(
            "B to drop all {} copies it holds ({b_extra} never acknowledged)",
            on_b.len()
        ),
        Duration::from_secs(15),
        || b.held_for("a") == 0 && copies_for_a(&b.data_dir()).is_empty(),
    );
    assert_eq!(b.counter("tern_shadow_takeovers_total"), 0);
}

/// (shard, sequence) of a queue id (store tag, 2 hex of shard, 12 of
/// sequence).
fn split_id(id: &str) -> (u16, u64) {
    let seq = id.len() - 12;
    (
        u16::from_str_radix(&id[seq - 2..seq], 16).unwrap(),
        u64::from_str_radix(&id[seq..], 16).unwrap(),
    )
}

/// B never asks while A delivers (heartbeat 1 h); A is SIGKILLed and
/// restarted (its handled ids are lost); B comes back asking every 200 ms
/// and learns only A's watermarks. It must drop exactly the copies below
/// each shard's lowest stuck message and keep every stuck one; once A
/// delivers those, B drops everything, and nothing is taken over.
fn watermark_only_discards(a_cores: usize) {
    let sink = TestSink::start("127.0.0.1:0".parse().unwrap());
    sink.set_behavior(Behavior {
        rcpt: vec![("stuck@example.com".into(), 451, "4.2.0 try later".into())],
        ..Behavior::default()
    });
    let (ra, rb) = (PortReservation::new(), PortReservation::new());
    let (a_addr, b_addr) = (ra.addr(), rb.addr());
    let quiet = "shadow_heartbeat_frequency = \"1h\"\nshadow_timeout = \"2s\"";
    let chatty = "shadow_heartbeat_frequency = \"200ms\"\nshadow_timeout = \"2s\"";
    let mut b = Node::start(
        "b",
        rb,
        1,
        format!(
            "{}{}",
            relay_fast(sink.addr(), ""),
            cluster("b", "a", a_addr, quiet)
        ),
    );
    let mut a = Node::start(
        "a",
        ra,
        a_cores,
        format!(
            "{}{}",
            relay_fast(sink.addr(), ""),
            cluster("a", "b", b_addr, quiet)
        ),
    );
    let mut stuck: Vec<(String, String)> = Vec::new();
    let mut good: Vec<(String, String)> = Vec::new();
    for i in 0..24 {
        let subject = format!("m{i}");
        let is_stuck = i % 6 == 2;
        let to = if is_stuck {
            "stuck@example.com"
        } else {
            "good@example.com"
        };
        let id = send_one(a.addr(), "s@example.org", to, &subject, &["x"]).queue_id();
        if is_stuck {
            stuck.push((subject, id));
        } else {
            good.push((subject, id));
        }
    }
    assert_eq!(a.counter("tern_non_redundant_accepts_total"), 0);
    wait_until(
        "A to deliver the good ones",
        Duration::from_secs(15),
        || sink.messages().len() >= good.len(),
    );
    assert_eq!(
        b.counter("tern_shadow_discards_total"),
        0,
        "B was not asking yet"
    );
    // The sink having a message does not make A's status record of it
    // durable: kill A only once its queue holds just the stuck ones, or
    // the last good one is delivered again after the restart (the
    // documented crash-between-delivery-and-status duplicate). The gauge
    // is published every maintenance_interval (200 ms): wait one first,
    // so what is read was published after the sink had every good one.
    std::thread::sleep(Duration::from_millis(300));
    wait_until(
        "A to record the good deliveries",
        Duration::from_secs(15),
        || a.counter("tern_queue_messages") == stuck.len() as u64,
    );
    a.kill();
    a.restart();
    b.kill();
    b.config = b.config.replace(quiet, chatty);
    b.restart();
    // Per shard, the lowest stuck key: every good copy below it may go.
    let mut marks: BTreeMap<u16, u64> = BTreeMap::new();
    for (_, id) in &stuck {
        let (shard, seq) = split_id(id);
        let m = marks.entry(shard).or_insert(u64::MAX);
        *m = (*m).min(seq);
    }
    let droppable = good
        .iter()
        .filter(|(_, id)| {
            let (shard, seq) = split_id(id);
            seq < marks.get(&shard).copied().unwrap_or(u64::MAX)
        })
        .count() as u64;
    eprintln!(
        "stuck {:?}, good {:?}, expected drops from the watermark: {droppable}",
        stuck, good
    );
    wait_until(
        "B to drop what A's watermarks cover",
        Duration::from_secs(10),
        || b.counter("tern_shadow_discards_total") >= droppable,
    );
    std::thread::sleep(Duration::from_millis(1500));
    let on_b = copies_for_a(&b.data_dir());
    for (subject, id) in &stuck {
        assert!(
            on_b.contains_key(id),
            "B dropped the copy of queued {subject} ({id})"
        );
    }
    assert_eq!(
        b.counter("tern_shadow_discards_total"),
        droppable,
        "B dropped copies the watermarks do not cover"
    );
    assert_eq!(
        b.held_for("a"),
        (good.len() + stuck.len()) as u64 - droppable
    );
    // A delivers the stuck ones: B ends up holding nothing, takes nothing over.
    sink.set_behavior(Behavior::default());
    wait_until(
        "A to deliver the stuck ones",
        Duration::from_secs(15),
        || sink.messages().len() >= good.len() + stuck.len(),
    );
    wait_until("B to drop every copy", Duration::from_secs(15), || {
        b.held_for("a") == 0
    });
    assert_eq!(b.counter("tern_shadow_takeovers_total"), 0);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        sink.messages().len(),
        good.len() + stuck.len(),
        "each message once"
    );
}

#[test]
fn watermark_only_discards_one_core() {
    watermark_only_discards(1);
}

#[test]
fn watermark_only_discards_two_cores() {
    watermark_only_discards(2);
}

/// A (two cores) holds stuck messages on both shards, B their copies. A
/// is restarted with fewer cores (e.g. moved to a smaller machine, or
/// `cores = 0` on a host with fewer CPUs). An explicit `--cores 1` is
/// refused with a clear error (the second shard's log would be served by
/// nobody); `--cores 0` (automatic) serves both shards. Every message
/// answered 250 is delivered once the next hop takes it.
#[test]
fn a_primary_restarted_with_fewer_cores_still_delivers_every_message() {
    let sink = TestSink::start("127.0.0.1:0".parse().unwrap());
    sink.set_behavior(Behavior {
        rcpt_default: Some((451, "4.2.0 not yet".into())),
        ..Behavior::default()
    });
    let (ra, rb) = (PortReservation::new(), PortReservation::new());
    let (a_addr, b_addr) = (ra.addr(), rb.addr());
    let timers = "shadow_heartbeat_frequency = \"200ms\"\nshadow_timeout = \"2s\"";
    let b = Node::start(
        "b",
        rb,
        1,
        format!(
            "{}{}",
            relay_fast(sink.addr(), ""),
            cluster("b", "a", a_addr, timers)
        ),
    );
    let mut a = Node::start(
        "a",
        ra,
        2,
        format!(
            "{}{}",
            relay_fast(sink.addr(), ""),
            cluster("a", "b", b_addr, timers)
        ),
    );
    let mut ids = BTreeMap::new();
    for i in 0..16 {
        let subject = format!("m{i}");
        let id = send_one(a.addr(), "s@example.org", "r@example.com", &subject, &["x"]).queue_id();
        ids.insert(subject, id);
    }
    let shards: BTreeSet<u16> = ids.values().map(|id| split_id(id).0).collect();
    if shards.len() < 2 {
        eprintln!("all 16 sessions landed on one core ({shards:?}); nothing to check");
        return;
    }
    a.kill();
    let mut refused = Command::new(tern_bin())
        .arg("serve")
        .current_dir(a.dir.path())
        .args([
            "--data-dir",
            "data",
            "--cores",
            "1",
            "--admin-listen",
            "off",
        ])
        .arg("--listen")
        .arg(a.addr().to_string())
        .arg("--config")
        .arg(a.dir.path().join("config.toml"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tern");
    let end = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = refused.try_wait().expect("try_wait") {
            break Some(st);
        }
        if Instant::now() > end {
            let _ = refused.kill();
            let _ = refused.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    if let Some(mut e) = refused.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    assert!(
        status.is_some_and(|s| !s.success()),
        "--cores 1 on a two-shard data directory must not start: {err}"
    );
    assert!(err.contains("--cores 2"), "{err}");
    a.cores = 0;
    a.restart();
    sink.set_behavior(Behavior::default());
    let want: BTreeSet<String> = ids.keys().cloned().collect();
    let got = || -> BTreeSet<String> { sink.messages().iter().map(|m| m.subject()).collect() };
    let end = Instant::now() + Duration::from_secs(15);
    while Instant::now() < end && got() != want {
        std::thread::sleep(Duration::from_millis(100));
    }
    let missing: Vec<(&String, &String)> =
        ids.iter().filter(|(s, _)| !got().contains(*s)).collect();
    assert!(
        missing.is_empty(),
        "never delivered (by A nor B): {missing:?}; B holds {} copies for A; A stderr:\n{}",
        b.held_for("a"),
        a.stderr_of(a.starts)
    );
}

/// A desynchronised peer: after the replies to one copy it sends one
/// unsolicited `250`, then refuses the next copy's content (554 at BDAT
/// LAST). The pooled link must not read the stray 250 as part of the next
/// batch: the refused copy must not be reported made (A must not answer
/// 250 for a message the shadow refused).
#[test]
fn a_stray_reply_on_a_pooled_link_does_not_turn_a_refusal_into_a_250() {
    let fake = FakePeer::start(Rules {
        extra_reply_on: vec!["stray@".into()],
        refuse_data: vec!["refuse-data@".into()],
        ..Rules::default()
    });
    let a = TernProcess::start(Options::with_config(&fake_primary_config(fake.addr, "5s")));
    let mut c = Client::ehlo(a.addr());
    let mut outcomes: Outcomes = Vec::new();
    for (i, from) in [
        "stray@example.org",
        "refuse-data@example.org",
        "s@example.org",
        "s@example.org",
    ]
    .iter()
    .enumerate()
    {
        let subject = format!("m{i}");
        let r = c.data_message(from, &["r@example.com"], &message(&subject, &["x"]));
        outcomes.push((subject, r));
    }
    let _ = c.try_send(b"QUIT\r\n");
    eprintln!("{outcomes:?}");
    eprintln!(
        "connections to the fake peer: {}",
        fake.state.lock().unwrap().connections
    );
    check_invariant(&outcomes, &fake.acked(), &queued_subjects(&a.data_dir()));
    assert_eq!(
        outcomes[1].1.code, 451,
        "the shadow refused m1: {}",
        outcomes[1].1
    );
}
