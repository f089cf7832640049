//! PIPELINING (RFC 2920) and CHUNKING (RFC 3030) against the real binary:
//! replies come back in order, and what was queued is byte-exact.

use tern_tests::server::{Options, TernProcess};
use tern_tests::smtp::{dot_stuff, message, Client};

fn server() -> TernProcess {
    TernProcess::start(Options::default())
}

/// Content with the awkward bits: dot lines, an empty line, a line of
/// exactly 998 octets (1000 with CRLF), 8-bit octets, a lone dot line.
fn tricky(tag: &str) -> Vec<u8> {
    let long = "L".repeat(998);
    let mut m = message(
        tag,
        &[".starts with a dot", "..two dots", ".", "", &long, "end"],
    );
    m.extend_from_slice(b"8bit: \xc3\xa9\xff\r\n");
    m
}

#[test]
fn pipelined_transactions_reply_in_order() {
    let tern = server();
    let mut c = tern.ehlo();
    let contents: Vec<Vec<u8>> = (0..4).map(|i| tricky(&format!("pipelined {i}"))).collect();

    // Group 1: MAIL, two RCPTs (one refused), DATA: one write.
    c.send(
        b"MAIL FROM:<a@example.test>\r\n\
          RCPT TO:<b@example.test>\r\n\
          RCPT TO:<not an address>\r\n\
          RCPT TO:<c@example.test>\r\n\
          DATA\r\n",
    );
    c.reply().expect(250, "2.1.0");
    c.reply().expect(250, "2.1.5");
    c.reply().expect(501, "5.1.3");
    c.reply().expect(250, "2.1.5");
    c.reply().assert(354, None);

    // Each following write: the previous message's content and end, then
    // the whole next envelope up to DATA (the last command of a group).
    let mut ids = Vec::new();
    for (i, content) in contents.iter().enumerate() {
        let mut write = dot_stuff(content);
        if i + 1 < contents.len() {
            write.extend_from_slice(
                format!(
                    "NOOP\r\nMAIL FROM:<a{i}@example.test> SIZE=5000\r\n\
                     RCPT TO:<b{i}@example.test>\r\nDATA\r\n"
                )
                .as_bytes(),
            );
        } else {
            write.extend_from_slice(b"RSET\r\nQUIT\r\n");
        }
        c.send(&write);
        ids.push(c.reply().queue_id());
        if i + 1 < contents.len() {
            c.reply().expect(250, "2.0.0");
            c.reply().expect(250, "2.1.0");
            c.reply().expect(250, "2.1.5");
            c.reply().assert(354, None);
        } else {
            c.reply().expect(250, "2.0.0");
            c.reply().expect(221, "2.0.0");
            c.expect_closed();
        }
    }
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "queue ids must differ: {ids:?}");

    for (i, (id, content)) in ids.iter().zip(&contents).enumerate() {
        let shown = tern.queue_show(id);
        assert_eq!(shown.content(), &content[..], "message {i} byte-exact");
        let (from, to) = if i == 0 {
            (
                "<a@example.test>".to_string(),
                "b@example.test, c@example.test".to_string(),
            )
        } else {
            (
                format!("<a{}@example.test>", i - 1),
                format!("b{}@example.test", i - 1),
            )
        };
        assert_eq!((shown.field("from"), shown.field("to")), (&*from, &*to));
    }
    assert_eq!(tern.queue_ids(), ids);
}

#[test]
fn content_sent_before_the_354_is_refused() {
    // DATA must be the last command of a group (RFC 2920 3.1): bytes after
    // it, before our 354, are unauthorised pipelining.
    let tern = server();
    let mut c = tern.ehlo();
    let mut write = b"MAIL FROM:<a@example.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n".to_vec();
    write.extend_from_slice(&dot_stuff(&message("early", &["x"])));
    c.send(&write);
    c.reply().expect(250, "2.1.0");
    c.reply().expect(250, "2.1.5");
    c.reply().expect(554, "5.5.0");
    c.expect_closed();
    assert!(tern.queue_list().is_empty());
}

#[test]
fn bdat_chunks_last_and_pipelined() {
    let tern = server();
    let mut c = tern.ehlo();

    // One chunk at a time. BDAT content is not dot-stuffed: a line with a
    // lone dot, and even CRLF.CRLF, are just content.
    let chunks: [&[u8]; 3] = [
        b"Subject: bdat\r\n\r\n",
        b"line\r\n.\r\n..x\r\n",
        b"end\r\n",
    ];
    c.expect("MAIL FROM:<a@example.test>", 250, "2.1.0");
    c.expect("RCPT TO:<b@example.test>", 250, "2.1.5");
    let mut total = 0;
    for chunk in &chunks[..2] {
        let mut write = format!("BDAT {}\r\n", chunk.len()).into_bytes();
        write.extend_from_slice(chunk);
        c.send(&write);
        total += chunk.len();
        let r = c.reply();
        r.expect(250, "2.0.0");
        assert_eq!(r.text(), format!("Ok: {total} octets received"));
    }
    let mut write = format!("BDAT {} LAST\r\n", chunks[2].len()).into_bytes();
    write.extend_from_slice(chunks[2]);
    c.send(&write);
    let first = c.reply().queue_id();
    let first_content = chunks.concat();

    // Everything pipelined in one write, ending with an empty LAST chunk.
    let body: &[u8] = b"Subject: pipelined bdat\r\n\r\n\xe2\x82\xac 8-bit\r\n.\r\n";
    let (a, b) = body.split_at(10);
    let mut write =
        b"MAIL FROM:<p@example.test> BODY=8BITMIME\r\nRCPT TO:<q@example.test>\r\n".to_vec();
    write.extend_from_slice(format!("BDAT {}\r\n", a.len()).as_bytes());
    write.extend_from_slice(a);
    write.extend_from_slice(format!("BDAT {}\r\n", b.len()).as_bytes());
    write.extend_from_slice(b);
    write.extend_from_slice(b"BDAT 0 LAST\r\n");
    // And a whole second message in the same write: BDAT n LAST.
    let third_content = b"Subject: third\r\n\r\nhi\r\n";
    write.extend_from_slice(b"MAIL FROM:<r@example.test>\r\nRCPT TO:<s@example.test>\r\n");
    write.extend_from_slice(format!("BDAT {} LAST\r\n", third_content.len()).as_bytes());
    write.extend_from_slice(third_content);
    write.extend_from_slice(b"NOOP\r\n");
    c.send(&write);
    c.reply().expect(250, "2.1.0");
    c.reply().expect(250, "2.1.5");
    assert_eq!(
        c.reply().expect(250, "2.0.0").text(),
        "Ok: 10 octets received"
    );
    assert_eq!(
        c.reply().expect(250, "2.0.0").text(),
        format!("Ok: {} octets received", body.len())
    );
    let second = c.reply().queue_id();
    c.reply().expect(250, "2.1.0");
    c.reply().expect(250, "2.1.5");
    let third = c.reply().queue_id();
    c.reply().expect(250, "2.0.0");

    // CRLF split across two chunks is a line end, not a bare CR + bare LF.
    c.send(
        b"MAIL FROM:<a@example.test>\r\nRCPT TO:<b@example.test>\r\n\
          BDAT 3\r\nab\rBDAT 4 LAST\r\n\ncd\n",
    );
    c.reply().expect(250, "2.1.0");
    c.reply().expect(250, "2.1.5");
    c.reply().expect(250, "2.0.0");
    // "ab\r\ncd\n" ends with a bare LF: refused as content.
    c.reply().expect(554, "5.6.0");
    c.send(
        b"MAIL FROM:<a@example.test>\r\nRCPT TO:<b@example.test>\r\n\
          BDAT 3\r\nab\rBDAT 4 LAST\r\n\ncd\r",
    );
    c.reply().expect(250, "2.1.0");
    c.reply().expect(250, "2.1.5");
    c.reply().expect(250, "2.0.0");
    c.reply().expect(554, "5.6.0");
    c.send(
        b"MAIL FROM:<a@example.test>\r\nRCPT TO:<b@example.test>\r\n\
          BDAT 3\r\nab\rBDAT 5 LAST\r\n\ncd\r\n",
    );
    c.reply().expect(250, "2.1.0");
    c.reply().expect(250, "2.1.5");
    c.reply().expect(250, "2.0.0");
    let split = c.reply().queue_id();

    // BDAT with a bare LF: framing is by count, so only the message is
    // refused; the session goes on.
    c.expect("MAIL FROM:<a@example.test>", 250, "2.1.0");
    c.expect("RCPT TO:<b@example.test>", 250, "2.1.5");
    c.send(b"BDAT 9 LAST\r\nbare\nlf\r\n");
    c.reply().expect(554, "5.6.0");
    c.expect("NOOP", 250, "2.0.0");
    c.quit();

    assert_eq!(
        tern.queue_ids(),
        vec![first.clone(), second.clone(), third.clone(), split.clone()]
    );
    assert_eq!(tern.queue_show(&split).content(), b"ab\r\ncd\r\n");
    assert_eq!(tern.queue_show(&first).content(), &first_content[..]);
    assert_eq!(tern.queue_show(&second).content(), body);
    assert_eq!(tern.queue_show(&third).content(), third_content);
}

#[test]
fn many_messages_on_one_connection_and_in_parallel() {
    let tern = server();
    let addr = tern.addr();
    let workers: Vec<_> = (0..4)
        .map(|w| {
            std::thread::spawn(move || {
                let mut c = Client::ehlo(addr);
                let mut sent = Vec::new();
                for i in 0..10 {
                    let content = message(&format!("worker {w} message {i}"), &["x"]);
                    let id = c.send_message("a@example.test", &["b@example.test"], &content);
                    sent.push((id, content));
                }
                c.quit();
                sent
            })
        })
        .collect();
    let sent: Vec<(String, Vec<u8>)> = workers
        .into_iter()
        .flat_map(|w| w.join().expect("worker"))
        .collect();
    let stored = tern_tests::queue::stored(&tern.data_dir());
    assert_eq!(stored.len(), sent.len());
    for (id, content) in &sent {
        let message = stored.get(id).unwrap_or_else(|| panic!("{id} missing"));
        assert_eq!(tern_tests::queue::strip_received(message), &content[..]);
    }
}
