//! The front end (`server.role = "front-end"`) against real processes: a
//! stateless SMTP proxy before tern relays ("back ends").
//!
//! | test | what |
//! |---|---|
//! | `acknowledged_load_is_delivered_once` | tern-loadgen `--acked` through a front end before two back ends shadowing each other: every acknowledged message reaches the sink once; the front end counts as many accepted |
//! | `a_back_end_killed_mid_content_gives_451_then_the_other_serves` | SIGKILL of the back end that has the transaction, mid-content: `451 4.4.0`, never 250; the next transaction goes to the other back end |
//! | `pool_failover_across_sites_and_back_and_route_set` | `site1` (failover `site2`): its back end down, mail goes to site2; back, to site1; `tern route set` re-points; `tern_frontend_route_pool` |
//! | `xclient_names_the_real_client_and_unlisted_front_ends_get_no_service` | `Received:` of the back end names the real client (127.0.0.9, its EHLO name); a back end that does not list the front end: `451 4.4.0`, `reason="xclient"` |
//! | `a_killed_front_end_loses_nothing_acknowledged` | SIGKILL of the front end under `--acked` load, restart, the rest sent: every acknowledged message delivered once |
//! | `srv_pool_uses_the_priority_0_target_then_the_other` | `pools.NAME.srv` from a test DNS server: the priority-0 target, then (killed) the other |
//!
//! Every node is on its own 127.0.0.x address. The front end's own
//! connections to its back ends come from 127.0.0.1 whatever address it
//! listens on (the kernel's source address for loopback; the front end
//! binds none), so that is the address the back ends list in
//! `relay.front_end_networks`. Test clients that must be told apart from
//! the front end connect from 127.0.0.9. Every wait is bounded; processes,
//! sinks and the DNS server stop when dropped.
//!
//! A front end's `GET /metrics` takes about 5 s to answer (the queue
//! gauges wait for a queue summary from cores that have no queue), so the
//! tests read it once per check ([`Scrape`]) and watch progress at the
//! sink or the back ends instead.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use tern_tests::acked::delivered;
use tern_tests::dns::{TestDns, Zone};
use tern_tests::frontend::{loopback, samples, BoundClient, Load, Reservation, Tern};
use tern_tests::server::wait_until;
use tern_tests::sink::TestSink;
use tern_tests::smtp::{dot_stuff, message, Client, Reply};
use tern_tests::tls;

/// Where the front end's connections to its back ends come from.
const FRONT_END_SOURCE: &str = "127.0.0.1";

/// A real client, distinct from the front end's address.
const REAL_CLIENT: u8 = 9;

/// A back end (a tern relay) named `name` (`server.hostname =
/// "NAME.test"`, so its `Received:` says who took a message): delivers to
/// `deliver` (else holds its queue), takes XCLIENT from `front_ends`, and
/// shadows to `peer` when given.
fn backend_config(
    name: &str,
    deliver: Option<SocketAddr>,
    front_ends: &str,
    peer: Option<(&str, SocketAddr)>,
) -> String {
    let relay_to = deliver.map_or(String::new(), |to| format!("relay_to = \"{to}\"\n"));
    let mut cfg = format!(
        "[server]\nhostname = \"{name}.test\"\nshutdown_grace = \"1s\"\n{relay_to}\
         [relay]\nfront_end_networks = [\"{front_ends}\"]\n\
         [delivery]\nhold = {}\nmaintenance_interval = \"200ms\"\nretry_initial = \"1s\"\n\
         connection_idle = \"300ms\"\n",
        deliver.is_none()
    );
    if let Some((peer, addr)) = peer {
        cfg.push_str(&format!(
            "[cluster]\nnode_id = \"{name}\"\nshadow_timeout = \"10s\"\npeers = [ {} ]\n{}",
            tls::peer(peer, addr, None),
            tls::tls_section()
        ));
    }
    cfg
}

/// A back end on 127.0.0.`last` that is not in a cluster.
fn backend(name: &'static str, last: u8, deliver: Option<SocketAddr>) -> Tern {
    let cfg = backend_config(name, deliver, FRONT_END_SOURCE, None);
    Tern::start(name, Reservation::on(loopback(last)), cfg, &[])
}

/// Back ends "a" (127.0.0.`a`) and "b" (127.0.0.`b`) shadowing each other
/// (the cluster certificate pinned), delivering to `deliver` or holding.
fn shadow_pair(a: u8, b: u8, deliver: Option<SocketAddr>) -> (Tern, Tern) {
    let (ra, rb) = (Reservation::on(loopback(a)), Reservation::on(loopback(b)));
    let (a_addr, b_addr) = (ra.addr(), rb.addr());
    let cfg = |name, peer, peer_addr| {
        backend_config(name, deliver, FRONT_END_SOURCE, Some((peer, peer_addr)))
    };
    let b = Tern::start("back end b", rb, cfg("b", "a", a_addr), &[]);
    let a = Tern::start("back end a", ra, cfg("a", "b", b_addr), &[]);
    (a, b)
}

/// A front end's config: `server.role = "front-end"`, short back-end
/// timers (host-down backoff at most 1 s), then `rest` (pools, routes,
/// more keys).
fn front_end_config(rest: &str) -> String {
    format!(
        "[server]\nrole = \"front-end\"\nhostname = \"fe.test\"\nshutdown_grace = \"1s\"\n\
         [delivery]\nhost_down_initial = \"200ms\"\nhost_down_max = \"1s\"\n\
         [frontend]\nconnect_timeout = \"2s\"\ncommand_timeout = \"20s\"\ndata_timeout = \"20s\"\n\
         {rest}"
    )
}

/// `[pools.NAME]` with `hosts` (address, priority).
fn pool(name: &str, hosts: &[(SocketAddr, u16)], more: &str) -> String {
    let hosts: Vec<String> = hosts
        .iter()
        .map(|(a, p)| format!("{{ address = \"{a}\", priority = {p} }}"))
        .collect();
    format!("[pools.{name}]\nhosts = [ {} ]\n{more}", hosts.join(", "))
}

/// A front end on 127.0.0.`last`.
fn front_end(last: u8, rest: &str, args: &[&str]) -> Tern {
    Tern::start(
        "front end",
        Reservation::on(loopback(last)),
        front_end_config(rest),
        args,
    )
}

/// One message through the front end on a connection of its own (from
/// 127.0.0.1); the back end's queue id from its 250.
#[track_caller]
fn send_one(fe: &Tern, subject: &str) -> String {
    let mut c = Client::ehlo(fe.addr());
    let id = c.send_message(
        "sender@example.org",
        &["rcpt@example.com"],
        &message(subject, &["body"]),
    );
    c.quit();
    id
}

/// Which of `nodes` holds queue id `id`; panics unless exactly one.
#[track_caller]
fn holder<'a>(id: &str, nodes: &[&'a Tern]) -> &'a str {
    let holders: Vec<&str> = nodes
        .iter()
        .filter(|n| n.stored().contains_key(id))
        .map(|n| n.name)
        .collect();
    assert_eq!(holders.len(), 1, "{id} is held by {holders:?}");
    holders[0]
}

/// One `/metrics` text of a front end. (Read once per check: a front
/// end's `/metrics` takes about 5 s to answer, see the module notes.)
struct Scrape(String);

impl Scrape {
    fn of(fe: &Tern) -> Scrape {
        Scrape(fe.metrics())
    }

    /// Counter `name` with `labels` (summed).
    fn count(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        tern_tests::frontend::sum(&self.0, name, labels) as u64
    }

    /// `tern_frontend_route_pool`: route -> pool of the samples that are 1.
    fn route_pools(&self) -> BTreeMap<String, String> {
        samples(&self.0, "tern_frontend_route_pool")
            .into_iter()
            .filter(|(_, v)| *v == 1.0)
            .map(|(l, _)| {
                (
                    l.get("route").cloned().unwrap_or_default(),
                    l.get("pool").cloned().unwrap_or_default(),
                )
            })
            .collect()
    }
}

/// Waits until every acknowledged message of `run` reached `sink`, then a
/// moment for late duplicates; deliveries per sequence number.
#[track_caller]
fn wait_delivered(sink: &TestSink, run: &str, acked: &BTreeSet<u64>) -> BTreeMap<u64, usize> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let seen = delivered(sink, run);
        let missing: Vec<&u64> = acked.iter().filter(|s| !seen.contains_key(s)).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} acknowledged messages never delivered: {missing:?}",
            missing.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(1000));
    delivered(sink, run)
}

/// Every acknowledged message delivered exactly once.
#[track_caller]
fn exactly_once(seen: &BTreeMap<u64, usize>, acked: &BTreeSet<u64>) {
    let twice: Vec<(&u64, &usize)> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    let missing: Vec<&u64> = acked.iter().filter(|s| !seen.contains_key(s)).collect();
    assert!(
        missing.is_empty(),
        "acknowledged, not delivered: {missing:?}"
    );
}

/// What a front end's data directory holds: no message state (no log
/// shard, no queue), only its identity, TLS key, token and lock.
#[track_caller]
fn holds_no_message_state(fe: &Tern) {
    let entries: Vec<String> = std::fs::read_dir(fe.data_dir())
        .expect("the front end's data directory")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !entries.iter().any(|e| e.starts_with("shard")),
        "a front end keeps no log: {entries:?}"
    );
}

#[test]
fn acknowledged_load_is_delivered_once() {
    const N: usize = 300;
    let sink = TestSink::start("127.0.0.1:0".parse().unwrap());
    let (a, b) = shadow_pair(111, 112, Some(sink.addr()));
    let site = pool("site", &[(a.addr(), 0), (b.addr(), 0)], "");
    let fe = front_end(113, &site, &[]);
    let mut load = Load::start(
        fe.addr(),
        &[
            "--messages",
            &N.to_string(),
            "--concurrency",
            "3",
            "--per-conn",
            "25",
            "--size",
            "2000",
            "--timeout",
            "20s",
        ],
    );
    let (run, acked) = load.finish(Duration::from_secs(60));
    let m = Scrape::of(&fe);
    let accepted = m.count("tern_frontend_messages_total", &[("result", "accepted")]);
    let failures = m.count("tern_frontend_backend_failures_total", &[]);
    assert_eq!(
        acked.len(),
        N,
        "every message acknowledged through healthy back ends (front end accepted {accepted}, \
         back-end failures {failures})"
    );
    let seen = wait_delivered(&sink, &run, &acked);
    exactly_once(&seen, &acked);
    assert_eq!(
        accepted,
        acked.len() as u64,
        "tern_frontend_messages_total{{result=\"accepted\"}} against the acknowledged count"
    );
    assert_eq!(
        m.count("tern_frontend_messages_total", &[("result", "refused")]),
        0
    );
    // The back ends took each message once between them, each with a
    // shadow copy on the other before their 250.
    let stored = |t: &Tern, name: &str| t.value(name, &[]) as u64;
    assert_eq!(
        stored(&a, "tern_messages_accepted_total") + stored(&b, "tern_messages_accepted_total"),
        N as u64
    );
    assert_eq!(
        stored(&a, "tern_shadow_copies_made_total") + stored(&b, "tern_shadow_copies_made_total"),
        N as u64
    );
    assert!(m.count("tern_frontend_transactions_total", &[]) >= N as u64);
    assert_eq!(failures, 0, "no back-end failure:\n{}", fe.stderr());
    holds_no_message_state(&fe);
}

#[test]
fn a_back_end_killed_mid_content_gives_451_then_the_other_serves() {
    let (mut a, b) = shadow_pair(121, 122, None);
    // --role and --backend flags: a the first choice (priority 0), b the
    // second.
    let (a_spec, b_spec) = (format!("{},0", a.addr()), format!("{},10", b.addr()));
    let args = [
        "--role",
        "front-end",
        "--backend",
        &a_spec,
        "--backend",
        &b_spec,
    ];
    let fe = Tern::start(
        "front end",
        Reservation::on(loopback(123)),
        "[server]\nhostname = \"fe.test\"\n\
         [delivery]\nhost_down_initial = \"200ms\"\nhost_down_max = \"1s\"\n\
         [frontend]\nconnect_timeout = \"2s\"\n"
            .into(),
        &args,
    );
    let mut c = Client::ehlo(fe.addr());
    c.expect("MAIL FROM:<sender@example.org>", 250, "2.1.0");
    c.expect("RCPT TO:<rcpt@example.com>", 250, "2.1.5");
    c.cmd("DATA").assert(354, None);
    // More than one 64 KiB piece: the front end has sent content to a.
    let line = "x".repeat(70);
    let first: Vec<&str> = std::iter::repeat_n(line.as_str(), 3000).collect();
    let content = message("cut off", &first);
    let stuffed = dot_stuff(&content);
    let (head, tail) = stuffed.split_at(stuffed.len() - 3); // ".\r\n"
    c.send(head);
    wait_until(
        "a to have the front end's session",
        Duration::from_secs(10),
        || a.value("tern_connections_open", &[]) >= 1.0,
    );
    // Best effort: let the pieces reach a (the outcome must be the same
    // whatever the front end had sent when a dies).
    std::thread::sleep(Duration::from_millis(300));
    a.kill();
    let more = dot_stuff(b"more content after the kill\r\n");
    let _ = c.try_send(&more[..more.len() - 3]);
    let _ = c.try_send(tail);
    let r = c.reply();
    assert_eq!(
        (r.code, r.enhanced()),
        (451, Some("4.4.0")),
        "a back end lost mid-content: the client is told to try again (never 250): {r}"
    );
    // The same session's next transaction goes to b.
    let id = c.send_message(
        "sender@example.org",
        &["rcpt@example.com"],
        &message("after the kill", &["x"]),
    );
    c.quit();
    assert!(b.stored().contains_key(&id), "{id} on b");
    // And a new session's.
    let id2 = send_one(&fe, "new session");
    assert!(b.stored().contains_key(&id2), "{id2} on b");
    // Nothing of the cut message anywhere: a (dead) kept nothing, b never
    // saw it.
    for (name, stored) in [("a", a.stored()), ("b", b.stored())] {
        for (qid, m) in stored {
            assert!(
                !String::from_utf8_lossy(&m).contains("Subject: cut off"),
                "{name} keeps the cut message as {qid}"
            );
        }
    }
    let m = Scrape::of(&fe);
    assert!(
        m.count(
            "tern_frontend_backend_failures_total",
            &[("reason", "lost")]
        ) >= 1
    );
    assert_eq!(
        m.count("tern_frontend_messages_total", &[("result", "accepted")]),
        2
    );
    let log = fe.stderr();
    assert!(log.contains("back end failed mid-transaction"), "{log}");
}

/// One message through the front end on a connection of its own: the
/// back end's queue id, or the reply that refused it.
fn try_send(fe: &Tern, subject: &str) -> Result<String, Reply> {
    let mut c = Client::ehlo(fe.addr());
    let r = c.cmd("MAIL FROM:<sender@example.org>");
    if r.code != 250 {
        return Err(r);
    }
    let r = c.cmd("RCPT TO:<rcpt@example.com>");
    if r.code != 250 {
        let _ = c.try_send(b"QUIT\r\n");
        return Err(r);
    }
    c.cmd("DATA").assert(354, None);
    c.send(&dot_stuff(&message(subject, &["body"])));
    let r = c.reply();
    if r.code != 250 {
        return Err(r);
    }
    c.quit();
    Ok(r.queue_id())
}

#[test]
fn pool_failover_across_sites_and_back_and_route_set() {
    let mut s1 = backend("s1", 131, None);
    let s2 = backend("s2", 132, None);
    let pools = format!(
        "{}{}[routes]\n\"*\" = \"site1\"\n",
        pool("site1", &[(s1.addr(), 0)], "failover = \"site2\"\n"),
        pool("site2", &[(s2.addr(), 0)], "")
    );
    let fe = front_end(133, &pools, &[]);
    // What goes wrong in one phase is gathered (and asserted at the end)
    // so that the later phases are checked too.
    let mut problems: Vec<String> = Vec::new();
    // The gauge's route is the `[routes]` pattern, as `tern route list`
    // names it: "*".
    let look = |problems: &mut Vec<String>, when: &str, m: &Scrape, want: &str| {
        let now = m.route_pools();
        if now.get("*").map(String::as_str) != Some(want) {
            problems.push(format!(
                "{when}: tern_frontend_route_pool{{route=\"*\"}} should say pool {want:?}; \
                 samples (route -> pool): {now:?}"
            ));
        }
    };

    let id = send_one(&fe, "site1 up");
    assert_eq!(holder(&id, &[&s1, &s2]), "s1");

    // site1's only back end down: its failover pool takes the mail.
    s1.kill();
    match try_send(&fe, "site1 down") {
        Ok(id) => {
            let at = holder(&id, &[&s1, &s2]);
            if at != "s2" {
                problems.push(format!("site1 down: the message went to {at}, not s2"));
            }
        }
        Err(r) => problems.push(format!(
            "site1 down: route \"*\" -> site1 (failover site2), s2 up: the client got {r} \
             instead of a 250 from s2"
        )),
    }
    let m = Scrape::of(&fe);
    look(&mut problems, "site1 down", &m, "site2");
    assert!(
        m.count("tern_frontend_backend_failures_total", &[]) >= 1,
        "s1's failure counted:\n{}",
        m.0
    );

    // site1 back: once its host-down backoff (at most 1 s) is over, mail
    // goes there again.
    s1.restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut sent = 0;
    loop {
        sent += 1;
        if let Ok(id) = try_send(&fe, &format!("site1 back {sent}")) {
            if holder(&id, &[&s1, &s2]) == "s1" {
                break;
            }
        }
        assert!(
            Instant::now() < deadline && sent < 60,
            "mail never went back to site1 ({sent} sent)"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    look(&mut problems, "site1 back", &Scrape::of(&fe), "site1");

    // Re-pointed at run time, every new transaction goes to site2.
    let cli = fe.cli();
    cli.ok(&["route", "set", "*", "site2"]);
    let list = cli.ok(&["route", "list"]);
    assert!(list.contains("site2"), "{list}");
    for i in 0..3 {
        let id = send_one(&fe, &format!("route set {i}"));
        assert_eq!(holder(&id, &[&s1, &s2]), "s2", "route set: {i}");
    }
    look(&mut problems, "route set", &Scrape::of(&fe), "site2");
    cli.ok(&["route", "clear", "*"]);
    let id = send_one(&fe, "route cleared");
    assert_eq!(holder(&id, &[&s1, &s2]), "s1");

    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn xclient_names_the_real_client_and_unlisted_front_ends_get_no_service() {
    // x trusts the front end's XCLIENT; y lists some other front end.
    let x = backend("x", 141, None);
    let y = Tern::start(
        "y",
        Reservation::on(loopback(142)),
        backend_config("y", None, "192.0.2.1", None),
        &[],
    );
    let pools = format!(
        "{}{}[routes]\n\"*\" = \"good\"\n\"bad.test\" = \"bad\"\n",
        pool("good", &[(x.addr(), 0)], ""),
        pool("bad", &[(y.addr(), 0)], "")
    );
    let fe = front_end(143, &pools, &[]);

    let mut c = BoundClient::open(loopback(REAL_CLIENT), fe.addr());
    c.cmd("EHLO real-client.test").assert(250, None);
    c.expect("MAIL FROM:<sender@example.org>", 250, "2.1.0");
    c.expect("RCPT TO:<rcpt@example.com>", 250, "2.1.5");
    let content = message("through the front end", &["hello"]);
    let id = c.data(&content).queue_id();
    let stored = x.stored();
    let m = stored.get(&id).unwrap_or_else(|| panic!("{id} not on x"));
    let body = tern_tests::queue::strip_received(m);
    let received = String::from_utf8_lossy(&m[..m.len() - body.len()]).into_owned();
    let client_ip = c.local_addr().ip();
    assert_eq!(client_ip, IpAddr::from(loopback(REAL_CLIENT)));
    assert!(
        received.starts_with(&format!(
            "Received: from real-client.test ({client_ip})\r\n"
        )),
        "x's Received: names the real client and its EHLO name:\n{received}"
    );
    assert!(received.contains("by x.test (tern)"), "{received}");
    assert!(
        !received.contains("fe.test") && !received.contains("127.0.0.1"),
        "the front end is not the client:\n{received}"
    );
    assert_eq!(body, &content[..], "the content as the client sent it");
    assert_eq!(
        x.value("tern_xclient_total", &[("result", "accepted")]),
        1.0
    );

    // bad.test goes to y, which does not offer XCLIENT to this front end:
    // no service (it would take the front end for the client).
    c.expect("MAIL FROM:<sender@example.org>", 250, "2.1.0");
    let r = c.cmd("RCPT TO:<rcpt@bad.test>");
    assert_eq!(
        (r.code, r.enhanced()),
        (451, Some("4.4.0")),
        "a back end without XCLIENT for us: {r}"
    );
    c.expect("RSET", 250, "2.0.0");
    // The session goes on with the back end that takes it.
    c.expect("MAIL FROM:<sender@example.org>", 250, "2.1.0");
    c.expect("RCPT TO:<rcpt@example.com>", 250, "2.1.5");
    let id2 = c.data(&message("after the refusal", &["x"])).queue_id();
    assert!(x.stored().contains_key(&id2), "{id2} on x");
    c.expect("QUIT", 221, "2.0.0");

    let m = Scrape::of(&fe);
    assert!(
        m.count(
            "tern_frontend_backend_failures_total",
            &[("reason", "xclient")]
        ) >= 1,
        "{}",
        m.0
    );
    assert!(y.stored().is_empty(), "y took nothing");
    assert_eq!(y.value("tern_messages_accepted_total", &[]), 0.0);
    let log = fe.stderr();
    assert!(log.contains("does not offer XCLIENT"), "{log}");
}

#[test]
fn a_killed_front_end_loses_nothing_acknowledged() {
    const N: u64 = 500;
    const RUN: &str = "5eed0000000000f5";
    let sink = TestSink::start("127.0.0.1:0".parse().unwrap());
    let (a, b) = shadow_pair(151, 152, Some(sink.addr()));
    let site = pool("site", &[(a.addr(), 0), (b.addr(), 0)], "");
    let mut fe = front_end(153, &site, &[]);
    // Open loop at 150/s: still sending when the front end dies, and
    // again once it is back (a target down is retried; the run stops
    // only after --timeout with every target down).
    let mut load = Load::start(
        fe.addr(),
        &[
            "--messages",
            &N.to_string(),
            "--rate",
            "150",
            "--concurrency",
            "4",
            "--per-conn",
            "20",
            "--size",
            "2000",
            "--timeout",
            "15s",
            "--run-id",
            RUN,
        ],
    );
    // Under load: messages of the run arrive at the sink (watched there:
    // the front end's /metrics is slow to answer).
    wait_until(
        "60 messages through the front end",
        Duration::from_secs(30),
        || delivered(&sink, RUN).len() >= 60,
    );
    fe.kill();
    let before_kill = delivered(&sink, RUN).len();
    assert!(
        !load.done(),
        "tern-loadgen ended before the kill:\n{}",
        load.output()
    );
    fe.restart();
    let (run, acked) = load.finish(Duration::from_secs(60));
    assert_eq!(run, RUN, "{}", load.output());
    let after_restart =
        Scrape::of(&fe).count("tern_frontend_messages_total", &[("result", "accepted")]);
    assert!(
        after_restart > 0,
        "the rest went through the restarted front end:\n{}",
        load.output()
    );
    assert!(
        acked.len() as u64 >= after_restart,
        "acknowledged {} < {after_restart} accepted by the restarted front end",
        acked.len()
    );
    let seen = wait_delivered(&sink, &run, &acked);
    exactly_once(&seen, &acked);
    println!(
        "front end killed after {before_kill} accepted: {} acknowledged, {} delivered, {after_restart} after the restart",
        acked.len(),
        seen.len()
    );
    holds_no_message_state(&fe);
}

#[test]
fn srv_pool_uses_the_priority_0_target_then_the_other() {
    let (ra, rb) = (
        Reservation::on(loopback(161)),
        Reservation::on(loopback(162)),
    );
    let zone = Zone::new()
        .srv(
            "_smtp._tcp.site.test",
            0,
            1,
            ra.addr().port(),
            "a.site.test",
        )
        .srv(
            "_smtp._tcp.site.test",
            10,
            1,
            rb.addr().port(),
            "b.site.test",
        )
        .a("a.site.test", loopback(161))
        .a("b.site.test", loopback(162));
    let dns = TestDns::start(loopback(160).into(), zone);
    let cfg = |name| backend_config(name, None, FRONT_END_SOURCE, None);
    let mut a = Tern::start("a", ra, cfg("a"), &[]);
    let b = Tern::start("b", rb, cfg("b"), &[]);
    let fe = Tern::start(
        "front end",
        Reservation::on(loopback(163)),
        front_end_config("[pools.site]\nsrv = \"_smtp._tcp.site.test\"\n").replace(
            "[delivery]\n",
            &format!("[delivery]\ndns_servers = [\"{}\"]\n", dns.addr()),
        ),
        &[],
    );
    for i in 0..3 {
        let id = send_one(&fe, &format!("srv {i}"));
        assert_eq!(holder(&id, &[&a, &b]), "a", "priority 0 first: {i}");
    }
    assert!(dns.queries() >= 1, "SRV looked up");
    a.kill();
    for i in 0..3 {
        let id = send_one(&fe, &format!("srv after kill {i}"));
        assert_eq!(holder(&id, &[&a, &b]), "b", "the other target: {i}");
    }
    let m = Scrape::of(&fe);
    assert!(
        m.count(
            "tern_frontend_backend_connections_total",
            &[("pool", "site")]
        ) >= 6,
        "{}",
        m.0
    );
}
