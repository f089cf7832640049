//! A programmable, in-process SMTP server for delivery tests ("test
//! sink"): tern relays to it, the test checks exactly what arrived and
//! decides how it answers ([`Behavior`], changeable at any time).
//!
//! # Layout
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

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

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

/// Distinguishes sinks in thread names (see [`TestSink::thread_name_prefix`]).
static SINK_IDS: AtomicU64 = AtomicU64::new(1);

/// How the sink answers. New connections and new transactions (MAIL)
/// pick up changes; `None` / empty / zero means "like a normal server".
#[derive(Clone, Debug, Default)]
pub struct Behavior {
    /// Leave PIPELINING out of the EHLO reply.
    pub no_pipelining: bool,
    /// Leave CHUNKING out of the EHLO reply (BDAT is then refused with
    /// 502, its chunk still consumed).
    pub no_chunking: bool,
    /// Greeting instead of 220, e.g. `(421, "4.3.2 busy")`; the connection
    /// is closed after it unless it is 2xx.
    pub banner: Option<(u16, String)>,
    /// Reply to MAIL instead of `250 2.1.0`; a transaction starts only if
    /// it is 2xx.
    pub mail: Option<(u16, String)>,
    /// Per-recipient replies (address compared case-insensitively).
    pub rcpt: Vec<(String, u16, String)>,
    /// Reply to every other RCPT instead of `250 2.1.5`.
    pub rcpt_default: Option<(u16, String)>,
    /// Reply at the end of DATA / the last BDAT instead of `250 2.0.0`;
    /// only 250 records the message.
    pub data_end: Option<(u16, String)>,
    /// Close the connection once content arrived, before any end-of-data
    /// reply.
    pub drop_mid_data: bool,
    /// Sleep before each reply (interrupted by a stop).
    pub reply_delay: Duration,
    /// After this many recorded messages on a connection, the next MAIL
    /// gets `421 4.7.0` and the connection is closed.
    pub close_after_messages: Option<usize>,
}

/// One message accepted with 250 at the end of data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SinkMessage {
    /// Connection number within this sink, from 1.
    pub conn: u64,
    /// The EHLO / HELO argument.
    pub helo: String,
    /// The reverse path without `<>`.
    pub mail_from: String,
    /// What followed the reverse path on the MAIL line (trimmed).
    pub mail_params: String,
    /// Recipients (without `<>`) whose RCPT got a 2xx reply, in order.
    pub rcpts: Vec<String>,
    /// The message as sent: dot-unstuffed, without the final `.CRLF`
    /// (DATA), or the chunks concatenated (BDAT).
    pub content: Vec<u8>,
    /// Sent with BDAT.
    pub bdat: bool,
    /// The wire content had a CR not followed by LF or an LF not preceded
    /// by CR.
    pub bare_newline: bool,
}

impl SinkMessage {
    /// Parses this message as a DSN (RFC 3464 in a `multipart/report`,
    /// checked) and returns its Subject and the `message/delivery-status`
    /// part with folded lines joined.
    pub fn delivery_status(&self) -> (String, String) {
        use mail_parser::MimeHeaders;
        let parsed = mail_parser::MessageParser::default()
            .parse(&self.content)
            .unwrap_or_else(|| panic!("DSN does not parse: {}", self.content.escape_ascii()));
        let ct = parsed.content_type().expect("content type");
        assert_eq!((ct.ctype(), ct.subtype()), ("multipart", Some("report")));
        assert_eq!(ct.attribute("report-type"), Some("delivery-status"));
        let part = parsed
            .parts
            .iter()
            .find(|p| {
                p.content_type().is_some_and(|c| {
                    c.ctype() == "message" && c.subtype() == Some("delivery-status")
                })
            })
            .expect("a message/delivery-status part");
        let report = String::from_utf8_lossy(part.contents())
            .replace("\r\n ", " ")
            .replace("\r\n\t", " ");
        (parsed.subject().unwrap_or("").to_string(), report)
    }

    /// The value of its first `Subject:` header ("" if none).
    pub fn subject(&self) -> String {
        String::from_utf8_lossy(&self.content)
            .lines()
            .find_map(|l| l.strip_prefix("Subject: "))
            .unwrap_or("")
            .to_string()
    }
}

/// What the sink saw, guarded by [`Shared::state`].
#[derive(Default)]
struct State {
    behavior: Behavior,
    messages: Vec<SinkMessage>,
    connections: u64,
    transactions: u64,
    rejected: u64,
    pipelining_violations: u64,
    rcpt_replies: Vec<(String, u16)>,
    /// A clone of every open connection, to shut it down on stop.
    streams: HashMap<u64, TcpStream>,
    threads: Vec<JoinHandle<()>>,
}

struct Shared {
    stopping: AtomicBool,
    state: Mutex<State>,
    /// Signalled when a message is recorded.
    recorded: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }
}

/// A running (or stopped) test SMTP server.
pub struct TestSink {
    id: u64,
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl TestSink {
    /// Listens on `addr` (`127.0.0.1:0` for any free port; a stopped
    /// sink's address works again). Panics when it cannot bind.
    #[track_caller]
    pub fn start(addr: SocketAddr) -> TestSink {
        TestSink::try_start(addr).unwrap_or_else(|e| panic!("test sink: bind {addr}: {e}"))
    }

    /// [`TestSink::start`] that returns the bind error.
    pub fn try_start(addr: SocketAddr) -> io::Result<TestSink> {
        // std sets SO_REUSEADDR on Unix listeners, so the port of a
        // stopped sink (its connections in TIME_WAIT) can be bound again.
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let id = SINK_IDS.fetch_add(1, Ordering::Relaxed);
        let shared = Arc::new(Shared {
            stopping: AtomicBool::new(false),
            state: Mutex::new(State::default()),
            recorded: Condvar::new(),
        });
        let for_thread = Arc::clone(&shared);
        let accept = thread::Builder::new()
            .name(format!("tsink{id}-accept"))
            .spawn(move || accept_loop(listener, for_thread, id))?;
        Ok(TestSink {
            id,
            addr,
            shared,
            accept: Some(accept),
        })
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every thread of this sink is named starting with this (Linux keeps
    /// the first 15 bytes), so a test can check none outlives it.
    pub fn thread_name_prefix(&self) -> String {
        format!("tsink{}-", self.id)
    }

    /// Replaces the behaviour for new connections and transactions.
    pub fn set_behavior(&self, behavior: Behavior) {
        self.shared.lock().behavior = behavior;
    }

    /// The current behaviour.
    pub fn behavior(&self) -> Behavior {
        self.shared.lock().behavior.clone()
    }

    /// The messages recorded so far, in order.
    pub fn messages(&self) -> Vec<SinkMessage> {
        self.shared.lock().messages.clone()
    }

    /// Waits until at least `n` messages were recorded and returns all of
    /// them; panics with a summary of what arrived after `timeout`.
    #[track_caller]
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<SinkMessage> {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.lock();
        while state.messages.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let summary = summary(&state);
                drop(state);
                panic!(
                    "test sink {}: expected at least {n} messages within {timeout:?}, got {}\n{summary}",
                    self.addr,
                    self.shared.lock().messages.len(),
                );
            }
            state = self
                .shared
                .recorded
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        state.messages.clone()
    }

    /// Forgets the recorded messages, counters and RCPT replies (open
    /// connections and the behaviour stay).
    pub fn clear(&self) {
        let mut state = self.shared.lock();
        state.messages.clear();
        state.rcpt_replies.clear();
        state.connections = 0;
        state.transactions = 0;
        state.rejected = 0;
        state.pipelining_violations = 0;
    }

    /// Connections accepted.
    pub fn connections(&self) -> u64 {
        self.shared.lock().connections
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.shared.lock().streams.len()
    }

    /// MAIL commands accepted (2xx).
    pub fn transactions(&self) -> u64 {
        self.shared.lock().transactions
    }

    /// End-of-data replies that were not 250.
    pub fn rejected(&self) -> u64 {
        self.shared.lock().rejected
    }

    /// Replies written while more client input was already waiting
    /// although PIPELINING was not advertised (the client did not wait).
    pub fn pipelining_violations(&self) -> u64 {
        self.shared.lock().pipelining_violations
    }

    /// Every RCPT address (without `<>`) with its reply code, in order.
    pub fn rcpt_replies(&self) -> Vec<(String, u16)> {
        self.shared.lock().rcpt_replies.clone()
    }

    /// Closes the listener (the address then refuses connections) and
    /// every connection, and joins every thread. Idempotent.
    pub fn stop(&mut self) {
        let Some(accept) = self.accept.take() else {
            return;
        };
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Joined first: after it, no connection gets registered any more.
        let mut panicked = accept.join().is_err();
        let threads = {
            let mut state = self.shared.lock();
            for stream in state.streams.values() {
                let _ = stream.shutdown(Shutdown::Both);
            }
            std::mem::take(&mut state.threads)
        };
        for t in threads {
            panicked |= t.join().is_err();
        }
        if panicked && !thread::panicking() {
            panic!("test sink {}: a sink thread panicked", self.addr);
        }
    }
}

impl Drop for TestSink {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What arrived, for a failure message.
fn summary(state: &State) -> String {
    let mut out = format!(
        "  connections {}, transactions {}, rejected {}, open {}\n  rcpt replies: {:?}\n",
        state.connections,
        state.transactions,
        state.rejected,
        state.streams.len(),
        state.rcpt_replies,
    );
    for m in &state.messages {
        out.push_str(&format!(
            "  conn {} from <{}> to {:?}: {} bytes{}\n",
            m.conn,
            m.mail_from,
            m.rcpts,
            m.content.len(),
            if m.bdat { " (BDAT)" } else { "" },
        ));
    }
    out
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>, sink: u64) {
    let mut next_conn = 1;
    while !shared.stopping() {
        match listener.accept() {
            Ok((stream, _)) => {
                // Failures (e.g. no threads left) drop the connection.
                let _ = spawn_session(&shared, stream, sink, next_conn);
                next_conn += 1;
            }
            Err(_) => thread::sleep(ACCEPT_TICK),
        }
    }
}

fn spawn_session(shared: &Arc<Shared>, stream: TcpStream, sink: u64, conn: u64) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(READ_TICK))?;
    stream.set_write_timeout(Some(WRITE_WAIT))?;
    stream.set_nodelay(true)?;
    let registered = stream.try_clone()?;
    let session = Session::new(conn, stream, Arc::clone(shared));
    let mut state = shared.lock();
    state.threads.retain(|t| !t.is_finished());
    state.streams.insert(conn, registered);
    state.connections += 1;
    let for_thread = Arc::clone(shared);
    let spawned = thread::Builder::new()
        .name(format!("tsink{sink}-c{conn}"))
        .spawn(move || {
            session.run();
            // Dropping the registered clone closes the socket for good.
            for_thread.lock().streams.remove(&conn);
        });
    match spawned {
        Ok(handle) => state.threads.push(handle),
        Err(e) => {
            state.streams.remove(&conn);
            return Err(e);
        }
    }
    Ok(())
}

/// The outcome of one processing step.
enum Step {
    /// Progress was made; try again with what is buffered.
    Again,
    /// Nothing more to do until more input arrives.
    NeedInput,
    /// Close the connection.
    Close,
}

/// What the buffered input is.
enum Mode {
    Command,
    Data(DotReader),
    Bdat {
        size: u64,
        remaining: u64,
        last: bool,
        /// The reply for a refused chunk, which is read and discarded.
        refuse: Option<(u16, &'static str)>,
    },
}

/// One MAIL transaction.
struct Txn {
    mail_from: String,
    mail_params: String,
    rcpts: Vec<String>,
    content: Content,
    bdat: bool,
    /// The last BDAT octet so far was a CR.
    cr_pending: bool,
}

/// Message content as it arrives, bounded by [`CONTENT_MAX`].
#[derive(Default)]
struct Content {
    bytes: Vec<u8>,
    too_big: bool,
    bare_newline: bool,
}

impl Content {
    fn push(&mut self, bytes: &[u8]) {
        if self.too_big {
            return;
        }
        if self.bytes.len() + bytes.len() > CONTENT_MAX {
            self.too_big = true;
            self.bytes = Vec::new();
            return;
        }
        self.bytes.extend_from_slice(bytes);
    }
}

/// Where [`DotReader`] is within a line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LinePos {
    /// At the start of a line; `crlf`: the previous line ended with CRLF
    /// (only then can `.CRLF` end the data).
    LineStart { crlf: bool },
    /// Read a `.` at the start of a line.
    Dot { crlf: bool },
    /// Read `.CR` at the start of a line.
    DotCr { crlf: bool },
    /// Within a line.
    Body,
    /// Within a line, after a CR not yet written to the content.
    BodyCr,
}

/// DATA content receiver (RFC 5321 4.5.2 dot-unstuffing, 4.1.1.4 end).
struct DotReader {
    at: LinePos,
}

impl DotReader {
    fn new() -> DotReader {
        DotReader {
            at: LinePos::LineStart { crlf: true },
        }
    }

    /// Feeds `input` into `out`; returns how many octets the data took
    /// when its end (`CRLF.CRLF`) was among them, `None` when all of them
    /// were content.
    fn feed(&mut self, input: &[u8], out: &mut Content) -> Option<usize> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            let (next, used) = match self.at {
                LinePos::LineStart { crlf } if b == b'.' => (LinePos::Dot { crlf }, true),
                LinePos::LineStart { .. } => (LinePos::Body, false),
                // The stuffed dot is dropped.
                LinePos::Dot { crlf } if b == b'\r' => (LinePos::DotCr { crlf }, true),
                LinePos::Dot { .. } => (LinePos::Body, false),
                LinePos::DotCr { crlf: true } if b == b'\n' => return Some(i + 1),
                LinePos::DotCr { .. } => (LinePos::BodyCr, false),
                LinePos::Body => {
                    let run = input[i..]
                        .iter()
                        .position(|&c| c == b'\r' || c == b'\n')
                        .unwrap_or(input.len() - i);
                    out.push(&input[i..i + run]);
                    i += run;
                    match input.get(i) {
                        Some(b'\r') => (LinePos::BodyCr, true),
                        Some(_) => {
                            out.bare_newline = true;
                            out.push(b"\n");
                            (LinePos::LineStart { crlf: false }, true)
                        }
                        None => (LinePos::Body, false),
                    }
                }
                LinePos::BodyCr if b == b'\n' => {
                    out.push(b"\r\n");
                    (LinePos::LineStart { crlf: true }, true)
                }
                LinePos::BodyCr => {
                    out.bare_newline = true;
                    out.push(b"\r");
                    if b == b'\r' {
                        (LinePos::BodyCr, true)
                    } else {
                        (LinePos::Body, false)
                    }
                }
            };
            self.at = next;
            i += usize::from(used);
        }
        None
    }
}

/// Whether `bytes` (BDAT content) has a bare CR or LF; `cr_pending` carries
/// a CR at the end of one chunk over to the next.
fn scan_bare(cr_pending: &mut bool, bytes: &[u8]) -> bool {
    let mut bare = false;
    for &b in bytes {
        bare |= if *cr_pending { b != b'\n' } else { b == b'\n' };
        *cr_pending = b == b'\r';
    }
    bare
}

/// `<path> rest` after `FROM:` / `TO:`: the path without `<>` and the
/// trimmed rest.
fn parse_path(arg: &str, prefix: &str) -> Option<(String, String)> {
    let head = arg.get(..prefix.len())?;
    if !head.eq_ignore_ascii_case(prefix) {
        return None;
    }
    let rest = arg[prefix.len()..].trim_start().strip_prefix('<')?;
    let (path, params) = rest.split_once('>')?;
    Some((path.to_string(), params.trim().to_string()))
}

/// The `SIZE=` value among MAIL parameters.
fn size_param(params: &str) -> Option<u64> {
    params.split_ascii_whitespace().find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.eq_ignore_ascii_case("SIZE").then(|| v.parse().ok())?
    })
}

/// One connection.
struct Session {
    conn: u64,
    stream: TcpStream,
    shared: Arc<Shared>,
    behavior: Behavior,
    buf: Vec<u8>,
    mode: Mode,
    /// Skipping the rest of an over-long command line.
    discarding: bool,
    helo: Option<String>,
    txn: Option<Txn>,
    /// Messages recorded on this connection.
    recorded: usize,
}

impl Session {
    fn new(conn: u64, stream: TcpStream, shared: Arc<Shared>) -> Session {
        let behavior = shared.lock().behavior.clone();
        Session {
            conn,
            stream,
            shared,
            behavior,
            buf: Vec::new(),
            mode: Mode::Command,
            discarding: false,
            helo: None,
            txn: None,
            recorded: 0,
        }
    }

    fn run(mut self) {
        if self.greet() {
            self.serve();
        }
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    /// The banner; false when the connection is to be closed.
    fn greet(&mut self) -> bool {
        match self.behavior.banner.clone() {
            Some((code, text)) => matches!(self.say(code, &text), Step::Again) && code / 100 == 2,
            None => matches!(
                self.say(220, &format!("{HOSTNAME} ESMTP test sink")),
                Step::Again
            ),
        }
    }

    fn serve(&mut self) {
        let mut chunk = vec![0u8; 64 * 1024];
        let mut last_input = Instant::now();
        while !self.shared.stopping() {
            match self.stream.read(&mut chunk) {
                Ok(0) => return,
                Ok(n) => {
                    last_input = Instant::now();
                    self.buf.extend_from_slice(&chunk[..n]);
                    if let Step::Close = self.process() {
                        return;
                    }
                }
                Err(e) if is_timeout(&e) => {
                    if last_input.elapsed() > IDLE_MAX {
                        self.say(421, "4.4.2 Idle too long, closing");
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }

    /// Consumes what is buffered, replying as it goes.
    fn process(&mut self) -> Step {
        loop {
            let step = match self.mode {
                Mode::Command => self.command_line(),
                Mode::Data(_) => self.data_content(),
                Mode::Bdat { .. } => self.bdat_content(),
            };
            match step {
                Step::Again => {}
                other => return other,
            }
        }
    }

    /// Sleeps the reply delay, then writes `code text`. A write failure or
    /// a stop closes the connection.
    fn say(&mut self, code: u16, text: &str) -> Step {
        if !self.delay() {
            return Step::Close;
        }
        self.write_reply(&format!("{code} {text}\r\n"))
    }

    /// The reply delay; false when the sink stopped meanwhile.
    fn delay(&self) -> bool {
        let until = Instant::now() + self.behavior.reply_delay;
        loop {
            if self.shared.stopping() {
                return false;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            thread::sleep(left.min(READ_TICK));
        }
    }

    fn write_reply(&mut self, reply: &str) -> Step {
        let waiting = !self.buf.is_empty() && matches!(self.mode, Mode::Command);
        if waiting && self.behavior.no_pipelining {
            self.shared.lock().pipelining_violations += 1;
        }
        match self.stream.write_all(reply.as_bytes()) {
            Ok(()) => Step::Again,
            Err(_) => Step::Close,
        }
    }

    fn command_line(&mut self) -> Step {
        let Some(lf) = self.buf.iter().position(|&b| b == b'\n') else {
            if self.discarding {
                self.buf.clear();
            } else if self.buf.len() > LINE_MAX {
                self.buf.clear();
                self.discarding = true;
                return self.say(500, "5.5.2 Line too long");
            }
            return Step::NeedInput;
        };
        let line: Vec<u8> = self.buf.drain(..=lf).collect();
        if std::mem::take(&mut self.discarding) {
            return Step::Again;
        }
        if line.len() > LINE_MAX {
            return self.say(500, "5.5.2 Line too long");
        }
        let line = String::from_utf8_lossy(&line);
        let line = line.trim_end_matches(['\r', '\n']);
        let (verb, arg) = line.split_once(' ').unwrap_or((line, ""));
        match verb.to_ascii_uppercase().as_str() {
            "EHLO" => self.ehlo(arg.trim(), true),
            "HELO" => self.ehlo(arg.trim(), false),
            "MAIL" => self.mail(arg),
            "RCPT" => self.rcpt(arg),
            "DATA" => self.data(),
            "BDAT" => self.bdat(arg),
            "RSET" => {
                self.txn = None;
                self.say(250, "2.0.0 Ok")
            }
            "NOOP" => self.say(250, "2.0.0 Ok"),
            "QUIT" => {
                self.say(221, "2.0.0 Bye");
                Step::Close
            }
            _ => self.say(500, "5.5.2 Command unrecognized"),
        }
    }

    fn ehlo(&mut self, arg: &str, extended: bool) -> Step {
        if arg.is_empty() {
            return self.say(501, "5.5.4 Domain or address required");
        }
        self.behavior = self.shared.lock().behavior.clone();
        self.helo = Some(arg.to_string());
        self.txn = None;
        if !extended {
            return self.say(250, HOSTNAME);
        }
        let mut lines = vec![format!("{HOSTNAME} Hello {arg}")];
        if !self.behavior.no_pipelining {
            lines.push("PIPELINING".into());
        }
        if !self.behavior.no_chunking {
            lines.push("CHUNKING".into());
        }
        lines.push("8BITMIME".into());
        lines.push(format!("SIZE {CONTENT_MAX}"));
        lines.push("ENHANCEDSTATUSCODES".into());
        let mut reply = String::new();
        for (i, line) in lines.iter().enumerate() {
            let sep = if i + 1 == lines.len() { ' ' } else { '-' };
            reply.push_str(&format!("250{sep}{line}\r\n"));
        }
        if !self.delay() {
            return Step::Close;
        }
        self.write_reply(&reply)
    }

    fn mail(&mut self, arg: &str) -> Step {
        if self.helo.is_none() {
            return self.say(503, "5.5.1 Send EHLO first");
        }
        if self.txn.is_some() {
            return self.say(503, "5.5.1 Nested MAIL command");
        }
        self.behavior = self.shared.lock().behavior.clone();
        if let Some(max) = self.behavior.close_after_messages {
            if self.recorded >= max {
                self.say(421, "4.7.0 Too many messages on this connection");
                return Step::Close;
            }
        }
        let Some((mail_from, mail_params)) = parse_path(arg, "FROM:") else {
            return self.say(501, "5.5.4 Syntax: MAIL FROM:<address>");
        };
        if size_param(&mail_params).is_some_and(|s| s > CONTENT_MAX as u64) {
            return self.say(552, "5.3.4 Message size exceeds fixed limit");
        }
        let (code, text) = (self.behavior.mail.clone()).unwrap_or((250, "2.1.0 Ok".into()));
        if code / 100 == 2 {
            self.shared.lock().transactions += 1;
            self.txn = Some(Txn {
                mail_from,
                mail_params,
                rcpts: Vec::new(),
                content: Content::default(),
                bdat: false,
                cr_pending: false,
            });
        }
        self.say(code, &text)
    }

    fn rcpt(&mut self, arg: &str) -> Step {
        let Some(txn) = &self.txn else {
            return self.say(503, "5.5.1 Need MAIL first");
        };
        let Some((rcpt, _params)) = parse_path(arg, "TO:") else {
            return self.say(501, "5.5.4 Syntax: RCPT TO:<address>");
        };
        if txn.rcpts.len() >= RCPT_MAX {
            return self.say(452, "4.5.3 Too many recipients");
        }
        let b = &self.behavior;
        let (code, text) = b
            .rcpt
            .iter()
            .find(|(addr, _, _)| addr.eq_ignore_ascii_case(&rcpt))
            .map(|(_, code, text)| (*code, text.clone()))
            .or_else(|| b.rcpt_default.clone())
            .unwrap_or((250, "2.1.5 Ok".into()));
        self.shared.lock().rcpt_replies.push((rcpt.clone(), code));
        if code / 100 == 2 {
            self.txn.as_mut().expect("checked above").rcpts.push(rcpt);
        }
        self.say(code, &text)
    }

    fn data(&mut self) -> Step {
        let Some(txn) = &self.txn else {
            return self.say(503, "5.5.1 Need MAIL first");
        };
        if txn.bdat {
            return self.say(503, "5.5.1 DATA after BDAT");
        }
        if txn.rcpts.is_empty() {
            return self.say(554, "5.5.1 No valid recipients");
        }
        let step = self.say(354, "End data with <CR><LF>.<CR><LF>");
        self.mode = Mode::Data(DotReader::new());
        step
    }

    fn data_content(&mut self) -> Step {
        if self.buf.is_empty() {
            return Step::NeedInput;
        }
        let Mode::Data(reader) = &mut self.mode else {
            unreachable!("data_content outside DATA");
        };
        let txn = self.txn.as_mut().expect("DATA has a transaction");
        let end = reader.feed(&self.buf, &mut txn.content);
        self.buf.drain(..end.unwrap_or(self.buf.len()));
        if self.behavior.drop_mid_data {
            return Step::Close;
        }
        if end.is_none() {
            return Step::NeedInput;
        }
        self.mode = Mode::Command;
        self.end_of_data()
    }

    fn bdat(&mut self, arg: &str) -> Step {
        let mut words = arg.split_ascii_whitespace();
        let size = words.next().and_then(|s| s.parse::<u64>().ok());
        let last = words.next().map(|w| w.eq_ignore_ascii_case("LAST"));
        let (Some(size), None | Some(true), None) = (size, last, words.next()) else {
            // The chunk's length is unknown: the stream cannot be followed.
            self.say(501, "5.5.4 Syntax: BDAT <size> [LAST]");
            return Step::Close;
        };
        let refuse = match &self.txn {
            _ if self.behavior.no_chunking => Some((502, "5.5.1 BDAT not supported")),
            None => Some((503, "5.5.1 Need MAIL first")),
            Some(txn) if txn.rcpts.is_empty() => Some((554, "5.5.1 No valid recipients")),
            Some(_) => None,
        };
        if refuse.is_none() {
            self.txn.as_mut().expect("checked above").bdat = true;
        }
        self.mode = Mode::Bdat {
            size,
            remaining: size,
            last: last.is_some(),
            refuse,
        };
        Step::Again
    }

    fn bdat_content(&mut self) -> Step {
        let Mode::Bdat {
            size,
            remaining,
            last,
            refuse,
        } = &mut self.mode
        else {
            unreachable!("bdat_content outside BDAT");
        };
        if *remaining > 0 && self.buf.is_empty() {
            return Step::NeedInput;
        }
        let n = self
            .buf
            .len()
            .min(usize::try_from(*remaining).unwrap_or(usize::MAX));
        if refuse.is_none() {
            let txn = self.txn.as_mut().expect("BDAT has a transaction");
            txn.content.bare_newline |= scan_bare(&mut txn.cr_pending, &self.buf[..n]);
            txn.content.push(&self.buf[..n]);
        }
        self.buf.drain(..n);
        *remaining -= n as u64;
        if self.behavior.drop_mid_data {
            return Step::Close;
        }
        if *remaining > 0 {
            return Step::NeedInput;
        }
        let (size, last, refuse) = (*size, *last, *refuse);
        self.mode = Mode::Command;
        if let Some((code, text)) = refuse {
            if last {
                self.txn = None;
            }
            return self.say(code, text);
        }
        if last {
            return self.end_of_data();
        }
        self.say(250, &format!("2.0.0 {size} octets received"))
    }

    /// Replies to the end of the data, recording the message on 250.
    fn end_of_data(&mut self) -> Step {
        let txn = self.txn.take().expect("end of data has a transaction");
        let (code, text) = if txn.content.too_big {
            (552, "5.3.4 Message too big".to_string())
        } else {
            (self.behavior.data_end.clone()).unwrap_or((250, "2.0.0 Ok: queued".into()))
        };
        if !self.delay() {
            return Step::Close;
        }
        let mut state = self.shared.lock();
        if code == 250 {
            self.recorded += 1;
            state.messages.push(SinkMessage {
                conn: self.conn,
                helo: self.helo.clone().unwrap_or_default(),
                mail_from: txn.mail_from,
                mail_params: txn.mail_params,
                rcpts: txn.rcpts,
                content: txn.content.bytes,
                bdat: txn.bdat,
                bare_newline: txn.content.bare_newline || txn.cr_pending,
            });
            self.shared.recorded.notify_all();
        } else {
            state.rejected += 1;
        }
        drop(state);
        self.write_reply(&format!("{code} {text}\r\n"))
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dot(input: &[&[u8]]) -> (Vec<u8>, bool, Option<usize>) {
        let mut r = DotReader::new();
        let mut out = Content::default();
        let mut end = None;
        for part in input {
            end = r.feed(part, &mut out);
        }
        (out.bytes, out.bare_newline, end)
    }

    /// Input parts; expected content, bare newline flag, end offset in the
    /// last part.
    type DotCase<'a> = (&'a [&'a [u8]], &'a [u8], bool, Option<usize>);

    #[test]
    fn dot_reader_unstuffs_and_finds_the_end() {
        let cases: &[DotCase] = &[
            (&[b".\r\n"], b"", false, Some(3)),
            (&[b"a\r\n.\r\nQUIT\r\n"], b"a\r\n", false, Some(6)),
            (&[b"..a\r\n..\r\n.\r\n"], b".a\r\n.\r\n", false, Some(12)),
            (&[b"a\r", b"\n.", b"\r", b"\n"], b"a\r\n", false, Some(1)),
            (&[b"a\nb\r\n.\r\n"], b"a\nb\r\n", true, Some(8)),
            (&[b"a\rb\r\n.\r\n"], b"a\rb\r\n", true, Some(8)),
            (&[b"a\n.\r\n"], b"a\n\r\n", true, None),
            (&[b"a\r\r\n.\r\n"], b"a\r\r\n", true, Some(7)),
            (&[b".\rx\r\n"], b"\rx\r\n", true, None),
        ];
        for (input, content, bare, end) in cases {
            assert_eq!(dot(input), (content.to_vec(), *bare, *end), "{input:?}");
        }
    }

    #[test]
    fn bare_newlines_in_chunks() {
        let mut cr = false;
        assert!(!scan_bare(&mut cr, b"a\r"));
        assert!(!scan_bare(&mut cr, b"\nb\r\n"));
        assert!(scan_bare(&mut cr, b"a\nb"));
        assert!(scan_bare(&mut false, b"a\rb"));
    }

    #[test]
    fn paths() {
        let p = |a: &str| parse_path(a, "FROM:");
        assert_eq!(
            p("from:<a@b> SIZE=5"),
            Some(("a@b".into(), "SIZE=5".into()))
        );
        assert_eq!(p("FROM: <>"), Some((String::new(), String::new())));
        assert_eq!(p("FROM:a@b"), None);
        assert_eq!(p("TO:<a@b>"), None);
        assert_eq!(size_param("BODY=8BITMIME size=12"), Some(12));
    }
}
