//! STARTTLS (RFC 3207) and AUTH (RFC 4954) in the sans-IO session: what
//! EHLO offers, the restart after the handshake (the command-injection
//! defence), PLAIN and LOGIN exchanges, their errors, and `AUTH=` on MAIL.

use std::rc::Rc;

use base64::Engine as _;
use tern_smtp::server::{AcceptAll, AuthOffer, Envelope, Event, Mechanism, ServerConfig, Session};
use tern_smtp::Reply;

fn config() -> Rc<ServerConfig> {
    Rc::new(ServerConfig {
        hostname: "mx.test".into(),
        message_bytes_max: 1000,
        recipients_max: 100,
        errors_max: 5,
        junk_commands_max: tern_smtp::limits::JUNK_COMMANDS_MAX_DEFAULT,
        extra_ehlo: Vec::new(),
        shadow_ehlo: None,
        proxy: false,
    })
}

/// A session under test: STARTTLS "handshakes" succeed at once; AUTH
/// accepts bob/secret only.
struct Conv {
    s: Session<AcceptAll>,
    out: String,
    messages: Vec<Envelope>,
    handshakes: usize,
    auths: Vec<(Mechanism, String, String, String)>,
}

impl Conv {
    fn new(tls_offer: bool, auth: AuthOffer) -> Conv {
        let mut s = Session::new(config(), AcceptAll);
        s.set_tls_offer(tls_offer);
        s.set_auth_offer(auth);
        let mut c = Conv {
            s,
            out: String::new(),
            messages: Vec::new(),
            handshakes: 0,
            auths: Vec::new(),
        };
        c.send(b"");
        c.take();
        c
    }

    /// Feeds one read's worth of bytes and drives the session.
    fn send(&mut self, input: &[u8]) -> &mut Conv {
        self.s.receive(input);
        while let Some(ev) = self.s.poll() {
            match ev {
                Event::Message { envelope, .. } => {
                    self.messages.push(envelope);
                    self.s.complete(Ok("Q1"));
                }
                Event::StartTls => {
                    self.handshakes += 1;
                    self.s.tls_established();
                }
                Event::Auth {
                    mechanism,
                    authzid,
                    user,
                    password,
                } => {
                    let ok = user == "bob" && password == "secret";
                    self.auths.push((mechanism, authzid, user, password));
                    self.s.auth_result(if ok {
                        Ok(())
                    } else {
                        Err(Reply::new(
                            535,
                            tern_smtp::Status(5, 7, 8),
                            "Error: authentication failed",
                        ))
                    });
                }
                Event::Discard { .. } => panic!("no shadow link here"),
                Event::Close => {}
                e => panic!("not in proxy mode, no XCLIENT: {e:?}"),
            }
        }
        let t = self.s.transmit();
        self.out.push_str(&String::from_utf8_lossy(t));
        let n = t.len();
        self.s.transmitted(n);
        self
    }

    /// The replies so far, cleared.
    fn take(&mut self) -> String {
        std::mem::take(&mut self.out)
    }

    /// The final-line codes of the replies so far, cleared.
    fn codes(&mut self) -> Vec<String> {
        self.take()
            .lines()
            .filter(|l| l.as_bytes().get(3) == Some(&b' '))
            .map(|l| l[..3].to_string())
            .collect()
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[test]
fn ehlo_offers_starttls_only_with_a_certificate_and_only_in_clear_text() {
    let mut c = Conv::new(false, AuthOffer::Never);
    c.send(b"EHLO c.test\r\n");
    let ehlo = c.take();
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    c.send(b"STARTTLS\r\n");
    assert_eq!(c.codes(), ["502"]);

    let mut c = Conv::new(true, AuthOffer::Never);
    c.send(b"EHLO c.test\r\n");
    let ehlo = c.take();
    assert!(ehlo.contains("250 STARTTLS\r\n"), "{ehlo}");
    c.send(b"STARTTLS\r\n");
    assert_eq!(c.codes(), ["220"]);
    assert_eq!(c.handshakes, 1);
    c.send(b"EHLO c.test\r\n");
    let inside = c.take();
    assert!(!inside.contains("STARTTLS"), "{inside}");
    c.send(b"STARTTLS\r\n");
    assert_eq!(c.codes(), ["503"], "STARTTLS inside TLS");
}

#[test]
fn starttls_restarts_the_session() {
    let mut c = Conv::new(true, AuthOffer::Never);
    c.send(b"EHLO c.test\r\n");
    c.send(b"STARTTLS\r\n");
    assert_eq!(c.codes(), ["250", "220"]);
    assert!(c.s.tls_active());
    // HELO state is gone: MAIL before a new EHLO is out of sequence.
    c.send(b"MAIL FROM:<a@x.test>\r\n");
    assert_eq!(c.codes(), ["503"]);
    c.send(b"EHLO c.test\r\n");
    c.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n");
    c.send(b"hi\r\n.\r\n");
    assert_eq!(c.codes(), ["250", "250", "250", "354", "250"]);
    assert!(c.messages[0].tls, "the envelope says it came in TLS");
}

#[test]
fn bytes_pipelined_after_starttls_are_discarded() {
    // The CVE-2011-0411 class: commands sent in clear text behind STARTTLS
    // (by the client or injected by a man in the middle) must not run
    // inside the TLS session.
    for injected in [
        &b"STARTTLS\r\nRSET\r\n"[..],
        b"STARTTLS\r\nMAIL FROM:<evil@x.test>\r\n",
        b"STARTTLS\r\nEHLO evil.test\r\nMAIL FROM:<evil@x.test>\r\nRCPT TO:<v@y.test>\r\n",
    ] {
        let mut c = Conv::new(true, AuthOffer::Never);
        c.send(b"EHLO c.test\r\n");
        c.take();
        c.send(injected);
        assert_eq!(c.codes(), ["220"], "only STARTTLS is answered");
        // Inside TLS: the injected MAIL did not open a transaction.
        c.send(b"EHLO c.test\r\n");
        c.send(b"RCPT TO:<b@y.test>\r\n");
        assert_eq!(c.codes(), ["250", "503"], "{injected:?}");
    }
}

#[test]
fn starttls_in_a_transaction_is_refused() {
    let mut c = Conv::new(true, AuthOffer::Never);
    c.send(b"EHLO c.test\r\n");
    c.send(b"MAIL FROM:<a@x.test>\r\nSTARTTLS\r\n");
    assert_eq!(c.codes(), ["250", "250", "503"]);
    assert_eq!(c.handshakes, 0);
}

#[test]
fn auth_is_offered_only_after_tls() {
    let mut c = Conv::new(true, AuthOffer::TlsOnly);
    c.send(b"EHLO c.test\r\n");
    assert!(!c.take().contains("AUTH"));
    c.send(format!("AUTH PLAIN {}\r\n", b64(b"\0bob\0secret")).as_bytes());
    let r = c.take();
    assert!(r.starts_with("538 5.7.11"), "{r}");
    assert!(
        c.auths.is_empty(),
        "no credentials are checked in clear text"
    );
    c.send(b"STARTTLS\r\n");
    c.send(b"EHLO c.test\r\n");
    let ehlo = c.take();
    assert!(
        ehlo.contains("250-AUTH PLAIN LOGIN\r\n") || ehlo.contains("250 AUTH PLAIN LOGIN\r\n"),
        "{ehlo}"
    );
}

#[test]
fn auth_never_is_not_implemented_and_always_is_offered_in_clear_text() {
    let mut c = Conv::new(false, AuthOffer::Never);
    c.send(b"EHLO c.test\r\n");
    c.send(b"AUTH PLAIN\r\n");
    assert_eq!(c.codes(), ["250", "502"]);

    let mut c = Conv::new(false, AuthOffer::Always);
    c.send(b"EHLO c.test\r\n");
    assert!(c.take().contains("AUTH PLAIN LOGIN"));
}

#[test]
fn auth_plain_with_initial_response_and_with_continuation() {
    let mut c = Conv::new(false, AuthOffer::Always);
    c.send(b"EHLO c.test\r\n");
    c.take();
    c.send(format!("AUTH PLAIN {}\r\n", b64(b"\0bob\0secret")).as_bytes());
    let r = c.take();
    assert!(r.starts_with("235 2.7.0"), "{r}");
    assert_eq!(c.s.authenticated_user(), Some("bob"));
    c.send(b"AUTH PLAIN\r\n");
    assert_eq!(c.codes(), ["503"], "already authenticated");

    let mut c = Conv::new(false, AuthOffer::Always);
    c.send(b"EHLO c.test\r\n");
    c.send(b"AUTH PLAIN\r\n");
    assert_eq!(c.take().lines().last(), Some("334 "));
    c.send(format!("{}\r\n", b64(b"admin\0bob\0wrong")).as_bytes());
    let r = c.take();
    assert!(r.starts_with("535 5.7.8"), "{r}");
    assert_eq!(
        c.auths[0],
        (
            Mechanism::Plain,
            "admin".into(),
            "bob".into(),
            "wrong".into()
        )
    );
    assert_eq!(c.s.authenticated_user(), None);
}

#[test]
fn auth_login_asks_for_user_then_password() {
    let mut c = Conv::new(false, AuthOffer::Always);
    c.send(b"EHLO c.test\r\n");
    c.send(b"AUTH LOGIN\r\n");
    assert!(c.take().ends_with("334 VXNlcm5hbWU6\r\n"));
    c.send(format!("{}\r\n", b64(b"bob")).as_bytes());
    assert_eq!(c.take(), "334 UGFzc3dvcmQ6\r\n");
    c.send(format!("{}\r\n", b64(b"secret")).as_bytes());
    assert!(c.take().starts_with("235 "));
    assert_eq!(c.auths[0].0, Mechanism::Login);

    // With the user name as the initial response.
    let mut c = Conv::new(false, AuthOffer::Always);
    c.send(b"EHLO c.test\r\n");
    c.send(format!("AUTH LOGIN {}\r\n", b64(b"bob")).as_bytes());
    assert!(c.take().ends_with("334 UGFzc3dvcmQ6\r\n"));
    c.send(format!("{}\r\n", b64(b"secret")).as_bytes());
    assert!(c.take().starts_with("235 "));
}

#[test]
fn auth_cancel_bad_base64_and_unknown_mechanism() {
    let mut c = Conv::new(false, AuthOffer::Always);
    c.send(b"EHLO c.test\r\n");
    c.send(b"AUTH LOGIN\r\n*\r\n");
    let r = c.take();
    assert!(r.contains("501 5.0.0"), "{r}");
    // The response line was not taken as a command, and the session goes on.
    c.send(b"NOOP\r\n");
    assert_eq!(c.codes(), ["250"]);

    c.send(b"AUTH PLAIN !!notbase64!!\r\n");
    assert!(c.take().starts_with("501 5.5.2"));
    c.send(b"AUTH CRAM-MD5\r\n");
    assert!(c.take().starts_with("504 "));
    assert!(c.auths.is_empty());

    // A response line that looks like a command is still a response.
    c.send(b"AUTH PLAIN\r\nQUIT\r\n");
    let r = c.take();
    assert!(r.contains("334 ") && r.contains("501 5.5.2"), "{r}");
    c.send(b"NOOP\r\n");
    assert_eq!(
        c.codes(),
        ["250"],
        "QUIT was a (bad) response, not a command"
    );
}

#[test]
fn auth_before_ehlo_and_in_a_transaction_is_out_of_sequence() {
    let mut c = Conv::new(false, AuthOffer::Always);
    c.send(format!("AUTH PLAIN {}\r\n", b64(b"\0bob\0secret")).as_bytes());
    assert_eq!(c.codes(), ["503"]);
    c.send(b"EHLO c.test\r\n");
    c.send(b"MAIL FROM:<a@x.test>\r\n");
    c.take();
    c.send(format!("AUTH PLAIN {}\r\n", b64(b"\0bob\0secret")).as_bytes());
    assert_eq!(c.codes(), ["503"]);
    assert!(c.auths.is_empty());
}

#[test]
fn mail_auth_parameter_is_kept_only_for_authenticated_clients() {
    let mut c = Conv::new(false, AuthOffer::Always);
    c.send(b"EHLO c.test\r\n");
    c.send(format!("AUTH PLAIN {}\r\n", b64(b"\0bob\0secret")).as_bytes());
    c.send(b"MAIL FROM:<a@x.test> AUTH=bob+40x.test\r\nRCPT TO:<b@y.test>\r\nDATA\r\n");
    c.send(b"hi\r\n.\r\n");
    assert_eq!(c.codes(), ["250", "235", "250", "250", "354", "250"]);
    let env = &c.messages[0];
    assert_eq!(
        env.params.auth.as_deref(),
        Some("bob@x.test"),
        "xtext decoded"
    );
    assert_eq!(env.authenticated.as_deref(), Some("bob"));

    // Not authenticated: AUTH= is accepted and dropped (RFC 4954 5).
    let mut c = Conv::new(false, AuthOffer::Always);
    c.send(b"EHLO c.test\r\n");
    c.send(b"MAIL FROM:<a@x.test> AUTH=bob+40x.test\r\nRCPT TO:<b@y.test>\r\nDATA\r\n");
    c.send(b"hi\r\n.\r\n");
    assert_eq!(c.codes(), ["250", "250", "250", "354", "250"]);
    assert_eq!(c.messages[0].params.auth, None);
    assert_eq!(c.messages[0].authenticated, None);

    // Where AUTH is not offered the parameter is an error.
    let mut c = Conv::new(false, AuthOffer::Never);
    c.send(b"EHLO c.test\r\n");
    c.send(b"MAIL FROM:<a@x.test> AUTH=<>\r\n");
    assert_eq!(c.codes(), ["250", "555"]);
}

#[test]
fn auth_response_line_is_bounded() {
    let mut c = Conv::new(false, AuthOffer::Always);
    c.send(b"EHLO c.test\r\n");
    c.send(b"AUTH PLAIN\r\n");
    c.take();
    let long = vec![b'A'; 13_000];
    c.send(&long);
    c.send(b"\r\nNOOP\r\n");
    let r = c.take();
    assert!(
        r.starts_with("500 5.5.6"),
        "an over-long response closes the session: {r}"
    );
    assert!(c.auths.is_empty());
    assert!(!r.contains("250 "), "nothing after it is read: {r}");
}
