//! The server side of one SMTP session as a plain state machine: bytes in
//! ([`Session::receive`]), events and reply bytes out ([`Session::poll`],
//! [`Session::transmit`]). No sockets, no runtime, no clock: the caller
//! owns deadlines and I/O (STYLE rule 2).
//!
//! Pipelining (RFC 2920): replies accumulate in the output buffer while
//! buffered commands are processed; the caller sends them when `poll`
//! returns `None` (input exhausted) or an event. Commands sent ahead of the
//! greeting reply to EHLO, or before EHLO advertised PIPELINING, and any
//! bytes sent after DATA before our 354, are "unauthorised pipelining"
//! (Postfix's reject_unauth_pipelining): the session answers 554 5.5.0 and
//! closes, so no byte can be read in a state the client did not expect.

use std::rc::Rc;

use crate::address::{ForwardPath, ReversePath};
use crate::command::{self, Command, MailParams};
use crate::data::{ChunkChecker, ContentError, DataReceiver, Progress};
use crate::limits::{COMMAND_LINE_MAX, PARAMS_EXTRA};
use crate::reply::{Reply, Status};

/// Static settings of a server session (shared by all sessions of a core).
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Our name in the greeting and the EHLO reply.
    pub hostname: String,
    /// Largest message accepted (advertised as SIZE, RFC 1870).
    pub message_bytes_max: usize,
    /// Recipients per message (RFC 5321 4.5.3.1.8: at least 100).
    pub recipients_max: usize,
    /// Error replies after which the session is closed with 421.
    pub errors_max: u32,
    /// Extra EHLO keywords (later: the shadow-link extension).
    pub extra_ehlo: Vec<String>,
    /// EHLO line advertised only to clients the policy allows the shadow
    /// link (`XSHADOW <node> <database id>`).
    pub shadow_ehlo: Option<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            hostname: "localhost".into(),
            message_bytes_max: crate::limits::MESSAGE_BYTES_DEFAULT,
            recipients_max: crate::limits::RECIPIENTS_DEFAULT,
            errors_max: crate::limits::ERRORS_MAX_DEFAULT,
            extra_ehlo: Vec::new(),
            shadow_ehlo: None,
        }
    }
}

/// Decisions the embedding server makes (relay control and the like).
pub trait Policy {
    /// MAIL FROM accepted syntactically; `Err` is sent as the reply.
    fn check_sender(&mut self, _from: &ReversePath, _params: &MailParams) -> Result<(), Reply> {
        Ok(())
    }
    /// May this client use tern's shadow link (`XSHADOW` on MAIL,
    /// `XQDISCARD`)? Only configured peers should.
    fn allow_shadow(&mut self) -> bool {
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

/// Everything about a message except its content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// Name given in HELO/EHLO.
    pub helo: String,
    /// EHLO (true) or HELO.
    pub esmtp: bool,
    /// MAIL FROM.
    pub from: ReversePath,
    /// MAIL FROM parameters.
    pub params: MailParams,
    /// Accepted recipients, in order.
    pub recipients: Vec<ForwardPath>,
}

/// What the session needs from the caller.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// A complete message. Make it durable, then call
    /// [`Session::complete`]; no further input is processed until then.
    Message {
        /// The envelope.
        envelope: Envelope,
        /// The content, un-dot-stuffed (DATA) or concatenated chunks (BDAT).
        content: Vec<u8>,
    },
    /// `XQDISCARD`: answer with [`Session::answer`] (the queue ids the
    /// shadow may discard); no further input is processed until then.
    Discard {
        /// The asking shadow's node id.
        node: String,
        /// The primary's database id as the shadow knows it.
        database: String,
    },
    /// Send what [`Session::transmit`] holds, then close the connection.
    Close,
}

#[derive(Debug)]
enum Phase {
    Command,
    Data(DataReceiver),
    Bdat {
        remaining: u64,
        last: bool,
    },
    /// A message was handed to the caller.
    Waiting,
    /// Close requested; `closed_emitted` once the event went out.
    Closing {
        emitted: bool,
    },
}

#[derive(Debug)]
struct Transaction {
    from: ReversePath,
    params: MailParams,
    recipients: Vec<ForwardPath>,
    /// BDAT chunks so far (None after the size limit was passed).
    chunks: Option<Vec<u8>>,
    checker: ChunkChecker,
    bdat_started: bool,
}

/// One server session.
pub struct Session<P> {
    config: Rc<ServerConfig>,
    policy: P,
    input: Vec<u8>,
    /// Consumed prefix of `input`.
    start: usize,
    output: Vec<u8>,
    phase: Phase,
    helo: Option<(String, bool)>,
    tx: Option<Transaction>,
    /// Error replies since the last accepted message (the limit).
    errors: u32,
    /// Error replies in the whole session (metrics).
    errors_total: u32,
    /// Discarding an over-long command line up to its LF.
    skipping_line: bool,
    /// An event produced by a command (XQDISCARD), returned by `poll`.
    pending_event: Option<Event>,
}

/// Does this command line start with the BDAT verb?
fn is_bdat(line: &[u8]) -> bool {
    line.len() >= 4
        && line[..4].eq_ignore_ascii_case(b"BDAT")
        && line
            .get(4)
            .is_none_or(|&b| b == b' ' || b == b'\t' || b == b'\r')
}

/// Reply to a BDAT line we cannot parse: its chunk size is unknown, so the
/// session ends (RFC 3030 framing cannot be recovered).
fn bdat_unparsed() -> Reply {
    reply(
        554,
        (5, 5, 2),
        "Error: cannot parse BDAT command; closing (chunk length unknown)",
    )
}

fn reply(code: u16, status: (u8, u16, u16), text: &'static str) -> Reply {
    Reply::new(code, Status(status.0, status.1, status.2), text)
}

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
            skipping_line: false,
            pending_event: None,
        };
        let greeting = format!("{} ESMTP tern", s.config.hostname);
        Reply::plain(220, vec![greeting.into()]).encode(&mut s.output);
        s
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
            Phase::Command | Phase::Data(_) | Phase::Bdat { .. }
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

    /// Error replies sent so far in the session (for metrics).
    pub fn error_count(&self) -> u32 {
        self.errors_total
    }

    /// Message content held in memory right now (DATA or BDAT in
    /// progress), for the caller's memory budget.
    pub fn content_bytes(&self) -> usize {
        match &self.phase {
            Phase::Data(r) => r.len(),
            _ => self
                .tx
                .as_ref()
                .and_then(|t| t.chunks.as_ref())
                .map_or(0, Vec::len),
        }
    }

    /// Bytes received but not processed yet.
    pub fn buffered(&self) -> usize {
        self.input.len() - self.start
    }

    /// The caller made the message durable (`Ok(queue_id)`) or could not
    /// (`Err(reply)`, a 4xx for storage trouble).
    pub fn complete(&mut self, result: Result<&str, Reply>) {
        assert!(
            matches!(self.phase, Phase::Waiting),
            "complete() without a message"
        );
        let r = match result {
            Ok(id) => {
                // The limit counts errors without a delivered message in
                // between (like Postfix's smtpd_hard_error_limit).
                self.errors = 0;
                Reply::new(250, Status(2, 0, 0), format!("Ok: queued as {id}"))
            }
            Err(r) => r,
        };
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

    fn close_with(&mut self, r: Reply) {
        if !matches!(self.phase, Phase::Closing { .. }) {
            r.encode(&mut self.output);
            self.phase = Phase::Closing { emitted: false };
        }
    }

    /// Processes buffered input. Returns an event, or `None` when more
    /// input is needed (send [`Session::transmit`] then).
    pub fn poll(&mut self) -> Option<Event> {
        loop {
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
            }
        }
    }

    /// One command line if complete; false when more input is needed.
    fn command_step(&mut self) -> bool {
        let pending = &self.input[self.start..];
        let max = COMMAND_LINE_MAX + PARAMS_EXTRA;
        let Some(lf) = memchr::memchr(b'\n', pending) else {
            if pending.len() > max {
                if is_bdat(pending) {
                    // The chunk's size is unknown: its bytes would be read
                    // as commands. Never guess at framing.
                    self.close_with(bdat_unparsed());
                    return true;
                }
                // RFC 5321 4.5.3.1.4: refuse, then drop the rest of the line.
                self.start = self.input.len();
                if !self.skipping_line {
                    self.skipping_line = true;
                    self.error(reply(500, (5, 5, 2), "Error: command line too long"));
                }
            }
            return false;
        };
        let line_end = self.start + lf;
        self.start = line_end + 1;
        if std::mem::take(&mut self.skipping_line) {
            return true;
        }
        let line = &self.input[line_end - lf..line_end];
        let Some(line) = line.strip_suffix(b"\r") else {
            self.close_with(reply(521, (5, 5, 2), "Error: bare <LF> received"));
            return true;
        };
        if memchr::memchr(b'\r', line).is_some() {
            self.close_with(reply(521, (5, 5, 2), "Error: bare <CR> received"));
            return true;
        }
        let parsed = command::parse(line);
        let too_long = line.len() + 2
            > match parsed {
                Ok(Command::Mail { .. } | Command::Rcpt { .. }) => max,
                _ => COMMAND_LINE_MAX,
            };
        let ahead = self.start < self.input.len();
        if (too_long || parsed.is_err()) && is_bdat(line) {
            self.close_with(bdat_unparsed());
            return true;
        }
        match parsed {
            _ if too_long => self.error(reply(500, (5, 5, 2), "Error: command line too long")),
            Ok(cmd) if ahead && !self.may_pipeline(&cmd) => self.close_with(reply(
                554,
                (5, 5, 0),
                "Error: improper use of SMTP command pipelining",
            )),
            Ok(cmd) => self.dispatch(cmd),
            Err(e) => self.error(e.reply()),
        }
        true
    }

    /// RFC 2920: only after EHLO advertised PIPELINING, and never with
    /// bytes following DATA before the 354.
    fn may_pipeline(&self, cmd: &Command) -> bool {
        let esmtp = self.helo.as_ref().is_some_and(|(_, esmtp)| *esmtp);
        match cmd {
            Command::Data => false,
            Command::Quit => true,
            _ => esmtp,
        }
    }

    fn ok(&mut self, r: Reply) {
        r.encode(&mut self.output);
    }

    /// An error reply, counted toward `errors_max`.
    fn error(&mut self, r: Reply) {
        r.encode(&mut self.output);
        self.errors += 1;
        self.errors_total += 1;
        if self.errors >= self.config.errors_max {
            self.close_with(reply(421, (4, 7, 0), "Error: too many errors"));
        }
    }

    fn dispatch(&mut self, cmd: Command) {
        match cmd {
            Command::Ehlo(name) => self.hello(name, true),
            Command::Helo(name) => self.hello(name, false),
            Command::Mail { from, params } => self.mail(from, params),
            Command::Rcpt { to } => self.rcpt(to),
            Command::Data => self.data(),
            Command::Bdat { size, last } => self.bdat(size, last),
            Command::Rset => {
                self.tx = None;
                self.ok(reply(250, (2, 0, 0), "Ok"));
            }
            Command::Noop => self.ok(reply(250, (2, 0, 0), "Ok")),
            Command::Quit => self.close_with(reply(221, (2, 0, 0), "Bye")),
            Command::Vrfy => self.ok(reply(
                252,
                (2, 5, 2),
                "Cannot VRFY user, but will accept message and attempt delivery",
            )),
            Command::Help => self.ok(reply(
                214,
                (2, 0, 0),
                "See RFC 5321; commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP",
            )),
            Command::NotImplemented(_) => {
                self.error(reply(502, (5, 5, 1), "Error: command not implemented"))
            }
            Command::XqDiscard { node, database } => {
                if !self.policy.allow_shadow() || self.helo.is_none() {
                    return self.error(reply(500, (5, 5, 1), "Error: command not recognized"));
                }
                self.phase = Phase::Waiting;
                self.pending_event = Some(Event::Discard { node, database });
            }
        }
    }

    fn hello(&mut self, name: String, esmtp: bool) {
        self.tx = None;
        let host = self.config.hostname.clone();
        let r = if esmtp {
            let mut lines: Vec<std::borrow::Cow<'static, str>> = vec![
                host.into(),
                "PIPELINING".into(),
                format!("SIZE {}", self.config.message_bytes_max).into(),
                "8BITMIME".into(),
                "SMTPUTF8".into(),
                "ENHANCEDSTATUSCODES".into(),
                "CHUNKING".into(),
            ];
            lines.extend(self.config.extra_ehlo.iter().cloned().map(Into::into));
            if let Some(line) = &self.config.shadow_ehlo {
                if self.policy.allow_shadow() {
                    lines.push(line.clone().into());
                }
            }
            Reply::plain(250, lines)
        } else {
            Reply::plain(250, vec![host.into()])
        };
        self.helo = Some((name, esmtp));
        self.ok(r);
    }

    fn mail(&mut self, from: ReversePath, params: MailParams) {
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
            return self.error(reply(555, (5, 5, 4), "Unsupported option: XSHADOW"));
        }
        if let Err(r) = self.policy.check_sender(&from, &params) {
            return self.error(r);
        }
        self.tx = Some(Transaction {
            from,
            params,
            recipients: Vec::new(),
            chunks: Some(Vec::new()),
            checker: ChunkChecker::default(),
            bdat_started: false,
        });
        self.ok(reply(250, (2, 1, 0), "Ok"));
    }

    fn rcpt(&mut self, to: ForwardPath) {
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
        self.tx.as_mut().expect("checked").recipients.push(to);
        self.ok(reply(250, (2, 1, 5), "Ok"));
    }

    fn data(&mut self) {
        let Some(tx) = &self.tx else {
            return self.error(reply(503, (5, 5, 1), "Error: need MAIL command"));
        };
        if tx.recipients.is_empty() {
            return self.error(reply(503, (5, 5, 1), "Error: need RCPT command"));
        }
        if tx.bdat_started {
            return self.error(reply(503, (5, 5, 1), "Error: DATA after BDAT"));
        }
        let hint = tx.params.size.unwrap_or(0) as usize;
        self.phase = Phase::Data(DataReceiver::new(self.config.message_bytes_max, hint));
        Reply::plain(354, vec!["End data with <CR><LF>.<CR><LF>".into()]).encode(&mut self.output);
    }

    fn bdat(&mut self, size: u64, last: bool) {
        // The chunk's bytes follow whatever we answer: always consume them.
        self.phase = Phase::Bdat {
            remaining: size,
            last,
        };
        let refusal = match &self.tx {
            None => Some(reply(503, (5, 5, 1), "Error: need MAIL command")),
            Some(tx) if tx.recipients.is_empty() => {
                Some(reply(503, (5, 5, 1), "Error: need RCPT command"))
            }
            Some(_) => None,
        };
        if let Some(r) = refusal {
            self.tx = None;
            self.error(r);
            if !matches!(self.phase, Phase::Closing { .. }) {
                self.phase = Phase::Bdat {
                    remaining: size,
                    last: false,
                };
            }
            return;
        }
        let tx = self.tx.as_mut().expect("checked");
        tx.bdat_started = true;
        let limit = self.config.message_bytes_max as u64;
        if let Some(chunks) = &mut tx.chunks {
            if size > limit.saturating_sub(chunks.len() as u64) {
                tx.chunks = None;
            } else {
                // The client's number does not decide an allocation: grow
                // as bytes arrive, at most 1 MiB ahead.
                chunks.reserve((size as usize).min(1 << 20));
            }
        }
    }

    fn data_step(&mut self) -> Option<Option<Event>> {
        let Phase::Data(receiver) = &mut self.phase else {
            unreachable!("data_step outside DATA")
        };
        let progress = receiver.feed(&self.input[self.start..]);
        match progress {
            Progress::NeedMore => {
                self.start = self.input.len();
                Some(None)
            }
            Progress::Fatal { consumed, error } => {
                self.start += consumed;
                let text = if error == ContentError::BareCr {
                    "Error: bare <CR> received"
                } else {
                    "Error: bare <LF> received"
                };
                self.tx = None;
                self.close_with(reply(521, (5, 5, 2), text));
                None
            }
            Progress::Done { consumed } => {
                self.start += consumed;
                let Phase::Data(receiver) = std::mem::replace(&mut self.phase, Phase::Command)
                else {
                    unreachable!()
                };
                if let Some(e) = receiver.error() {
                    self.reject_content(e);
                    return None;
                }
                Some(Some(self.hand_over(receiver.into_body())))
            }
        }
    }

    fn bdat_step(&mut self) -> Option<Option<Event>> {
        let Phase::Bdat { remaining, last } = &mut self.phase else {
            unreachable!("bdat_step outside BDAT")
        };
        let available = (self.input.len() - self.start) as u64;
        let take = available.min(*remaining) as usize;
        let bytes = &self.input[self.start..self.start + take];
        if let Some(tx) = &mut self.tx {
            tx.checker.check(bytes);
            if let Some(chunks) = &mut tx.chunks {
                chunks.extend_from_slice(bytes);
            }
        }
        self.start += take;
        *remaining -= take as u64;
        if *remaining > 0 {
            return Some(None);
        }
        let last = *last;
        self.phase = Phase::Command;
        let Some(tx) = &mut self.tx else {
            return None; // refused chunk fully skipped
        };
        if tx.chunks.is_none() {
            // RFC 3030: a failed chunk fails the transaction; later chunks
            // are consumed and refused (no transaction).
            self.reject_content(ContentError::TooLarge);
            return None;
        }
        if !last {
            let received = tx.chunks.as_ref().map_or(0, Vec::len);
            self.ok(Reply::new(
                250,
                Status(2, 0, 0),
                format!("Ok: {received} octets received"),
            ));
            return None;
        }
        let error = match (&tx.chunks, tx.checker.finish()) {
            (None, _) => Some(ContentError::TooLarge),
            (_, e) => e,
        };
        if let Some(e) = error {
            self.reject_content(e);
            return None;
        }
        let content = tx.chunks.take().expect("checked");
        Some(Some(self.hand_over(content)))
    }

    fn reject_content(&mut self, e: ContentError) {
        self.tx = None;
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
        });
    }

    fn hand_over(&mut self, content: Vec<u8>) -> Event {
        let tx = self.tx.take().expect("transaction");
        let (helo, esmtp) = self.helo.clone().expect("helo before mail");
        self.phase = Phase::Waiting;
        Event::Message {
            envelope: Envelope {
                helo,
                esmtp,
                from: tx.from,
                params: tx.params,
                recipients: tx.recipients,
            },
            content,
        }
    }
}
