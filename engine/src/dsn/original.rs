//! The third part: the original message when small enough, else its
//! header section; either way with CRLF lines of at most [`LINE_MAX`]
//! octets, repaired if the stored bytes had none.

use std::borrow::Cow;

use super::{find, Action, Notice, HEADER_SECTION_BYTES_MAX, LINE_MAX};

/// The third part: the original or its header section.
pub(super) struct OriginalPart<'a> {
    pub(super) description: &'static str,
    pub(super) content_type: &'static str,
    pub(super) body: Cow<'a, [u8]>,
}

pub(super) fn original_part<'a>(notice: &Notice<'a>) -> OriginalPart<'a> {
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
pub(super) fn header_section(original: &[u8]) -> &[u8] {
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
pub(super) fn crlf_lines(bytes: &[u8]) -> Cow<'_, [u8]> {
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
pub(super) fn lines_ok(bytes: &[u8]) -> bool {
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
