//! A programmable, in-process SMTP server for delivery tests ("test
//! sink"): tern relays to it, the test checks exactly what arrived and
//! decides how it answers ([`Behavior`], changeable at any time).
//!
//! # Why it does not use `tern_smtp`
//!
//! The sink is the reference tern's client side is tested against, so it
//! shares no protocol code with tern: `tern-tests` does not even depend
//! on `tern-smtp`. A sink that reused the engine's parser would share its
//! bugs: a dot-stuffing slip made alike by `tern_smtp::client` and undone
//! alike by `tern_smtp::data` would arrive "byte-exact", and a framing
//! mistake in both BDAT sides would cancel out. Where tern's server is
//! strict by design the sink observes instead of refusing, so a test can
//! see what the client did: a bare CR or LF in content (fatal to a
//! `tern_smtp` session in DATA, a rejection in BDAT) is recorded as
//! [`SinkMessage::bare_newline`], and a client that does not wait for
//! replies without PIPELINING (which `tern_smtp` answers with 554 and a
//! close) is counted by [`TestSink::pipelining_violations`]. Its command
//! parsing, DATA receiver and BDAT handling are written from RFC 5321 and
//! RFC 3030 here, on blocking std sockets and threads (no glommio
//! either).
//!
//! # Layout
//!
//! ```text
//! mod.rs       limits
//! behavior.rs  Behavior (how it answers) and SinkMessage (what it recorded)
//! handle.rs    TestSink: start, queries, stop; the accept thread
//! state.rs     what the threads share (behaviour, records, counters, sockets)
//! session.rs   one connection: the socket loop, replies, the command dispatch
//! commands.rs  the verbs (EHLO, MAIL, RCPT, DATA, BDAT) and the end of data
//! content.rs   the DATA receiver (DotReader) and the bare CR/LF scan, pure
//! ```
//!
//! - [`TestSink`]: the handle. One accept thread, one thread per
//!   connection; [`TestSink::stop`] (or drop) closes the listener and every
//!   connection and joins every thread.
//! - `Session`: one connection. The socket loop reads with a short timeout
//!   (so it notices a stop) into a buffer; `Session::process` consumes
//!   complete commands and content from it and writes each reply in order,
//!   so pipelined input works.
//! - `DotReader`: the DATA content receiver (dot-unstuffing, the CRLF.CRLF
//!   end, bare CR / bare LF detection), pure, fed with whatever arrived.
//!
//! A message is recorded ([`SinkMessage`]) when its end-of-data reply is
//! 250, just before that reply is written (as a real server commits and
//! then answers): a client that gives up in the meantime still delivered
//! it.

mod behavior;
mod commands;
mod content;
mod handle;
mod session;
mod state;

use std::time::Duration;

pub use behavior::{Behavior, SinkMessage};
pub use handle::TestSink;

/// Content of one message. Far above what tests send; it bounds the
/// memory a runaway client can make a connection hold.
pub const CONTENT_MAX: usize = 64 * 1024 * 1024;
/// A command line, CRLF included. RFC 5321 4.5.3.1.4 allows 512 octets;
/// extensions (SIZE, BODY, ...) add parameters, so allow more.
pub const LINE_MAX: usize = 4096;
/// Recipients per transaction (RFC 5321 4.5.3.1.8 asks for at least 100).
pub const RCPT_MAX: usize = 1000;
/// A connection that sends nothing this long is closed (421).
pub const IDLE_MAX: Duration = Duration::from_secs(60);
/// Every read waits at most this long, so threads notice a stop.
const READ_TICK: Duration = Duration::from_millis(50);
/// A peer that does not read our replies for this long is dropped.
const WRITE_WAIT: Duration = Duration::from_secs(10);
/// How often the (non-blocking) accept loop checks for a stop.
const ACCEPT_TICK: Duration = Duration::from_millis(5);
/// Our name in the banner and EHLO.
const HOSTNAME: &str = "sink.test";
