//! Every SMTP command and ESMTP extension against the real `tern` binary
//! over loopback TCP, with exact reply codes and enhanced status codes.

use tern_tests::server::{Options, TernProcess};
use tern_tests::smtp::{message, Client};

const CONFIG: &str = "[server]\nhostname = \"mx.test\"\n";

fn server() -> TernProcess {
    TernProcess::start(Options::with_config(CONFIG))
}

#[test]
fn greeting_ehlo_and_a_queued_message() {
    let tern = server();
    let mut c = Client::connect(tern.addr()).expect("connect");
    let greeting = c.reply();
    greeting.assert(220, None);
    assert_eq!(greeting.lines, vec!["mx.test ESMTP tern"]);

    let ehlo = c.cmd("EHLO client.test");
    ehlo.assert(250, None);
    assert_eq!(
        ehlo.lines,
        vec![
            "mx.test",
            "PIPELINING",
            "SIZE 36700160",
            "8BITMIME",
            "SMTPUTF8",
            "ENHANCEDSTATUSCODES",
            "CHUNKING",
            "STARTTLS"
        ],
        "EHLO keywords (SIZE is the default 35 MiB; STARTTLS with the self-signed certificate)"
    );

    c.expect("MAIL FROM:<sender@example.test>", 250, "2.1.0");
    c.expect("RCPT TO:<rcpt@example.test>", 250, "2.1.5");
    let data = c.cmd("DATA");
    data.assert(354, None);
    let content = message("hello", &["first line", ".leading dot", "", "last"]);
    c.send(&tern_tests::smtp::dot_stuff(&content));
    let id = c.reply().queue_id();
    c.quit();

    let list = tern.queue_list();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0].id, id);
    assert_eq!(list[0].from, "sender@example.test");
    assert_eq!(list[0].recipients, vec!["rcpt@example.test"]);

    let shown = tern.queue_show(&id);
    assert_eq!(shown.field("id"), id);
    assert_eq!(shown.field("helo"), "client.test");
    assert_eq!(shown.field("from"), "<sender@example.test>");
    assert_eq!(shown.field("to"), "rcpt@example.test");
    assert!(shown.field("client").starts_with("127.0.0.1:"));
    assert_eq!(shown.content(), &content[..], "content is byte-exact");
    let received = String::from_utf8(shown.received().to_vec()).unwrap();
    assert!(
        received.starts_with(
            "Received: from client.test (127.0.0.1)\r\n\tby mx.test (tern) with ESMTP id "
        ) && received.contains(&format!("id {id}\r\n\tfor <rcpt@example.test>; "))
            && received.ends_with(" +0000\r\n"),
        "{received:?}"
    );
    assert_eq!(list[0].size, shown.message.len());
}

#[test]
fn helo_rset_noop_vrfy_help_quit() {
    let tern = server();
    let mut c = tern.client();
    let helo = c.cmd("HELO client.test");
    helo.assert(250, None);
    assert_eq!(helo.lines, vec!["mx.test"]);
    c.expect("NOOP", 250, "2.0.0");
    c.expect("NOOP with an argument", 250, "2.0.0");
    c.expect("VRFY postmaster", 252, "2.5.2");
    c.expect("VRFY", 501, "5.5.4");
    let help = c.expect("HELP", 214, "2.0.0");
    assert!(help.text().contains("EHLO"), "{help}");
    c.expect("HELP MAIL", 214, "2.0.0");

    // RSET drops the transaction.
    c.expect("MAIL FROM:<a@example.test>", 250, "2.1.0");
    c.expect("RCPT TO:<b@example.test>", 250, "2.1.5");
    c.expect("RSET", 250, "2.0.0");
    c.expect("RCPT TO:<b@example.test>", 503, "5.5.1");
    c.expect("DATA", 503, "5.5.1");
    c.expect("RSET extra", 501, "5.5.4");

    // A HELO session can still send mail (without ESMTP parameters use).
    let content = message("helo", &["body"]);
    let id = c.send_message("a@example.test", &["b@example.test"], &content);
    // Lower-case verbs are fine.
    c.expect("noop", 250, "2.0.0");
    c.cmd("quit").expect(221, "2.0.0");
    c.expect_closed();

    let shown = tern.queue_show(&id);
    assert_eq!(shown.content(), &content[..]);
    assert!(
        String::from_utf8_lossy(shown.received()).contains("(tern) with SMTP id"),
        "HELO sessions are recorded as SMTP"
    );
}

#[test]
fn unknown_commands_and_parameters() {
    let tern = server();
    let mut c = tern.ehlo();
    c.expect("FOO", 500, "5.5.1");
    c.expect("XYZZY bar", 500, "5.5.1");
    c.expect("EXPN staff", 502, "5.5.1");
    c.expect("AUTH PLAIN", 502, "5.5.1");
    c.expect("EHLO", 501, "5.5.4");
    // Unknown or unsupported MAIL / RCPT parameters: 555 5.5.4.
    c.expect("MAIL FROM:<a@example.test> FOO=BAR", 555, "5.5.4");
    c.expect("MAIL FROM:<a@example.test> BODY=BINARYMIME", 555, "5.5.4");
    c.expect("MAIL FROM:<a@example.test> SIZE=10 SIZE=10", 555, "5.5.4");
    c.expect("MAIL FROM:<a@example.test> SIZE=ten", 501, "5.5.4");
    c.expect("MAIL FROM:a@example.test", 501, "5.1.7");
    c.expect("MAIL TO:<a@example.test>", 501, "5.5.4");
    c.expect(
        "MAIL FROM:<a@example.test> SIZE=100 BODY=8BITMIME",
        250,
        "2.1.0",
    );
    c.expect("RCPT TO:<b@example.test> NOTIFY=NEVER", 555, "5.5.4");
    c.expect("RCPT TO:<b@@example.test>", 501, "5.1.3");
    c.expect("RCPT TO:<b@example.test>", 250, "2.1.5");
    c.expect("RSET", 250, "2.0.0");
    c.quit();
    assert!(tern.queue_list().is_empty());
}

#[test]
fn sequence_errors_are_503() {
    let tern = server();
    let mut c = tern.client();
    c.expect("MAIL FROM:<a@example.test>", 503, "5.5.1");
    c.expect("RCPT TO:<b@example.test>", 503, "5.5.1");
    c.expect("DATA", 503, "5.5.1");
    c.cmd("EHLO client.test").assert(250, None);
    c.expect("RCPT TO:<b@example.test>", 503, "5.5.1");
    c.expect("DATA", 503, "5.5.1");
    c.expect("MAIL FROM:<a@example.test>", 250, "2.1.0");
    c.expect("MAIL FROM:<a@example.test>", 503, "5.5.1");
    c.expect("DATA", 503, "5.5.1");
    // BDAT without a transaction: refused, and its chunk is skipped (the
    // chunk is not read as commands).
    c.expect("RSET", 250, "2.0.0");
    c.send(b"BDAT 6\r\nQUIT\r\n");
    c.reply().expect(503, "5.5.1");
    c.expect("NOOP", 250, "2.0.0");
    // DATA after BDAT started.
    c.expect("MAIL FROM:<a@example.test>", 250, "2.1.0");
    c.expect("RCPT TO:<b@example.test>", 250, "2.1.5");
    c.send(b"BDAT 3\r\nabc");
    c.reply().expect(250, "2.0.0");
    c.expect("DATA", 503, "5.5.1");
    c.expect("RSET", 250, "2.0.0");
    // The session still works.
    let id = c.send_message("a@example.test", &["b@example.test"], b"x\r\n");
    c.quit();
    assert_eq!(tern.queue_ids(), vec![id]);
}

#[test]
fn too_many_errors_close_with_421() {
    let tern = server();
    let mut c = tern.ehlo();
    // errors_max defaults to 20: the 20th error reply is followed by 421.
    for _ in 0..19 {
        c.expect("FOO", 500, "5.5.1");
    }
    c.expect("FOO", 500, "5.5.1");
    c.reply().expect(421, "4.7.0");
    c.expect_closed();
}

/// smtp/src/limits.rs documents `ERRORS_MAX_DEFAULT` as "errors in a
/// row" after the model of Postfix's `smtpd_hard_error_limit` ("errors a
/// client is allowed to make without delivering mail"); the session counts
/// every error reply since the connection opened and never resets, so a
/// long-lived client that delivers mail is cut off after 20 errors in total.
#[test]
fn error_count_resets_after_a_delivered_message() {
    let tern = server();
    let mut c = tern.ehlo();
    for _ in 0..19 {
        c.expect("FOO", 500, "5.5.1");
    }
    c.send_message("a@example.test", &["b@example.test"], b"delivered\r\n");
    // Observed: "500 5.5.1" followed by "421 4.7.0 Error: too many errors"
    // and the connection closed.
    c.expect("FOO", 500, "5.5.1");
    c.expect("NOOP", 250, "2.0.0");
    c.quit();
}

#[test]
fn empty_message_is_queued() {
    let tern = server();
    let mut c = tern.ehlo();
    let id = c.send_message("a@example.test", &["b@example.test"], b"");
    c.quit();
    assert_eq!(tern.queue_show(&id).content(), b"");
}

#[test]
fn pipelining_before_ehlo_is_refused() {
    let tern = server();
    // Commands sent ahead before EHLO advertised PIPELINING.
    let mut c = tern.client();
    c.send(b"EHLO client.test\r\nMAIL FROM:<a@example.test>\r\n");
    c.reply().expect(554, "5.5.0");
    c.expect_closed();
    // Same after HELO (no PIPELINING advertised at all).
    let mut c = tern.client();
    c.cmd("HELO client.test").assert(250, None);
    c.send(b"MAIL FROM:<a@example.test>\r\nRCPT TO:<b@example.test>\r\n");
    c.reply().expect(554, "5.5.0");
    c.expect_closed();
    // Before any greeting command, too.
    let mut c = tern.client();
    c.send(b"NOOP\r\nNOOP\r\n");
    c.reply().expect(554, "5.5.0");
    c.expect_closed();
    assert!(tern.queue_list().is_empty());
}

#[test]
fn smtputf8_8bitmime_null_sender_and_postmaster() {
    let tern = server();
    let mut c = tern.ehlo();
    // A UTF-8 address needs SMTPUTF8 on MAIL.
    c.expect("MAIL FROM:<jürgen@example.test>", 553, "5.6.7");
    c.expect("MAIL FROM:<a@example.test>", 250, "2.1.0");
    c.expect("RCPT TO:<δοκιμή@παράδειγμα.test>", 553, "5.6.7");
    c.expect("RSET", 250, "2.0.0");

    c.expect("MAIL FROM:<jürgen@example.test> SMTPUTF8", 250, "2.1.0");
    c.expect("RCPT TO:<δοκιμή@παράδειγμα.test>", 250, "2.1.5");
    c.cmd("DATA").assert(354, None);
    let utf8 = "Subject: Grüße\r\n\r\nΚαλημέρα κόσμε\r\n"
        .as_bytes()
        .to_vec();
    c.send(&tern_tests::smtp::dot_stuff(&utf8));
    let utf8_id = c.reply().queue_id();

    // 8BITMIME with SIZE; the body has octets above 127 that are not UTF-8.
    let mut eight = b"Subject: latin-1\r\n\r\n".to_vec();
    eight.extend_from_slice(b"caf\xe9 na\xefve \xff\r\n");
    c.expect(
        &format!(
            "MAIL FROM:<a@example.test> BODY=8BITMIME SIZE={}",
            eight.len()
        ),
        250,
        "2.1.0",
    );
    c.expect("RCPT TO:<b@example.test>", 250, "2.1.5");
    c.cmd("DATA").assert(354, None);
    c.send(&tern_tests::smtp::dot_stuff(&eight));
    let eight_id = c.reply().queue_id();

    // Null sender (bounces) and the bare Postmaster recipient.
    c.expect("MAIL FROM:<>", 250, "2.1.0");
    c.expect("RCPT TO:<Postmaster>", 250, "2.1.5");
    c.expect("RCPT TO:<c@example.test>", 250, "2.1.5");
    c.cmd("DATA").assert(354, None);
    c.send(&tern_tests::smtp::dot_stuff(
        b"Subject: bounce\r\n\r\nx\r\n",
    ));
    let null_id = c.reply().queue_id();
    c.quit();

    let shown = tern.queue_show(&utf8_id);
    assert_eq!(shown.field("from"), "<jürgen@example.test>");
    assert_eq!(shown.field("to"), "δοκιμή@παράδειγμα.test");
    assert_eq!(shown.content(), &utf8[..]);
    assert!(String::from_utf8_lossy(shown.received()).contains("with UTF8SMTP id"));

    let shown = tern.queue_show(&eight_id);
    assert_eq!(shown.content(), &eight[..]);

    let list = tern.queue_list();
    let null = list.iter().find(|e| e.id == null_id).expect("listed");
    assert_eq!(null.from, "<>");
    assert_eq!(null.recipients, vec!["Postmaster", "c@example.test"]);
    let shown = tern.queue_show(&null_id);
    assert_eq!(shown.field("from"), "<>");
    // With two recipients the Received header names none.
    assert!(!String::from_utf8_lossy(shown.received()).contains("for <"));
}

#[test]
fn metrics_count_accepted_messages() {
    let tern = server();
    let mut c = tern.ehlo();
    for i in 0..3 {
        c.send_message(
            "a@example.test",
            &["b@example.test"],
            &message(&format!("m{i}"), &["x"]),
        );
    }
    c.expect("FOO", 500, "5.5.1");
    c.quit();
    let metrics = tern.metrics();
    assert!(metrics.starts_with("HTTP/1.1 200") || metrics.starts_with("HTTP/1.0 200"));
    assert!(
        metrics.contains("tern_messages_accepted_total{core=\"0\"} 3\n"),
        "{metrics}"
    );
}

/// Duplicate detection (SPEC 2.6) is part of shadow redundancy: with no
/// peer to shadow to (the default), a resend of the same message is a new
/// message, and no digest or cross-core lock is spent on it.
#[test]
fn resend_without_peers_is_queued_again() {
    let tern = server();
    let content = {
        let mut m = b"Message-ID: <resend-1@example.test>\r\n".to_vec();
        m.extend_from_slice(&message("resent", &["body"]));
        m
    };
    let mut ids = Vec::new();
    for _ in 0..2 {
        let mut c = Client::ehlo(tern.addr());
        c.expect("MAIL FROM:<sender@example.test>", 250, "2.1.0");
        c.expect("RCPT TO:<rcpt@example.test>", 250, "2.1.5");
        c.cmd("DATA").assert(354, None);
        c.send(&tern_tests::smtp::dot_stuff(&content));
        ids.push(c.reply().queue_id());
        c.quit();
    }
    assert_ne!(ids[0], ids[1], "two messages, two queue ids");
    assert_eq!(tern.queue_ids().len(), 2);
    assert_eq!(tern.counter("tern_duplicates_total"), 0);
}
