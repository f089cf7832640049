//! The caller's side of a [`Session`]: input and output buffers, the
//! event loop ([`Session::poll`]), the answers to events, and the reply
//! helpers the verbs share (error counting, closing, content refusals).

use std::rc::Rc;

use super::{reply, AuthOffer, Envelope, Event, Phase, Policy, ServerConfig, Session};
use crate::data::ContentError;
use crate::reply::{Reply, Status};

impl<P: Policy> Session<P> {
    /// A new session; the 220 greeting is already in the output.
    pub fn new(config: Rc<ServerConfig>, policy: P) -> Session<P> {
        let mut s = Session {
            config,
            policy,
            input: Vec::new(),
            start: 0,
            output: Vec::new(),
            phase: Phase::Command,
            helo: None,
            tx: None,
            errors: 0,
            errors_total: 0,
            junk: 0,
            skipping_line: false,
            pending_event: None,
            tls_offer: false,
            tls_active: false,
            auth_offer: AuthOffer::Never,
            auth_user: None,
            auth_pending: None,
            xclient: Default::default(),
            asked: None,
            notice: None,
            abandoned: None,
        };
        s.greet();
        s
    }

    /// The 220 greeting (at the start, and after XCLIENT).
    pub(super) fn greet(&mut self) {
        let greeting = format!("{} ESMTP tern", self.config.hostname);
        Reply::plain(220, vec![greeting.into()]).encode(&mut self.output);
    }

    /// The policy (the caller may tell it what it learnt, e.g. the real
    /// client after XCLIENT).
    pub fn policy_mut(&mut self) -> &mut P {
        &mut self.policy
    }

    /// Drops the transaction; in proxy mode one the caller forwarded is
    /// announced ([`Event::Reset`]).
    pub(super) fn drop_tx(&mut self) {
        if self.tx.take().is_some() && self.config.proxy {
            self.notice = Some(Event::Reset);
        }
    }

    /// Buffers bytes received from the client.
    pub fn receive(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.input.len() {
            self.input.clear();
            self.start = 0;
        } else if self.start > 64 * 1024 {
            self.input.drain(..self.start);
            self.start = 0;
        }
        self.input.extend_from_slice(bytes);
    }

    /// False while a message is with the caller or the session is closing:
    /// stop reading from the socket then (bounds the input buffer).
    pub fn wants_input(&self) -> bool {
        matches!(
            self.phase,
            Phase::Command | Phase::Data(_) | Phase::Bdat { .. } | Phase::Auth(_)
        )
    }

    /// Reply bytes to send.
    pub fn transmit(&self) -> &[u8] {
        &self.output
    }

    /// The first `n` bytes of [`Session::transmit`] were sent.
    pub fn transmitted(&mut self, n: usize) {
        self.output.drain(..n.min(self.output.len()));
    }

    /// True while a BDAT chunk is incomplete: the client has committed to
    /// sending the rest of it without waiting for a reply (unlike DATA,
    /// whose content follows only once the 354 went out).
    pub fn mid_chunk(&self) -> bool {
        matches!(self.phase, Phase::Bdat { .. })
    }

    /// True between transactions (no MAIL in progress, nothing waiting):
    /// a graceful shutdown may close the session now.
    pub fn is_idle(&self) -> bool {
        self.tx.is_none() && matches!(self.phase, Phase::Command)
    }

    /// The name the client gave in HELO/EHLO and whether it was EHLO
    /// (`None` before either).
    pub fn helo(&self) -> Option<(&str, bool)> {
        self.helo.as_ref().map(|(n, e)| (n.as_str(), *e))
    }

    /// Error replies sent so far in the session (for metrics).
    pub fn error_count(&self) -> u32 {
        self.errors_total
    }

    /// Memory held for message content right now (DATA or BDAT in
    /// progress), for the caller's memory budget: the buffers' capacity,
    /// so what a `SIZE=` claim or a BDAT size reserved counts before the
    /// bytes arrive.
    pub fn content_bytes(&self) -> usize {
        match &self.phase {
            Phase::Data(r) => r.capacity(),
            _ => self
                .tx
                .as_ref()
                .and_then(|t| t.chunks.as_ref())
                .map_or(0, Vec::capacity),
        }
    }

    /// Bytes received but not processed yet.
    pub fn buffered(&self) -> usize {
        self.input.len() - self.start
    }

    /// The caller made the message durable (`Ok(queue_id)`) or could not
    /// (`Err(reply)`, a 4xx for storage trouble).
    pub fn complete(&mut self, result: Result<&str, Reply>) {
        self.complete_with(match result {
            Ok(id) => Reply::new(250, Status(2, 0, 0), format!("Ok: queued as {id}")),
            Err(r) => r,
        });
    }

    /// Ends the message with the reply `r` (proxy mode: the reply of the
    /// server behind; [`Session::complete`] builds its own).
    pub fn complete_with(&mut self, r: Reply) {
        assert!(
            matches!(self.phase, Phase::Waiting) && self.asked.is_none(),
            "complete_with() without a message"
        );
        if r.is_positive() {
            // The limit counts errors without a delivered message in
            // between (like Postfix's smtpd_hard_error_limit).
            self.errors = 0;
            self.junk = 0;
        }
        r.encode(&mut self.output);
        self.tx = None;
        self.phase = Phase::Command;
    }

    /// The caller's answer to [`Event::Discard`]; the transaction in
    /// progress (if any) is kept.
    pub fn answer(&mut self, r: Reply) {
        assert!(
            matches!(self.phase, Phase::Waiting),
            "answer() without a request"
        );
        r.encode(&mut self.output);
        self.phase = Phase::Command;
    }

    /// The caller's inactivity or session deadline passed.
    pub fn timeout(&mut self) {
        self.close_with(reply(421, (4, 4, 2), "Error: timeout exceeded"));
    }

    /// The server is shutting down or over a connection limit.
    pub fn shutdown(&mut self, r: Reply) {
        self.close_with(r);
    }

    /// Processes buffered input. Returns an event, or `None` when more
    /// input is needed (send [`Session::transmit`] then).
    pub fn poll(&mut self) -> Option<Event> {
        loop {
            // A dropped transaction is announced before anything after it.
            if let Some(e) = self.notice.take() {
                return Some(e);
            }
            match &mut self.phase {
                Phase::Closing { emitted } => {
                    if *emitted {
                        return None;
                    }
                    *emitted = true;
                    return Some(Event::Close);
                }
                Phase::Waiting => return self.pending_event.take(),
                Phase::Command => {
                    if !self.command_step() {
                        return None;
                    }
                }
                Phase::Data(_) => {
                    if let Some(step) = self.data_step() {
                        return step;
                    }
                }
                Phase::Bdat { .. } => {
                    if let Some(step) = self.bdat_step() {
                        return step;
                    }
                }
                Phase::Auth(_) => {
                    if !self.auth_step() {
                        return None;
                    }
                }
            }
        }
    }

    /// Sends `r` and ends the session (once: later calls are ignored).
    pub(super) fn close_with(&mut self, r: Reply) {
        if !matches!(self.phase, Phase::Closing { .. }) {
            r.encode(&mut self.output);
            self.phase = Phase::Closing { emitted: false };
        }
    }

    /// A reply that is not an error.
    pub(super) fn ok(&mut self, r: Reply) {
        r.encode(&mut self.output);
    }

    /// An error reply, counted toward `errors_max`.
    pub(super) fn error(&mut self, r: Reply) {
        r.encode(&mut self.output);
        self.errors += 1;
        self.errors_total += 1;
        if self.errors >= self.config.errors_max {
            self.close_with(reply(421, (4, 7, 0), "Error: too many errors"));
        }
    }

    /// Refuses a message's content (DATA or BDAT): the transaction ends.
    pub(super) fn reject_content(&mut self, e: ContentError) {
        self.drop_tx();
        self.error(match e {
            ContentError::TooLarge => reply(552, (5, 3, 4), "Error: message file too big"),
            ContentError::LineTooLong => reply(
                554,
                (5, 6, 0),
                "Error: message line longer than 1000 octets",
            ),
            ContentError::BareLf | ContentError::BareCr => {
                reply(554, (5, 6, 0), "Error: bare <CR> or <LF> in message")
            }
            ContentError::Nul => reply(554, (5, 6, 0), "Error: NUL octet in message"),
        });
    }

    /// Ends the transaction with its content: the message goes to the
    /// caller and input waits for [`Session::complete`].
    pub(super) fn hand_over(&mut self, content: Vec<u8>) -> Event {
        let tx = self.tx.take().expect("transaction");
        let (helo, esmtp) = self.helo.clone().expect("helo before mail");
        self.phase = Phase::Waiting;
        Event::Message {
            envelope: Envelope {
                helo: self.xclient.helo.clone().unwrap_or(helo),
                esmtp: self.xclient.esmtp.unwrap_or(esmtp),
                from: tx.from,
                params: tx.params,
                recipients: tx.recipients,
                authenticated: self.auth_user.clone(),
                tls: self.tls_active,
            },
            content,
        }
    }
}
