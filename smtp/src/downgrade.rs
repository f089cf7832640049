//! 8-bit to 7-bit conversion of a message for a next hop that does not
//! offer 8BITMIME (RFC 6152 3: such a message must be converted or
//! returned, not sent as is).
//!
//! Each MIME entity's body that holds 8-bit octets and is declared
//! `7bit`, `8bit` or not at all is re-encoded as quoted-printable (RFC 2045
//! 6.7: hard line breaks kept, lines of at most 76 characters with soft
//! breaks, `=`, 8-bit octets and white space before a line break encoded);
//! its `Content-Transfer-Encoding` field is replaced (or added, with
//! `MIME-Version: 1.0` at the top when missing). `multipart/*` and
//! `message/rfc822` bodies are walked part by part (their own encoding
//! becomes `7bit`); everything else is copied byte for byte. What cannot be
//! converted is reported ([`Unconvertible`]): 8-bit octets in a header
//! section, a preamble or an epilogue, a `binary` body, an encoded body
//! holding 8-bit octets, a missing boundary, nesting deeper than
//! [`DEPTH_MAX`].
//!
//! A converted message no longer matches a DKIM signature over its body.

use std::borrow::Cow;

/// Nesting of multiparts and messages followed at most.
pub const DEPTH_MAX: usize = 20;

/// Why a message cannot be converted to 7 bit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unconvertible(pub &'static str);

impl std::fmt::Display for Unconvertible {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

/// The message with every 8-bit body quoted-printable encoded, or the
/// message itself (borrowed) when it has no 8-bit octet.
pub fn to_seven_bit(message: &[u8]) -> Result<Cow<'_, [u8]>, Unconvertible> {
    if message.is_ascii() {
        return Ok(Cow::Borrowed(message));
    }
    let mut out = Vec::with_capacity(message.len() + message.len() / 8);
    entity(message, 0, true, &mut out)?;
    Ok(Cow::Owned(out))
}

/// Splits an entity into its header section (with the final CRLF of its
/// last field) and its body (after the empty line).
fn split(e: &[u8]) -> (&[u8], &[u8]) {
    if e.starts_with(b"\r\n") {
        return (&[], &e[2..]);
    }
    match find(e, b"\r\n\r\n") {
        Some(i) => (&e[..i + 2], &e[i + 4..]),
        None => (e, &[]),
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Header fields: (name, raw field bytes including folded lines and CRLF).
fn fields(header: &[u8]) -> Vec<(String, &[u8])> {
    let mut out: Vec<(String, &[u8])> = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < header.len() {
        let end = find(&header[i..], b"\r\n").map_or(header.len(), |n| i + n + 2);
        let continued = matches!(header.get(end), Some(b' ' | b'\t'));
        if !continued {
            let field = &header[start..end];
            let name = field
                .iter()
                .position(|&b| b == b':')
                .map(|c| {
                    String::from_utf8_lossy(&field[..c])
                        .trim()
                        .to_ascii_lowercase()
                })
                .unwrap_or_default();
            out.push((name, field));
            start = end;
        }
        i = end;
    }
    out
}

/// The unfolded value of a field.
fn value(field: &[u8]) -> String {
    let colon = field.iter().position(|&b| b == b':').map_or(0, |c| c + 1);
    String::from_utf8_lossy(&field[colon..])
        .replace("\r\n", "")
        .trim()
        .to_owned()
}

/// `type/subtype` (lower case) and the `boundary` parameter of a
/// Content-Type value.
fn content_type(v: &str) -> (String, Option<String>) {
    let mut parts = v.split(';');
    let kind = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    let boundary = parts.find_map(|p| {
        let (k, val) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| val.trim().trim_matches('"').to_owned())
    });
    (kind, boundary)
}

fn entity(e: &[u8], depth: usize, top: bool, out: &mut Vec<u8>) -> Result<(), Unconvertible> {
    if depth > DEPTH_MAX {
        return Err(Unconvertible("MIME nesting too deep"));
    }
    let (header, body) = split(e);
    if !header.is_ascii() {
        return Err(Unconvertible("8-bit octets in a header section"));
    }
    if body.is_ascii() {
        out.extend_from_slice(e);
        return Ok(());
    }
    let fields = fields(header);
    let get = |name: &str| {
        fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, f)| value(f))
    };
    let (kind, boundary) = content_type(&get("content-type").unwrap_or_default());
    let cte = get("content-transfer-encoding")
        .unwrap_or_default()
        .to_ascii_lowercase();
    let composite = kind.starts_with("multipart/") || kind == "message/rfc822";
    if !composite && !matches!(cte.as_str(), "" | "7bit" | "8bit") {
        return Err(Unconvertible(
            "8-bit octets in a body declared binary or already encoded",
        ));
    }
    let new_cte = if composite {
        "7bit"
    } else {
        "quoted-printable"
    };
    // The header section, with the encoding field replaced (or added).
    let mut replaced = false;
    for (name, field) in &fields {
        if name == "content-transfer-encoding" {
            if !replaced {
                out.extend_from_slice(
                    format!("Content-Transfer-Encoding: {new_cte}\r\n").as_bytes(),
                );
                replaced = true;
            }
        } else {
            out.extend_from_slice(field);
        }
    }
    if !replaced {
        if top && !fields.iter().any(|(n, _)| n == "mime-version") {
            out.extend_from_slice(b"MIME-Version: 1.0\r\n");
        }
        out.extend_from_slice(format!("Content-Transfer-Encoding: {new_cte}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    if kind == "message/rfc822" {
        return entity(body, depth + 1, false, out);
    }
    if kind.starts_with("multipart/") {
        let boundary = boundary.ok_or(Unconvertible("multipart without a boundary"))?;
        return multipart(body, &boundary, depth, out);
    }
    quoted_printable(body, out);
    Ok(())
}

/// The parts of a multipart body, each converted; preamble and epilogue
/// must be 7 bit already.
fn multipart(
    body: &[u8],
    boundary: &str,
    depth: usize,
    out: &mut Vec<u8>,
) -> Result<(), Unconvertible> {
    let delimiter = format!("--{boundary}");
    // Delimiter lines: at the start of the body or after a CRLF.
    let mut starts = Vec::new();
    let mut at = 0;
    while let Some(i) = find(&body[at..], delimiter.as_bytes()) {
        let pos = at + i;
        if pos == 0 || body[..pos].ends_with(b"\r\n") {
            starts.push(pos);
        }
        at = pos + delimiter.len();
    }
    let Some(&first) = starts.first() else {
        return Err(Unconvertible("multipart boundary not found"));
    };
    if !body[..first].is_ascii() {
        return Err(Unconvertible("8-bit octets in a multipart preamble"));
    }
    out.extend_from_slice(&body[..first]);
    for (k, &s) in starts.iter().enumerate() {
        let line_end = find(&body[s..], b"\r\n").map_or(body.len(), |n| s + n + 2);
        let line = &body[s..line_end];
        out.extend_from_slice(line);
        if line.starts_with(format!("{delimiter}--").as_bytes()) {
            // The close delimiter: the epilogue follows.
            let epilogue = &body[line_end..];
            if !epilogue.is_ascii() {
                return Err(Unconvertible("8-bit octets in a multipart epilogue"));
            }
            out.extend_from_slice(epilogue);
            return Ok(());
        }
        // The part runs to the CRLF before the next delimiter.
        let next = starts.get(k + 1).copied().unwrap_or(body.len());
        let part_end = if next < body.len() { next - 2 } else { next };
        let part = &body[line_end.min(part_end)..part_end];
        entity(part, depth + 1, false, out)?;
        if next < body.len() {
            out.extend_from_slice(b"\r\n");
        }
    }
    Ok(())
}

/// Quoted-printable (RFC 2045 6.7) of `body`, CRLF line breaks kept.
fn quoted_printable(body: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut lines = body.split(|&b| b == b'\n').peekable();
    while let Some(raw) = lines.next() {
        let last = lines.peek().is_none();
        let (line, crlf) = match raw.strip_suffix(b"\r") {
            Some(l) if !last => (l, true),
            _ => (raw, !last),
        };
        let mut col = 0;
        for (i, &b) in line.iter().enumerate() {
            let at_end = i + 1 == line.len();
            let plain =
                (b == b' ' || b == b'\t') && !at_end || (33..=126).contains(&b) && b != b'=';
            let width = if plain { 1 } else { 3 };
            if col + width > 75 {
                out.extend_from_slice(b"=\r\n");
                col = 0;
            }
            if plain {
                out.push(b);
            } else {
                out.extend_from_slice(&[b'=', HEX[(b >> 4) as usize], HEX[(b & 15) as usize]]);
            }
            col += width;
        }
        if crlf {
            out.extend_from_slice(b"\r\n");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_qp(s: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < s.len() {
            if s[i] == b'=' {
                if s[i + 1..].starts_with(b"\r\n") {
                    i += 3;
                    continue;
                }
                let h = std::str::from_utf8(&s[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(h, 16).unwrap());
                i += 3;
            } else {
                out.push(s[i]);
                i += 1;
            }
        }
        out
    }

    #[test]
    fn seven_bit_is_left_alone() {
        let m = b"Subject: x\r\n\r\nhello\r\n";
        assert!(matches!(to_seven_bit(m), Ok(Cow::Borrowed(_))));
    }

    #[test]
    fn a_plain_8bit_message_becomes_quoted_printable() {
        let body = "caf\u{e9} = cr\u{e8}me \r\n".repeat(10) + &"\u{e9}".repeat(60) + "\r\nend \r\n";
        let m = format!("Subject: x\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}");
        let out = to_seven_bit(m.as_bytes()).unwrap();
        assert!(out.is_ascii());
        let text = std::str::from_utf8(&out).unwrap();
        assert!(text.starts_with("Subject: x\r\nContent-Type: text/plain; charset=utf-8\r\nMIME-Version: 1.0\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"), "{text}");
        let (_, qp) = split(&out);
        assert!(
            qp.split(|&b| b == b'\n').all(|l| l.len() <= 77),
            "lines of at most 76 + CR"
        );
        assert_eq!(decode_qp(qp), body.as_bytes());
    }

    #[test]
    fn a_declared_8bit_field_is_replaced() {
        let m = "MIME-Version: 1.0\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\u{fc}ber\r\n";
        let out = to_seven_bit(m.as_bytes()).unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "MIME-Version: 1.0\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n=C3=BCber\r\n"
        );
    }

    #[test]
    fn multipart_parts_are_converted_one_by_one() {
        let m = "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n\
                 preamble\r\n--b1\r\nContent-Type: text/plain\r\n\r\nascii part\r\n\
                 --b1\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nna\u{ef}ve\r\n\
                 --b1\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\nAAEC\r\n\
                 --b1--\r\nepilogue\r\n";
        let out = to_seven_bit(m.as_bytes()).unwrap();
        let text = std::str::from_utf8(&out).unwrap();
        assert!(out.is_ascii());
        assert!(text.contains("Content-Type: multipart/mixed; boundary=\"b1\"\r\nContent-Transfer-Encoding: 7bit\r\n\r\npreamble\r\n--b1\r\n"), "{text}");
        assert!(text.contains("\r\n\r\nascii part\r\n--b1\r\n"), "{text}");
        assert!(
            text.contains(
                "Content-Transfer-Encoding: quoted-printable\r\n\r\nna=C3=AFve\r\n--b1\r\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("base64\r\n\r\nAAEC\r\n--b1--\r\nepilogue\r\n"),
            "{text}"
        );
    }

    #[test]
    fn what_cannot_be_converted_is_reported() {
        assert!(to_seven_bit("Subject: \u{e9}\r\n\r\nx\r\n".as_bytes()).is_err());
        assert!(
            to_seven_bit("Content-Transfer-Encoding: binary\r\n\r\n\u{e9}\r\n".as_bytes()).is_err()
        );
        assert!(
            to_seven_bit("Content-Type: multipart/mixed\r\n\r\n\u{e9}\r\n".as_bytes()).is_err()
        );
        let nested =
            "Content-Type: message/rfc822\r\n\r\n".repeat(DEPTH_MAX + 2) + "\r\n\u{e9}\r\n";
        assert!(to_seven_bit(nested.as_bytes()).is_err());
    }

    proptest::proptest! {
        #[test]
        fn quoted_printable_decodes_to_the_body(pieces in proptest::collection::vec(
            proptest::sample::select(vec!["a", " ", "\t", "=", "\u{e9}", "\r\n", "\r", "xyz"]), 0..300)) {
            let body: String = pieces.concat() + "\u{e9}";
            let m = format!("Subject: p\r\n\r\n{body}");
            let out = to_seven_bit(m.as_bytes()).unwrap();
            proptest::prop_assert!(out.is_ascii());
            let (_, qp) = split(&out);
            proptest::prop_assert!(qp.split(|&b| b == b'\n').all(|l| l.len() <= 77));
            proptest::prop_assert_eq!(decode_qp(qp), body.as_bytes());
        }
    }

    #[test]
    fn trailing_white_space_and_equals_are_encoded() {
        let m = "Subject: x\r\n\r\na = b \r\n\u{e9}\t\r\n";
        let out = to_seven_bit(m.as_bytes()).unwrap();
        let (_, qp) = split(&out);
        assert_eq!(
            std::str::from_utf8(qp).unwrap(),
            "a =3D b=20\r\n=C3=A9=09\r\n"
        );
    }
}
