//! One sink core (its executor runs [`run`]): its own SO_REUSEPORT
//! listener, its own counters; and the socket loop of one connection
//! around `tern_smtp::server::Session`.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use tern_smtp::address::{ForwardPath, ReversePath};
use tern_smtp::command::MailParams;
use tern_smtp::server::{Event, Policy, ServerConfig, Session};
use tern_smtp::Reply;

use super::sink_fault::{FailOn, Faults, Piece, Splitter};
use super::sink_seqs::ExpectTracker;
use super::sink_stats::CoreStats;

/// Read buffer per connection.
const READ_BUF_BYTES: usize = 64 * 1024;

/// Shared by all cores and the main thread.
pub struct Shared {
    /// Stop accepting and return the counters.
    pub stop: AtomicBool,
    /// `--expect` tracking.
    pub expect: Option<ExpectTracker>,
}

/// What one core owns.
struct Core {
    smtp: Rc<ServerConfig>,
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

/// Feeds `input` to the session one whole command line at a time (a line
/// split across reads is held until its end arrives), answering the
/// command `--fail-on` names itself when the fault fires. Message data is
/// passed through as it comes.
#[allow(clippy::too_many_arguments)]
fn feed_split<P: Policy>(
    core: &Core,
    s: &mut Session<P>,
    split: &mut Splitter,
    held: &mut Held,
    mut input: &[u8],
    out: &mut Vec<u8>,
    qid: &mut String,
    closing: &mut bool,
) -> bool {
    let mut data_started = false;
    while !input.is_empty() && !*closing {
        let (n, piece) = split.next(input);
        if piece == Piece::Partial && !held.spilled && held.bytes.len() + n <= HOLD_MAX {
            held.bytes.extend_from_slice(&input[..n]);
            input = &input[n..];
            continue;
        }
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
                    split.data_started();
                    data_started = true;
                }
                Piece::Line(v, Some(size))
                    if &v == b"BDAT" && !out[before..].starts_with(b"501") =>
                {
                    split.bdat_started(size);
                }
                _ => {}
            }
        }
        input = &input[n..];
    }
    data_started
}

async fn serve(core: Rc<Core>, mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut s = Session::new(core.smtp.clone(), SinkPolicy { core: core.clone() });
    let mut held = Held::default();
    let mut split = core
        .faults
        .borrow()
        .config
        .intercepts()
        .then(Splitter::default);
    let delay = core.faults.borrow().config.delay;
    let mut buf = core
        .buffers
        .borrow_mut()
        .pop()
        .unwrap_or_else(|| vec![0u8; READ_BUF_BYTES]);
    let mut out = Vec::with_capacity(1024);
    let mut qid = String::with_capacity(24);
    let (mut closing, mut drop_armed, mut data_started) = (false, false, false);
    drain(&mut s, &mut out);
    loop {
        if data_started && core.faults.borrow_mut().drop_data() {
            drop_armed = true;
        }
        if !out.is_empty() {
            if let Some(d) = delay {
                glommio::timer::sleep(d).await;
            }
            if stream.write_all(&out).await.is_err() {
                break;
            }
            out.clear();
        }
        if closing || core.stopping.get() {
            break;
        }
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if drop_armed {
            // Part of the message data arrived: close without a reply.
            core.stats.borrow_mut().dropped += 1;
            break;
        }
        data_started = match &mut split {
            Some(split) => feed_split(
                &core,
                &mut s,
                split,
                &mut held,
                &buf[..n],
                &mut out,
                &mut qid,
                &mut closing,
            ),
            None => {
                s.receive(&buf[..n]);
                events(&core, &mut s, &mut qid, &mut closing);
                drain(&mut s, &mut out)
            }
        };
    }
    let _ = stream.close().await;
    let mut buffers = core.buffers.borrow_mut();
    if buffers.len() < 64 {
        buffers.push(buf);
    }
}
