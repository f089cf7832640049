//! MAIL FROM: opens a transaction once HELO/EHLO was given, the
//! parameters fit what we advertised, and the policy accepts the sender.

use super::{reply, Event, Policy, Session, Transaction};
use crate::address::ReversePath;
use crate::command::MailParams;
use crate::data::ChunkChecker;

impl<P: Policy> Session<P> {
    pub(super) fn mail(&mut self, from: ReversePath, params: MailParams) {
        if self.helo.is_none() {
            return self.error(reply(503, (5, 5, 1), "Error: send HELO/EHLO first"));
        }
        if self.tx.is_some() {
            return self.error(reply(503, (5, 5, 1), "Error: nested MAIL command"));
        }
        let esmtp = self.helo.as_ref().is_some_and(|(_, esmtp)| *esmtp);
        if !esmtp && params != MailParams::default() {
            // RFC 5321 4.1.1.11: parameters only for extensions we advertised.
            return self.error(reply(555, (5, 5, 4), "Error: MAIL parameters need EHLO"));
        }
        if params
            .size
            .is_some_and(|s| s > self.config.message_bytes_max as u64)
        {
            return self.error(reply(
                552,
                (5, 3, 4),
                "Error: message size exceeds fixed limit",
            ));
        }
        if matches!(&from, ReversePath::Mailbox(m) if m.is_utf8()) && !params.smtputf8 {
            return self.error(reply(
                553,
                (5, 6, 7),
                "Error: non-ASCII address requires SMTPUTF8",
            ));
        }
        if params.xshadow.is_some() && !self.policy.allow_shadow() {
            self.policy.shadow_refused();
            return self.error(reply(555, (5, 5, 4), "Unsupported option: XSHADOW"));
        }
        if params.auth.is_some() && !self.auth_offered() {
            return self.error(reply(555, (5, 5, 4), "Unsupported option: AUTH"));
        }
        let mut params = params;
        if self.auth_user.is_none() {
            // RFC 4954 5: from an unauthenticated client, as if AUTH=<>.
            params.auth = None;
        }
        if let Err(r) = self.policy.check_sender(&from, &params) {
            return self.error(r);
        }
        if self.config.proxy {
            let asked = super::proxy::Asked::Mail(from.clone(), params.clone());
            return self.ask(asked, Event::Mail { from, params });
        }
        self.open_tx(from, params);
        self.ok(reply(250, (2, 1, 0), "Ok"));
    }

    /// Opens the transaction MAIL started.
    pub(super) fn open_tx(&mut self, from: ReversePath, params: MailParams) {
        self.tx = Some(Transaction {
            from,
            params,
            recipients: Vec::new(),
            chunks: Some(Vec::new()),
            checker: ChunkChecker::default(),
            bdat_started: false,
            received: 0,
        });
    }
}
