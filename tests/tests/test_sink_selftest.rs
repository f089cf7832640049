//! The test sink ([`tern_tests::sink`]) against a plain blocking client:
//! what it records is byte-exact, it answers as told, and it leaves no
//! thread or listener behind.

use std::io::{self, Read};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use tern_tests::sink::{Behavior, TestSink};
use tern_tests::smtp::{dot_stuff, message, Client};

const WAIT: Duration = Duration::from_secs(10);

fn sink() -> TestSink {
    TestSink::start(SocketAddr::from(([127, 0, 0, 1], 0)))
}

fn reply(code: u16, text: &str) -> Option<(u16, String)> {
    Some((code, text.to_string()))
}

/// Content with dot lines, an empty line and 8-bit octets.
fn tricky() -> Vec<u8> {
    let mut m = message("tricky", &[".one dot", "..two dots", ".", "", "end"]);
    m.extend_from_slice(b"8bit: \xc3\xa9\xff\r\n");
    m
}

/// Reads until the peer closes (a reset counts); panics on more replies.
#[track_caller]
fn expect_gone(c: &mut Client) {
    match c.try_reply() {
        Ok(None) => {}
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
        other => panic!("expected the sink to close the connection, got {other:?}"),
    }
}

#[test]
fn pipelined_transactions_are_recorded_byte_exact() {
    let sink = sink();
    let mut c = Client::open(sink.addr());
    let ehlo = c.cmd("EHLO client.test");
    ehlo.assert(250, None);
    for ext in ["PIPELINING", "CHUNKING", "8BITMIME", "ENHANCEDSTATUSCODES"] {
        assert!(ehlo.lines.iter().any(|l| l == ext), "{ext} missing: {ehlo}");
    }

    c.send(
        b"MAIL FROM:<a@example.test> BODY=8BITMIME\r\n\
          RCPT TO:<b@example.test>\r\nRCPT TO:<c@example.test>\r\nDATA\r\n",
    );
    c.reply().expect(250, "2.1.0");
    c.reply().expect(250, "2.1.5");
    c.reply().expect(250, "2.1.5");
    c.reply().assert(354, None);
    // The content, its end and a whole second transaction in one write.
    let mut write = dot_stuff(&tricky());
    write.extend_from_slice(b"MAIL FROM:<>\r\nRCPT TO:<d@example.test>\r\nDATA\r\n");
    write.extend_from_slice(&dot_stuff(b"second\r\n"));
    write.extend_from_slice(b"QUIT\r\n");
    c.send(&write);
    c.reply().expect(250, "2.0.0");
    c.reply().expect(250, "2.1.0");
    c.reply().expect(250, "2.1.5");
    c.reply().assert(354, None);
    c.reply().expect(250, "2.0.0");
    c.reply().expect(221, "2.0.0");
    c.expect_closed();

    let m = sink.wait_for(2, WAIT);
    assert_eq!(m.len(), 2);
    assert_eq!((m[0].conn, m[0].helo.as_str()), (1, "client.test"));
    assert_eq!(m[0].mail_from, "a@example.test");
    assert_eq!(m[0].mail_params, "BODY=8BITMIME");
    assert_eq!(m[0].rcpts, ["b@example.test", "c@example.test"]);
    assert_eq!(m[0].content, tricky());
    assert!(!m[0].bdat && !m[0].bare_newline);
    assert_eq!(
        (m[1].mail_from.as_str(), m[1].content.as_slice()),
        ("", &b"second\r\n"[..])
    );
    assert_eq!(
        (sink.connections(), sink.transactions(), sink.rejected()),
        (1, 2, 0)
    );
    assert_eq!(sink.pipelining_violations(), 0);
}

#[test]
fn bdat_chunks_are_concatenated_verbatim() {
    let sink = sink();
    let mut c = Client::ehlo(sink.addr());
    let (one, two) = (&b"Subject: x\r\n\r\n.\r\n"[..], &b"..end\r\n"[..]);
    let mut write = b"MAIL FROM:<a@example.test>\r\nRCPT TO:<b@example.test>\r\n".to_vec();
    write.extend_from_slice(format!("BDAT {}\r\n", one.len()).as_bytes());
    write.extend_from_slice(one);
    write.extend_from_slice(format!("BDAT {} LAST\r\n", two.len()).as_bytes());
    write.extend_from_slice(two);
    c.send(&write);
    c.reply().expect(250, "2.1.0");
    c.reply().expect(250, "2.1.5");
    c.reply().expect(250, "2.0.0");
    c.reply().expect(250, "2.0.0");
    c.quit();

    let m = sink.wait_for(1, WAIT);
    assert_eq!(m[0].content, [one, two].concat());
    assert!(m[0].bdat && !m[0].bare_newline);
}

#[test]
fn recipient_replies_and_only_accepted_recipients_recorded() {
    let sink = sink();
    sink.set_behavior(Behavior {
        rcpt: vec![
            ("Bad@Example.test".into(), 550, "5.1.1 no such user".into()),
            ("later@example.test".into(), 451, "4.2.0 try later".into()),
        ],
        ..Behavior::default()
    });
    let mut c = Client::ehlo(sink.addr());
    c.expect("MAIL FROM:<a@example.test>", 250, "2.1.0");
    c.expect("RCPT TO:<bad@example.TEST>", 550, "5.1.1");
    c.expect("RCPT TO:<later@example.test>", 451, "4.2.0");
    c.expect("RCPT TO:<ok@example.test>", 250, "2.1.5");
    c.cmd("DATA").assert(354, None);
    c.send(&dot_stuff(b"hello\r\n"));
    c.reply().expect(250, "2.0.0");

    let m = sink.wait_for(1, WAIT);
    assert_eq!(m[0].rcpts, ["ok@example.test"]);
    let codes: Vec<u16> = sink.rcpt_replies().iter().map(|r| r.1).collect();
    assert_eq!(codes, [550, 451, 250]);

    // A default for the others; no accepted recipient: DATA is refused.
    sink.set_behavior(Behavior {
        rcpt_default: reply(452, "4.5.3 full"),
        ..Behavior::default()
    });
    c.expect("MAIL FROM:<a@example.test>", 250, "2.1.0");
    c.expect("RCPT TO:<x@example.test>", 452, "4.5.3");
    c.expect("DATA", 554, "5.5.1");
    c.quit();
    assert_eq!(sink.messages().len(), 1);
}

#[test]
fn refused_end_of_data_is_counted_not_recorded() {
    let sink = sink();
    sink.set_behavior(Behavior {
        data_end: reply(451, "4.3.0 not now"),
        ..Behavior::default()
    });
    let mut c = Client::ehlo(sink.addr());
    c.data_message("a@example.test", &["b@example.test"], b"x\r\n")
        .expect(451, "4.3.0");
    // BDAT LAST too.
    c.expect("MAIL FROM:<a@example.test>", 250, "2.1.0");
    c.expect("RCPT TO:<b@example.test>", 250, "2.1.5");
    c.send(b"BDAT 3 LAST\r\nx\r\n");
    c.reply().expect(451, "4.3.0");
    c.quit();
    assert!(sink.messages().is_empty());
    assert_eq!((sink.transactions(), sink.rejected()), (2, 2));
}

#[test]
fn banner_421_closes() {
    let sink = sink();
    sink.set_behavior(Behavior {
        banner: reply(421, "4.3.2 busy"),
        ..Behavior::default()
    });
    let mut c = Client::connect(sink.addr()).expect("connect");
    c.reply().expect(421, "4.3.2");
    expect_gone(&mut c);
    assert_eq!(sink.connections(), 1);
}

#[test]
fn drop_mid_data_closes_without_a_reply() {
    let sink = sink();
    sink.set_behavior(Behavior {
        drop_mid_data: true,
        ..Behavior::default()
    });
    let mut c = Client::ehlo(sink.addr());
    c.expect("MAIL FROM:<a@example.test>", 250, "2.1.0");
    c.expect("RCPT TO:<b@example.test>", 250, "2.1.5");
    c.cmd("DATA").assert(354, None);
    c.send(b"Subject: cut\r\n");
    expect_gone(&mut c);
    assert!(sink.messages().is_empty());
}

#[test]
fn bare_newlines_are_flagged() {
    let sink = sink();
    let mut c = Client::ehlo(sink.addr());
    for content in [&b"a\nb\r\n"[..], b"a\rb\r\n", b"clean\r\n"] {
        c.expect("MAIL FROM:<a@example.test>", 250, "2.1.0");
        c.expect("RCPT TO:<b@example.test>", 250, "2.1.5");
        c.cmd("DATA").assert(354, None);
        c.send(content);
        c.send(b".\r\n");
        c.reply().expect(250, "2.0.0");
    }
    c.expect("MAIL FROM:<a@example.test>", 250, "2.1.0");
    c.expect("RCPT TO:<b@example.test>", 250, "2.1.5");
    c.send(b"BDAT 4 LAST\r\na\nb\n");
    c.reply().expect(250, "2.0.0");
    c.quit();
    let m = sink.wait_for(4, WAIT);
    let flags: Vec<(bool, bool)> = m.iter().map(|m| (m.bdat, m.bare_newline)).collect();
    assert_eq!(
        flags,
        [(false, true), (false, true), (false, false), (true, true)]
    );
    assert_eq!(m[0].content, b"a\nb\r\n");
    assert_eq!(m[3].content, b"a\nb\n");
}

#[test]
fn switches_limits_and_bad_input() {
    let sink = sink();
    sink.set_behavior(Behavior {
        no_pipelining: true,
        no_chunking: true,
        close_after_messages: Some(1),
        reply_delay: Duration::from_millis(20),
        ..Behavior::default()
    });
    let mut c = Client::open(sink.addr());
    let ehlo = c.cmd("EHLO client.test");
    assert!(
        !ehlo
            .lines
            .iter()
            .any(|l| l == "PIPELINING" || l == "CHUNKING"),
        "{ehlo}"
    );
    c.expect("MAIL FROM:<a@example.test>", 250, "2.1.0");
    c.expect("RCPT TO:<b@example.test>", 250, "2.1.5");
    c.send(b"BDAT 2 LAST\r\nx\n");
    c.reply().expect(502, "5.5.1");
    c.expect("FOO", 500, "5.5.2");
    c.send(format!("NOOP {}\r\n", "x".repeat(10_000)).as_bytes());
    c.reply().expect(500, "5.5.2");
    c.expect("NOOP", 250, "2.0.0");
    c.expect("RSET", 250, "2.0.0");
    c.data_message("a@example.test", &["b@example.test"], b"one\r\n")
        .expect(250, "2.0.0");
    assert_eq!(sink.pipelining_violations(), 0);
    c.send(b"NOOP\r\nNOOP\r\n");
    c.replies(2);
    assert_eq!(sink.pipelining_violations(), 1);
    c.expect("MAIL FROM:<a@example.test>", 421, "4.7.0");
    expect_gone(&mut c);
    assert_eq!(sink.wait_for(1, WAIT).len(), 1);
}

#[test]
#[should_panic(expected = "expected at least 1 messages within")]
fn wait_for_panics_with_a_summary() {
    sink().wait_for(1, Duration::from_millis(50));
}

#[test]
fn stop_refuses_and_the_address_can_be_reused() {
    let mut sink = sink();
    let addr = sink.addr();
    let mut c = Client::ehlo(addr);
    c.data_message("a@example.test", &["b@example.test"], b"x\r\n")
        .expect(250, "2.0.0");
    assert_eq!(sink.open_connections(), 1);
    sink.stop();
    expect_gone(&mut c);
    let refused = TcpStream::connect_timeout(&addr, Duration::from_secs(5));
    assert_eq!(
        refused.map(drop).map_err(|e| e.kind()),
        Err(io::ErrorKind::ConnectionRefused)
    );
    sink.stop();

    // Connections closed by the sink sit in TIME_WAIT on this port.
    let again = TestSink::start(addr);
    assert_eq!(again.addr(), addr);
    let mut c = Client::ehlo(addr);
    c.data_message("a@example.test", &["b@example.test"], b"y\r\n")
        .expect(250, "2.0.0");
    assert_eq!(again.wait_for(1, WAIT)[0].content, b"y\r\n");
    assert_eq!(
        sink.messages().len(),
        1,
        "the stopped sink keeps its record"
    );
}

/// Names of this process's threads that start with one of `prefixes`.
fn threads_named(prefixes: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").expect("read /proc/self/task") {
        let mut name = String::new();
        let comm = task.expect("task entry").path().join("comm");
        // A thread may exit between the listing and the read.
        if std::fs::File::open(comm)
            .and_then(|mut f| f.read_to_string(&mut name))
            .is_ok()
        {
            let name = name.trim_end().to_string();
            if prefixes.iter().any(|p| name.starts_with(p.as_str())) {
                found.push(name);
            }
        }
    }
    found
}

#[test]
fn no_thread_outlives_its_sink() {
    let mut prefixes = Vec::new();
    for _ in 0..20 {
        let sink = sink();
        let prefix = sink.thread_name_prefix();
        let mut idle = Client::ehlo(sink.addr());
        let mut busy = Client::ehlo(sink.addr());
        busy.expect("MAIL FROM:<a@example.test>", 250, "2.1.0");
        busy.expect("RCPT TO:<b@example.test>", 250, "2.1.5");
        busy.cmd("DATA").assert(354, None);
        busy.send(b"half a line");
        // Accept thread and two connection threads.
        assert_eq!(threads_named(std::slice::from_ref(&prefix)).len(), 3);
        drop(sink);
        expect_gone(&mut idle);
        expect_gone(&mut busy);
        prefixes.push(prefix);
    }
    // A joined thread leaves /proc a moment after its join returned.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = threads_named(&prefixes);
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "sink threads left behind: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
