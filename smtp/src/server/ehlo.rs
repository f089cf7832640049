//! EHLO and HELO: the greeting that opens (and resets) a session, and the
//! extensions we advertise.

use std::borrow::Cow;

use super::{Policy, Session};
use crate::reply::Reply;

impl<P: Policy> Session<P> {
    /// EHLO (`esmtp`) or HELO: drops any transaction, records the name.
    pub(super) fn hello(&mut self, name: String, esmtp: bool) {
        self.drop_tx();
        let host = self.config.hostname.clone();
        let r = if esmtp {
            Reply::plain(250, self.ehlo_lines(host))
        } else {
            Reply::plain(250, vec![host.into()])
        };
        self.helo = Some((name, esmtp));
        self.ok(r);
    }

    /// The EHLO reply: our name, then one extension a line.
    fn ehlo_lines(&mut self, host: String) -> Vec<Cow<'static, str>> {
        let mut lines: Vec<Cow<'static, str>> = vec![
            host.into(),
            "PIPELINING".into(),
            format!("SIZE {}", self.config.message_bytes_max).into(),
            "8BITMIME".into(),
            "SMTPUTF8".into(),
            "ENHANCEDSTATUSCODES".into(),
            "CHUNKING".into(),
        ];
        if self.tls_offer && !self.tls_active {
            lines.push("STARTTLS".into());
        }
        if self.auth_offered() {
            lines.push("AUTH PLAIN LOGIN".into());
        }
        if self.policy.allow_xclient() {
            lines.push(crate::xclient::EHLO_LINE.into());
        }
        lines.extend(self.config.extra_ehlo.iter().cloned().map(Into::into));
        if let Some(line) = &self.config.shadow_ehlo {
            if self.policy.allow_shadow() {
                lines.push(line.clone().into());
            }
        }
        lines
    }
}
