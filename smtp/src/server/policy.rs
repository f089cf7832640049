//! [`Policy`]: the decisions the embedding server makes, and
//! [`AcceptAll`], the policy that makes none.

use crate::address::{ForwardPath, ReversePath};
use crate::command::MailParams;
use crate::reply::Reply;

/// Decisions the embedding server makes (relay control and the like).
pub trait Policy {
    /// MAIL FROM accepted syntactically; `Err` is sent as the reply.
    fn check_sender(&mut self, _from: &ReversePath, _params: &MailParams) -> Result<(), Reply> {
        Ok(())
    }
    /// The client authenticated as `user` (SMTP AUTH): it may relay.
    fn authenticated(&mut self, _user: &str) {}

    /// XSHADOW or XQDISCARD was refused (the client is not a peer).
    fn shadow_refused(&mut self) {}

    /// May this client use tern's shadow link (`XSHADOW` on MAIL,
    /// `XQDISCARD`)? Only configured peers should.
    fn allow_shadow(&mut self) -> bool {
        false
    }
    /// May this client use `XCLIENT` (a trusted front end naming the
    /// real client)? Only configured front ends should.
    fn allow_xclient(&mut self) -> bool {
        false
    }
    /// RCPT TO accepted syntactically; `Err` is sent as the reply.
    fn check_recipient(&mut self, _to: &ForwardPath) -> Result<(), Reply> {
        Ok(())
    }
}

/// A policy that accepts everything (tests, sinks).
#[derive(Clone, Copy, Debug, Default)]
pub struct AcceptAll;
impl Policy for AcceptAll {}
