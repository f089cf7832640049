//! `XCLIENT` (Postfix's extension): a trusted proxy says who the real
//! client is. Only for clients the policy allows
//! ([`Policy::allow_xclient`], advertised in EHLO to them alone), others
//! get `550 5.7.0`; never inside a transaction. The caller checks what it
//! was told ([`Event::Xclient`]) and answers with
//! [`Session::xclient_result`]; on success the session starts over with a
//! new 220 greeting (no HELO, no transaction), as Postfix does.

use super::proxy::Asked;
use super::{reply, Event, Phase, Policy, Session};
use crate::reply::Reply;
use crate::xclient::Xclient;

/// What XCLIENT said, kept for the rest of the session: the `HELO` name
/// and protocol the real client used replace the proxy's in the
/// envelope (and so in `Received:`).
#[derive(Debug, Default)]
pub(super) struct Given {
    /// `HELO=`.
    pub(super) helo: Option<String>,
    /// `PROTO=`: ESMTP (true) or SMTP.
    pub(super) esmtp: Option<bool>,
}

impl<P: Policy> Session<P> {
    pub(super) fn xclient(&mut self, x: Xclient) {
        if !self.policy.allow_xclient() {
            return self.error(reply(550, (5, 7, 0), "Error: insufficient authorization"));
        }
        if self.tx.is_some() {
            return self.error(reply(503, (5, 5, 1), "Error: MAIL transaction in progress"));
        }
        self.ask(Asked::Xclient(Box::new(x.clone())), Event::Xclient(x));
    }

    /// The caller's answer to [`Event::Xclient`]: `Ok`: the session takes
    /// the attributes (the `LOGIN=` user as authenticated) and greets
    /// again; `Err(reply)` is sent instead (a `421`, e.g. for a client
    /// over its connection limit, also ends the session).
    pub fn xclient_result(&mut self, result: Result<(), Reply>) {
        let Some(Asked::Xclient(x)) = self.asked.take() else {
            panic!("xclient_result() without XCLIENT");
        };
        self.phase = Phase::Command;
        if let Err(r) = result {
            if r.code == 421 {
                return self.close_with(r);
            }
            return self.error(r);
        }
        if let Some(helo) = x.helo {
            self.xclient.helo = helo;
        }
        if let Some(esmtp) = x.esmtp {
            self.xclient.esmtp = esmtp;
        }
        if let Some(login) = x.login {
            if let Some(user) = &login {
                self.policy.authenticated(user);
            }
            self.auth_user = login;
        }
        self.helo = None;
        self.tx = None;
        self.greet();
    }
}
