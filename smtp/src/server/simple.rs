//! The verbs answered in one reply without touching a transaction's
//! content: RSET, NOOP, QUIT, VRFY, HELP, and those we do not implement.

use super::{reply, Policy, Session};

impl<P: Policy> Session<P> {
    /// RSET: the transaction in progress (if any) is dropped.
    pub(super) fn rset(&mut self) {
        self.tx = None;
        self.ok(reply(250, (2, 0, 0), "Ok"));
    }

    pub(super) fn noop(&mut self) {
        self.ok(reply(250, (2, 0, 0), "Ok"));
    }

    pub(super) fn quit(&mut self) {
        self.close_with(reply(221, (2, 0, 0), "Bye"));
    }

    /// VRFY never reveals whether a mailbox exists (RFC 5321 3.5.3: 252).
    pub(super) fn vrfy(&mut self) {
        self.ok(reply(
            252,
            (2, 5, 2),
            "Cannot VRFY user, but will accept message and attempt delivery",
        ));
    }

    pub(super) fn help(&mut self) {
        self.ok(reply(
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
