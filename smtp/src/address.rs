//! Paths, mailboxes and domains, parsed by functions named after the
//! RFC 5321 4.1.2 grammar rules (with RFC 6531 UTF-8 extensions).

use std::fmt;

use crate::limits::{DOMAIN_MAX, LOCAL_PART_MAX, PATH_MAX};

/// `Mailbox = Local-part "@" ( Domain / address-literal )`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Mailbox {
    /// Local part as written (quoted strings keep their quotes).
    pub local: String,
    /// Domain or `[address-literal]` as written.
    pub domain: String,
}

impl Mailbox {
    /// True when local part or domain has non-ASCII (needs SMTPUTF8).
    pub fn is_utf8(&self) -> bool {
        !self.local.is_ascii() || !self.domain.is_ascii()
    }

    /// The domain folded for routing and relay checks ([`fold_domain`]).
    pub fn domain_lowercase(&self) -> String {
        fold_domain(&self.domain)
    }
}

/// The one way tern compares domains (relay checks, routing, the
/// operator's selections): ASCII lower case; a domain with non-ASCII
/// characters becomes its IDNA A-label form (UTS 46 mapping, so e.g. a
/// KELVIN SIGN folds to `k` exactly as it would on the wire); one that
/// IDNA refuses stays as written, ASCII-lower-cased. Address literals are
/// ASCII already.
pub fn fold_domain(domain: &str) -> String {
    if domain.is_ascii() {
        return domain.to_ascii_lowercase();
    }
    idna::domain_to_ascii(domain).unwrap_or_else(|_| domain.to_ascii_lowercase())
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local, self.domain)
    }
}

/// `Reverse-path = Path / "<>"`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ReversePath {
    /// `<>`: the null sender (bounces).
    Null,
    /// A sender mailbox.
    Mailbox(Mailbox),
}

impl fmt::Display for ReversePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReversePath::Null => Ok(()),
            ReversePath::Mailbox(m) => m.fmt(f),
        }
    }
}

/// A forward path: a mailbox, or the bare `<Postmaster>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ForwardPath {
    /// `<Postmaster>` without a domain (RFC 5321 4.1.1.3).
    Postmaster,
    /// A recipient mailbox.
    Mailbox(Mailbox),
}

impl fmt::Display for ForwardPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ForwardPath::Postmaster => f.write_str("Postmaster"),
            ForwardPath::Mailbox(m) => m.fmt(f),
        }
    }
}

/// Why a path did not parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathError {
    /// Not `<...>` or bad characters.
    Syntax,
    /// Longer than an RFC 5321 4.5.3.1 limit.
    TooLong,
}

/// Parses `Path` (with angle brackets) from the start of `s`; returns the
/// mailbox and the rest of the input after `>`.
pub fn path(s: &str) -> Result<(Mailbox, &str), PathError> {
    let inner_end = s.find('>').ok_or(PathError::Syntax)?;
    if !s.starts_with('<') {
        return Err(PathError::Syntax);
    }
    if inner_end + 1 > PATH_MAX {
        return Err(PathError::TooLong);
    }
    let mut inner = &s[1..inner_end];
    // A-d-l ":" (source route): obsolete, parsed and ignored (4.1.1.3).
    if inner.starts_with('@') {
        let colon = inner.find(':').ok_or(PathError::Syntax)?;
        inner = &inner[colon + 1..];
    }
    Ok((mailbox(inner)?, &s[inner_end + 1..]))
}

/// Parses `Reverse-path`.
pub fn reverse_path(s: &str) -> Result<(ReversePath, &str), PathError> {
    if let Some(rest) = s.strip_prefix("<>") {
        return Ok((ReversePath::Null, rest));
    }
    let (m, rest) = path(s)?;
    Ok((ReversePath::Mailbox(m), rest))
}

/// Parses a forward path, accepting `<Postmaster>`.
pub fn forward_path(s: &str) -> Result<(ForwardPath, &str), PathError> {
    // `get` (not indexing): byte 12 may fall inside a UTF-8 character.
    if s.get(..12)
        .is_some_and(|head| head.eq_ignore_ascii_case("<postmaster>"))
    {
        return Ok((ForwardPath::Postmaster, &s[12..]));
    }
    let (m, rest) = path(s)?;
    Ok((ForwardPath::Mailbox(m), rest))
}

/// `Mailbox = Local-part "@" ( Domain / address-literal )`.
pub fn mailbox(s: &str) -> Result<Mailbox, PathError> {
    let at = s.rfind('@').ok_or(PathError::Syntax)?;
    let (local, domain) = (&s[..at], &s[at + 1..]);
    if local.len() > LOCAL_PART_MAX || domain.len() > DOMAIN_MAX {
        return Err(PathError::TooLong);
    }
    if !(dot_string(local) || quoted_string(local)) {
        return Err(PathError::Syntax);
    }
    if !(domain_name(domain) || address_literal(domain)) {
        return Err(PathError::Syntax);
    }
    Ok(Mailbox {
        local: local.to_owned(),
        domain: domain.to_owned(),
    })
}

/// `atext` of RFC 5322 plus UTF8-non-ascii (RFC 6531 3.3).
fn atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
}

/// `Dot-string = Atom *("." Atom)`.
pub fn dot_string(s: &str) -> bool {
    !s.is_empty()
        && s.split('.')
            .all(|atom| !atom.is_empty() && atom.chars().all(atext))
}

/// `Quoted-string = DQUOTE *QcontentSMTP DQUOTE`.
pub fn quoted_string(s: &str) -> bool {
    let Some(inner) = s.strip_prefix('"').and_then(|r| r.strip_suffix('"')) else {
        return false;
    };
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            // quoted-pairSMTP = %d92 %d32-126
            '\\' => match chars.next() {
                Some(n) if (' '..='~').contains(&n) => {}
                _ => return false,
            },
            // qtextSMTP = %d32-33 / %d35-91 / %d93-126 (+ UTF-8)
            '"' => return false,
            c if (' '..='~').contains(&c) || !c.is_ascii() => {}
            _ => return false,
        }
    }
    true
}

/// `Domain = sub-domain *("." sub-domain)`, `sub-domain = Let-dig [Ldh-str]`
/// (U-labels allowed, RFC 6531).
pub fn domain_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= DOMAIN_MAX
        && s.split('.').all(|label| {
            let ok_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || !c.is_ascii();
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(ok_char)
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// `address-literal = "[" ( IPv4 / "IPv6:" IPv6 / General ) "]"`.
pub fn address_literal(s: &str) -> bool {
    let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) else {
        return false;
    };
    if let Some(v6) = inner
        .strip_prefix("IPv6:")
        .or_else(|| inner.strip_prefix("ipv6:"))
    {
        return v6.parse::<std::net::Ipv6Addr>().is_ok();
    }
    if inner.parse::<std::net::Ipv4Addr>().is_ok() {
        return true;
    }
    // General-address-literal = Standardized-tag ":" 1*dcontent
    match inner.split_once(':') {
        Some((tag, content)) => {
            !tag.is_empty()
                && tag.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !content.is_empty()
                && content
                    .chars()
                    .all(|c| ('!'..='~').contains(&c) && c != '[' && c != '\\' && c != ']')
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_fold_one_way() {
        assert_eq!(fold_domain("Ok.Example"), "ok.example");
        // U+212A KELVIN SIGN: Unicode lower case would make it "ok"
        // for one check and leave it for another; IDNA maps it as the
        // wire would.
        assert_eq!(fold_domain("o\u{212A}.example"), "ok.example");
        assert_eq!(fold_domain("Bücher.Example"), "xn--bcher-kva.example");
        assert_eq!(fold_domain("[192.0.2.1]"), "[192.0.2.1]");
    }

    #[test]
    fn table_of_paths() {
        let ok = [
            ("<a@b.example>", "a", "b.example"),
            (
                "<first.last@sub.example.org>",
                "first.last",
                "sub.example.org",
            ),
            ("<\"john doe\"@example.com>", "\"john doe\"", "example.com"),
            ("<user@[192.0.2.1]>", "user", "[192.0.2.1]"),
            ("<user@[IPv6:2001:db8::1]>", "user", "[IPv6:2001:db8::1]"),
            ("<@relay.example:user@example.com>", "user", "example.com"),
            ("<用户@例子.广告>", "用户", "例子.广告"),
            ("<a+tag=x@b-c.example>", "a+tag=x", "b-c.example"),
        ];
        for (input, local, domain) in ok {
            let (m, rest) = path(input).unwrap_or_else(|e| panic!("{input}: {e:?}"));
            assert_eq!(
                (m.local.as_str(), m.domain.as_str(), rest),
                (local, domain, ""),
                "{input}"
            );
        }
        let bad = [
            "a@b",
            "<a@b",
            "<@b>",
            "<a@>",
            "<a..b@c>",
            "<.a@c>",
            "<a@-b.example>",
            "<a@b..c>",
            "<a b@c>",
            "<a@[300.1.1.1]>",
            "<\"a\"b\"@c>",
        ];
        for input in bad {
            assert_eq!(path(input).err(), Some(PathError::Syntax), "{input}");
        }
        let long_local = format!("<{}@b.example>", "a".repeat(65));
        assert_eq!(path(&long_local).err(), Some(PathError::TooLong));
        let long_path = format!("<a@{}.example>", "b.".repeat(130));
        assert_eq!(path(&long_path).err(), Some(PathError::TooLong));
    }

    #[test]
    fn reverse_and_forward_specials() {
        assert_eq!(
            reverse_path("<> SIZE=1").unwrap(),
            (ReversePath::Null, " SIZE=1")
        );
        assert_eq!(
            forward_path("<POSTMASTER>").unwrap(),
            (ForwardPath::Postmaster, "")
        );
        let (fp, _) = forward_path("<postmaster@x.example>").unwrap();
        assert!(matches!(fp, ForwardPath::Mailbox(_)));
        assert!(reverse_path("<>x").is_ok(), "rest is checked by the caller");
        // Found by fuzzing: a multi-byte character across byte 12.
        assert!(forward_path("@A+IL FROM:\u{19e}").is_err());
    }
}
