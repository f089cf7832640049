//! Delivery status notifications: the bounce or delay notice sent to a
//! message's envelope sender, an RFC 3464 report inside an RFC 6522
//! `multipart/report`. Pure: the caller passes every time and byte in.
//!
//! # Layout
//!
//! ```text
//! From: Mail Delivery System <MAILER-DAEMON@{reporting mta}>
//! To: <{envelope sender}>
//! Subject | Date | Message-ID | Auto-Submitted: auto-replied (RFC 3834)
//! MIME-Version: 1.0
//! Content-Type: multipart/report; report-type=delivery-status; boundary="=_tern.…"
//!
//! --boundary  text/plain; charset=us-ascii   what happened, per recipient
//! --boundary  message/delivery-status        per-message fields
//!                                            1*( blank line, per-recipient fields )
//! --boundary  message/rfc822                 the whole original, when small enough
//!          or text/rfc822-headers            else its header section
//! --boundary--
//! ```
//!
//! Every line ends in CRLF and holds at most 998 octets (RFC 5322 2.1.1);
//! our own fields fold at 78 where words allow. Text from peers and from
//! the envelope loses its control characters, and in the text parts its
//! non-ASCII characters. The output is 8-bit only where the original was
//! (its part then says `Content-Transfer-Encoding: 8bit`) and in `To:` when
//! the sender address is UTF-8 (RFC 6532).

use std::borrow::Cow;
use std::time::{Duration, UNIX_EPOCH};

use tern_smtp::{Reply, Status};

/// Longest line without its CRLF (RFC 5322 2.1.1 "MUST").
const LINE_MAX: usize = 998;

/// Lines we write fold here where words allow (RFC 5322 2.1.1 "SHOULD").
const FOLD_WIDTH: usize = 78;

/// Characters kept from any one value taken from a peer or the envelope.
/// A parsed reply may hold 100 lines of 512 octets; the first 4096
/// characters say why, and the bound keeps one report from growing large.
const VALUE_CHARS_MAX: usize = 4096;

/// Largest header section returned as `text/rfc822-headers`, cut at a line
/// end. Postfix's `header_size_limit` has the same default (102400).
const HEADER_SECTION_BYTES_MAX: usize = 100 * 1024;

/// Queue id characters used in the boundary. RFC 2046 5.1.1 allows 70
/// characters in all: `=_tern.` (7) + 20 + `.` + 20 (u64) + `.` + 10 (u32).
const BOUNDARY_ID_CHARS_MAX: usize = 20;

/// What happened to one recipient (RFC 3464 2.3.3 `Action`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Given up: the message will not be delivered to this recipient.
    Failed,
    /// Not delivered yet; delivery is still being retried.
    Delayed,
}

impl Action {
    /// The RFC 3464 action-value.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Failed => "failed",
            Action::Delayed => "delayed",
        }
    }
}

/// What happened to one recipient, for the report.
#[derive(Clone, Copy, Debug)]
pub struct RecipientReport<'a> {
    /// Envelope recipient as stored, e.g. `bob@example.com` or `Postmaster`.
    pub recipient: &'a str,
    /// Failed (bounce) or delayed (delay notice).
    pub action: Action,
    /// Enhanced status (RFC 3463), e.g. `5.1.1`; `4.4.7` for expiry.
    pub status: Status,
    /// Host name or IP of the next hop that answered, if any.
    pub remote_mta: Option<&'a str>,
    /// The next hop's SMTP reply, if any.
    pub diagnostic: Option<&'a Reply>,
    /// Human text, e.g. "the recipient's server rejected it".
    pub explanation: &'a str,
    /// Last delivery attempt, unix ms.
    pub last_attempt_ms: Option<u64>,
}

/// Everything one report is built from.
#[derive(Clone, Copy, Debug)]
pub struct Notice<'a> {
    /// Our host name.
    pub reporting_mta: &'a str,
    /// Queue id of the original, e.g. `01000000002A`.
    pub queue_id: &'a str,
    /// The original's envelope sender, to whom the report goes. Never ""
    /// (a bounce is never bounced; RFC 5321 6.1).
    pub envelope_from: &'a str,
    /// When the original arrived, unix ms.
    pub arrival_ms: u64,
    /// Now, unix ms (Date, Message-ID and boundary).
    pub now_ms: u64,
    /// The original as stored: CRLF lines, our Received header first.
    pub original: &'a [u8],
    /// At least one recipient.
    pub recipients: &'a [RecipientReport<'a>],
    /// The whole original is returned when it is at most this long, else
    /// only its header section.
    pub return_content_bytes_max: usize,
}

/// Builds the whole report: RFC 5322 header and MIME body, CRLF lines, no
/// bare CR or LF, no line over 998 octets. The subject says "undelivered"
/// when any recipient failed, "delayed" otherwise.
///
/// The caller sends it with the null reverse path (`MAIL FROM:<>`) to
/// `notice.envelope_from`, with `BODY=8BITMIME` when it holds a byte
/// above 0x7F (and `SMTPUTF8` when the sender address is UTF-8).
pub fn build(notice: &Notice) -> Vec<u8> {
    debug_assert!(!notice.envelope_from.is_empty(), "never bounce a bounce");
    debug_assert!(!notice.recipients.is_empty());
    let text = text_part(notice);
    let status = status_part(notice);
    let original = original_part(notice);
    let boundary = choose_boundary(notice, &[&text, &status, &original.body]);

    let mut out = Vec::with_capacity(text.len() + status.len() + original.body.len() + 2048);
    push_header(&mut out, notice, &boundary);
    out.extend_from_slice(b"\r\nThis is a MIME-encapsulated message.\r\n");
    let cte = if original.body.is_ascii() {
        "7bit"
    } else {
        "8bit"
    };
    let parts: [(&str, &str, Option<&str>, &[u8]); 3] = [
        ("Notification", "text/plain; charset=us-ascii", None, &text),
        ("Delivery report", "message/delivery-status", None, &status),
        (
            original.description,
            original.content_type,
            Some(cte),
            &original.body,
        ),
    ];
    for (description, content_type, encoding, body) in parts {
        push_delimiter(&mut out, &boundary, "\r\n");
        push_field(&mut out, "Content-Description", description);
        push_field(&mut out, "Content-Type", content_type);
        if let Some(encoding) = encoding {
            push_field(&mut out, "Content-Transfer-Encoding", encoding);
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(body);
    }
    push_delimiter(&mut out, &boundary, "--\r\n");
    debug_assert!(lines_ok(&out) && out.ends_with(b"\r\n"));
    out
}

/// `CRLF --boundary` then `tail` (RFC 2046 5.1.1: the CRLF before the
/// dashes belongs to the delimiter, so a part's own last CRLF is kept).
fn push_delimiter(out: &mut Vec<u8>, boundary: &str, tail: &str) {
    out.extend_from_slice(b"\r\n--");
    out.extend_from_slice(boundary.as_bytes());
    out.extend_from_slice(tail.as_bytes());
}

fn push_header(out: &mut Vec<u8>, notice: &Notice, boundary: &str) {
    let host = token(notice.reporting_mta);
    let any_failed = notice.recipients.iter().any(|r| r.action == Action::Failed);
    let subject = if any_failed {
        "Undelivered Mail Returned to Sender"
    } else {
        "Delayed Mail (still being retried)"
    };
    let from = format!("Mail Delivery System <MAILER-DAEMON@{host}>");
    push_field(out, "From", &from);
    push_field(
        out,
        "To",
        &format!("<{}>", header_text(notice.envelope_from)),
    );
    push_field(out, "Subject", subject);
    push_field(out, "Date", &date(notice.now_ms));
    let id = format!("<{}.{}.dsn@{host}>", token(notice.queue_id), notice.now_ms);
    push_field(out, "Message-ID", &id);
    push_field(out, "Auto-Submitted", "auto-replied");
    push_field(out, "MIME-Version", "1.0");
    out.extend_from_slice(b"Content-Type: multipart/report; report-type=delivery-status;\r\n");
    out.extend_from_slice(format!("\tboundary=\"{boundary}\"\r\n").as_bytes());
}

/// The human-readable part: recipients grouped by action, each with our
/// explanation and the next hop's reply.
fn text_part(notice: &Notice) -> Vec<u8> {
    let mut out = Vec::new();
    let intro = format!(
        "This is the mail delivery system at {}.",
        ascii_text(notice.reporting_mta)
    );
    push_wrapped(&mut out, "", "", &intro);
    let groups = [
        (
            Action::Failed,
            "Your message could not be delivered to the recipients below. \
             This is final: it will not be retried.",
        ),
        (
            Action::Delayed,
            "Your message has not been delivered yet to the recipients below. \
             Delivery is still being retried; you do not need to send it again.",
        ),
    ];
    for (action, heading) in groups {
        if !notice.recipients.iter().any(|r| r.action == action) {
            continue;
        }
        out.extend_from_slice(b"\r\n");
        push_wrapped(&mut out, "", "", heading);
        for r in notice.recipients.iter().filter(|r| r.action == action) {
            out.extend_from_slice(b"\r\n");
            push_recipient_text(&mut out, r);
        }
    }
    out.extend_from_slice(b"\r\n");
    let attached = if notice.original.len() <= notice.return_content_bytes_max {
        "The original message is attached."
    } else {
        "The header section of the original message is attached."
    };
    push_wrapped(&mut out, "", "", attached);
    out
}

fn push_recipient_text(out: &mut Vec<u8>, r: &RecipientReport) {
    let line = format!(
        "<{}>: {} ({})",
        ascii_text(r.recipient),
        ascii_text(r.explanation),
        r.status
    );
    push_wrapped(out, "", "    ", &line);
    if let Some(reply) = r.diagnostic {
        let who = r.remote_mta.map_or("The remote server".into(), ascii_text);
        let said = format!("{who} said: {}", ascii_text(&reply.to_string()));
        push_wrapped(out, "    ", "    ", &said);
    }
}

/// The `message/delivery-status` body (RFC 3464 2.2, 2.3).
fn status_part(notice: &Notice) -> Vec<u8> {
    let mut out = Vec::new();
    let mta = format!("dns; {}", ascii_text(notice.reporting_mta));
    push_field(&mut out, "Reporting-MTA", &mta);
    push_field(&mut out, "X-Tern-Queue-ID", &ascii_text(notice.queue_id));
    push_field(&mut out, "Arrival-Date", &date(notice.arrival_ms));
    for r in notice.recipients {
        out.extend_from_slice(b"\r\n");
        let recipient = format!("rfc822; {}", ascii_text(r.recipient));
        push_field(&mut out, "Final-Recipient", &recipient);
        push_field(&mut out, "Action", r.action.as_str());
        push_field(&mut out, "Status", &r.status.to_string());
        if let Some(host) = r.remote_mta {
            push_field(
                &mut out,
                "Remote-MTA",
                &format!("dns; {}", ascii_text(host)),
            );
        }
        if let Some(reply) = r.diagnostic {
            let code = format!("smtp; {}", ascii_text(&reply.to_string()));
            push_field(&mut out, "Diagnostic-Code", &code);
        }
        if let Some(ms) = r.last_attempt_ms {
            push_field(&mut out, "Last-Attempt-Date", &date(ms));
        }
    }
    out
}

/// The third part: the original or its header section.
struct OriginalPart<'a> {
    description: &'static str,
    content_type: &'static str,
    body: Cow<'a, [u8]>,
}

fn original_part<'a>(notice: &Notice<'a>) -> OriginalPart<'a> {
    let delayed_only = notice
        .recipients
        .iter()
        .all(|r| r.action == Action::Delayed);
    let whole = notice.original.len() <= notice.return_content_bytes_max;
    let (description, content_type, bytes) = match (whole, delayed_only) {
        (true, false) => ("Undelivered Message", "message/rfc822", notice.original),
        (true, true) => ("Delayed Message", "message/rfc822", notice.original),
        (false, _) => (
            "Message Headers",
            "text/rfc822-headers",
            header_section(notice.original),
        ),
    };
    OriginalPart {
        description,
        content_type,
        body: crlf_lines(bytes),
    }
}

/// The header section up to and including the first empty line; with no
/// empty line all of it. Either way at most [`HEADER_SECTION_BYTES_MAX`],
/// cut after a CRLF when there is one.
fn header_section(original: &[u8]) -> &[u8] {
    let window = &original[..original.len().min(HEADER_SECTION_BYTES_MAX)];
    if window.starts_with(b"\r\n") {
        return &window[..2];
    }
    if let Some(i) = find(window, b"\r\n\r\n") {
        return &window[..i + 4];
    }
    if window.len() == original.len() {
        return window;
    }
    match window.windows(2).rposition(|w| w == b"\r\n") {
        Some(i) => &window[..i + 2],
        None => window,
    }
}

/// `bytes` with CRLF line ends only and no line over [`LINE_MAX`]. Stored
/// messages passed these checks on receipt (`tern_smtp::data`), so this
/// borrows; anything else gets bare CR and LF turned into CRLF and long
/// lines broken, so that the report itself stays well-formed.
fn crlf_lines(bytes: &[u8]) -> Cow<'_, [u8]> {
    if lines_ok(bytes) {
        return Cow::Borrowed(bytes);
    }
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 32 + 2);
    let mut line = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\r' | b'\n' => {
                if bytes[i] == b'\r' && bytes.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
                out.extend_from_slice(b"\r\n");
                line = 0;
            }
            b => {
                if line == LINE_MAX {
                    out.extend_from_slice(b"\r\n");
                    line = 0;
                }
                out.push(b);
                line += 1;
            }
        }
        i += 1;
    }
    Cow::Owned(out)
}

/// True when every CR is followed by LF, every LF preceded by CR, and no
/// line is longer than [`LINE_MAX`].
fn lines_ok(bytes: &[u8]) -> bool {
    let mut line = 0;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'\r' if bytes.get(i + 1) != Some(&b'\n') => return false,
            b'\r' => {}
            b'\n' if i == 0 || bytes[i - 1] != b'\r' => return false,
            b'\n' => line = 0,
            _ if line == LINE_MAX => return false,
            _ => line += 1,
        }
    }
    true
}

/// A boundary found in none of `parts` (RFC 2046 5.1.1). The first choice
/// depends only on queue id and time; a part holding it (by accident or
/// design) moves us to the next candidate.
fn choose_boundary(notice: &Notice, parts: &[&[u8]]) -> String {
    let id: String = token(notice.queue_id)
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(BOUNDARY_ID_CHARS_MAX)
        .collect();
    (0u32..)
        .map(|n| format!("=_tern.{id}.{}.{n}", notice.now_ms))
        .find(|b| !parts.iter().any(|p| find(p, b.as_bytes()).is_some()))
        .expect("finite parts cannot hold every candidate")
}

/// Position of the first `needle` in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let (&first, rest) = needle.split_first()?;
    (0..hay.len()).find(|&i| hay[i] == first && hay[i + 1..].starts_with(rest))
}

/// RFC 5322 date-time in UTC. Clamped to the last second formatters
/// support (9999-12-31T23:59:59Z) so no timestamp can panic.
fn date(ms: u64) -> String {
    const SECS_MAX: u64 = 253_402_300_799;
    let t = UNIX_EPOCH + Duration::from_secs((ms / 1000).min(SECS_MAX));
    crate::received::rfc5322_date(t)
}

/// One header field, folded (see [`push_wrapped`]).
fn push_field(out: &mut Vec<u8>, name: &str, value: &str) {
    push_wrapped(out, &format!("{name}: "), " ", value);
}

/// Appends `text` as lines ending in CRLF: the first starts with `first`,
/// the others with `indent`. Words (split at whitespace, joined by one
/// space) move to a new line past [`FOLD_WIDTH`]; a word longer than
/// [`LINE_MAX`] is cut. With a whitespace `indent` this is RFC 5322
/// folding: unfolding gives back the words joined by spaces.
fn push_wrapped(out: &mut Vec<u8>, first: &str, indent: &str, text: &str) {
    debug_assert!(first.len() < FOLD_WIDTH && indent.len() < FOLD_WIDTH);
    out.extend_from_slice(first.as_bytes());
    let mut line = first.len();
    let mut fresh = true;
    for mut word in text.split_whitespace() {
        if !fresh && line + 1 + word.len() > FOLD_WIDTH {
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(indent.as_bytes());
            line = indent.len();
            fresh = true;
        }
        if !fresh {
            out.push(b' ');
            line += 1;
        }
        while line + word.len() > LINE_MAX {
            let cut = word.floor_char_boundary(LINE_MAX - line);
            out.extend_from_slice(&word.as_bytes()[..cut]);
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(indent.as_bytes());
            line = indent.len();
            word = &word[cut..];
        }
        out.extend_from_slice(word.as_bytes());
        line += word.len();
        fresh = false;
    }
    out.extend_from_slice(b"\r\n");
}

/// Text from a peer or the envelope, for the text parts: CR, LF and TAB
/// become spaces, other control characters go, non-ASCII becomes `?`.
fn ascii_text(s: &str) -> String {
    s.chars()
        .take(VALUE_CHARS_MAX)
        .filter_map(|c| match c {
            '\t' | '\r' | '\n' => Some(' '),
            c if c.is_ascii_control() => None,
            c if c.is_ascii() => Some(c),
            _ => Some('?'),
        })
        .collect()
}

/// Text for a header that may be UTF-8 (RFC 6532): control characters go.
fn header_text(s: &str) -> String {
    s.chars()
        .take(VALUE_CHARS_MAX)
        .filter(|c| !c.is_control())
        .collect()
}

/// A host name or id for `From:` and `Message-ID:` (dot-atom characters).
fn token(s: &str) -> String {
    let t: String = s
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        .take(255)
        .collect();
    if t.is_empty() {
        "invalid".into()
    } else {
        t
    }
}

#[cfg(test)]
mod tests {
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
}
