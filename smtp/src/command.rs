//! Command lines (RFC 5321 4.1.1) and their ESMTP parameters, parsed into
//! [`Command`]. Pure functions; the session decides what is allowed when.

use crate::address::{self, ForwardPath, PathError, ReversePath};
use crate::reply::{Reply, Status};

/// `BODY=` values (RFC 6152 8BITMIME, RFC 3030 BINARYMIME).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Body {
    /// `BODY=7BIT` or absent.
    #[default]
    SevenBit,
    /// `BODY=8BITMIME`.
    EightBitMime,
}

/// Parameters of MAIL FROM.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct MailParams {
    /// `SIZE=` (RFC 1870): the sender's size estimate.
    pub size: Option<u64>,
    /// `BODY=`.
    pub body: Body,
    /// `SMTPUTF8` (RFC 6531).
    pub smtputf8: bool,
    /// `XSHADOW=<node>,<database id>,<queue id>`: tern's shadow link (a
    /// peer sending its copy of a message it holds as primary). Accepted
    /// only from peers (see `server::Policy::allow_shadow`).
    pub xshadow: Option<String>,
    /// `AUTH=` (RFC 4954 section 5), xtext-decoded: the mailbox that
    /// authenticated the message originally, or `<>`. The session keeps
    /// it only for an authenticated client.
    pub auth: Option<String>,
}

/// Longest `XSHADOW=` value.
pub const XSHADOW_BYTES_MAX: usize = 200;

/// Is `v` a well-formed `XSHADOW=` value: three comma-separated tokens of
/// `[A-Za-z0-9._-]`?
pub fn xshadow_value(v: &str) -> bool {
    v.len() <= XSHADOW_BYTES_MAX
        && v.split(',').count() == 3
        && v.split(',').all(|t| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        })
}

/// A parsed command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `EHLO domain-or-literal`.
    Ehlo(String),
    /// `HELO domain`.
    Helo(String),
    /// `MAIL FROM:<path> [params]`.
    Mail {
        /// Reverse path.
        from: ReversePath,
        /// ESMTP parameters.
        params: MailParams,
    },
    /// `RCPT TO:<path>` (no RCPT parameters are supported).
    Rcpt {
        /// Forward path.
        to: ForwardPath,
    },
    /// `DATA`.
    Data,
    /// `BDAT size [LAST]` (RFC 3030).
    Bdat {
        /// Exact octets of chunk data that follow the command line.
        size: u64,
        /// Last chunk of the message.
        last: bool,
    },
    /// `RSET`.
    Rset,
    /// `NOOP [string]`.
    Noop,
    /// `QUIT`.
    Quit,
    /// `VRFY string` (always 252: we do not verify).
    Vrfy,
    /// `HELP [string]`.
    Help,
    /// `EXPN`, `TURN`...: recognised, not implemented.
    NotImplemented(&'static str),
    /// `STARTTLS` (RFC 3207).
    StartTls,
    /// `AUTH mechanism [initial-response]` (RFC 4954).
    Auth {
        /// The mechanism, upper case.
        mechanism: String,
        /// The base64 initial response (`=` for an empty one).
        initial: Option<String>,
    },
    /// `XCLIENT attribute=value ...` (the Postfix extension: a trusted
    /// proxy names the real client; [`crate::xclient`]).
    Xclient(crate::xclient::Xclient),
    /// `XQDISCARD <node> <database id> [TAKEN=<n>]`: tern's shadow link,
    /// a shadow asking its primary which of its messages it may discard
    /// (peers only). `TAKEN=n`: the shadow took over `n` of the primary's
    /// messages of that database since it last said so (the primary was
    /// unreachable for `shadow_resubmit_time_span`), so a primary back with
    /// that store may deliver them a second time (SPEC 4).
    XqDiscard {
        /// The asking shadow's node id.
        node: String,
        /// The primary's database id as the shadow knows it.
        database: String,
        /// Messages of that database the shadow took over (0: none, or
        /// the parameter was not given).
        taken: u64,
    },
}

/// Why a command line was refused; each maps to exactly one reply.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// Unknown verb.
    #[error("command unrecognized")]
    Unrecognized,
    /// Bytes that are not UTF-8, or control characters.
    #[error("invalid characters in command")]
    BadBytes,
    /// Wrong arguments for a known verb.
    #[error("syntax error: {0}")]
    Syntax(&'static str),
    /// MAIL FROM path did not parse.
    #[error("bad sender address syntax")]
    BadSender,
    /// RCPT TO path did not parse.
    #[error("bad recipient address syntax")]
    BadRecipient,
    /// A path longer than RFC 5321 4.5.3.1 allows.
    #[error("path too long")]
    PathTooLong,
    /// An ESMTP parameter we do not support, or a duplicate.
    #[error("unsupported parameter {0}")]
    UnsupportedParam(String),
    /// A supported parameter with a bad value.
    #[error("bad value for parameter {0}")]
    BadParamValue(&'static str),
}

impl CommandError {
    /// The reply for this error (the one place it is decided).
    pub fn reply(&self) -> Reply {
        match self {
            CommandError::Unrecognized => {
                Reply::new(500, Status(5, 5, 1), "Error: command not recognized")
            }
            CommandError::BadBytes => {
                Reply::new(500, Status(5, 5, 2), "Error: invalid characters in command")
            }
            CommandError::Syntax(what) => {
                Reply::new(501, Status(5, 5, 4), format!("Syntax: {what}"))
            }
            CommandError::BadSender => {
                Reply::new(501, Status(5, 1, 7), "Bad sender address syntax")
            }
            CommandError::BadRecipient => {
                Reply::new(501, Status(5, 1, 3), "Bad recipient address syntax")
            }
            CommandError::PathTooLong => Reply::new(501, Status(5, 5, 4), "Path too long"),
            CommandError::UnsupportedParam(p) => {
                Reply::new(555, Status(5, 5, 4), format!("Unsupported option: {p}"))
            }
            CommandError::BadParamValue(p) => {
                Reply::new(501, Status(5, 5, 4), format!("Bad parameter value: {p}"))
            }
        }
    }
}

/// Parses one command line (without its CRLF).
pub fn parse(line: &[u8]) -> Result<Command, CommandError> {
    let line = std::str::from_utf8(line).map_err(|_| CommandError::BadBytes)?;
    if line.chars().any(|c| c.is_control() && c != '\t') {
        return Err(CommandError::BadBytes);
    }
    let (verb, args) = match line.find(' ') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, ""),
    };
    let verb = verb.to_ascii_uppercase();
    match verb.as_str() {
        "EHLO" => hello(args, "EHLO hostname").map(Command::Ehlo),
        "HELO" => hello(args, "HELO hostname").map(Command::Helo),
        "MAIL" => mail(args),
        "RCPT" => rcpt(args),
        "DATA" => no_args(args, "DATA", Command::Data),
        "BDAT" => bdat(args),
        "RSET" => no_args(args, "RSET", Command::Rset),
        "NOOP" => Ok(Command::Noop),
        "QUIT" => no_args(args, "QUIT", Command::Quit),
        "VRFY" if !args.trim().is_empty() => Ok(Command::Vrfy),
        "VRFY" => Err(CommandError::Syntax("VRFY address")),
        "HELP" => Ok(Command::Help),
        "EXPN" => Ok(Command::NotImplemented("EXPN")),
        "STARTTLS" => no_args(args, "STARTTLS", Command::StartTls),
        "AUTH" => auth(args),
        "TURN" | "ETRN" | "ATRN" => Ok(Command::NotImplemented("TURN")),
        "XQDISCARD" => xqdiscard(args),
        "XCLIENT" => crate::xclient::parse(args).map(Command::Xclient),
        _ => Err(CommandError::Unrecognized),
    }
}

fn no_args(args: &str, verb: &'static str, cmd: Command) -> Result<Command, CommandError> {
    if args.trim().is_empty() {
        Ok(cmd)
    } else {
        Err(CommandError::Syntax(verb))
    }
}

/// `ehlo = "EHLO" SP ( Domain / address-literal )`; HELO takes a Domain.
fn hello(args: &str, usage: &'static str) -> Result<String, CommandError> {
    let name = args.trim();
    if name.is_empty() || name.contains(' ') {
        return Err(CommandError::Syntax(usage));
    }
    // Many real clients send bare hostnames with underscores or a bare IP;
    // the name is only recorded, so accept any printable ASCII token. A
    // non-ASCII name is taken only as an IDNA domain and recorded as its
    // A-label form, so the `Received:` header stays ASCII whatever the
    // next hop supports; control characters and other non-ASCII are a
    // syntax error.
    if name.bytes().any(|b| b.is_ascii_control()) {
        return Err(CommandError::Syntax(usage));
    }
    if name.is_ascii() {
        return Ok(name.to_owned());
    }
    match idna::domain_to_ascii(name) {
        Ok(a) if !a.is_empty() && a.is_ascii() => Ok(a),
        _ => Err(CommandError::Syntax(usage)),
    }
}

/// Strips `keyword:` case-insensitively, tolerating one space after the
/// colon as many clients send it.
fn after_keyword<'a>(args: &'a str, keyword: &str) -> Option<&'a str> {
    let head = args.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = &args[keyword.len()..];
    Some(rest.strip_prefix(' ').unwrap_or(rest))
}

fn path_err(e: PathError, syntax: CommandError) -> CommandError {
    match e {
        PathError::Syntax => syntax,
        PathError::TooLong => CommandError::PathTooLong,
    }
}

fn mail(args: &str) -> Result<Command, CommandError> {
    let rest = after_keyword(args, "FROM:").ok_or(CommandError::Syntax("MAIL FROM:<address>"))?;
    let (from, rest) =
        address::reverse_path(rest).map_err(|e| path_err(e, CommandError::BadSender))?;
    let mut params = MailParams::default();
    let mut seen = Vec::new();
    for (key, value) in esmtp_params(rest)? {
        let upper = key.to_ascii_uppercase();
        if seen.contains(&upper) {
            return Err(CommandError::UnsupportedParam(key.to_owned()));
        }
        match (upper.as_str(), value) {
            ("SIZE", Some(v)) => {
                let digits_ok =
                    !v.is_empty() && v.len() <= 20 && v.bytes().all(|b| b.is_ascii_digit());
                params.size = Some(
                    v.parse()
                        .ok()
                        .filter(|_| digits_ok)
                        .ok_or(CommandError::BadParamValue("SIZE"))?,
                );
            }
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("7BIT") => params.body = Body::SevenBit,
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("8BITMIME") => {
                params.body = Body::EightBitMime
            }
            ("BODY", Some(_)) => {
                return Err(CommandError::UnsupportedParam(format!(
                    "BODY={}",
                    value.unwrap_or("")
                )))
            }
            ("SMTPUTF8", None) => params.smtputf8 = true,
            ("XSHADOW", Some(v)) if xshadow_value(v) => params.xshadow = Some(v.to_owned()),
            ("XSHADOW", _) => return Err(CommandError::BadParamValue("XSHADOW")),
            ("AUTH", Some(v)) => {
                params.auth = Some(xtext(v).ok_or(CommandError::BadParamValue("AUTH"))?)
            }
            ("SIZE" | "BODY", None) => return Err(CommandError::BadParamValue("missing value")),
            _ => return Err(CommandError::UnsupportedParam(key.to_owned())),
        }
        seen.push(upper);
    }
    Ok(Command::Mail { from, params })
}

/// `auth-command = "AUTH" SP sasl-mech [SP initial-response]`.
fn auth(args: &str) -> Result<Command, CommandError> {
    let usage = CommandError::Syntax("AUTH mechanism [initial-response]");
    let mut parts = args.split(' ');
    let mechanism = parts.next().unwrap_or("");
    // RFC 4422 3.1: a mechanism name is 1..=20 of A-Z 0-9 - _.
    if mechanism.is_empty()
        || mechanism.len() > 20
        || !mechanism
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(usage);
    }
    let initial = parts.next().map(str::to_owned);
    if parts.next().is_some() {
        return Err(usage);
    }
    Ok(Command::Auth {
        mechanism: mechanism.to_ascii_uppercase(),
        initial,
    })
}

/// Decodes xtext (RFC 3461 4): `+XX` is a hex-coded byte; `+` and `=`
/// must be coded. `None` when malformed.
pub fn xtext(v: &str) -> Option<String> {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'=' => return None,
            c if (b'!'..=b'~').contains(&c) => {
                out.push(c);
                i += 1;
            }
            _ => return None,
        }
    }
    String::from_utf8(out).ok()
}

/// Digits of a `TAKEN=` count (below 10^10: far above any queue).
const TAKEN_DIGITS_MAX: usize = 10;

fn xqdiscard(args: &str) -> Result<Command, CommandError> {
    const SYNTAX: CommandError = CommandError::Syntax("XQDISCARD node database-id [TAKEN=n]");
    let mut words = args.split(' ');
    let (Some(node), Some(database), taken, None) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        return Err(SYNTAX);
    };
    let token = |t: &str| {
        !t.is_empty()
            && t.len() <= 64
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    };
    if !token(node) || !token(database) {
        return Err(SYNTAX);
    }
    let taken = match taken {
        None => 0,
        Some(p) => {
            let (key, n) = p.split_once('=').ok_or(SYNTAX)?;
            let digits = !n.is_empty()
                && n.len() <= TAKEN_DIGITS_MAX
                && n.bytes().all(|b| b.is_ascii_digit());
            if !key.eq_ignore_ascii_case("TAKEN") || !digits {
                return Err(SYNTAX);
            }
            n.parse().map_err(|_| SYNTAX)?
        }
    };
    Ok(Command::XqDiscard {
        node: node.to_owned(),
        database: database.to_owned(),
        taken,
    })
}

fn rcpt(args: &str) -> Result<Command, CommandError> {
    let rest = after_keyword(args, "TO:").ok_or(CommandError::Syntax("RCPT TO:<address>"))?;
    let (to, rest) =
        address::forward_path(rest).map_err(|e| path_err(e, CommandError::BadRecipient))?;
    if let Some((key, _)) = esmtp_params(rest)?.into_iter().next() {
        return Err(CommandError::UnsupportedParam(key.to_owned()));
    }
    Ok(Command::Rcpt { to })
}

/// `esmtp-param *(SP esmtp-param)` after a path; the input starts with the
/// space (or is empty).
fn esmtp_params(rest: &str) -> Result<Vec<(&str, Option<&str>)>, CommandError> {
    if rest.trim().is_empty() {
        return Ok(Vec::new());
    }
    let rest = rest.strip_prefix(' ').ok_or(CommandError::Syntax(
        "parameters must follow the address after a space",
    ))?;
    let mut out = Vec::new();
    for param in rest.split(' ').filter(|p| !p.is_empty()) {
        let (key, value) = match param.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (param, None),
        };
        // esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")
        let key_ok = key
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        // esmtp-value = 1*(%d33-60 / %d62-126) (+ UTF-8 with SMTPUTF8)
        let value_ok = value
            .is_none_or(|v| !v.is_empty() && v.chars().all(|c| c > ' ' && c != '=' && c != '\x7f'));
        if !key_ok || !value_ok {
            return Err(CommandError::Syntax("bad ESMTP parameter"));
        }
        out.push((key, value));
    }
    Ok(out)
}

/// `bdat-cmd = "BDAT" SP chunk-size [ SP end-marker ]` (RFC 3030).
fn bdat(args: &str) -> Result<Command, CommandError> {
    let mut parts = args.split(' ');
    let size = parts.next().unwrap_or("");
    let usage = CommandError::Syntax("BDAT size [LAST]");
    if size.is_empty()
        || size.len() > crate::limits::BDAT_SIZE_DIGITS_MAX
        || !size.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(usage);
    }
    let size: u64 = size.parse().map_err(|_| usage.clone())?;
    let last = match parts.next() {
        None => false,
        Some(m) if m.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return Err(usage),
    };
    if parts.next().is_some() {
        return Err(usage);
    }
    Ok(Command::Bdat { size, last })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address::Mailbox;

    fn mb(local: &str, domain: &str) -> Mailbox {
        Mailbox {
            local: local.into(),
            domain: domain.into(),
        }
    }

    #[test]
    fn table_of_valid_commands() {
        let cases: Vec<(&str, Command)> = vec![
            (
                "EHLO client.example",
                Command::Ehlo("client.example".into()),
            ),
            ("ehlo [192.0.2.1]", Command::Ehlo("[192.0.2.1]".into())),
            // A U-label is recorded as its A-label (Received stays ASCII).
            (
                "EHLO bücher.example",
                Command::Ehlo("xn--bcher-kva.example".into()),
            ),
            ("HELO x", Command::Helo("x".into())),
            (
                "MAIL FROM:<a@b.example>",
                Command::Mail {
                    from: ReversePath::Mailbox(mb("a", "b.example")),
                    params: MailParams::default(),
                },
            ),
            (
                "mail from: <>",
                Command::Mail {
                    from: ReversePath::Null,
                    params: MailParams::default(),
                },
            ),
            (
                "MAIL FROM:<a@b.example> SIZE=1000 BODY=8BITMIME SMTPUTF8",
                Command::Mail {
                    from: ReversePath::Mailbox(mb("a", "b.example")),
                    params: MailParams {
                        size: Some(1000),
                        body: Body::EightBitMime,
                        smtputf8: true,
                        xshadow: None,
                        auth: None,
                    },
                },
            ),
            (
                "MAIL FROM:<a@b> body=7bit",
                Command::Mail {
                    from: ReversePath::Mailbox(mb("a", "b")),
                    params: MailParams::default(),
                },
            ),
            (
                "RCPT TO:<c@d.example>",
                Command::Rcpt {
                    to: ForwardPath::Mailbox(mb("c", "d.example")),
                },
            ),
            (
                "RCPT TO:<Postmaster>",
                Command::Rcpt {
                    to: ForwardPath::Postmaster,
                },
            ),
            ("DATA", Command::Data),
            (
                "BDAT 100",
                Command::Bdat {
                    size: 100,
                    last: false,
                },
            ),
            (
                "bdat 0 last",
                Command::Bdat {
                    size: 0,
                    last: true,
                },
            ),
            ("RSET", Command::Rset),
            ("NOOP", Command::Noop),
            ("NOOP anything", Command::Noop),
            ("QUIT", Command::Quit),
            ("VRFY someone", Command::Vrfy),
            ("HELP", Command::Help),
            ("EXPN list", Command::NotImplemented("EXPN")),
            ("STARTTLS", Command::StartTls),
            (
                "AUTH plain AHRpbQB0YW5zdGFhZnRhbnN0YWFm",
                Command::Auth {
                    mechanism: "PLAIN".into(),
                    initial: Some("AHRpbQB0YW5zdGFhZnRhbnN0YWFm".into()),
                },
            ),
            (
                "AUTH LOGIN",
                Command::Auth {
                    mechanism: "LOGIN".into(),
                    initial: None,
                },
            ),
            (
                "XQDISCARD b 0123abcd",
                Command::XqDiscard {
                    node: "b".into(),
                    database: "0123abcd".into(),
                    taken: 0,
                },
            ),
            (
                "XQDISCARD b 0123abcd taken=42",
                Command::XqDiscard {
                    node: "b".into(),
                    database: "0123abcd".into(),
                    taken: 42,
                },
            ),
        ];
        for (line, want) in cases {
            assert_eq!(parse(line.as_bytes()), Ok(want), "{line}");
        }
    }

    #[test]
    fn table_of_errors_and_their_replies() {
        let cases: Vec<(&[u8], CommandError, u16, Status)> = vec![
            (b"FOO", CommandError::Unrecognized, 500, Status(5, 5, 1)),
            (b"", CommandError::Unrecognized, 500, Status(5, 5, 1)),
            (
                b"EHLO",
                CommandError::Syntax("EHLO hostname"),
                501,
                Status(5, 5, 4),
            ),
            (
                b"HELO a b",
                CommandError::Syntax("HELO hostname"),
                501,
                Status(5, 5, 4),
            ),
            (
                b"EHLO bad\tname",
                CommandError::Syntax("EHLO hostname"),
                501,
                Status(5, 5, 4),
            ),
            (
                b"MAIL TO:<a@b>",
                CommandError::Syntax("MAIL FROM:<address>"),
                501,
                Status(5, 5, 4),
            ),
            (
                b"MAIL FROM:a@b",
                CommandError::BadSender,
                501,
                Status(5, 1, 7),
            ),
            (
                b"RCPT TO:<a b@c>",
                CommandError::BadRecipient,
                501,
                Status(5, 1, 3),
            ),
            (
                b"MAIL FROM:<a@b> FOO=1",
                CommandError::UnsupportedParam("FOO".into()),
                555,
                Status(5, 5, 4),
            ),
            (
                b"MAIL FROM:<a@b> BODY=BINARYMIME",
                CommandError::UnsupportedParam("BODY=BINARYMIME".into()),
                555,
                Status(5, 5, 4),
            ),
            (
                b"MAIL FROM:<a@b> SIZE=1 SIZE=2",
                CommandError::UnsupportedParam("SIZE".into()),
                555,
                Status(5, 5, 4),
            ),
            (
                b"MAIL FROM:<a@b> SIZE=x",
                CommandError::BadParamValue("SIZE"),
                501,
                Status(5, 5, 4),
            ),
            (
                b"MAIL FROM:<a@b> SIZE=99999999999999999999999",
                CommandError::BadParamValue("SIZE"),
                501,
                Status(5, 5, 4),
            ),
            (
                b"MAIL FROM:<a@b>SIZE=1",
                CommandError::Syntax("parameters must follow the address after a space"),
                501,
                Status(5, 5, 4),
            ),
            (
                b"RCPT TO:<a@b> NOTIFY=NEVER",
                CommandError::UnsupportedParam("NOTIFY".into()),
                555,
                Status(5, 5, 4),
            ),
            (
                b"DATA x",
                CommandError::Syntax("DATA"),
                501,
                Status(5, 5, 4),
            ),
            (
                b"BDAT",
                CommandError::Syntax("BDAT size [LAST]"),
                501,
                Status(5, 5, 4),
            ),
            (
                b"BDAT -1",
                CommandError::Syntax("BDAT size [LAST]"),
                501,
                Status(5, 5, 4),
            ),
            (
                b"BDAT 10 FIRST",
                CommandError::Syntax("BDAT size [LAST]"),
                501,
                Status(5, 5, 4),
            ),
            (
                b"VRFY",
                CommandError::Syntax("VRFY address"),
                501,
                Status(5, 5, 4),
            ),
            (b"NOOP \xff", CommandError::BadBytes, 500, Status(5, 5, 2)),
            (b"NOOP \x00", CommandError::BadBytes, 500, Status(5, 5, 2)),
        ];
        for (line, err, code, status) in cases {
            let got = parse(line);
            assert_eq!(got, Err(err.clone()), "{}", String::from_utf8_lossy(line));
            let reply = err.reply();
            assert_eq!((reply.code, reply.status), (code, Some(status)));
        }
        let long = format!("MAIL FROM:<{}@b>", "a".repeat(300));
        assert_eq!(parse(long.as_bytes()), Err(CommandError::PathTooLong));
    }
}
