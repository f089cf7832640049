//! SMTP replies: the type, its wire encoding (server side) and an
//! incremental parser (client side).
//!
//! # Layout
//!
//! ```text
//! reply      = *( code "-" [status SP] text CRLF ) code SP [status SP] text CRLF
//! code       = 3DIGIT                       (RFC 5321 4.2)
//! status     = class "." subject "." detail (RFC 3463; RFC 2034 puts it first)
//! ```
//!
//! RFC 2034: the enhanced status code appears on every line of every 2xx,
//! 4xx and 5xx reply except the greeting and the reply to HELO/EHLO.

use std::borrow::Cow;
use std::fmt;

use crate::limits::{REPLY_LINES_MAX, REPLY_LINE_MAX};

/// An enhanced mail system status code (RFC 3463), e.g. `5.7.1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Status(pub u8, pub u16, pub u16);

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// One SMTP reply, possibly multi-line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit reply code.
    pub code: u16,
    /// Enhanced status code carried on each line, if any.
    pub status: Option<Status>,
    /// Text of each line (without code, status and CRLF). Never empty.
    pub lines: Vec<Cow<'static, str>>,
}

impl Reply {
    /// A one-line reply with an enhanced status code.
    pub fn new(code: u16, status: Status, text: impl Into<Cow<'static, str>>) -> Reply {
        Reply {
            code,
            status: Some(status),
            lines: vec![text.into()],
        }
    }

    /// A reply without enhanced status (greeting, EHLO/HELO).
    pub fn plain(code: u16, lines: Vec<Cow<'static, str>>) -> Reply {
        debug_assert!(!lines.is_empty());
        Reply {
            code,
            status: None,
            lines,
        }
    }

    /// 2xx.
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// 3xx (354 after DATA).
    pub fn is_intermediate(&self) -> bool {
        (300..400).contains(&self.code)
    }

    /// 4xx.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// 5xx.
    pub fn is_permanent(&self) -> bool {
        (500..600).contains(&self.code)
    }

    /// Appends the wire form to `out`. Text is sanitised so that no CR or
    /// LF from a caller can split a reply, and lines are cut to the RFC
    /// 5321 4.5.3.1.5 limit.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let last = self.lines.len().saturating_sub(1);
        for (i, line) in self.lines.iter().enumerate() {
            let start = out.len();
            out.extend_from_slice(itoa3(self.code).as_slice());
            out.push(if i == last { b' ' } else { b'-' });
            if let Some(status) = self.status {
                out.extend_from_slice(status.to_string().as_bytes());
                out.push(b' ');
            }
            let room = REPLY_LINE_MAX.saturating_sub(out.len() - start + 2);
            for &b in line.as_bytes().iter().take(room) {
                out.push(if b == b'\r' || b == b'\n' { b' ' } else { b });
            }
            out.extend_from_slice(b"\r\n");
        }
    }

    /// The wire form as a new vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }

    /// All lines joined by a space, for logs and DSNs.
    pub fn text(&self) -> String {
        self.lines.join(" ")
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            Some(s) => write!(f, "{} {} {}", self.code, s, self.text()),
            None => write!(f, "{} {}", self.code, self.text()),
        }
    }
}

fn itoa3(code: u16) -> [u8; 3] {
    let c = code.min(999);
    [
        b'0' + (c / 100) as u8,
        b'0' + (c / 10 % 10) as u8,
        b'0' + (c % 10) as u8,
    ]
}

/// Why a peer's reply could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// A line longer than [`REPLY_LINE_MAX`] (RFC 5321 4.5.3.1.5).
    #[error("reply line longer than {REPLY_LINE_MAX} octets")]
    LineTooLong,
    /// More than [`REPLY_LINES_MAX`] lines.
    #[error("reply with more than {REPLY_LINES_MAX} lines")]
    TooManyLines,
    /// Not `ddd[ -]text`, inconsistent codes, or bad bytes.
    #[error("malformed reply line")]
    Malformed,
}

/// Incremental reply parser for clients: feed bytes, take replies.
#[derive(Debug, Default)]
pub struct ReplyParser {
    buf: Vec<u8>,
    lines: Vec<Cow<'static, str>>,
    code: Option<u16>,
    status: Option<Status>,
}

impl ReplyParser {
    /// A parser with empty buffers.
    pub fn new() -> ReplyParser {
        ReplyParser::default()
    }

    /// Buffers more bytes from the peer.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes buffered but not yet part of a returned reply.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Next complete reply, `Ok(None)` when more bytes are needed.
    pub fn next_reply(&mut self) -> Result<Option<Reply>, ReplyError> {
        loop {
            let Some(pos) = self.buf.iter().position(|&b| b == b'\n') else {
                if self.buf.len() >= REPLY_LINE_MAX {
                    return Err(ReplyError::LineTooLong);
                }
                return Ok(None);
            };
            if pos + 1 > REPLY_LINE_MAX {
                return Err(ReplyError::LineTooLong);
            }
            let line: Vec<u8> = self.buf.drain(..=pos).collect();
            if let Some(reply) = self.take_line(&line)? {
                return Ok(Some(reply));
            }
        }
    }

    fn take_line(&mut self, line: &[u8]) -> Result<Option<Reply>, ReplyError> {
        let line = line.strip_suffix(b"\r\n").ok_or(ReplyError::Malformed)?;
        if line.len() < 3 || !line[..3].iter().all(u8::is_ascii_digit) {
            return Err(ReplyError::Malformed);
        }
        let code =
            (line[0] - b'0') as u16 * 100 + (line[1] - b'0') as u16 * 10 + (line[2] - b'0') as u16;
        if !(200..600).contains(&code) || self.code.is_some_and(|c| c != code) {
            return Err(ReplyError::Malformed);
        }
        let (more, rest) = match line.get(3) {
            None => (false, &b""[..]),
            Some(b' ') => (false, &line[4..]),
            Some(b'-') => (true, &line[4..]),
            Some(_) => return Err(ReplyError::Malformed),
        };
        let text = String::from_utf8_lossy(rest).into_owned();
        let (status, text) = split_status(&text, code);
        if self.lines.is_empty() {
            self.status = status;
        }
        self.code = Some(code);
        if self.lines.len() == REPLY_LINES_MAX {
            return Err(ReplyError::TooManyLines);
        }
        self.lines.push(Cow::Owned(text));
        if more {
            return Ok(None);
        }
        let reply = Reply {
            code,
            status: self.status.take(),
            lines: std::mem::take(&mut self.lines),
        };
        self.code = None;
        Ok(Some(reply))
    }
}

/// Splits a leading `x.y.z ` enhanced status whose class matches the code.
fn split_status(text: &str, code: u16) -> (Option<Status>, String) {
    let (head, tail) = text.split_once(' ').unwrap_or((text, ""));
    let mut parts = head.split('.');
    let parsed = (|| {
        let class: u8 = parts.next()?.parse().ok()?;
        let subject: u16 = parts.next()?.parse().ok()?;
        let detail: u16 = parts.next()?.parse().ok()?;
        (parts.next().is_none()
            && u16::from(class) == code / 100
            && subject < 1000
            && detail < 1000)
            .then_some(Status(class, subject, detail))
    })();
    match parsed {
        Some(s) => (Some(s), tail.to_owned()),
        None => (None, text.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_single_and_multi_line() {
        let r = Reply::new(250, Status(2, 1, 0), "Ok");
        assert_eq!(r.to_bytes(), b"250 2.1.0 Ok\r\n");
        let r = Reply::plain(
            250,
            vec!["mx.example".into(), "PIPELINING".into(), "SIZE 10".into()],
        );
        assert_eq!(
            r.to_bytes(),
            b"250-mx.example\r\n250-PIPELINING\r\n250 SIZE 10\r\n"
        );
        // CR/LF in text cannot split the reply.
        let r = Reply::new(550, Status(5, 1, 1), "a\r\n250 b");
        assert_eq!(r.to_bytes(), b"550 5.1.1 a  250 b\r\n");
        let long = Reply::new(250, Status(2, 0, 0), "x".repeat(2000));
        assert_eq!(long.to_bytes().len(), REPLY_LINE_MAX);
    }

    #[test]
    fn parses_replies_incrementally() {
        let mut p = ReplyParser::new();
        let wire = b"250-mx.example\r\n250-PIPELINING\r\n250 2.0.0 SIZE 10\r\n354 go ahead\r\n";
        for (i, b) in wire.iter().enumerate() {
            p.feed(&[*b]);
            let r = p.next_reply().unwrap();
            if i == 50 {
                let r = r.expect("first reply complete");
                assert_eq!(r.code, 250);
                assert_eq!(r.lines.len(), 3);
                assert_eq!(r.status, None, "status only on the last line is ignored");
            } else if i == wire.len() - 1 {
                let r = r.unwrap();
                assert_eq!((r.code, r.status, r.text()), (354, None, "go ahead".into()));
            } else {
                assert!(r.is_none(), "byte {i}");
            }
        }
        p.feed(b"451 4.3.0 Try later\r\n");
        let r = p.next_reply().unwrap().unwrap();
        assert_eq!(r.status, Some(Status(4, 3, 0)));
        assert_eq!(r.text(), "Try later");
        assert!(r.is_transient());
    }

    #[test]
    fn rejects_malformed_replies() {
        for bad in [
            &b"25 ok\r\n"[..],
            b"abc ok\r\n",
            b"250-a\r\n251 b\r\n",
            b"250 ok\n",
            b"250xok\r\n",
            b"100 too low\r\n",
        ] {
            let mut p = ReplyParser::new();
            p.feed(bad);
            let mut out = p.next_reply();
            if let Ok(None) | Ok(Some(_)) = out {
                out = p.next_reply();
            }
            assert_eq!(
                out,
                Err(ReplyError::Malformed),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut p = ReplyParser::new();
        p.feed(&[b'2'; 600]);
        assert_eq!(p.next_reply(), Err(ReplyError::LineTooLong));
        let mut p = ReplyParser::new();
        for _ in 0..=REPLY_LINES_MAX {
            p.feed(b"250-x\r\n");
        }
        assert_eq!(p.next_reply(), Err(ReplyError::TooManyLines));
    }
}
