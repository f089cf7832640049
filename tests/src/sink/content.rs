//! Message content as it arrives: the DATA receiver ([`DotReader`]:
//! RFC 5321 4.5.2 dot-unstuffing, the CRLF.CRLF end, bare CR / bare LF
//! detection) and the bare CR/LF scan of BDAT chunks. Pure: fed with
//! whatever arrived, no I/O.

use super::CONTENT_MAX;

/// Message content as it arrives, bounded by [`CONTENT_MAX`].
#[derive(Default)]
pub(super) struct Content {
    pub(super) bytes: Vec<u8>,
    pub(super) too_big: bool,
    pub(super) bare_newline: bool,
}

impl Content {
    pub(super) fn push(&mut self, bytes: &[u8]) {
        if self.too_big {
            return;
        }
        if self.bytes.len() + bytes.len() > CONTENT_MAX {
            self.too_big = true;
            self.bytes = Vec::new();
            return;
        }
        self.bytes.extend_from_slice(bytes);
    }
}

/// Where [`DotReader`] is within a line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LinePos {
    /// At the start of a line; `crlf`: the previous line ended with CRLF
    /// (only then can `.CRLF` end the data).
    LineStart { crlf: bool },
    /// Read a `.` at the start of a line.
    Dot { crlf: bool },
    /// Read `.CR` at the start of a line.
    DotCr { crlf: bool },
    /// Within a line.
    Body,
    /// Within a line, after a CR not yet written to the content.
    BodyCr,
}

/// DATA content receiver (RFC 5321 4.5.2 dot-unstuffing, 4.1.1.4 end).
pub(super) struct DotReader {
    at: LinePos,
}

impl DotReader {
    pub(super) fn new() -> DotReader {
        DotReader {
            at: LinePos::LineStart { crlf: true },
        }
    }

    /// Feeds `input` into `out`; returns how many octets the data took
    /// when its end (`CRLF.CRLF`) was among them, `None` when all of them
    /// were content.
    pub(super) fn feed(&mut self, input: &[u8], out: &mut Content) -> Option<usize> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            let (next, used) = match self.at {
                LinePos::LineStart { crlf } if b == b'.' => (LinePos::Dot { crlf }, true),
                LinePos::LineStart { .. } => (LinePos::Body, false),
                // The stuffed dot is dropped.
                LinePos::Dot { crlf } if b == b'\r' => (LinePos::DotCr { crlf }, true),
                LinePos::Dot { .. } => (LinePos::Body, false),
                LinePos::DotCr { crlf: true } if b == b'\n' => return Some(i + 1),
                LinePos::DotCr { .. } => (LinePos::BodyCr, false),
                LinePos::Body => {
                    let run = input[i..]
                        .iter()
                        .position(|&c| c == b'\r' || c == b'\n')
                        .unwrap_or(input.len() - i);
                    out.push(&input[i..i + run]);
                    i += run;
                    match input.get(i) {
                        Some(b'\r') => (LinePos::BodyCr, true),
                        Some(_) => {
                            out.bare_newline = true;
                            out.push(b"\n");
                            (LinePos::LineStart { crlf: false }, true)
                        }
                        None => (LinePos::Body, false),
                    }
                }
                LinePos::BodyCr if b == b'\n' => {
                    out.push(b"\r\n");
                    (LinePos::LineStart { crlf: true }, true)
                }
                LinePos::BodyCr => {
                    out.bare_newline = true;
                    out.push(b"\r");
                    if b == b'\r' {
                        (LinePos::BodyCr, true)
                    } else {
                        (LinePos::Body, false)
                    }
                }
            };
            self.at = next;
            i += usize::from(used);
        }
        None
    }
}

/// Whether `bytes` (BDAT content) has a bare CR or LF; `cr_pending` carries
/// a CR at the end of one chunk over to the next.
pub(super) fn scan_bare(cr_pending: &mut bool, bytes: &[u8]) -> bool {
    let mut bare = false;
    for &b in bytes {
        bare |= if *cr_pending { b != b'\n' } else { b == b'\n' };
        *cr_pending = b == b'\r';
    }
    bare
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dot(input: &[&[u8]]) -> (Vec<u8>, bool, Option<usize>) {
        let mut r = DotReader::new();
        let mut out = Content::default();
        let mut end = None;
        for part in input {
            end = r.feed(part, &mut out);
        }
        (out.bytes, out.bare_newline, end)
    }

    /// Input parts; expected content, bare newline flag, end offset in the
    /// last part.
    type DotCase<'a> = (&'a [&'a [u8]], &'a [u8], bool, Option<usize>);

    #[test]
    fn dot_reader_unstuffs_and_finds_the_end() {
        let cases: &[DotCase] = &[
            (&[b".\r\n"], b"", false, Some(3)),
            (&[b"a\r\n.\r\nQUIT\r\n"], b"a\r\n", false, Some(6)),
            (&[b"..a\r\n..\r\n.\r\n"], b".a\r\n.\r\n", false, Some(12)),
            (&[b"a\r", b"\n.", b"\r", b"\n"], b"a\r\n", false, Some(1)),
            (&[b"a\nb\r\n.\r\n"], b"a\nb\r\n", true, Some(8)),
            (&[b"a\rb\r\n.\r\n"], b"a\rb\r\n", true, Some(8)),
            (&[b"a\n.\r\n"], b"a\n\r\n", true, None),
            (&[b"a\r\r\n.\r\n"], b"a\r\r\n", true, Some(7)),
            (&[b".\rx\r\n"], b"\rx\r\n", true, None),
        ];
        for (input, content, bare, end) in cases {
            assert_eq!(dot(input), (content.to_vec(), *bare, *end), "{input:?}");
        }
    }

    #[test]
    fn bare_newlines_in_chunks() {
        let mut cr = false;
        assert!(!scan_bare(&mut cr, b"a\r"));
        assert!(!scan_bare(&mut cr, b"\nb\r\n"));
        assert!(scan_bare(&mut cr, b"a\nb"));
        assert!(scan_bare(&mut false, b"a\rb"));
    }
}
