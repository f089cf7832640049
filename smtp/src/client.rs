//! The client side, for delivery, shadow links and the load generator:
//! command encoders, EHLO capability parsing, dot-stuffing and BDAT
//! framing. Replies are parsed with [`crate::reply::ReplyParser`].
//!
//! Outbound content never contains a bare CR or LF: the encoders turn any
//! lone CR or LF into CRLF (RFC 5321 2.3.8), so one message can never end
//! early or smuggle another at the next hop.

use std::fmt::Write as _;

use crate::command::Body;
use crate::reply::Reply;

/// What the server advertised in its EHLO reply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// PIPELINING (RFC 2920).
    pub pipelining: bool,
    /// SIZE limit (RFC 1870); `Some(0)` means no fixed limit.
    pub size: Option<u64>,
    /// 8BITMIME (RFC 6152).
    pub eight_bit_mime: bool,
    /// SMTPUTF8 (RFC 6531).
    pub smtputf8: bool,
    /// ENHANCEDSTATUSCODES (RFC 2034).
    pub enhanced_status_codes: bool,
    /// CHUNKING (RFC 3030).
    pub chunking: bool,
    /// STARTTLS (RFC 3207).
    pub starttls: bool,
    /// AUTH mechanisms (RFC 4954), upper-cased; empty when not offered.
    pub auth: Vec<String>,
    /// Every other keyword with its parameters, upper-cased keyword.
    pub other: Vec<(String, String)>,
}

impl Capabilities {
    /// Parses a 250 EHLO reply (first line is the greeting name).
    pub fn from_ehlo(reply: &Reply) -> Capabilities {
        let mut caps = Capabilities::default();
        for line in reply.lines.iter().skip(1) {
            let (keyword, params) = line.split_once(' ').unwrap_or((line, ""));
            match keyword.to_ascii_uppercase().as_str() {
                "PIPELINING" => caps.pipelining = true,
                "SIZE" => caps.size = Some(params.trim().parse().unwrap_or(0)),
                "8BITMIME" => caps.eight_bit_mime = true,
                "SMTPUTF8" => caps.smtputf8 = true,
                "ENHANCEDSTATUSCODES" => caps.enhanced_status_codes = true,
                "CHUNKING" => caps.chunking = true,
                "STARTTLS" => caps.starttls = true,
                "AUTH" => {
                    caps.auth = params
                        .split_ascii_whitespace()
                        .map(str::to_ascii_uppercase)
                        .collect()
                }
                other => caps.other.push((other.to_owned(), params.to_owned())),
            }
        }
        caps
    }
}

/// `EHLO name`.
pub fn ehlo(out: &mut Vec<u8>, name: &str) {
    line(out, format_args!("EHLO {name}"));
}

/// `HELO name`.
pub fn helo(out: &mut Vec<u8>, name: &str) {
    line(out, format_args!("HELO {name}"));
}

/// Parameters for [`mail_from`]; only those the server advertised are sent.
#[derive(Clone, Debug, Default)]
pub struct MailOptions {
    /// `SIZE=` when the server has SIZE.
    pub size: Option<u64>,
    /// `BODY=8BITMIME` when the server has 8BITMIME.
    pub body: Body,
    /// `SMTPUTF8` when the server has it.
    pub smtputf8: bool,
    /// Extension parameters (e.g. the shadow link's), sent verbatim.
    pub extra: Vec<String>,
}

/// `MAIL FROM:<path> [params]`; `from` is the address without brackets
/// (empty for the null sender).
pub fn mail_from(out: &mut Vec<u8>, from: &str, opts: &MailOptions, caps: &Capabilities) {
    let mut s = format!("MAIL FROM:<{from}>");
    if let (Some(size), Some(_)) = (opts.size, caps.size) {
        let _ = write!(s, " SIZE={size}");
    }
    if opts.body == Body::EightBitMime && caps.eight_bit_mime {
        s.push_str(" BODY=8BITMIME");
    }
    if opts.smtputf8 && caps.smtputf8 {
        s.push_str(" SMTPUTF8");
    }
    for p in &opts.extra {
        s.push(' ');
        s.push_str(p);
    }
    line(out, format_args!("{s}"));
}

/// `RCPT TO:<path>`.
pub fn rcpt_to(out: &mut Vec<u8>, to: &str) {
    line(out, format_args!("RCPT TO:<{to}>"));
}

/// `DATA`.
pub fn data(out: &mut Vec<u8>) {
    out.extend_from_slice(b"DATA\r\n");
}

/// `RSET`.
pub fn rset(out: &mut Vec<u8>) {
    out.extend_from_slice(b"RSET\r\n");
}

/// `NOOP`.
pub fn noop(out: &mut Vec<u8>) {
    out.extend_from_slice(b"NOOP\r\n");
}

/// `XQDISCARD node database-id` (tern's shadow link), with `TAKEN=n`
/// when `taken` is not 0 (messages of that database this shadow took
/// over).
pub fn xqdiscard(out: &mut Vec<u8>, node: &str, database: &str, taken: u64) {
    match taken {
        0 => line(out, format_args!("XQDISCARD {node} {database}")),
        n => line(out, format_args!("XQDISCARD {node} {database} TAKEN={n}")),
    }
}

/// `STARTTLS` (RFC 3207): on a 220 reply the caller starts the TLS
/// handshake, then sends EHLO again (capabilities may differ in TLS).
pub fn starttls(out: &mut Vec<u8>) {
    out.extend_from_slice(b"STARTTLS\r\n");
}

/// `AUTH PLAIN <initial response>` (RFC 4954, RFC 4616): one round trip,
/// empty authorization identity. The credentials are base64 so they
/// cannot break the command line.
pub fn auth_plain(out: &mut Vec<u8>, user: &str, password: &str) {
    let mut raw = Vec::with_capacity(user.len() + password.len() + 2);
    raw.push(0);
    raw.extend_from_slice(user.as_bytes());
    raw.push(0);
    raw.extend_from_slice(password.as_bytes());
    use base64::Engine as _;
    out.extend_from_slice(b"AUTH PLAIN ");
    out.extend_from_slice(
        base64::engine::general_purpose::STANDARD
            .encode(raw)
            .as_bytes(),
    );
    out.extend_from_slice(b"\r\n");
}

/// `QUIT`.
pub fn quit(out: &mut Vec<u8>) {
    out.extend_from_slice(b"QUIT\r\n");
}

/// Writes one command line, replacing CR and LF inside it by spaces so a
/// caller's string can never inject a second command.
fn line(out: &mut Vec<u8>, args: std::fmt::Arguments<'_>) {
    let s = args.to_string();
    out.extend(
        s.bytes()
            .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
    );
    out.extend_from_slice(b"\r\n");
}

/// Appends `content` dot-stuffed (RFC 5321 4.5.2), with every line ending
/// forced to CRLF, a final CRLF if missing, and the `.CRLF` terminator.
pub fn dot_stuff(out: &mut Vec<u8>, content: &[u8]) {
    out.reserve(content.len() + content.len() / 64 + 5);
    let mut line_start = true;
    let mut i = 0;
    while i < content.len() {
        if line_start && content[i] == b'.' {
            out.push(b'.');
        }
        match memchr::memchr2(b'\r', b'\n', &content[i..]) {
            None => {
                out.extend_from_slice(&content[i..]);
                line_start = false;
                i = content.len();
            }
            Some(n) => {
                out.extend_from_slice(&content[i..i + n]);
                out.extend_from_slice(b"\r\n");
                let at = i + n;
                // CRLF, lone CR and lone LF all end one line.
                i = if content[at] == b'\r' && content.get(at + 1) == Some(&b'\n') {
                    at + 2
                } else {
                    at + 1
                };
                line_start = true;
            }
        }
    }
    if !line_start {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
}

/// Dot-stuffing of content that comes in pieces (a proxy forwarding DATA
/// as it arrives): the same output as [`dot_stuff`] of the whole.
#[derive(Debug)]
pub struct DotStuffer {
    /// The next byte starts a line.
    line_start: bool,
    /// The last byte was a CR (its LF may start the next piece).
    cr: bool,
}

impl Default for DotStuffer {
    fn default() -> Self {
        DotStuffer {
            line_start: true,
            cr: false,
        }
    }
}

impl DotStuffer {
    /// Appends `piece` dot-stuffed, lone CR and LF turned into CRLF.
    pub fn push(&mut self, out: &mut Vec<u8>, piece: &[u8]) {
        out.reserve(piece.len() + piece.len() / 64 + 2);
        let mut i = 0;
        if self.cr && !piece.is_empty() {
            // The CR of the last piece was written as CRLF already.
            self.cr = false;
            if piece[0] == b'\n' {
                i = 1;
            }
        }
        while i < piece.len() {
            if self.line_start && piece[i] == b'.' {
                out.push(b'.');
            }
            match memchr::memchr2(b'\r', b'\n', &piece[i..]) {
                None => {
                    out.extend_from_slice(&piece[i..]);
                    self.line_start = false;
                    i = piece.len();
                }
                Some(n) => {
                    out.extend_from_slice(&piece[i..i + n]);
                    out.extend_from_slice(b"\r\n");
                    let at = i + n;
                    i = match (piece[at], piece.get(at + 1)) {
                        (b'\r', Some(b'\n')) => at + 2,
                        (b'\r', None) => {
                            self.cr = true;
                            at + 1
                        }
                        _ => at + 1,
                    };
                    self.line_start = true;
                }
            }
        }
    }

    /// The end: a final CRLF if missing, and the `.CRLF` terminator.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.line_start {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
        *self = DotStuffer::default();
    }
}

/// Appends `content` as BDAT chunks of at most `chunk_max` octets, the last
/// marked LAST, with bare CR/LF turned into CRLF first (so the counts are
/// of what is sent). An empty message is `BDAT 0 LAST`.
pub fn bdat(out: &mut Vec<u8>, content: &[u8], chunk_max: usize) {
    let clean;
    let content = if has_bare_newline(content) {
        clean = crlf_normalised(content);
        &clean[..]
    } else {
        content
    };
    let chunk_max = chunk_max.max(1);
    let mut chunks = content.chunks(chunk_max).peekable();
    if chunks.peek().is_none() {
        out.extend_from_slice(b"BDAT 0 LAST\r\n");
    }
    while let Some(chunk) = chunks.next() {
        let last = if chunks.peek().is_none() { " LAST" } else { "" };
        out.extend_from_slice(format!("BDAT {}{last}\r\n", chunk.len()).as_bytes());
        out.extend_from_slice(chunk);
    }
}

/// True if `content` has a CR not followed by LF or an LF not preceded by CR.
pub fn has_bare_newline(content: &[u8]) -> bool {
    // Hot path (every relayed message and shadow copy): jump from line
    // end to line end with memchr2 instead of looking at every byte.
    let mut i = 0;
    while let Some(n) = memchr::memchr2(b'\r', b'\n', &content[i..]) {
        let at = i + n;
        if content[at] == b'\n' || content.get(at + 1) != Some(&b'\n') {
            // An LF with no CR just before it (a CR would have been found
            // first), or a CR not followed by LF.
            return true;
        }
        i = at + 2;
    }
    false
}

fn crlf_normalised(content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 16);
    let mut i = 0;
    while i < content.len() {
        match content[i] {
            b'\r' if content.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                i += 2;
            }
            b'\r' | b'\n' => {
                out.extend_from_slice(b"\r\n");
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{DataReceiver, Progress};
    use proptest::prelude::*;

    /// Byte by byte: the definition `has_bare_newline` must agree with.
    fn bare_newline_reference(content: &[u8]) -> bool {
        content.iter().enumerate().any(|(i, &b)| match b {
            b'\n' => i == 0 || content[i - 1] != b'\r',
            b'\r' => content.get(i + 1) != Some(&b'\n'),
            _ => false,
        })
    }

    proptest! {
        #[test]
        fn bare_newline_matches_the_byte_by_byte_definition(
            content in proptest::collection::vec(
                prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'a')], 0..40)
        ) {
            prop_assert_eq!(has_bare_newline(&content), bare_newline_reference(&content));
        }
    }

    #[test]
    fn starttls_and_auth_are_read_from_ehlo() {
        let r = Reply::plain(
            250,
            vec![
                "mx.example".into(),
                "STARTTLS".into(),
                "AUTH plain LOGIN".into(),
            ],
        );
        let caps = Capabilities::from_ehlo(&r);
        assert!(caps.starttls);
        assert_eq!(caps.auth, ["PLAIN", "LOGIN"]);
        assert!(!Capabilities::from_ehlo(&Reply::plain(250, vec!["x".into()])).starttls);
    }

    #[test]
    fn auth_plain_is_base64_of_nul_user_nul_password() {
        let mut out = Vec::new();
        auth_plain(&mut out, "tim", "tanstaaftanstaaf");
        // RFC 4616 section 4's example credentials.
        assert_eq!(out, b"AUTH PLAIN AHRpbQB0YW5zdGFhZnRhbnN0YWFm\r\n");
    }

    #[test]
    fn bare_newlines() {
        for (text, bare) in [
            (&b""[..], false),
            (b"a\r\nb\r\n", false),
            (b"\r\n\r\n", false),
            (b"\n", true),
            (b"\r", true),
            (b"a\r\r\n", true),
            (b"a\r\n\n", true),
            (b"a\rb", true),
            (b"line\r\n", false),
        ] {
            assert_eq!(
                has_bare_newline(text),
                bare,
                "{:?}",
                String::from_utf8_lossy(text)
            );
        }
    }

    #[test]
    fn capabilities_from_ehlo() {
        let r = Reply::plain(
            250,
            vec![
                "mx".into(),
                "PIPELINING".into(),
                "SIZE 1000".into(),
                "8bitmime".into(),
                "CHUNKING".into(),
                "XSHADOW abc".into(),
            ],
        );
        let c = Capabilities::from_ehlo(&r);
        assert!(c.pipelining && c.eight_bit_mime && c.chunking && !c.smtputf8);
        assert_eq!(c.size, Some(1000));
        assert_eq!(c.other, vec![("XSHADOW".into(), "abc".into())]);
    }

    #[test]
    fn commands_encode_and_cannot_inject() {
        let mut out = Vec::new();
        let caps = Capabilities {
            size: Some(0),
            eight_bit_mime: true,
            ..Default::default()
        };
        let opts = MailOptions {
            size: Some(12),
            body: Body::EightBitMime,
            smtputf8: true,
            extra: vec![],
        };
        mail_from(&mut out, "a@b", &opts, &caps);
        rcpt_to(&mut out, "c@d>\r\nRSET");
        assert_eq!(
            out,
            b"MAIL FROM:<a@b> SIZE=12 BODY=8BITMIME\r\nRCPT TO:<c@d>  RSET>\r\n"
        );
    }

    #[test]
    fn dot_stuffing_round_trips_through_the_receiver() {
        let cases: [(&[u8], &[u8]); 7] = [
            (b"", b""),
            (b"a", b"a\r\n"),
            (b"a\r\n", b"a\r\n"),
            (b".\r\n", b".\r\n"),
            (b"..x\r\n.\r\n", b"..x\r\n.\r\n"),
            (b"a\nb\rc\r\n", b"a\r\nb\r\nc\r\n"),
            (
                b"x\r\n.\nMAIL FROM:<e@x>\r\n",
                b"x\r\n.\r\nMAIL FROM:<e@x>\r\n",
            ),
        ];
        for (content, want) in cases {
            let mut wire = Vec::new();
            dot_stuff(&mut wire, content);
            assert!(!has_bare_newline(&wire));
            let mut r = DataReceiver::new(1 << 20, 0);
            assert_eq!(
                r.feed(&wire),
                Progress::Done {
                    consumed: wire.len()
                },
                "{:?}",
                String::from_utf8_lossy(content)
            );
            assert_eq!(
                r.into_body(),
                want,
                "{:?}",
                String::from_utf8_lossy(content)
            );
        }
    }

    #[test]
    fn bdat_framing() {
        let mut out = Vec::new();
        bdat(&mut out, b"hello world", 5);
        assert_eq!(out, b"BDAT 5\r\nhelloBDAT 5\r\n worlBDAT 1 LAST\r\nd");
        let mut out = Vec::new();
        bdat(&mut out, b"", 5);
        assert_eq!(out, b"BDAT 0 LAST\r\n");
        let mut out = Vec::new();
        bdat(&mut out, b"a\nb", 100);
        assert_eq!(out, b"BDAT 4 LAST\r\na\r\nb");
    }
}

#[cfg(test)]
mod stuffer_tests {
    use super::*;

    /// Every split of a few awkward inputs stuffs as the whole does.
    #[test]
    fn pieces_stuff_as_the_whole() {
        let inputs: [&[u8]; 5] = [
            b".a\r\n..b\r\nc\r\n.\r\nend",
            b"x\r\r\n.y\n.z\r",
            b"\r\n.\r\n",
            b"",
            b"no newline",
        ];
        for input in inputs {
            let mut whole = Vec::new();
            dot_stuff(&mut whole, input);
            for cut in 0..=input.len() {
                for cut2 in cut..=input.len() {
                    let mut s = DotStuffer::default();
                    let mut out = Vec::new();
                    s.push(&mut out, &input[..cut]);
                    s.push(&mut out, &input[cut..cut2]);
                    s.push(&mut out, &input[cut2..]);
                    s.finish(&mut out);
                    assert_eq!(
                        String::from_utf8_lossy(&out),
                        String::from_utf8_lossy(&whole),
                        "{input:?} cut at {cut}, {cut2}"
                    );
                }
            }
        }
    }
}
