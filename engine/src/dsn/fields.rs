//! Writing lines: header fields folded at [`FOLD_WIDTH`], text from peers
//! and the envelope made safe for the text parts and the header, dates.

use std::time::{Duration, UNIX_EPOCH};

use super::{FOLD_WIDTH, LINE_MAX, VALUE_CHARS_MAX};

/// RFC 5322 date-time in UTC. Clamped to the last second formatters
/// support (9999-12-31T23:59:59Z) so no timestamp can panic.
pub(super) fn date(ms: u64) -> String {
    const SECS_MAX: u64 = 253_402_300_799;
    let t = UNIX_EPOCH + Duration::from_secs((ms / 1000).min(SECS_MAX));
    crate::received::rfc5322_date(t)
}

/// One header field, folded (see [`push_wrapped`]).
pub(super) fn push_field(out: &mut Vec<u8>, name: &str, value: &str) {
    push_wrapped(out, &format!("{name}: "), " ", value);
}

/// Appends `text` as lines ending in CRLF: the first starts with `first`,
/// the others with `indent`. Words (split at whitespace, joined by one
/// space) move to a new line past [`FOLD_WIDTH`]; a word longer than
/// [`LINE_MAX`] is cut. With a whitespace `indent` this is RFC 5322
/// folding: unfolding gives back the words joined by spaces.
pub(super) fn push_wrapped(out: &mut Vec<u8>, first: &str, indent: &str, text: &str) {
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
pub(super) fn ascii_text(s: &str) -> String {
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
pub(super) fn header_text(s: &str) -> String {
    s.chars()
        .take(VALUE_CHARS_MAX)
        .filter(|c| !c.is_control())
        .collect()
}

/// A host name or id for `From:` and `Message-ID:` (dot-atom characters).
pub(super) fn token(s: &str) -> String {
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
