//! The verbs answered in one reply without touching a transaction's
//! content: RSET, NOOP, QUIT, VRFY, HELP, and those we do not implement.

use super::{reply, Policy, Session};
use crate::Reply;

impl<P: Policy> Session<P> {
    /// RSET: the transaction in progress (if any) is dropped.
    pub(super) fn rset(&mut self) {
        self.drop_tx();
        self.junk(reply(250, (2, 0, 0), "Ok"));
    }

    pub(super) fn noop(&mut self) {
        self.junk(reply(250, (2, 0, 0), "Ok"));
    }

    /// The reply to a junk command (NOOP, VRFY, RSET, HELP): beyond
    /// `junk_commands_max` since the last accepted message it also counts
    /// as an error, so a session that only idles with them ends at the
    /// error limit (Postfix's smtpd_junk_command_limit).
    fn junk(&mut self, r: Reply) {
        self.junk += 1;
        if self.junk > self.config.junk_commands_max {
            self.error(r);
        } else {
            self.ok(r);
        }
    }

    pub(super) fn quit(&mut self) {
        self.close_with(reply(221, (2, 0, 0), "Bye"));
    }

    /// VRFY never reveals whether a mailbox exists (RFC 5321 3.5.3: 252).
    pub(super) fn vrfy(&mut self) {
        self.junk(reply(
            252,
            (2, 5, 2),
            "Cannot VRFY user, but will accept message and attempt delivery",
        ));
    }

    pub(super) fn help(&mut self) {
        self.junk(reply(
            214,
            (2, 0, 0),
            "See RFC 5321; commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP",
        ));
    }

    /// A verb we parse but do not implement (EXPN, STARTTLS, AUTH, TURN).
    pub(super) fn not_implemented(&mut self) {
        self.error(reply(502, (5, 5, 1), "Error: command not implemented"));
    }
}
