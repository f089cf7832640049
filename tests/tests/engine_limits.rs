//! Protocol limits against the real binary: message size (SIZE= and the
//! content itself, DATA and BDAT), text line length, command line length,
//! recipients per message, connections per client, timeouts.

use std::time::{Duration, Instant};

use tern_tests::server::{first_reply, Options, TernProcess};
use tern_tests::smtp::{dot_stuff, Client};

const LIMIT: usize = 64 * 1024;

const CONFIG: &str = r#"
[server]
hostname = "mx.test"
[smtp]
message_size_max = "64KiB"
recipients_max = 100
"#;

fn server() -> TernProcess {
    TernProcess::start(Options::with_config(CONFIG))
}

/// Content of exactly `len` octets (unstuffed), CRLF lines of at most
/// 100 octets; every line starts with a dot when `dots` (so the stuffed
/// form on the wire is longer than the limit counts).
fn content_of(len: usize, dots: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let line = (len - out.len()).min(100);
        assert!(line >= 3, "content_of: length does not split into lines");
        let start = out.len();
        out.resize(start + line - 2, b'x');
        if dots {
            out[start] = b'.';
        }
        out.extend_from_slice(b"\r\n");
    }
    out
}

#[test]
fn size_parameter_above_the_limit_is_552() {
    let tern = server();
    let mut c = tern.client();
    let ehlo = c.cmd("EHLO client.test");
    assert!(ehlo.lines.contains(&format!("SIZE {LIMIT}")), "{ehlo}");
    c.expect(
        &format!("MAIL FROM:<a@example.test> SIZE={}", LIMIT + 1),
        552,
        "5.3.4",
    );
    c.expect("MAIL FROM:<a@example.test> SIZE=99999999999", 552, "5.3.4");
    c.expect(
        &format!("MAIL FROM:<a@example.test> SIZE={LIMIT}"),
        250,
        "2.1.0",
    );
    c.quit();
}

#[test]
fn message_above_the_limit_is_552_after_the_data() {
    let tern = server();
    let mut c = tern.ehlo();
    // Exactly at the limit (counted unstuffed: every line starts with a
    // dot, so more than the limit is on the wire): accepted.
    let at_limit = content_of(LIMIT, true);
    assert!(dot_stuff(&at_limit).len() > LIMIT + 600);
    let id = c.send_message("a@example.test", &["b@example.test"], &at_limit);
    // One octet more: refused once the data ended, session goes on.
    let over = content_of(LIMIT + 1, false);
    c.data_message("a@example.test", &["b@example.test"], &over)
        .expect(552, "5.3.4");
    c.expect("NOOP", 250, "2.0.0");
    // Far over the limit (1 MiB).
    let huge = content_of(1 << 20, false);
    c.data_message("a@example.test", &["b@example.test"], &huge)
        .expect(552, "5.3.4");
    // BDAT: the sum of the chunks counts.
    c.expect("MAIL FROM:<a@example.test>", 250, "2.1.0");
    c.expect("RCPT TO:<b@example.test>", 250, "2.1.5");
    let first = content_of(40_000, false);
    let mut write = format!("BDAT {}\r\n", first.len()).into_bytes();
    write.extend_from_slice(&first);
    c.send(&write);
    c.reply().expect(250, "2.0.0");
    let second = content_of(30_000, false);
    let mut write = format!("BDAT {} LAST\r\n", second.len()).into_bytes();
    write.extend_from_slice(&second);
    c.send(&write);
    c.reply().expect(552, "5.3.4");
    c.quit();
    assert_eq!(tern.queue_ids(), vec![id.clone()]);
    assert_eq!(tern.queue_show(&id).content(), &at_limit[..]);
}

#[test]
fn text_line_over_1000_octets_is_554() {
    let tern = server();
    let mut c = tern.ehlo();
    // 998 octets + CRLF = 1000: the longest allowed line (RFC 5321 4.5.3.1.6).
    let mut ok = b"Subject: long line\r\n\r\n".to_vec();
    ok.extend_from_slice(&[b'a'; 998]);
    ok.extend_from_slice(b"\r\n");
    let id = c.send_message("a@example.test", &["b@example.test"], &ok);
    // 999 + CRLF = 1001 octets.
    let mut long = b"Subject: too long\r\n\r\n".to_vec();
    long.extend_from_slice(&[b'a'; 999]);
    long.extend_from_slice(b"\r\nnext\r\n");
    c.data_message("a@example.test", &["b@example.test"], &long)
        .expect(554, "5.6.0");
    c.expect("NOOP", 250, "2.0.0");
    // The same in BDAT.
    c.expect("MAIL FROM:<a@example.test>", 250, "2.1.0");
    c.expect("RCPT TO:<b@example.test>", 250, "2.1.5");
    let mut write = format!("BDAT {} LAST\r\n", long.len()).into_bytes();
    write.extend_from_slice(&long);
    c.send(&write);
    c.reply().expect(554, "5.6.0");
    // A 1001-octet line split over two chunks.
    c.expect("MAIL FROM:<a@example.test>", 250, "2.1.0");
    c.expect("RCPT TO:<b@example.test>", 250, "2.1.5");
    let mut write = b"BDAT 600\r\n".to_vec();
    write.extend_from_slice(&[b'x'; 600]);
    write.extend_from_slice(b"BDAT 401 LAST\r\n");
    write.extend_from_slice(&[b'y'; 399]);
    write.extend_from_slice(b"\r\n");
    c.send(&write);
    c.reply().expect(250, "2.0.0");
    c.reply().expect(554, "5.6.0");
    c.quit();
    assert_eq!(tern.queue_ids(), vec![id.clone()]);
    assert_eq!(tern.queue_show(&id).content(), &ok[..]);
}

#[test]
fn command_line_over_512_octets_is_500() {
    let tern = server();
    let mut c = tern.ehlo();
    // "NOOP " + 505 + CRLF = 512 octets: allowed (RFC 5321 4.5.3.1.4).
    c.expect(&format!("NOOP {}", "x".repeat(505)), 250, "2.0.0");
    c.expect(&format!("NOOP {}", "x".repeat(506)), 500, "5.5.2");
    c.expect(&format!("VRFY {}", "x".repeat(600)), 500, "5.5.2");
    // A very long line without LF for a while: one 500, then the rest of
    // the line is dropped and the next command is read normally.
    let mut write = vec![b'y'; 3000];
    write.extend_from_slice(b"\r\nNOOP\r\n");
    c.send(&write);
    c.reply().expect(500, "5.5.2");
    c.reply().expect(250, "2.0.0");
    c.quit();
}

#[test]
fn recipient_101_is_452() {
    let tern = server();
    let mut c = tern.ehlo();
    let mut write = b"MAIL FROM:<a@example.test>\r\n".to_vec();
    for i in 0..101 {
        write.extend_from_slice(format!("RCPT TO:<r{i}@example.test>\r\n").as_bytes());
    }
    c.send(&write);
    c.reply().expect(250, "2.1.0");
    for _ in 0..100 {
        c.reply().expect(250, "2.1.5");
    }
    c.reply().expect(452, "4.5.3");
    c.cmd("DATA").assert(354, None);
    let content = b"Subject: many\r\n\r\nx\r\n";
    c.send(&dot_stuff(content));
    let id = c.reply().queue_id();
    c.quit();
    let list = tern.queue_list();
    assert_eq!(list.len(), 1);
    let expected: Vec<String> = (0..100).map(|i| format!("r{i}@example.test")).collect();
    assert_eq!(list[0].recipients, expected);
    assert_eq!(tern.queue_show(&id).content(), content);
}

#[test]
fn connections_per_ip_over_the_limit_get_421() {
    let tern = TernProcess::start(Options::with_config("[smtp]\nconnections_per_ip_max = 2\n"));
    let addr = tern.addr();
    // The start-up probe's slot is released asynchronously: retry until a
    // connection is admitted (bounded).
    let admitted = |what: &str| -> Client {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut c = Client::connect(addr).expect("connect");
            match c.try_reply() {
                Ok(Some(r)) if r.code == 220 => return c,
                other => assert!(
                    Instant::now() < deadline,
                    "{what}: never admitted; last reply {other:?}"
                ),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let one = admitted("first");
    let _two = admitted("second");
    let mut third = Client::connect(addr).expect("connect");
    third.reply().expect(421, "4.7.0");
    third.expect_closed();
    // A slot frees when a connection ends.
    one.quit();
    let mut c = admitted("after one ended");
    c.cmd("EHLO client.test").assert(250, None);
    c.quit();
}

#[test]
fn inactivity_and_session_timeouts_are_421() {
    let tern = TernProcess::start(Options::with_config(
        "[smtp]\ninactivity_timeout = \"1s\"\nsession_timeout = \"3s\"\n",
    ));
    // Idle: closed after the inactivity timeout.
    let mut idle = tern.ehlo();
    idle.reply().expect(421, "4.4.2");
    idle.expect_closed();
    // Busy but too long: closed at the session timeout (bounded loop).
    let mut busy = tern.ehlo();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        assert!(Instant::now() < deadline, "session timeout never came");
        std::thread::sleep(Duration::from_millis(200));
        busy.send(b"NOOP\r\n");
        let r = busy.reply();
        if r.code == 421 {
            r.expect(421, "4.4.2");
            break;
        }
        r.expect(250, "2.0.0");
    }
    busy.expect_closed();
    // The server is fine afterwards.
    assert_eq!(first_reply(tern.addr()).map(|r| r.code), Some(220));
}

#[test]
fn message_memory_budget_refuses_the_session_that_crosses_it() {
    // Two sessions each hold 40 KiB of unfinished DATA; the core's budget
    // is 64 KiB: the one that crosses it gets 421 4.3.2 and nothing is
    // accepted from it, the other completes.
    let tern = TernProcess::start(Options::with_config(&format!(
        "{CONFIG}message_memory_max = \"64KiB\"\n"
    )));
    let part = content_of(40 * 1024, false);
    let mut first = tern.ehlo();
    first.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n");
    first.reply().assert(250, Some("2.1.0"));
    first.reply().assert(250, Some("2.1.5"));
    first.reply().assert(354, None);
    first.send(&part);
    std::thread::sleep(Duration::from_millis(200));
    let mut second = tern.ehlo();
    second.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n");
    second.reply().assert(250, Some("2.1.0"));
    second.reply().assert(250, Some("2.1.5"));
    second.reply().assert(354, None);
    second.send(&part);
    second.reply().assert(421, Some("4.3.2"));
    first.send(b".\r\n");
    first.reply().assert(250, Some("2.0.0"));
    assert_eq!(tern.queue_ids().len(), 1);
}
