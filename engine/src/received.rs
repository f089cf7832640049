//! The `Received:` trace header (RFC 5321 4.4) prepended to every message.
//!
//! ```text
//! Received: from <helo> (<client ip>)
//! <TAB>(using <TLSv1.3> with cipher <suite>)         when in TLS
//! <TAB>(Authenticated sender: <user>[ AUTH=<mailbox>])   after SMTP AUTH
//! <TAB>by <hostname> (tern) with <protocol> id <queue id>
//! <TAB>for <rcpt>; <RFC 5322 date>
//! ```
//!
//! The protocol is RFC 3848's (and RFC 6531's for SMTPUTF8): `ESMTP`,
//! with `S` for TLS and `A` for an authenticated client (`ESMTPSA`), or
//! `UTF8SMTP` likewise, or `SMTP` after HELO.
//!
//! `for` appears only with a single recipient (listing many would leak the
//! envelope). The queue id is not known until the log assigns a sequence,
//! so the header is returned as the text before and after the id; its
//! width is fixed ([`crate::message::QUEUE_ID_LEN`]).

use std::net::SocketAddr;
use std::time::SystemTime;

use tern_smtp::server::Envelope;

/// RFC 5322 date-time in UTC, e.g. `Mon, 23 Nov 2026 11:47:35 +0000`.
pub fn rfc5322_date(t: SystemTime) -> String {
    // httpdate prints the same fields with the obsolete zone "GMT".
    let s = httpdate::fmt_http_date(t);
    s.strip_suffix(" GMT")
        .map_or(s.clone(), |d| format!("{d} +0000"))
}

/// How the message came, besides the envelope: TLS and AUTH.
#[derive(Clone, Copy, Debug, Default)]
pub struct Trace<'a> {
    /// Protocol version and cipher suite, when the session was in TLS.
    pub tls: Option<(&'a str, &'a str)>,
    /// The authenticated user (SMTP AUTH).
    pub auth: Option<&'a str>,
}

/// RFC 3848 / RFC 6531 protocol name.
fn protocol(env: &Envelope, trace: &Trace) -> String {
    let base = match (env.params.smtputf8, env.esmtp) {
        (true, _) => "UTF8SMTP",
        (false, true) => "ESMTP",
        (false, false) => return "SMTP".into(),
    };
    let s = if trace.tls.is_some() { "S" } else { "" };
    let a = if trace.auth.is_some() { "A" } else { "" };
    format!("{base}{s}{a}")
}

/// The header around the queue id: `(prefix, suffix)`.
pub fn header(
    hostname: &str,
    env: &Envelope,
    client: SocketAddr,
    at: SystemTime,
    trace: &Trace,
) -> (Vec<u8>, Vec<u8>) {
    let mut prefix = format!("Received: from {} ({})\r\n", env.helo, client.ip());
    if let Some((version, cipher)) = trace.tls {
        prefix.push_str(&format!("\t(using {version} with cipher {cipher})\r\n"));
    }
    if let Some(user) = trace.auth {
        prefix.push_str(&format!("\t(Authenticated sender: {user}"));
        if let Some(m) = env.params.auth.as_deref().filter(|m| *m != "<>") {
            prefix.push_str(&format!(" AUTH=<{}>", m.trim_matches(['<', '>'])));
        }
        prefix.push_str(")\r\n");
    }
    prefix.push_str(&format!(
        "\tby {} (tern) with {} id ",
        hostname,
        protocol(env, trace)
    ));
    let for_clause = match env.recipients.as_slice() {
        [one] => format!("\r\n\tfor <{one}>;"),
        _ => ";".to_string(),
    };
    let suffix = format!("{for_clause} {}\r\n", rfc5322_date(at));
    (prefix.into_bytes(), suffix.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_smtp::address::{ForwardPath, Mailbox, ReversePath};
    use tern_smtp::command::MailParams;

    #[test]
    fn formats_the_trace_header() {
        let env = Envelope {
            helo: "client.example".into(),
            esmtp: true,
            authenticated: None,
            tls: false,
            from: ReversePath::Null,
            params: MailParams::default(),
            recipients: vec![ForwardPath::Mailbox(Mailbox {
                local: "b".into(),
                domain: "y.example".into(),
            })],
        };
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let (p, s) = header(
            "mx.test",
            &env,
            "192.0.2.1:2000".parse().unwrap(),
            at,
            &Trace::default(),
        );
        let whole = format!(
            "{}01000000002A{}",
            String::from_utf8(p).unwrap(),
            String::from_utf8(s).unwrap()
        );
        assert_eq!(
            whole,
            "Received: from client.example (192.0.2.1)\r\n\tby mx.test (tern) with ESMTP id 01000000002A\r\n\tfor <b@y.example>; Tue, 14 Nov 2023 22:13:20 +0000\r\n"
        );
    }

    #[test]
    fn records_tls_and_the_authenticated_sender() {
        let mut env = Envelope {
            helo: "laptop".into(),
            esmtp: true,
            authenticated: Some("bob".into()),
            tls: true,
            from: ReversePath::Null,
            params: MailParams::default(),
            recipients: Vec::new(),
        };
        env.params.auth = Some("bob@x.example".into());
        let trace = Trace {
            tls: Some(("TLSv1.3", "TLS13_AES_256_GCM_SHA384")),
            auth: Some("bob"),
        };
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let (p, _) = header(
            "mx.test",
            &env,
            "192.0.2.1:2000".parse().unwrap(),
            at,
            &trace,
        );
        assert_eq!(
            String::from_utf8(p).unwrap(),
            "Received: from laptop (192.0.2.1)\r\n\t(using TLSv1.3 with cipher TLS13_AES_256_GCM_SHA384)\r\n\t(Authenticated sender: bob AUTH=<bob@x.example>)\r\n\tby mx.test (tern) with ESMTPSA id "
        );
        let tls_only = Trace {
            tls: trace.tls,
            auth: None,
        };
        let (p, _) = header(
            "mx.test",
            &env,
            "192.0.2.1:2000".parse().unwrap(),
            at,
            &tls_only,
        );
        assert!(String::from_utf8(p).unwrap().ends_with("with ESMTPS id "));
    }
}
