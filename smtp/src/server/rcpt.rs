//! RCPT TO: adds a recipient to the open transaction, up to
//! `recipients_max`, if the policy accepts it.

use super::{reply, Event, Policy, Session};
use crate::address::ForwardPath;

impl<P: Policy> Session<P> {
    pub(super) fn rcpt(&mut self, to: ForwardPath) {
        let Some(tx) = &self.tx else {
            return self.error(reply(503, (5, 5, 1), "Error: need MAIL command"));
        };
        if tx.recipients.len() >= self.config.recipients_max {
            // RFC 5321 4.5.3.1.10: 452 for too many recipients. Not counted
            // as an error: a client sending more than the limit in one
            // pipelined transaction is expected to deliver the rest later.
            return self.ok(reply(452, (4, 5, 3), "Error: too many recipients"));
        }
        if matches!(&to, ForwardPath::Mailbox(m) if m.is_utf8()) && !tx.params.smtputf8 {
            return self.error(reply(
                553,
                (5, 6, 7),
                "Error: non-ASCII address requires SMTPUTF8",
            ));
        }
        if let Err(r) = self.policy.check_recipient(&to) {
            return self.error(r);
        }
        if self.config.proxy {
            return self.ask(super::proxy::Asked::Rcpt(to.clone()), Event::Rcpt { to });
        }
        self.tx.as_mut().expect("checked").recipients.push(to);
        self.ok(reply(250, (2, 1, 5), "Ok"));
    }
}
