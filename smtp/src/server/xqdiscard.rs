//! `XQDISCARD`, the shadow link's request for the queue ids it may
//! discard: only for clients the policy allows the shadow link, and only
//! after HELO/EHLO. The caller answers with [`Session::answer`].

use super::{reply, Event, Phase, Policy, Session};

impl<P: Policy> Session<P> {
    /// Hands the request to the caller ([`Event::Discard`]); no further
    /// input is processed until it answers.
    pub(super) fn xqdiscard(&mut self, node: String, database: String, taken: u64) {
        if !self.policy.allow_shadow() || self.helo.is_none() {
            self.policy.shadow_refused();
            return self.error(reply(500, (5, 5, 1), "Error: command not recognized"));
        }
        self.phase = Phase::Waiting;
        self.pending_event = Some(Event::Discard {
            node,
            database,
            taken,
        });
    }
}
