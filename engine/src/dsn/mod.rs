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
//!
//! # Files
//!
//! - `mod.rs` (here): the limits, [`Notice`] and [`RecipientReport`], and
//!   [`build`], which assembles the header and the MIME parts.
//! - `text.rs`: the human-readable part.
//! - `status.rs`: the `message/delivery-status` part (RFC 3464).
//! - `original.rs`: the returned original or its header section, with
//!   its lines repaired when needed.
//! - `fields.rs`: writing lines: folded header fields, text from peers
//!   made safe, dates.

mod fields;
mod original;
mod status;
#[cfg(test)]
mod tests;
mod text;

use fields::{date, header_text, push_field, token};
use original::{lines_ok, original_part};
use status::status_part;
use tern_smtp::{Reply, Status};
use text::text_part;

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
