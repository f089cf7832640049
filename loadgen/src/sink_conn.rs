//! One sink core (its executor runs [`run`]): its own SO_REUSEPORT
//! listener, its own counters; and the socket loop of one connection
//! around `tern_smtp::server::Session`, generic over the stream (plain
//! TCP, or TLS: implicit, or after STARTTLS).

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use tern_smtp::address::{ForwardPath, ReversePath};
use tern_smtp::command::MailParams;
use tern_smtp::server::{Event, Policy, ServerConfig, Session};
use tern_smtp::Reply;

use super::sink_fault::{FailOn, Faults, Piece, Splitter};
use super::sink_seqs::ExpectTracker;
use super::sink_stats::CoreStats;
use super::sink_tls::{Hook, Hooks, Mode, SinkTls, LINE_HEAD, READY_TLS};

/// Read buffer per connection.
const READ_BUF_BYTES: usize = 64 * 1024;

/// Shared by all cores and the main thread.
pub struct Shared {
    /// Stop accepting and return the counters.
    pub stop: AtomicBool,
    /// `--expect` tracking.
    pub expect: Option<ExpectTracker>,
}

/// TLS and AUTH settings of the cores.
#[derive(Clone)]
pub struct Secure {
    /// `--starttls` / `--tls`.
    pub tls: Option<SinkTls>,
    /// Session settings inside TLS (no STARTTLS in EHLO).
    pub smtp: ServerConfig,
    /// `--auth-any`.
    pub auth_any: bool,
}

/// What one core owns.
struct Core {
    smtp: Rc<ServerConfig>,
    /// Session settings inside TLS.
    smtp_tls: Rc<ServerConfig>,
    secure: Secure,
    stats: RefCell<CoreStats>,
    faults: RefCell<Faults>,
    shared: Arc<Shared>,
    /// Messages so far, for the progress display (only this core writes).
    live: Arc<AtomicU64>,
    stopping: Cell<bool>,
    queue_ids: Cell<u64>,
    core: usize,
    /// Read buffers of closed connections, reused (no 64 KiB allocation
    /// and zeroing per connection).
    buffers: RefCell<Vec<Vec<u8>>>,
}

/// Settings of one core.
pub struct CoreSetup {
    /// Core index.
    pub core: usize,
    /// Where to listen.
    pub listen: SocketAddr,
    /// Session settings.
    pub smtp: ServerConfig,
    /// TLS and AUTH.
    pub secure: Secure,
    /// Fault decisions.
    pub faults: Faults,
    /// Shared state.
    pub shared: Arc<Shared>,
    /// Live message counter.
    pub live: Arc<AtomicU64>,
    /// Told the bound address (or the bind error).
    pub bound: std::sync::mpsc::Sender<Result<SocketAddr, String>>,
}

/// Runs one core until `shared.stop`; returns its counters.
pub async fn run(setup: CoreSetup) -> CoreStats {
    let listener = match TcpListener::bind(setup.listen) {
        Ok(l) => l,
        Err(e) => {
            let _ = setup.bound.send(Err(format!("bind {}: {e}", setup.listen)));
            return CoreStats::default();
        }
    };
    let _ = setup
        .bound
        .send(listener.local_addr().map_err(|e| e.to_string()));
    let core = Rc::new(Core {
        smtp: Rc::new(setup.smtp),
        smtp_tls: Rc::new(setup.secure.smtp.clone()),
        secure: setup.secure,
        stats: RefCell::default(),
        faults: RefCell::new(setup.faults),
        shared: setup.shared,
        live: setup.live,
        stopping: Cell::new(false),
        queue_ids: Cell::new(0),
        core: setup.core,
        buffers: RefCell::default(),
    });
    let accept = async {
        loop {
            match listener.accept().await {
                Ok(stream) => {
                    let c = core.clone();
                    glommio::spawn_local(async move { serve(c, stream).await }).detach();
                }
                Err(_) => glommio::timer::sleep(Duration::from_millis(10)).await,
            }
        }
    };
    let watch = async {
        while !core.shared.stop.load(Ordering::Relaxed) {
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
        core.stopping.set(true);
    };
    futures_lite::future::or(accept, watch).await;
    drop(listener);
    core.stats.take()
}

/// The sink's policy: fault injection on MAIL and RCPT.
struct SinkPolicy {
    core: Rc<Core>,
}

impl SinkPolicy {
    fn fail(&self, point: FailOn) -> Result<(), Reply> {
        match self.core.faults.borrow_mut().fail(point) {
            Some(r) => {
                self.core.stats.borrow_mut().failed += 1;
                Err(r)
            }
            None => Ok(()),
        }
    }
}

impl Policy for SinkPolicy {
    fn check_sender(&mut self, _from: &ReversePath, _params: &MailParams) -> Result<(), Reply> {
        self.fail(FailOn::Mail)
    }
    fn check_recipient(&mut self, _to: &ForwardPath) -> Result<(), Reply> {
        self.fail(FailOn::Rcpt)
    }
}

/// Moves the session's replies to `out`; true if they end with the 354
/// that starts message data.
fn drain<P: Policy>(s: &mut Session<P>, out: &mut Vec<u8>) -> bool {
    let t = s.transmit();
    if t.is_empty() {
        return false;
    }
    let from = out.len();
    out.extend_from_slice(t);
    let n = t.len();
    s.transmitted(n);
    let new = &out[from..];
    let last = new[..new.len() - 1]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    new[last..].starts_with(b"354 ")
}

/// Handles the session's events: count and answer each message.
fn events<P: Policy>(core: &Core, s: &mut Session<P>, qid: &mut String, closing: &mut bool) {
    while let Some(event) = s.poll() {
        match event {
            Event::Discard { .. } => {
                // The sink's policy refuses the shadow link: never asked.
                s.answer(tern_smtp::Reply::new(
                    502,
                    tern_smtp::Status(5, 5, 1),
                    "Error: command not implemented",
                ));
            }
            Event::Message { content, .. } => {
                if let Some(r) = core.faults.borrow_mut().fail(FailOn::Dot) {
                    core.stats.borrow_mut().refused(&content);
                    s.complete(Err(r));
                    continue;
                }
                core.stats
                    .borrow_mut()
                    .record(&content, core.shared.expect.as_ref());
                core.live.fetch_add(1, Ordering::Relaxed);
                let n = core.queue_ids.get();
                core.queue_ids.set(n + 1);
                qid.clear();
                use std::fmt::Write;
                let _ = write!(qid, "{:X}.{n:X}", core.core);
                s.complete(Ok(qid));
            }
            // The sink answers STARTTLS and AUTH in its line hooks and
            // never offers them to the session, which therefore never
            // asks; should it, the client learns it plainly.
            Event::StartTls => s.shutdown(tern_smtp::Reply::new(
                421,
                tern_smtp::Status(4, 7, 0),
                "STARTTLS is answered by the sink's hooks only",
            )),
            Event::Auth { .. } => s.auth_result(Err(tern_smtp::Reply::new(
                454,
                tern_smtp::Status(4, 7, 0),
                "AUTH is answered by the sink's hooks only",
            ))),
            // Not a proxy, and XCLIENT is not allowed: never asked.
            Event::Xclient(_) => s.xclient_result(Err(tern_smtp::Reply::new(
                550,
                tern_smtp::Status(5, 7, 0),
                "XCLIENT is not allowed here",
            ))),
            Event::Mail { .. }
            | Event::Rcpt { .. }
            | Event::Data
            | Event::Content { .. }
            | Event::Reset => unreachable!("the sink's session is not in proxy mode"),
            Event::Close => *closing = true,
        }
    }
}

/// A partial command line held back from the session (splitter path).
#[derive(Default)]
struct Held {
    bytes: Vec<u8>,
    /// The line outgrew [`HOLD_MAX`] and was passed on as it came: its
    /// end goes to the session too, never refused by the sink.
    spilled: bool,
}

/// Longest partial command line held (the session's limit is smaller: it
/// answers such a line itself).
const HOLD_MAX: usize = 4096;

/// The splitter path's state: whole command lines go to the session one
/// at a time, so the sink can answer some itself (fault injection,
/// STARTTLS, AUTH).
#[derive(Default)]
struct Lines {
    split: Splitter,
    held: Held,
    hooks: Hooks,
    /// STARTTLS was accepted: the rest of the input is discarded.
    upgrade: bool,
}

impl Lines {
    /// Answers the complete line ending in `end` if a hook takes it
    /// (STARTTLS: then [`Lines::upgrade`]); false if the session is to
    /// see it.
    fn answer(&mut self, piece: Piece, end: &[u8], out: &mut Vec<u8>) -> bool {
        if !matches!(piece, Piece::Line(..)) || self.held.spilled || !self.hooks.active() {
            return false;
        }
        let mut buf = [0; LINE_HEAD];
        let head = self.head(end, &mut buf);
        match self.hooks.line(head) {
            Hook::Pass => return false,
            Hook::Reply(r) => out.extend_from_slice(r),
            Hook::StartTls => {
                out.extend_from_slice(READY_TLS);
                self.upgrade = true;
            }
        }
        self.held.bytes.clear();
        true
    }

    /// The first [`LINE_HEAD`] bytes of the complete line whose end is
    /// `end` (the held part first).
    fn head<'a>(&self, end: &[u8], buf: &'a mut [u8; LINE_HEAD]) -> &'a [u8] {
        let held = &self.held.bytes[..self.held.bytes.len().min(LINE_HEAD)];
        buf[..held.len()].copy_from_slice(held);
        let more = end.len().min(LINE_HEAD - held.len());
        buf[held.len()..held.len() + more].copy_from_slice(&end[..more]);
        &buf[..held.len() + more]
    }
}

/// Feeds `input` to the session one whole command line at a time (a line
/// split across reads is held until its end arrives), answering the
/// command `--fail-on` names itself when the fault fires, and the lines
/// a hook takes (STARTTLS: then stops, the rest of `input` discarded).
/// Message data is passed through as it comes.
fn feed_split<P: Policy>(
    core: &Core,
    s: &mut Session<P>,
    lines: &mut Lines,
    mut input: &[u8],
    out: &mut Vec<u8>,
    qid: &mut String,
    closing: &mut bool,
) -> bool {
    let mut data_started = false;
    while !input.is_empty() && !*closing && !lines.upgrade {
        let (n, piece) = lines.split.next(input);
        let held = &mut lines.held;
        if piece == Piece::Partial && !held.spilled && held.bytes.len() + n <= HOLD_MAX {
            held.bytes.extend_from_slice(&input[..n]);
            input = &input[n..];
            continue;
        }
        if lines.answer(piece, &input[..n], out) {
            input = &input[n..];
            continue;
        }
        let held = &mut lines.held;
        let point = match piece {
            _ if held.spilled => None,
            Piece::Line(v, _) if &v == b"EHLO" || &v == b"HELO" => Some(FailOn::Ehlo),
            Piece::Line(v, _) if &v == b"DATA" => Some(FailOn::Data),
            _ => None,
        };
        let refusal = point.and_then(|p| core.faults.borrow_mut().fail(p));
        if let Some(r) = refusal {
            core.stats.borrow_mut().failed += 1;
            held.bytes.clear();
            r.encode(out);
        } else {
            if piece == Piece::Partial {
                held.spilled = true;
            } else if matches!(piece, Piece::Line(..)) {
                held.spilled = false;
            }
            if !held.bytes.is_empty() {
                s.receive(&held.bytes);
                held.bytes.clear();
            }
            s.receive(&input[..n]);
            events(core, s, qid, closing);
            let before = out.len();
            let started = drain(s, out);
            match piece {
                Piece::Line(v, _) if &v == b"DATA" && started => {
                    lines.split.data_started();
                    data_started = true;
                }
                Piece::Line(v, Some(size))
                    if &v == b"BDAT" && !out[before..].starts_with(b"501") =>
                {
                    lines.split.bdat_started(size);
                }
                _ => {}
            }
        }
        input = &input[n..];
    }
    data_started
}

/// Which layer of a connection a session runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layer {
    /// Plain TCP (STARTTLS accepted with `--starttls`).
    Plain,
    /// Inside TLS after STARTTLS: no greeting, back to before EHLO.
    AfterStartTls,
    /// Inside implicit TLS.
    Implicit,
}

/// How a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    Closed,
    StartTls,
}

async fn serve(core: Rc<Core>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut buf = core
        .buffers
        .borrow_mut()
        .pop()
        .unwrap_or_else(|| vec![0u8; READ_BUF_BYTES]);
    let mode = core.secure.tls.as_ref().map(|t| t.mode);
    if mode == Some(Mode::Implicit) {
        if let Some(mut tls) = handshake(&core, stream).await {
            converse(&core, &mut tls, Layer::Implicit, &mut buf).await;
            let _ = tls.close().await;
        }
    } else {
        let mut stream = stream;
        match converse(&core, &mut stream, Layer::Plain, &mut buf).await {
            End::StartTls => {
                if let Some(mut tls) = handshake(&core, stream).await {
                    converse(&core, &mut tls, Layer::AfterStartTls, &mut buf).await;
                    let _ = tls.close().await;
                }
            }
            End::Closed => {
                let _ = stream.close().await;
            }
        }
    }
    let mut buffers = core.buffers.borrow_mut();
    if buffers.len() < 64 {
        buffers.push(buf);
    }
}

/// The server side of the TLS handshake, counted; `None` if it failed.
async fn handshake(
    core: &Core,
    stream: TcpStream,
) -> Option<futures_rustls::server::TlsStream<TcpStream>> {
    let tls = core.secure.tls.as_ref().expect("TLS configured");
    match tls.acceptor.accept(stream).await {
        Ok(s) => {
            core.stats.borrow_mut().tls.completed(s.get_ref().1);
            Some(s)
        }
        Err(_) => {
            core.stats.borrow_mut().tls.failed += 1;
            None
        }
    }
}

/// One session on `stream` until the client or the sink closes it, or
/// STARTTLS is accepted (the bytes read behind it are discarded with the
/// session).
async fn converse<S: AsyncRead + AsyncWrite + Unpin>(
    core: &Rc<Core>,
    stream: &mut S,
    layer: Layer,
    buf: &mut [u8],
) -> End {
    let smtp = match layer {
        Layer::Plain => core.smtp.clone(),
        Layer::AfterStartTls | Layer::Implicit => core.smtp_tls.clone(),
    };
    let mut s = Session::new(smtp, SinkPolicy { core: core.clone() });
    let hooks = Hooks::new(
        layer == Layer::Plain && core.secure.tls.is_some(),
        core.secure.auth_any,
    );
    let intercepts = core.faults.borrow().config.intercepts() || hooks.active();
    let mut lines = intercepts.then(|| Lines {
        hooks,
        ..Lines::default()
    });
    let delay = core.faults.borrow().config.delay;
    let mut out = Vec::with_capacity(1024);
    let mut qid = String::with_capacity(24);
    let (mut closing, mut drop_armed, mut data_started) = (false, false, false);
    drain(&mut s, &mut out);
    if layer == Layer::AfterStartTls {
        // RFC 3207 4.2: no greeting inside TLS; the client sends EHLO.
        out.clear();
    }
    loop {
        if data_started && core.faults.borrow_mut().drop_data() {
            drop_armed = true;
        }
        if !out.is_empty() {
            if let Some(d) = delay {
                glommio::timer::sleep(d).await;
            }
            // flush: a no-op on TCP, writes the records out on TLS.
            if stream.write_all(&out).await.is_err() || stream.flush().await.is_err() {
                break;
            }
            out.clear();
        }
        if lines.as_ref().is_some_and(|l| l.upgrade) {
            return End::StartTls;
        }
        if closing || core.stopping.get() {
            break;
        }
        let n = match stream.read(buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if drop_armed {
            // Part of the message data arrived: close without a reply.
            core.stats.borrow_mut().dropped += 1;
            break;
        }
        data_started = match &mut lines {
            Some(lines) => feed_split(
                core,
                &mut s,
                lines,
                &buf[..n],
                &mut out,
                &mut qid,
                &mut closing,
            ),
            None => {
                s.receive(&buf[..n]);
                events(core, &mut s, &mut qid, &mut closing);
                drain(&mut s, &mut out)
            }
        };
    }
    End::Closed
}
