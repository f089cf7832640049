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
//!
//! # Layout
//!
//! One file per verb, as the session reads them (STYLE rule 3):
//!
//! - `mod.rs` (here): the public types ([`Envelope`], [`Event`],
//!   [`Session`]) and the session's private state.
//! - `config.rs`: [`ServerConfig`]. `policy.rs`: [`Policy`], [`AcceptAll`].
//! - `session.rs`: the caller's interface ([`Session::receive`],
//!   [`Session::poll`], [`Session::complete`], ...) and the reply helpers
//!   every verb uses (errors counted toward the limit, closing).
//! - `line.rs`: one command line: framing, length limits, unauthorised
//!   pipelining, and the dispatch to the verbs.
//! - `ehlo.rs` (EHLO, HELO), `mail.rs`, `rcpt.rs`, `data.rs`, `bdat.rs`
//!   (RFC 3030 CHUNKING), `xqdiscard.rs` (the shadow link's discard
//!   request), `simple.rs` (RSET, NOOP, QUIT, VRFY, HELP and the verbs we
//!   do not implement), `starttls.rs` (RFC 3207), `auth.rs` (RFC 4954
//!   AUTH PLAIN and LOGIN), `xclient.rs` (XCLIENT from a trusted proxy),
//!   `proxy.rs` (proxy mode: the verdicts and the content go to the
//!   caller, for a front end that forwards the session).
//!
//! # Proxy mode
//!
//! With [`ServerConfig::proxy`], the session keeps the protocol (framing,
//! pipelining, limits, STARTTLS) but the answers to MAIL, RCPT and DATA
//! come from the caller ([`Event::Mail`], [`Event::Rcpt`], [`Event::Data`],
//! answered with [`Session::verdict`]), the content goes to the caller in
//! pieces as it arrives ([`Event::Content`], at most
//! [`proxy::CONTENT_PIECE_BYTES`] held), and the end-of-data reply is the
//! caller's ([`Session::complete_with`]). [`Event::Reset`] says the
//! transaction the caller forwarded was dropped (RSET, EHLO, refused
//! content).

use std::rc::Rc;

use crate::address::{ForwardPath, ReversePath};
use crate::command::MailParams;
use crate::data::{ChunkChecker, DataReceiver};
use crate::reply::{Reply, Status};

mod auth;
mod bdat;
mod config;
mod data;
mod ehlo;
mod line;
mod mail;
mod policy;
pub mod proxy;
mod rcpt;
mod session;
mod simple;
mod starttls;
mod xclient;
mod xqdiscard;

pub use auth::{AuthOffer, Mechanism};
pub use config::ServerConfig;
pub use policy::{AcceptAll, Policy};

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
    /// The user the session authenticated as (SMTP AUTH), if any.
    pub authenticated: Option<String>,
    /// The session was in TLS.
    pub tls: bool,
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
        /// Messages of that database the shadow says it took over
        /// (`TAKEN=`; 0 without it).
        taken: u64,
    },
    /// `STARTTLS` was answered 220: send what [`Session::transmit`]
    /// holds, run the TLS handshake, then call
    /// [`Session::tls_established`] (or close if it failed). No input is
    /// processed until then.
    StartTls,
    /// A complete `AUTH` exchange: check the credentials and answer with
    /// [`Session::auth_result`]; no input is processed until then.
    Auth {
        /// The mechanism used.
        mechanism: Mechanism,
        /// Authorization identity (empty: the same as `user`).
        authzid: String,
        /// Authentication identity.
        user: String,
        /// The password.
        password: String,
    },
    /// `XCLIENT` from a client the policy allows it: check what it says
    /// (e.g. the per-IP limits of the real client) and answer with
    /// [`Session::xclient_result`]; no input is processed until then.
    Xclient(crate::xclient::Xclient),
    /// Proxy mode: MAIL passed the session's own checks; answer with the
    /// reply of the server behind ([`Session::verdict`]).
    Mail {
        /// Reverse path.
        from: ReversePath,
        /// Its parameters.
        params: MailParams,
    },
    /// Proxy mode: RCPT passed the session's own checks; answer with
    /// [`Session::verdict`].
    Rcpt {
        /// Forward path.
        to: ForwardPath,
    },
    /// Proxy mode: DATA (or the first BDAT) of a transaction with
    /// recipients; answer with [`Session::verdict`]: a 3xx lets the
    /// content come (the session sends its own 354 for DATA).
    Data,
    /// Proxy mode: a piece of the content, un-dot-stuffed (DATA) or as
    /// chunked (BDAT); `last`: the end of the message; answer with
    /// [`Session::complete_with`] then. Forward each piece before the
    /// next `poll`.
    Content {
        /// The bytes.
        bytes: Vec<u8>,
        /// The message ends here.
        last: bool,
    },
    /// Proxy mode: the transaction the caller forwarded is dropped (RSET,
    /// EHLO, content refused by the session's own limits): drop it
    /// behind too. Needs no answer.
    Reset,
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
    /// In an AUTH exchange, a 334 sent: the next line is the client's
    /// response, not a command.
    Auth(auth::Stage),
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
    /// Content octets received so far (BDAT chunks, proxy mode: also
    /// those handed on).
    received: u64,
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
    /// NOOP/VRFY/RSET/HELP since the last accepted message.
    junk: u32,
    /// Discarding an over-long command line up to its LF.
    skipping_line: bool,
    /// An event produced by a command (XQDISCARD), returned by `poll`.
    pending_event: Option<Event>,
    /// STARTTLS may be offered (a certificate exists, not in TLS yet).
    tls_offer: bool,
    /// The session is in TLS.
    tls_active: bool,
    /// When AUTH is offered.
    auth_offer: AuthOffer,
    /// The user authenticated as.
    auth_user: Option<String>,
    /// The user of the AUTH exchange the caller is checking.
    auth_pending: Option<String>,
    /// What XCLIENT said the real client is (kept to the session's end).
    xclient: xclient::Given,
    /// Proxy mode: the command waiting for the caller's verdict.
    asked: Option<proxy::Asked>,
    /// Proxy mode: an event that needs no answer ([`Event::Reset`]),
    /// returned first by `poll`.
    notice: Option<Event>,
    /// Proxy mode: the server behind failed mid-content; the reply at
    /// the content's end.
    abandoned: Option<Reply>,
}

fn reply(code: u16, status: (u8, u16, u16), text: &'static str) -> Reply {
    Reply::new(code, Status(status.0, status.1, status.2), text)
}
