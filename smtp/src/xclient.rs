//! XCLIENT (the Postfix extension, `XCLIENT_README`): a trusted proxy in
//! front of an SMTP server tells it who the real client is.
//!
//! ```text
//! xclient-command = "XCLIENT" 1*( SP attribute-name "=" attribute-value )
//! attribute-name  = ( NAME | ADDR | PORT | PROTO | HELO | LOGIN | DESTADDR | DESTPORT )
//! attribute-value = xtext, or "[UNAVAILABLE]" / "[TEMPUNAVAIL]"
//! ```
//!
//! `ADDR` is an IPv4 address or `IPV6:` and an IPv6 address; `PROTO` is
//! `SMTP` or `ESMTP`. The server answers 220 with its greeting and the
//! session starts over (the client sends EHLO again); 550 5.7.0 when the
//! client may not use XCLIENT. tern parses and encodes the attributes
//! here; whether a client may send it is the server's policy
//! ([`crate::server::Policy::allow_xclient`]).

use std::fmt::Write as _;
use std::net::IpAddr;

use crate::command::{xtext, CommandError};

/// Longest attribute value after xtext decoding (Postfix: 255).
pub const VALUE_BYTES_MAX: usize = 255;

/// The keyword line a server advertises in its EHLO reply.
pub const EHLO_LINE: &str = "XCLIENT NAME ADDR PORT PROTO HELO LOGIN DESTADDR DESTPORT";

/// An attribute: not given (`None`), given as unavailable
/// (`Some(None)`: `[UNAVAILABLE]` or `[TEMPUNAVAIL]`), or a value.
pub type Attr<T> = Option<Option<T>>;

/// The attributes of one XCLIENT command.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Xclient {
    /// `NAME`: the client's host name (reverse DNS).
    pub name: Attr<String>,
    /// `ADDR`: the client's address.
    pub addr: Attr<IpAddr>,
    /// `PORT`: the client's port.
    pub port: Attr<u16>,
    /// `PROTO`: `ESMTP` (true) or `SMTP` (false).
    pub esmtp: Attr<bool>,
    /// `HELO`: the name the client gave in HELO/EHLO.
    pub helo: Attr<String>,
    /// `LOGIN`: the user the proxy authenticated the client as.
    pub login: Attr<String>,
    /// `DESTADDR`: the address the client connected to.
    pub dest_addr: Attr<IpAddr>,
    /// `DESTPORT`: the port the client connected to.
    pub dest_port: Attr<u16>,
}

const SYNTAX: CommandError = CommandError::Syntax("XCLIENT attribute=value ...");

fn address(v: &str) -> Option<IpAddr> {
    match v.get(..5) {
        Some(p) if p.eq_ignore_ascii_case("IPV6:") => v[5..].parse().ok().filter(IpAddr::is_ipv6),
        _ => v.parse().ok().filter(IpAddr::is_ipv4),
    }
}

/// Parses the arguments of an XCLIENT command line.
pub fn parse(args: &str) -> Result<Xclient, CommandError> {
    let mut x = Xclient::default();
    let mut any = false;
    for word in args.split(' ').filter(|w| !w.is_empty()) {
        let (key, raw) = word.split_once('=').ok_or(SYNTAX)?;
        let value = if raw.eq_ignore_ascii_case("[UNAVAILABLE]")
            || raw.eq_ignore_ascii_case("[TEMPUNAVAIL]")
        {
            None
        } else {
            let v = xtext(raw).ok_or(CommandError::BadParamValue("XCLIENT xtext"))?;
            if v.len() > VALUE_BYTES_MAX || v.chars().any(char::is_control) {
                return Err(CommandError::BadParamValue("XCLIENT value"));
            }
            Some(v)
        };
        let bad = |name: &'static str| CommandError::BadParamValue(name);
        match key.to_ascii_uppercase().as_str() {
            "NAME" => x.name = Some(value),
            "ADDR" => {
                x.addr = Some(match value {
                    None => None,
                    Some(v) => Some(address(&v).ok_or(bad("ADDR"))?),
                })
            }
            "PORT" => {
                x.port = Some(match value {
                    None => None,
                    Some(v) => Some(v.parse().map_err(|_| bad("PORT"))?),
                })
            }
            "PROTO" => {
                x.esmtp = Some(match value.as_deref() {
                    None => None,
                    Some(v) if v.eq_ignore_ascii_case("ESMTP") => Some(true),
                    Some(v) if v.eq_ignore_ascii_case("SMTP") => Some(false),
                    Some(_) => return Err(bad("PROTO")),
                })
            }
            "HELO" => x.helo = Some(value),
            "LOGIN" => x.login = Some(value),
            "DESTADDR" => {
                x.dest_addr = Some(match value {
                    None => None,
                    Some(v) => Some(address(&v).ok_or(bad("DESTADDR"))?),
                })
            }
            "DESTPORT" => {
                x.dest_port = Some(match value {
                    None => None,
                    Some(v) => Some(v.parse().map_err(|_| bad("DESTPORT"))?),
                })
            }
            _ => return Err(CommandError::UnsupportedParam(key.to_owned())),
        }
        any = true;
    }
    if !any {
        return Err(SYNTAX);
    }
    Ok(x)
}

/// Encodes `v` as xtext (RFC 3461 4): `+`, `=`, and bytes outside `!`..`~`
/// as `+XX`.
pub fn xtext_encode(out: &mut String, v: &str) {
    for b in v.bytes() {
        if (b'!'..=b'~').contains(&b) && b != b'+' && b != b'=' {
            out.push(b as char);
        } else {
            let _ = write!(out, "+{b:02X}");
        }
    }
}

fn push<T>(line: &mut String, key: &str, attr: &Attr<T>, f: impl Fn(&mut String, &T)) {
    let Some(value) = attr else { return };
    line.push(' ');
    line.push_str(key);
    line.push('=');
    match value {
        None => line.push_str("[UNAVAILABLE]"),
        Some(v) => f(line, v),
    }
}

fn push_addr(line: &mut String, a: &IpAddr) {
    match a {
        IpAddr::V4(v4) => {
            let _ = write!(line, "{v4}");
        }
        IpAddr::V6(v6) => {
            let _ = write!(line, "IPV6:{v6}");
        }
    }
}

/// Appends the command line `XCLIENT ...` for the given attributes.
pub fn encode(out: &mut Vec<u8>, x: &Xclient) {
    let mut line = String::from("XCLIENT");
    let text = |l: &mut String, v: &String| xtext_encode(l, v);
    let num = |l: &mut String, v: &u16| {
        let _ = write!(l, "{v}");
    };
    push(&mut line, "NAME", &x.name, text);
    push(&mut line, "ADDR", &x.addr, push_addr);
    push(&mut line, "PORT", &x.port, num);
    push(&mut line, "PROTO", &x.esmtp, |l, e| {
        l.push_str(if *e { "ESMTP" } else { "SMTP" })
    });
    push(&mut line, "HELO", &x.helo, text);
    push(&mut line, "LOGIN", &x.login, text);
    push(&mut line, "DESTADDR", &x.dest_addr, push_addr);
    push(&mut line, "DESTPORT", &x.dest_port, num);
    out.extend_from_slice(line.as_bytes());
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let x = Xclient {
            name: Some(None),
            addr: Some(Some("2001:db8::7".parse().unwrap())),
            port: Some(Some(40123)),
            esmtp: Some(Some(true)),
            helo: Some(Some("client name+=x".into())),
            login: None,
            dest_addr: Some(Some("192.0.2.1".parse().unwrap())),
            dest_port: Some(Some(25)),
        };
        let mut out = Vec::new();
        encode(&mut out, &x);
        let line = String::from_utf8(out).unwrap();
        assert_eq!(
            line,
            "XCLIENT NAME=[UNAVAILABLE] ADDR=IPV6:2001:db8::7 PORT=40123 PROTO=ESMTP \
             HELO=client+20name+2B+3Dx DESTADDR=192.0.2.1 DESTPORT=25\r\n"
        );
        let args = line.trim_end().strip_prefix("XCLIENT ").unwrap();
        assert_eq!(parse(args).unwrap(), x);
    }

    #[test]
    fn refusals() {
        assert!(parse("").is_err());
        assert!(parse("ADDR").is_err());
        assert!(parse("ADDR=::1").is_err(), "IPv6 needs the IPV6: prefix");
        assert!(parse("ADDR=IPV6:10.0.0.1").is_err());
        assert!(parse("ADDR=300.1.1.1").is_err());
        assert!(parse("PORT=70000").is_err());
        assert!(parse("PROTO=LMTP").is_err());
        assert!(parse("COLOUR=blue").is_err());
        assert!(parse("HELO=a+0Db").is_err(), "no control characters");
        let long = "x".repeat(VALUE_BYTES_MAX + 1);
        assert!(parse(&format!("NAME={long}")).is_err());
        let x = parse("addr=10.1.2.3 proto=smtp login=[TEMPUNAVAIL]").unwrap();
        assert_eq!(x.addr, Some(Some("10.1.2.3".parse().unwrap())));
        assert_eq!(x.esmtp, Some(Some(false)));
        assert_eq!(x.login, Some(None));
    }
}
