//! Receiving message content: DATA (dot-stuffed, ends only at
//! `<CRLF>.<CRLF>`) and BDAT chunks (exact byte counts), with the checks
//! both share: no bare CR, no bare LF, text lines of at most 1000 octets,
//! and the message size limit.
//!
//! A bare CR or LF inside DATA is fatal to the session: once a peer's idea
//! of a line ending differs from ours, the end of the message is ambiguous,
//! which is exactly what SMTP smuggling (CVE-2023-51764 class) exploits. We
//! never normalise; we stop reading and close. In BDAT the framing is by
//! count, so a bare CR/LF only rejects the message.
//!
//! A NUL octet rejects the message too (554 5.6.0, DATA and BDAT alike):
//! RFC 5321 text has none, and a next hop that drops NULs before it looks
//! for the end of data would read another message than the one we
//! stored. We refuse rather than encode: nothing legitimate sends it.

use crate::limits::TEXT_LINE_MAX;

/// What went wrong in message content (first problem wins).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContentError {
    /// LF not preceded by CR.
    BareLf,
    /// CR not followed by LF.
    BareCr,
    /// A line longer than 1000 octets with CRLF (RFC 5321 4.5.3.1.6).
    LineTooLong,
    /// More than the size limit.
    TooLarge,
    /// A NUL octet.
    Nul,
}

/// Line-level checks shared by DATA and BDAT: feeds raw content, tracks
/// the current line, and records the first problem.
#[derive(Clone, Debug, Default)]
struct Lines {
    /// Octets of the current line so far, without CRLF.
    len: usize,
    /// Previous octet was CR.
    cr: bool,
}

impl Lines {
    /// Accounts for `bytes`, which contain no CR or LF.
    fn text(&mut self, bytes: &[u8]) -> Option<ContentError> {
        if self.cr {
            return Some(ContentError::BareCr);
        }
        if memchr::memchr(0, bytes).is_some() {
            return Some(ContentError::Nul);
        }
        self.len += bytes.len();
        (self.len + 2 > TEXT_LINE_MAX).then_some(ContentError::LineTooLong)
    }

    /// Accounts for one CR or LF octet; `Ok(true)` when a line ended.
    fn newline(&mut self, b: u8) -> Result<bool, ContentError> {
        match (b, self.cr) {
            (b'\r', false) => {
                self.cr = true;
                Ok(false)
            }
            (b'\n', true) => {
                self.cr = false;
                self.len = 0;
                Ok(true)
            }
            (b'\n', false) => Err(ContentError::BareLf),
            _ => Err(ContentError::BareCr),
        }
    }
}

/// Progress of a content receiver after a feed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// All input consumed; more is needed.
    NeedMore,
    /// The message ended after `consumed` octets of this input.
    Done {
        /// Octets of the input that belonged to the message.
        consumed: usize,
    },
    /// A fatal framing error (bare CR/LF in DATA) after `consumed` octets.
    Fatal {
        /// Octets examined.
        consumed: usize,
        /// What it was.
        error: ContentError,
    },
}

/// Receives DATA content: un-dot-stuffs into `body` and stops exactly at
/// `<CRLF>.<CRLF>` (the initial CRLF being the end of the DATA line or of
/// the previous text line).
#[derive(Debug)]
pub struct DataReceiver {
    body: Vec<u8>,
    /// Content octets handed on already ([`DataReceiver::take_body`]).
    taken: usize,
    limit: usize,
    lines: Lines,
    /// At the start of a line.
    line_start: bool,
    /// The current line is exactly "." so far.
    dot_only: bool,
    error: Option<ContentError>,
}

impl DataReceiver {
    /// A receiver accepting at most `limit` octets of (unstuffed) content;
    /// `hint` pre-sizes the buffer (e.g. from MAIL SIZE=), capped at limit
    /// and at 1 MiB; without a hint, 16 KiB (most mail is smaller), so a
    /// typical message is received without regrowing the buffer.
    pub fn new(limit: usize, hint: usize) -> DataReceiver {
        let initial = if hint == 0 { 16 << 10 } else { hint };
        DataReceiver {
            body: Vec::with_capacity(initial.min(limit).min(1 << 20)),
            taken: 0,
            limit,
            lines: Lines::default(),
            line_start: true,
            dot_only: false,
            error: None,
        }
    }

    /// First non-fatal problem (size, line length) seen so far.
    pub fn error(&self) -> Option<ContentError> {
        self.error
    }

    /// Content bytes held so far.
    pub fn len(&self) -> usize {
        self.body.len()
    }

    /// No content held yet.
    pub fn is_empty(&self) -> bool {
        self.body.is_empty()
    }

    /// Memory the content buffer holds (its capacity: pre-sized from a
    /// `SIZE=` hint before any byte arrived), for the caller's budget.
    pub fn capacity(&self) -> usize {
        self.body.capacity()
    }

    /// The content received, without the final `.CRLF` (after
    /// [`DataReceiver::take_body`]: what came since).
    pub fn into_body(self) -> Vec<u8> {
        self.body
    }

    /// The content received so far, leaving the receiver empty (a proxy
    /// handing the content on as it comes); the size limit still counts
    /// it.
    pub fn take_body(&mut self) -> Vec<u8> {
        self.taken += self.body.len();
        let capacity = self.body.capacity();
        std::mem::replace(&mut self.body, Vec::with_capacity(capacity))
    }

    fn keep(&mut self, bytes: &[u8]) {
        if self.error == Some(ContentError::TooLarge) {
            return;
        }
        if self.taken + self.body.len() + bytes.len() > self.limit {
            self.error = Some(ContentError::TooLarge);
            self.body = Vec::new();
            return;
        }
        self.body.extend_from_slice(bytes);
    }

    /// Consumes content from `input`. Hot path: one `memchr2` per line and
    /// one copy of each text run into the body.
    pub fn feed(&mut self, input: &[u8]) -> Progress {
        let mut i = 0;
        while i < input.len() {
            if self.lines.cr && input[i] != b'\n' {
                return Progress::Fatal {
                    consumed: i + 1,
                    error: ContentError::BareCr,
                };
            }
            if self.line_start && !self.lines.cr {
                self.line_start = false;
                if input[i] == b'.' {
                    // Dot-unstuffing (RFC 5321 4.5.2): drop the first dot.
                    self.dot_only = true;
                    self.lines.len = 1;
                    i += 1;
                    continue;
                }
            }
            match memchr::memchr2(b'\r', b'\n', &input[i..]) {
                None => {
                    self.text(&input[i..]);
                    i = input.len();
                }
                Some(0) => {
                    match self.lines.newline(input[i]) {
                        Err(error) => {
                            return Progress::Fatal {
                                consumed: i + 1,
                                error,
                            }
                        }
                        Ok(false) => {}
                        Ok(true) => {
                            if self.dot_only {
                                return Progress::Done { consumed: i + 1 };
                            }
                            self.keep(b"\r\n");
                            self.line_start = true;
                        }
                    }
                    i += 1;
                }
                Some(n) => {
                    self.text(&input[i..i + n]);
                    i += n;
                }
            }
        }
        Progress::NeedMore
    }

    fn text(&mut self, run: &[u8]) {
        if run.is_empty() {
            return;
        }
        if self.dot_only {
            self.dot_only = false;
        }
        if let Some(e) = self.lines.text(run) {
            self.error.get_or_insert(e);
        }
        self.keep(run);
    }
}

/// Checks BDAT chunk content (copied verbatim, no dot handling) across
/// chunks; problems reject the message but do not break framing.
#[derive(Debug, Default)]
pub struct ChunkChecker {
    lines: Lines,
    error: Option<ContentError>,
}

impl ChunkChecker {
    /// Examines the next octets of the message.
    pub fn check(&mut self, bytes: &[u8]) {
        if self.error.is_some() {
            return;
        }
        let mut rest = bytes;
        while !rest.is_empty() {
            let n = memchr::memchr2(b'\r', b'\n', rest).unwrap_or(rest.len());
            if n > 0 {
                if let Some(e) = self.lines.text(&rest[..n]) {
                    self.error = Some(e);
                    return;
                }
            }
            if let Some(&b) = rest.get(n) {
                if let Err(e) = self.lines.newline(b) {
                    self.error = Some(e);
                    return;
                }
                rest = &rest[n + 1..];
            } else {
                rest = &[];
            }
        }
    }

    /// A problem was seen (the message will be refused).
    pub fn failed(&self) -> bool {
        self.error.is_some()
    }

    /// At the end of the message: the first problem, including content
    /// that ends inside a CRLF.
    pub fn finish(&self) -> Option<ContentError> {
        self.error.or(self.lines.cr.then_some(ContentError::BareCr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(input: &[u8], limit: usize) -> (Progress, DataReceiver) {
        let mut r = DataReceiver::new(limit, 0);
        let p = r.feed(input);
        (p, r)
    }

    #[test]
    fn table_of_data_inputs() {
        struct Case {
            input: &'static [u8],
            progress: Progress,
            body: &'static [u8],
            error: Option<ContentError>,
        }
        let done = |n| Progress::Done { consumed: n };
        let cases = [
            Case {
                input: b".\r\n",
                progress: done(3),
                body: b"",
                error: None,
            },
            Case {
                input: b"a\r\n.\r\n",
                progress: done(6),
                body: b"a\r\n",
                error: None,
            },
            Case {
                input: b"a\r\n.\r\nMAIL",
                progress: done(6),
                body: b"a\r\n",
                error: None,
            },
            Case {
                input: b"..a\r\n.\r\n",
                progress: done(8),
                body: b".a\r\n",
                error: None,
            },
            Case {
                input: b"..\r\n.\r\n",
                progress: done(7),
                body: b".\r\n",
                error: None,
            },
            Case {
                input: b".a\r\n.\r\n",
                progress: done(7),
                body: b"a\r\n",
                error: None,
            },
            Case {
                input: b"a\r\n.b\r\n",
                progress: Progress::NeedMore,
                body: b"a\r\nb\r\n",
                error: None,
            },
            // Smuggling attempts: only CRLF.CRLF ends the data.
            Case {
                input: b"a\n.\nMAIL",
                progress: Progress::Fatal {
                    consumed: 2,
                    error: ContentError::BareLf,
                },
                body: b"a",
                error: None,
            },
            Case {
                input: b"a\r\n.\nMAIL",
                progress: Progress::Fatal {
                    consumed: 5,
                    error: ContentError::BareLf,
                },
                body: b"a\r\n",
                error: None,
            },
            Case {
                input: b"a\r\n.\r.\r\n",
                progress: Progress::Fatal {
                    consumed: 6,
                    error: ContentError::BareCr,
                },
                body: b"a\r\n",
                error: None,
            },
            Case {
                input: b"a\rb",
                progress: Progress::Fatal {
                    consumed: 3,
                    error: ContentError::BareCr,
                },
                body: b"a",
                error: None,
            },
            Case {
                input: b"a\r\r\n",
                progress: Progress::Fatal {
                    consumed: 3,
                    error: ContentError::BareCr,
                },
                body: b"a",
                error: None,
            },
        ];
        for c in cases {
            let (p, r) = run(c.input, 1000);
            assert_eq!(p, c.progress, "{:?}", String::from_utf8_lossy(c.input));
            assert_eq!(r.error(), c.error, "{:?}", String::from_utf8_lossy(c.input));
            assert_eq!(
                r.into_body(),
                c.body,
                "{:?}",
                String::from_utf8_lossy(c.input)
            );
        }
    }

    #[test]
    fn byte_at_a_time_equals_all_at_once() {
        let input = b"Subject: x\r\n\r\n..leading\r\n.\r\n";
        let (all, r_all) = run(input, 1000);
        let mut r = DataReceiver::new(1000, 0);
        let mut last = Progress::NeedMore;
        for (i, b) in input.iter().enumerate() {
            last = r.feed(std::slice::from_ref(b));
            if i + 1 < input.len() {
                assert_eq!(last, Progress::NeedMore, "byte {i}");
            }
        }
        assert_eq!(last, Progress::Done { consumed: 1 });
        assert_eq!(
            all,
            Progress::Done {
                consumed: input.len()
            }
        );
        assert_eq!(r.into_body(), r_all.into_body());
    }

    #[test]
    fn limits_reject_but_keep_reading() {
        let mut long = vec![b'x'; 998];
        long.extend_from_slice(b"\r\n.\r\n");
        let (p, r) = run(&long, 10_000);
        assert_eq!(
            p,
            Progress::Done {
                consumed: long.len()
            }
        );
        assert_eq!(r.error(), None, "998 + CRLF = 1000 is allowed");
        let mut long = vec![b'x'; 999];
        long.extend_from_slice(b"\r\n.\r\n");
        let (p, r) = run(&long, 10_000);
        assert_eq!(
            p,
            Progress::Done {
                consumed: long.len()
            }
        );
        assert_eq!(r.error(), Some(ContentError::LineTooLong));
        let (p, r) = run(b"0123456789\r\n.\r\n", 8);
        assert_eq!(p, Progress::Done { consumed: 15 });
        assert_eq!(r.error(), Some(ContentError::TooLarge));
    }

    #[test]
    fn a_nul_octet_rejects_the_message_in_data_and_bdat() {
        let (p, r) = run(b"Subject: a\r\n\r\nbo\0dy\r\n.\r\n", 10_000);
        assert_eq!(
            p,
            Progress::Done { consumed: 24 },
            "framing is not affected"
        );
        assert_eq!(r.error(), Some(ContentError::Nul));
        let mut c = ChunkChecker::default();
        c.check(b"Subject: a\r\n\r\nbo");
        c.check(b"\0dy\r\n");
        assert_eq!(c.finish(), Some(ContentError::Nul));
        let mut c = ChunkChecker::default();
        c.check(b"Subject: a\r\n\r\nbody\r\n");
        assert_eq!(c.finish(), None);
    }

    #[test]
    fn chunk_checker() {
        let mut c = ChunkChecker::default();
        c.check(b"a\r");
        c.check(b"\nb\r\n");
        assert_eq!(c.finish(), None);
        c.check(b"x\r");
        assert_eq!(c.finish(), Some(ContentError::BareCr));
        let mut c = ChunkChecker::default();
        c.check(b"a\nb");
        assert_eq!(c.finish(), Some(ContentError::BareLf));
        let mut c = ChunkChecker::default();
        c.check(&[b'y'; 999]);
        assert_eq!(c.finish(), Some(ContentError::LineTooLong));
    }
}
