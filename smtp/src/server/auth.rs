//! `AUTH` (RFC 4954) with the PLAIN (RFC 4616) and LOGIN mechanisms. The
//! session decodes the exchange; the caller checks the credentials
//! ([`Event::Auth`]) and answers with [`Session::auth_result`].
//!
//! ```text
//! C: AUTH PLAIN <b64(authzid \0 user \0 password)>   S: 235 | 535
//! C: AUTH PLAIN                 S: 334 (empty)   C: <b64>  ...
//! C: AUTH LOGIN [<b64 user>]    S: 334 VXNlcm5hbWU6 ("Username:")
//!                               C: <b64 user>
//!                               S: 334 UGFzc3dvcmQ6 ("Password:")
//!                               C: <b64 password>  ...
//! C: *   (at any 334)           S: 501 5.0.0 cancelled
//! ```
//!
//! Responses are not commands: while a 334 is out, the next line is the
//! client's answer whatever it says.

use base64::Engine as _;

use super::{reply, Event, Phase, Policy, Session};
use crate::reply::Reply;

/// Longest AUTH response line (RFC 4954 4: at least 12288 octets must be
/// accepted, with the CRLF).
pub const AUTH_LINE_MAX: usize = 12_288;

/// Longest user name or password (a guard for the caller's hash check).
pub const CREDENTIAL_BYTES_MAX: usize = 1024;

/// When AUTH is offered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthOffer {
    /// Never (no users configured): AUTH is 502.
    Never,
    /// In TLS only; before it AUTH is 538 5.7.11.
    TlsOnly,
    /// Also in clear text (a loopback client, for tests).
    Always,
}

/// The mechanisms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mechanism {
    /// RFC 4616.
    Plain,
    /// The widely used non-standard LOGIN.
    Login,
}

impl Mechanism {
    /// The SASL name.
    pub fn as_str(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Login => "LOGIN",
        }
    }
}

/// What the next response line is.
#[derive(Debug)]
pub enum Stage {
    /// PLAIN's credentials.
    Plain,
    /// LOGIN's user name.
    LoginUser,
    /// LOGIN's password, after the user name.
    LoginPassword(String),
}

fn decode(b64: &str) -> Option<Vec<u8>> {
    if b64 == "=" {
        return Some(Vec::new());
    }
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

fn bad_base64() -> Reply {
    reply(501, (5, 5, 2), "Error: invalid base64 data")
}

fn credential(bytes: Vec<u8>) -> Option<String> {
    (bytes.len() <= CREDENTIAL_BYTES_MAX)
        .then(|| String::from_utf8(bytes).ok())
        .flatten()
}

impl<P: Policy> Session<P> {
    /// When AUTH is offered (set before the first poll).
    pub fn set_auth_offer(&mut self, offer: AuthOffer) {
        self.auth_offer = offer;
    }

    /// The user the session authenticated as.
    pub fn authenticated_user(&self) -> Option<&str> {
        self.auth_user.as_deref()
    }

    /// AUTH is advertised (and usable) now.
    pub(super) fn auth_offered(&self) -> bool {
        match self.auth_offer {
            AuthOffer::Never => false,
            AuthOffer::TlsOnly => self.tls_active,
            AuthOffer::Always => true,
        }
    }

    pub(super) fn auth(&mut self, mechanism: &str, initial: Option<String>) {
        if self.auth_offer == AuthOffer::Never {
            return self.not_implemented();
        }
        if self.helo.is_none() {
            return self.error(reply(503, (5, 5, 1), "Error: send EHLO first"));
        }
        if self.auth_user.is_some() {
            return self.error(reply(503, (5, 5, 1), "Error: already authenticated"));
        }
        if self.tx.is_some() {
            return self.error(reply(503, (5, 5, 1), "Error: MAIL transaction in progress"));
        }
        if !self.auth_offered() {
            return self.error(reply(
                538,
                (5, 7, 11),
                "Encryption required for requested authentication mechanism",
            ));
        }
        match (mechanism, initial) {
            ("PLAIN", Some(r)) => self.auth_response(Stage::Plain, &r),
            ("PLAIN", None) => self.challenge(Stage::Plain, ""),
            ("LOGIN", Some(r)) => self.auth_response(Stage::LoginUser, &r),
            ("LOGIN", None) => self.challenge(Stage::LoginUser, "VXNlcm5hbWU6"),
            _ => self.error(reply(504, (5, 5, 4), "Unrecognized authentication type")),
        }
    }

    fn challenge(&mut self, stage: Stage, text: &'static str) {
        Reply::plain(334, vec![text.into()]).encode(&mut self.output);
        self.phase = Phase::Auth(stage);
    }

    /// One response line while a 334 is out; false when more input is
    /// needed.
    pub(super) fn auth_step(&mut self) -> bool {
        let pending = &self.input[self.start..];
        let Some(lf) = memchr::memchr(b'\n', pending) else {
            if pending.len() > AUTH_LINE_MAX {
                self.phase = Phase::Command;
                self.close_with(reply(500, (5, 5, 6), "Error: authentication line too long"));
                return true;
            }
            return false;
        };
        let line = pending[..lf].strip_suffix(b"\r").unwrap_or(&pending[..lf]);
        let line = String::from_utf8_lossy(line).trim().to_string();
        self.start += lf + 1;
        let Phase::Auth(stage) = std::mem::replace(&mut self.phase, Phase::Command) else {
            unreachable!("auth_step outside an AUTH exchange");
        };
        if line == "*" {
            self.error(reply(501, (5, 0, 0), "Authentication cancelled"));
        } else {
            self.auth_response(stage, &line);
        }
        true
    }

    fn auth_response(&mut self, stage: Stage, b64: &str) {
        let Some(bytes) = decode(b64) else {
            return self.error(bad_base64());
        };
        match stage {
            Stage::Plain => {
                let mut parts = bytes.splitn(3, |b| *b == 0);
                let (Some(z), Some(u), Some(p)) = (parts.next(), parts.next(), parts.next()) else {
                    return self.error(reply(501, (5, 5, 2), "Error: malformed PLAIN response"));
                };
                let (Some(authzid), Some(user), Some(password)) = (
                    credential(z.to_vec()),
                    credential(u.to_vec()),
                    credential(p.to_vec()),
                ) else {
                    return self.error(bad_base64());
                };
                self.hand_auth(Mechanism::Plain, authzid, user, password);
            }
            Stage::LoginUser => match credential(bytes) {
                Some(user) => self.challenge_password(user),
                None => self.error(bad_base64()),
            },
            Stage::LoginPassword(user) => match credential(bytes) {
                Some(password) => self.hand_auth(Mechanism::Login, String::new(), user, password),
                None => self.error(bad_base64()),
            },
        }
    }

    fn challenge_password(&mut self, user: String) {
        Reply::plain(334, vec!["UGFzc3dvcmQ6".into()]).encode(&mut self.output);
        self.phase = Phase::Auth(Stage::LoginPassword(user));
    }

    fn hand_auth(&mut self, mechanism: Mechanism, authzid: String, user: String, password: String) {
        if user.is_empty() {
            return self.error(reply(535, (5, 7, 8), "Error: authentication failed"));
        }
        self.phase = Phase::Waiting;
        self.auth_pending = Some(user.clone());
        self.pending_event = Some(Event::Auth {
            mechanism,
            authzid,
            user,
            password,
        });
    }

    /// The caller's answer to [`Event::Auth`]: `Ok` is 235 and the
    /// session is authenticated (the policy is told); `Err` is sent.
    pub fn auth_result(&mut self, result: Result<(), Reply>) {
        assert!(
            matches!(self.phase, Phase::Waiting) && self.pending_event.is_none(),
            "auth_result() without an AUTH exchange"
        );
        self.phase = Phase::Command;
        match result {
            Ok(()) => {
                // Take the user back from where hand_auth left it: the
                // caller's event carried it; remember it for MAIL.
                let user = self.auth_pending.take().unwrap_or_default();
                self.policy.authenticated(&user);
                self.auth_user = Some(user);
                self.ok(reply(235, (2, 7, 0), "Authentication successful"));
            }
            Err(r) => {
                self.auth_pending = None;
                self.error(r);
            }
        }
    }
}
