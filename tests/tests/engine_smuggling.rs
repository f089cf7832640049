//! SMTP smuggling (CVE-2023-51764 class) against the real binary: only
//! `<CRLF>.<CRLF>` ends DATA; a bare LF or bare CR near a would-be end of
//! data must never let one DATA carry a second message. Every attempt gets
//! 521 and the connection is closed, and the queue gains nothing.

use std::time::Duration;

use tern_tests::server::{Options, TernProcess};
use tern_tests::smtp::{message, Client};

/// The second message an attacker tries to hide in the first one's data.
const SMUGGLED: &str = "MAIL FROM:<admin@bank.test>\r\nRCPT TO:<victim@example.test>\r\nDATA\r\n\
                        From: admin@bank.test\r\nSubject: smuggled\r\n\r\nsend money\r\n.\r\n";

/// Fake end-of-data sequences that some MTAs accept and tern must not.
const ATTEMPTS: &[(&str, &str)] = &[
    ("<CR><LF>.<LF>", "\r\n.\n"),
    ("<LF>.<CR><LF>", "\n.\r\n"),
    ("<LF>.<LF>", "\n.\n"),
    ("<CR><LF>.<CR>", "\r\n.\r"),
    ("<CR>.<CR><LF>", "\r.\r\n"),
    ("<CR>.<CR>", "\r.\r"),
    ("<CR><LF>.<CR><CR><LF>", "\r\n.\r\r\n"),
    ("<CR><LF><LF>.<CR><LF>", "\r\n\n.\r\n"),
];

fn start_data(c: &mut Client) {
    c.expect("MAIL FROM:<user@example.test>", 250, "2.1.0");
    c.expect("RCPT TO:<friend@example.test>", 250, "2.1.5");
    c.cmd("DATA").assert(354, None);
}

/// The first message's text up to (not including) the fake end, which
/// the caller appends, followed by the smuggled transaction.
fn attack(fake_end: &str) -> Vec<u8> {
    let mut bytes = b"From: user@example.test\r\nSubject: hello\r\n\r\nhi".to_vec();
    bytes.extend_from_slice(fake_end.as_bytes());
    bytes.extend_from_slice(SMUGGLED.as_bytes());
    bytes
}

#[test]
fn bare_lf_and_cr_end_of_data_attempts_never_make_two_messages() {
    let tern = TernProcess::start(Options::default());
    for (name, fake_end) in ATTEMPTS {
        let before = tern.queue_list().len();
        let mut c = tern.ehlo();
        start_data(&mut c);
        c.send(&attack(fake_end));
        let r = c.reply();
        assert_eq!(
            (r.code, r.enhanced()),
            (521, Some("5.5.2")),
            "{name}: expected 521 5.5.2, got {r}"
        );
        c.expect_closed();
        assert_eq!(
            tern.queue_list().len(),
            before,
            "{name}: the attempt queued a message"
        );
    }
    // The server still accepts honest mail, exactly one message for one DATA.
    let mut c = tern.ehlo();
    let content = message("honest", &["hi"]);
    let id = c.send_message("user@example.test", &["friend@example.test"], &content);
    c.quit();
    assert_eq!(tern.queue_ids(), vec![id]);
}

#[test]
fn attempts_split_across_tcp_segments_are_refused_too() {
    let tern = TernProcess::start(Options::default());
    for (name, fake_end) in &ATTEMPTS[..3] {
        let bytes = attack(fake_end);
        let at = bytes.windows(2).position(|w| w == b"hi").expect("marker") + 2;
        // Split at each octet of the fake end: the parser must carry its
        // state across reads.
        for split in at..=at + fake_end.len() {
            let mut c = tern.ehlo();
            start_data(&mut c);
            c.send(&bytes[..split]);
            // Best effort to make the server read the two parts apart.
            std::thread::sleep(Duration::from_millis(20));
            // The server may have closed after the first part already.
            let _ = c.try_send(&bytes[split..]);
            let r = c.reply();
            assert_eq!(
                (r.code, r.enhanced()),
                (521, Some("5.5.2")),
                "{name} split at {split}: expected 521 5.5.2, got {r}"
            );
            c.expect_closed();
        }
    }
    assert!(tern.queue_list().is_empty(), "{:?}", tern.queue_list());
}

#[test]
fn bare_lf_or_cr_in_commands_closes_with_521() {
    let tern = TernProcess::start(Options::default());
    for bytes in [
        &b"NOOP\nMAIL FROM:<a@example.test>\r\n"[..],
        b"MAIL FROM:<a@example.test>\rRCPT TO:<b@example.test>\r\n",
        b"RSET\r\nNOOP\n",
    ] {
        let mut c = tern.ehlo();
        c.send(bytes);
        if bytes.starts_with(b"RSET") {
            c.reply().expect(250, "2.0.0");
        }
        c.reply().expect(521, "5.5.2");
        c.expect_closed();
    }
    // Bare LF in message headers, far from the end of data.
    let mut c = tern.ehlo();
    start_data(&mut c);
    c.send(b"Subject: x\nBcc: victim@example.test\r\n\r\nbody\r\n.\r\n");
    c.reply().expect(521, "5.5.2");
    c.expect_closed();
    assert!(tern.queue_list().is_empty());
}
