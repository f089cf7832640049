//! `STARTTLS` (RFC 3207): answered 220 outside a transaction, then the
//! caller runs the handshake. Afterwards the session starts over (4.2):
//! no HELO, no transaction, no authentication, and every byte that came
//! with or after the STARTTLS line in clear text is thrown away unread:
//! a client (or someone in the middle) that pipelined `STARTTLS\r\nRSET`
//! gets nothing executed inside TLS (the CVE-2011-0411 class).

use super::{reply, Event, Phase, Policy, Session};

impl<P: Policy> Session<P> {
    /// STARTTLS may be offered (a certificate exists; set before the
    /// first poll).
    pub fn set_tls_offer(&mut self, offer: bool) {
        self.tls_offer = offer;
    }

    /// The session is in TLS from the start (an implicit-TLS listener).
    pub fn set_tls_active(&mut self, active: bool) {
        self.tls_active = active;
    }

    /// The session is in TLS.
    pub fn tls_active(&self) -> bool {
        self.tls_active
    }

    pub(super) fn starttls(&mut self) {
        if !self.tls_offer && !self.tls_active {
            return self.not_implemented();
        }
        if self.tls_active {
            return self.error(reply(503, (5, 5, 1), "Error: TLS already active"));
        }
        if self.tx.is_some() {
            return self.error(reply(503, (5, 5, 1), "Error: MAIL transaction in progress"));
        }
        self.ok(reply(220, (2, 0, 0), "Ready to start TLS"));
        self.phase = Phase::Waiting;
        self.pending_event = Some(Event::StartTls);
    }

    /// The handshake after [`Event::StartTls`] succeeded: the session
    /// restarts in TLS (RFC 3207 4.2) and what was buffered is dropped.
    pub fn tls_established(&mut self) {
        assert!(
            matches!(self.phase, Phase::Waiting) && self.pending_event.is_none(),
            "tls_established() without STARTTLS"
        );
        self.input.clear();
        self.start = 0;
        self.skipping_line = false;
        self.helo = None;
        self.tx = None;
        self.auth_user = None;
        self.tls_active = true;
        self.phase = Phase::Command;
    }
}
