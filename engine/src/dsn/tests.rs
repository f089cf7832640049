//! Unit tests of [`build`](super::build): the report parsed back with
//! mail-parser, its helpers on their edge cases, and a proptest that no
//! input makes a malformed report.

use std::borrow::Cow;

use super::original::{crlf_lines, header_section, lines_ok};
use super::*;
use mail_parser::{Message, MessageParser, MessagePart, MimeHeaders};
use proptest::prelude::*;

const ORIGINAL: &[u8] = b"Received: from client.example (192.0.2.1)\r\n\
    \tby mx.test (tern) with ESMTP id 01000000002A;\r\n\
    \tTue, 14 Nov 2023 22:13:20 +0000\r\n\
    From: alice@example.org\r\n\
    To: bob@example.com\r\n\
    Subject: hello\r\n\
    \r\n\
    the body\r\n";

fn reply(code: u16, status: Status, lines: &[&str]) -> Reply {
    Reply {
        code,
        status: Some(status),
        lines: lines.iter().map(|l| Cow::Owned(l.to_string())).collect(),
    }
}

fn failed<'a>(recipient: &'a str, diagnostic: Option<&'a Reply>) -> RecipientReport<'a> {
    RecipientReport {
        recipient,
        action: Action::Failed,
        status: Status(5, 1, 1),
        remote_mta: diagnostic.map(|_| "mx.example.com"),
        diagnostic,
        explanation: "the recipient's server rejected it",
        last_attempt_ms: Some(1_700_000_050_000),
    }
}

fn notice<'a>(original: &'a [u8], recipients: &'a [RecipientReport<'a>]) -> Notice<'a> {
    Notice {
        reporting_mta: "mx.test",
        queue_id: "01000000002A",
        envelope_from: "alice@example.org",
        arrival_ms: 1_700_000_000_000,
        now_ms: 1_700_000_100_000,
        original,
        recipients,
        return_content_bytes_max: 1 << 20,
    }
}

fn parse(bytes: &[u8]) -> Message<'_> {
    MessageParser::default().parse(bytes).expect("parses")
}

fn parts<'m>(m: &'m Message<'m>) -> Vec<&'m MessagePart<'m>> {
    let ids = m.parts[0].sub_parts().expect("multipart");
    ids.iter().map(|&i| &m.parts[i as usize]).collect()
}

fn mime_type(p: &MessagePart) -> String {
    let ct = p.content_type().expect("content type");
    format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or(""))
}

/// The delivery-status part as blocks of unfolded (name, value) fields.
fn status_blocks(p: &MessagePart) -> Vec<Vec<(String, String)>> {
    let text = std::str::from_utf8(p.contents())
        .unwrap()
        .replace("\r\n ", " ");
    text.trim_end()
        .split("\r\n\r\n")
        .map(|block| {
            block
                .split("\r\n")
                .map(|l| {
                    let (n, v) = l.split_once(": ").expect("name: value");
                    (n.to_string(), v.to_string())
                })
                .collect()
        })
        .collect()
}

fn field<'b>(block: &'b [(String, String)], name: &str) -> Option<&'b str> {
    block
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

fn boundary_of(dsn: &[u8]) -> String {
    let m = parse(dsn);
    let ct = m.content_type().unwrap();
    ct.attribute("boundary").unwrap().to_string()
}

#[test]
fn is_a_multipart_report_with_three_parts() {
    let r = reply(550, Status(5, 1, 1), &["<bob@example.com>: user unknown"]);
    let rcpts = [failed("bob@example.com", Some(&r))];
    let dsn = build(&notice(ORIGINAL, &rcpts));
    let m = parse(&dsn);
    let ct = m.content_type().unwrap();
    assert_eq!((ct.ctype(), ct.subtype()), ("multipart", Some("report")));
    assert_eq!(ct.attribute("report-type"), Some("delivery-status"));
    let ps = parts(&m);
    let types: Vec<String> = ps.iter().map(|p| mime_type(p)).collect();
    assert_eq!(
        types,
        ["text/plain", "message/delivery-status", "message/rfc822"]
    );
    let from = m.from().unwrap().first().unwrap();
    assert_eq!(from.address.as_deref(), Some("MAILER-DAEMON@mx.test"));
    assert_eq!(from.name.as_deref(), Some("Mail Delivery System"));
    let to = m.to().unwrap().first().unwrap();
    assert_eq!(to.address.as_deref(), Some("alice@example.org"));
    assert_eq!(m.subject(), Some("Undelivered Mail Returned to Sender"));
    assert_eq!(
        m.header_raw("Auto-Submitted").map(str::trim),
        Some("auto-replied")
    );
    assert_eq!(
        m.message_id(),
        Some("01000000002A.1700000100000.dsn@mx.test")
    );
    assert_eq!(m.date().unwrap().to_timestamp(), 1_700_000_100);
    let text = ps[0].text_contents().unwrap();
    assert!(text.contains("<bob@example.com>: the recipient's server rejected it"));
    assert!(text.contains("mx.example.com said: 550 5.1.1 <bob@example.com>: user unknown"));
    assert!(text.contains("The original message is attached."));
}

#[test]
fn delivery_status_lists_every_recipient() {
    let r550 = reply(550, Status(5, 1, 1), &["user unknown"]);
    let r421 = reply(421, Status(4, 4, 2), &["try again", "later"]);
    let expired = RecipientReport {
        status: Status(4, 4, 7),
        explanation: "message expired after 2 days in the queue",
        ..failed("Postmaster", None)
    };
    let delayed = RecipientReport {
        action: Action::Delayed,
        status: Status(4, 4, 2),
        ..failed("carol@example.net", Some(&r421))
    };
    let rcpts = [failed("bob@example.com", Some(&r550)), expired, delayed];
    let dsn = build(&notice(ORIGINAL, &rcpts));
    let m = parse(&dsn);
    // Any failure makes it a bounce.
    assert_eq!(m.subject(), Some("Undelivered Mail Returned to Sender"));
    let blocks = status_blocks(parts(&m)[1]);
    assert_eq!(blocks.len(), 4);
    assert_eq!(field(&blocks[0], "Reporting-MTA"), Some("dns; mx.test"));
    assert_eq!(field(&blocks[0], "X-Tern-Queue-ID"), Some("01000000002A"));
    assert_eq!(
        field(&blocks[0], "Arrival-Date"),
        Some("Tue, 14 Nov 2023 22:13:20 +0000")
    );
    let want = [
        (
            "rfc822; bob@example.com",
            "failed",
            "5.1.1",
            Some("smtp; 550 5.1.1 user unknown"),
        ),
        ("rfc822; Postmaster", "failed", "4.4.7", None),
        (
            "rfc822; carol@example.net",
            "delayed",
            "4.4.2",
            Some("smtp; 421 4.4.2 try again later"),
        ),
    ];
    for (block, (rcpt, action, status, diag)) in blocks[1..].iter().zip(want) {
        assert_eq!(field(block, "Final-Recipient"), Some(rcpt));
        assert_eq!(field(block, "Action"), Some(action));
        assert_eq!(field(block, "Status"), Some(status));
        assert_eq!(field(block, "Diagnostic-Code"), diag);
        let remote = diag.map(|_| "dns; mx.example.com");
        assert_eq!(field(block, "Remote-MTA"), remote);
        assert_eq!(
            field(block, "Last-Attempt-Date"),
            Some("Tue, 14 Nov 2023 22:14:10 +0000")
        );
    }
    let text = parts(&m)[0].text_contents().unwrap();
    assert!(text.contains("could not be delivered"));
    assert!(text.contains("still being retried"));
    assert!(text.contains("<Postmaster>: message expired after 2 days in the queue (4.4.7)"));
}

#[test]
fn delayed_only_is_a_delay_notice() {
    let delayed = RecipientReport {
        action: Action::Delayed,
        status: Status(4, 4, 1),
        ..failed("bob@example.com", None)
    };
    let dsn = build(&notice(ORIGINAL, &[delayed]));
    let m = parse(&dsn);
    assert_eq!(m.subject(), Some("Delayed Mail (still being retried)"));
    let text = parts(&m)[0].text_contents().unwrap();
    assert!(!text.contains("could not be delivered"));
    assert_eq!(
        field(&status_blocks(parts(&m)[1])[1], "Action"),
        Some("delayed")
    );
}

#[test]
fn returns_the_whole_original_only_when_small() {
    let rcpts = [failed("bob@example.com", None)];
    let mut n = notice(ORIGINAL, &rcpts);
    n.return_content_bytes_max = ORIGINAL.len();
    let dsn = build(&n);
    let m = parse(&dsn);
    let original = parts(&m)[2];
    assert_eq!(mime_type(original), "message/rfc822");
    assert_eq!(original.contents(), ORIGINAL);
    let inner = original.message().unwrap();
    assert_eq!(inner.subject(), Some("hello"));
    assert!(find(&dsn, b"Content-Transfer-Encoding: 7bit\r\n").is_some());

    n.return_content_bytes_max = ORIGINAL.len() - 1;
    let dsn = build(&n);
    let m = parse(&dsn);
    let headers = parts(&m)[2];
    assert_eq!(mime_type(headers), "text/rfc822-headers");
    let end = find(ORIGINAL, b"\r\n\r\n").unwrap() + 4;
    assert_eq!(headers.contents(), &ORIGINAL[..end]);
    assert!(find(&dsn, b"the body").is_none());
    let text = parts(&m)[0].text_contents().unwrap();
    assert!(text.contains("The header section of the original message is attached."));
}

#[test]
fn eight_bit_original_is_declared_8bit() {
    let original = b"Subject: caf\xc3\xa9\r\n\r\n\xff\xfe\r\n";
    let rcpts = [failed("bob@example.com", None)];
    let dsn = build(&notice(original, &rcpts));
    assert!(find(
        &dsn,
        b"Content-Type: message/rfc822\r\nContent-Transfer-Encoding: 8bit\r\n"
    )
    .is_some());
    assert_eq!(parts(&parse(&dsn))[2].contents(), original);
}

#[test]
fn boundary_avoids_a_collision_with_the_original() {
    let rcpts = [failed("bob@example.com", None)];
    let first = boundary_of(&build(&notice(ORIGINAL, &rcpts)));
    assert_eq!(first, "=_tern.01000000002A.1700000100000.0");
    let trap = format!(
        "Subject: trap\r\n\r\n--{first}\r\nContent-Type: text/plain\r\n\r\nx\r\n--{first}--\r\n"
    );
    let dsn = build(&notice(trap.as_bytes(), &rcpts));
    let second = boundary_of(&dsn);
    assert_ne!(second, first);
    assert!(find(trap.as_bytes(), second.as_bytes()).is_none());
    let m = parse(&dsn);
    let ps = parts(&m);
    assert_eq!(ps.len(), 3);
    assert_eq!(ps[2].contents(), trap.as_bytes());
}

#[test]
fn long_diagnostic_folds() {
    let words = "word ".repeat(60);
    let r = reply(550, Status(5, 7, 1), &[words.trim(), "second line"]);
    let rcpts = [failed("bob@example.com", Some(&r))];
    let dsn = build(&notice(ORIGINAL, &rcpts));
    let m = parse(&dsn);
    let raw = std::str::from_utf8(parts(&m)[1].contents()).unwrap();
    let start = raw.find("Diagnostic-Code: ").unwrap();
    let end = raw[start..].find("\r\nLast-Attempt-Date").unwrap() + start;
    let lines: Vec<&str> = raw[start..end].split("\r\n").collect();
    assert!(lines.len() > 3, "{lines:?}");
    for l in &lines {
        assert!(l.len() <= FOLD_WIDTH, "{l:?}");
    }
    for l in &lines[1..] {
        assert!(l.starts_with(' ') && !l.starts_with("  "), "{l:?}");
    }
    let want = format!("smtp; 550 5.7.1 {}second line", words);
    let block = &status_blocks(parts(&m)[1])[1];
    assert_eq!(field(block, "Diagnostic-Code"), Some(want.as_str()));

    // One word longer than a line is cut; nothing exceeds 998.
    let huge = "x".repeat(3000);
    let r = reply(550, Status(5, 7, 1), &[&huge]);
    let rcpts = [failed("bob@example.com", Some(&r))];
    let dsn = build(&notice(ORIGINAL, &rcpts));
    assert!(lines_ok(&dsn));
    assert!(dsn.split(|&b| b == b'\n').any(|l| l.len() == LINE_MAX + 1));
}

#[test]
fn sanitizes_text_from_peers_and_envelope() {
    let r = reply(
        550,
        Status(5, 1, 1),
        &["bad\r\nInjected: yes\x07 caf\u{e9}"],
    );
    let rcpt = RecipientReport {
        remote_mta: Some("mx\r\n.example"),
        ..failed("b\u{f6}b@example.com\r\nX-Evil: 1", Some(&r))
    };
    let mut n = notice(ORIGINAL, std::slice::from_ref(&rcpt));
    n.envelope_from = "al\u{ef}ce@example.org\r\nBcc: x@y";
    let dsn = build(&n);
    assert!(lines_ok(&dsn));
    let m = parse(&dsn);
    assert!(m.header("Bcc").is_none());
    let ps = parts(&m);
    assert!(ps[0].contents().is_ascii() && ps[1].contents().is_ascii());
    let block = &status_blocks(ps[1])[1];
    assert_eq!(
        field(block, "Final-Recipient"),
        Some("rfc822; b?b@example.com X-Evil: 1")
    );
    assert_eq!(field(block, "Remote-MTA"), Some("dns; mx .example"));
    assert_eq!(
        field(block, "Diagnostic-Code"),
        Some("smtp; 550 5.1.1 bad Injected: yes caf?")
    );
    assert!(find(&dsn, "To: <al\u{ef}ceexample.org".as_bytes()).is_none());
    assert!(find(&dsn, "To: <al\u{ef}ce@example.orgBcc: x@y>\r\n".as_bytes()).is_some());
}

#[test]
fn header_section_cases() {
    assert_eq!(header_section(b"A: 1\r\n\r\nbody\r\n"), b"A: 1\r\n\r\n");
    assert_eq!(header_section(b"\r\nbody\r\n"), b"\r\n");
    assert_eq!(header_section(b"A: 1\r\nB: 2\r\n"), b"A: 1\r\nB: 2\r\n");
    let mut big = b"A: 1\r\n".repeat(HEADER_SECTION_BYTES_MAX / 6 + 10);
    big.extend_from_slice(b"\r\nbody");
    let cut = header_section(&big);
    assert!(cut.len() <= HEADER_SECTION_BYTES_MAX && cut.ends_with(b"A: 1\r\n"));
}

#[test]
fn repairs_lines_that_were_never_stored() {
    assert!(matches!(crlf_lines(ORIGINAL), Cow::Borrowed(_)));
    assert_eq!(&*crlf_lines(b"a\nb\rc\r\n\n"), b"a\r\nb\r\nc\r\n\r\n");
    let long = crlf_lines(&[b'y'; LINE_MAX + 5]);
    assert_eq!(long.len(), LINE_MAX + 2 + 5);
    assert!(lines_ok(&long));
    assert!(!lines_ok(b"a\rb") && !lines_ok(b"\n") && lines_ok(&[b'z'; LINE_MAX]));
}

#[test]
fn dates_are_rfc5322_and_never_panic() {
    assert_eq!(date(1_700_000_000_999), "Tue, 14 Nov 2023 22:13:20 +0000");
    assert_eq!(date(u64::MAX), "Fri, 31 Dec 9999 23:59:59 +0000");
}

fn arb_reply() -> impl Strategy<Value = Reply> {
    (200u16..600, proptest::collection::vec(".{0,600}", 1..4)).prop_map(|(code, lines)| Reply {
        code,
        status: Some(Status((code / 100) as u8, 1, 1)),
        lines: lines.into_iter().map(Cow::Owned).collect(),
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(100))]
    #[test]
    fn output_lines_are_always_well_formed(
        original in proptest::collection::vec(
            prop_oneof![Just(b'\r'), Just(b'\n'), any::<u8>(), Just(b'x')], 0..3000),
        long_line in 0usize..2000,
        rcpt in ".{0,300}",
        from in ".{1,300}",
        mta in ".{0,100}",
        explanation in ".{0,300}",
        reply in proptest::option::of(arb_reply()),
        delayed in any::<bool>(),
        max in 0usize..4000,
        now_ms in any::<u64>(),
    ) {
        let mut original = original;
        original.extend(std::iter::repeat_n(b'L', long_line));
        let r = RecipientReport {
            recipient: &rcpt,
            action: if delayed { Action::Delayed } else { Action::Failed },
            status: Status(4, 4, 7),
            remote_mta: Some(&mta),
            diagnostic: reply.as_ref(),
            explanation: &explanation,
            last_attempt_ms: Some(now_ms),
        };
        let rcpts = [r, failed("bob@example.com", None)];
        let n = Notice {
            reporting_mta: &mta,
            queue_id: &mta,
            envelope_from: &from,
            now_ms,
            return_content_bytes_max: max,
            ..notice(&original, &rcpts)
        };
        let dsn = build(&n);
        prop_assert!(lines_ok(&dsn) && dsn.ends_with(b"\r\n"));
        let m = parse(&dsn);
        let ps = parts(&m);
        prop_assert_eq!(ps.len(), 3);
        prop_assert_eq!(status_blocks(ps[1]).len(), 3);
    }
}
