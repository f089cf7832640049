//! One executor's share of `send`: its connections (workers), the SMTP
//! client conversation, and the measurements. Nothing here takes a lock:
//! the only shared writes are the ticket counter (one atomic add per
//! message) and target health (on connect failures).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use tern_smtp::client::{self, Capabilities};
use tern_smtp::reply::Reply;

use super::send_stats::{CoreStats, Live, Phase};
use super::send_target::{choose, Health};
use crate::size::Sizes;

/// Everything the cores share, read-only but for the atomics.
pub struct Plan {
    /// Run id.
    pub run: u64,
    /// Resolved target addresses.
    pub addrs: Vec<SocketAddr>,
    /// Their priorities.
    pub priorities: Vec<u32>,
    /// Their health.
    pub health: Vec<Health>,
    /// Next sequence number (= ticket).
    pub next: AtomicU64,
    /// `--messages`.
    pub messages: Option<u64>,
    /// `--duration`.
    pub duration: Option<Duration>,
    /// `--rate`.
    pub rate: Option<f64>,
    /// Start of the run.
    pub start: Instant,
    /// `--per-conn` (0 = unlimited).
    pub per_conn: u64,
    /// Pipeline when offered.
    pub pipelining: bool,
    /// BDAT when offered.
    pub bdat: bool,
    /// Per read/write/connect.
    pub timeout: Duration,
    /// EHLO name.
    pub helo: String,
    /// Keep the sequence numbers of accepted messages (`--acked`).
    pub record_acked: bool,
    /// MAIL FROM address.
    pub from: String,
    /// RCPT TO addresses.
    pub rcpts: Vec<String>,
    /// Size distribution.
    pub sizes: Sizes,
    /// Per-core live counters.
    pub live: Vec<Live>,
    /// Since when (µs since the start) every target has been down without
    /// a successful connect since; [`NOT_DOWN`] if not.
    pub down_since_us: AtomicU64,
    /// Every target was down for longer than `timeout`: the run stops.
    pub aborted: AtomicBool,
}

/// [`Plan::down_since_us`] when some target is reachable.
pub const NOT_DOWN: u64 = u64::MAX;

/// When message `k` of an open loop at `rate`/s is due, after the start;
/// `None` if it falls outside the bounds (`messages`, `duration`).
pub fn open_loop_due(
    k: u64,
    rate: f64,
    messages: Option<u64>,
    duration: Option<Duration>,
) -> Option<Duration> {
    if messages.is_some_and(|n| k >= n) {
        return None;
    }
    let due = Duration::from_secs_f64(k as f64 / rate);
    if duration.is_some_and(|d| due >= d) {
        return None;
    }
    Some(due)
}

impl Plan {
    fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    /// The next message: its sequence number and, in the open loop, when
    /// it is due. `None` when the run is over.
    fn ticket(&self) -> Option<(u64, Option<Instant>)> {
        if self.aborted.load(Ordering::Relaxed) {
            return None;
        }
        if let Some(rate) = self.rate {
            let k = self.next.fetch_add(1, Ordering::Relaxed);
            let due = open_loop_due(k, rate, self.messages, self.duration)?;
            return Some((k, Some(self.start + due)));
        }
        if self.duration.is_some_and(|d| self.start.elapsed() >= d) {
            return None;
        }
        let k = self.next.fetch_add(1, Ordering::Relaxed);
        if self.messages.is_some_and(|n| k >= n) {
            return None;
        }
        Some((k, None))
    }

    /// After an aborted run: the messages of the run that were never
    /// taken (no ticket). Known when `--messages` or an open-loop
    /// schedule bounds the run; 0 otherwise.
    pub fn untaken(&self) -> u64 {
        let scheduled = match (self.rate, self.duration) {
            (Some(r), Some(d)) => Some((d.as_secs_f64() * r).ceil() as u64),
            _ => None,
        };
        let total = match (self.messages, scheduled) {
            (Some(n), Some(s)) => n.min(s),
            (Some(n), None) => n,
            (None, Some(s)) => s,
            (None, None) => return 0,
        };
        total.saturating_sub(self.next.load(Ordering::Relaxed).min(total))
    }

    /// Records that every target is down (from `now_us` unless already).
    /// Returns true, and aborts the run, once that has lasted longer than
    /// the timeout.
    fn all_down(&self, now_us: u64) -> bool {
        let _ = self.down_since_us.compare_exchange(
            NOT_DOWN,
            now_us,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        let since = self.down_since_us.load(Ordering::Relaxed);
        if since != NOT_DOWN && now_us.saturating_sub(since) > self.timeout.as_micros() as u64 {
            self.aborted.store(true, Ordering::Relaxed);
        }
        self.aborted.load(Ordering::Relaxed)
    }
}

/// A prebuilt body (shared by all messages of one size: the stamp header
/// varies per message, and its checksum covers the body).
struct Body {
    bytes: Vec<u8>,
    sum: u32,
}

#[derive(Default)]
struct Bodies(RefCell<HashMap<usize, Rc<Body>>>);

impl Bodies {
    fn get(&self, run: u64, size: usize) -> Rc<Body> {
        self.0
            .borrow_mut()
            .entry(size)
            .or_insert_with(|| {
                let msg = crate::stamp::build_message(run, 0, 0, size, "", "");
                let at = msg
                    .windows(4)
                    .position(|w| w == b"\r\n\r\n")
                    .expect("built messages have a body");
                let bytes = msg[at + 4..].to_vec();
                Rc::new(Body {
                    sum: crc32fast::hash(&bytes),
                    bytes,
                })
            })
            .clone()
    }
}

/// How a transaction ended (connection errors are `Err`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Ok,
    Temp,
    Perm,
}

type Stats = Rc<RefCell<CoreStats>>;

fn io_err(what: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.into())
}

fn us(since: Instant) -> u64 {
    since.elapsed().as_micros() as u64
}

/// One SMTP client connection with reusable buffers.
struct Conn {
    stream: TcpStream,
    watch: Rc<Watch>,
    target: usize,
    caps: Capabilities,
    rbuf: Box<[u8]>,
    rpos: usize,
    rend: usize,
    out: Vec<u8>,
    /// Recycled header buffers.
    spare_heads: Vec<Vec<u8>>,
    /// Transactions begun.
    sent: u64,
    /// A transaction begun in the same write as the current one's content.
    chained: Option<u64>,
    /// Text of the last 4xx/5xx reply line.
    last_error: String,
    /// The message of the transaction under way until it is accounted
    /// ([`Conn::finish`]): an error after that must not count it again.
    unfinished: Option<u64>,
    /// Next check that this connection's target is still in the best
    /// priority group up (failback with `--per-conn 0`).
    next_check: Instant,
    /// This connection should QUIT after the current transaction.
    leave: bool,
}

/// A connection's deadline, enforced by the core's watchdog: cheaper than
/// glommio's per-operation timeouts, which add a timeout and a cancel
/// request to every read and write.
struct Watch {
    fd: std::os::fd::RawFd,
    /// When the pending read or write started; `None` when idle.
    since: Cell<Option<Instant>>,
    /// The watchdog shut the socket down.
    fired: Cell<bool>,
}

thread_local! {
    /// The watches of this executor's connections.
    static WATCHES: RefCell<Vec<Rc<Watch>>> = const { RefCell::new(Vec::new()) };
}

impl Watch {
    /// Ends a read or write: a timeout shows as such.
    fn check<T>(&self, r: std::io::Result<T>) -> std::io::Result<T> {
        self.since.set(None);
        if self.fired.get() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no progress within the timeout",
            ));
        }
        r
    }

    /// Shuts down the sockets stuck for longer than `timeout`, and forgets
    /// closed connections.
    fn sweep(timeout: Duration) {
        WATCHES.with(|w| {
            w.borrow_mut().retain(|watch| {
                if Rc::strong_count(watch) == 1 {
                    return false;
                }
                if watch
                    .since
                    .get()
                    .is_some_and(|t| t.elapsed() > timeout && !watch.fired.get())
                {
                    watch.fired.set(true);
                    // SAFETY: the fd belongs to a live connection (its
                    // Conn holds the other reference); shutdown only makes
                    // its pending operations fail.
                    unsafe { libc::shutdown(watch.fd, libc::SHUT_RDWR) };
                }
                true
            })
        });
    }
}

/// One message on its way.
struct Msg {
    seq: u64,
    /// Open loop: when it was due.
    due: Option<Instant>,
    /// When its MAIL was written.
    t0: Instant,
    /// Header section + body.
    size: usize,
    head: Vec<u8>,
    body: Rc<Body>,
}

/// Keeps the highest failure code.
fn note(code: u16, worst: &mut u16) {
    if code >= 400 {
        *worst = (*worst).max(code);
    }
}

/// The failure of a transaction that failed before DATA/BDAT, from its
/// MAIL and RCPT replies: the MAIL reply if it failed (the RCPTs after it
/// are then refused for sequence), else the worst RCPT reply if none was
/// accepted. `None` if the envelope was accepted. The reply to a pipelined
/// DATA/BDAT after such a failure (503/554) says nothing about the message,
/// so the outcome is the same pipelined or not.
fn envelope_failure(mail: u16, rcpts: &[u16]) -> Option<u16> {
    if mail >= 400 {
        return Some(mail);
    }
    if !rcpts.is_empty() && rcpts.iter().all(|&c| c >= 400) {
        return rcpts.iter().copied().max();
    }
    None
}

/// How often a connection checks that its target is still in the best
/// priority group up.
const FAILBACK_CHECK: Duration = Duration::from_secs(1);

const RBUF: usize = 16 << 10;
/// Bodies up to this size are copied into the output buffer (one write);
/// larger ones are written from the shared body.
const COPY_MAX: usize = 64 << 10;

impl Conn {
    async fn open(plan: &Plan, target: usize, stats: &Stats) -> std::io::Result<Conn> {
        let t = Instant::now();
        let stream = TcpStream::connect_timeout(plan.addrs[target], plan.timeout)
            .await
            .map_err(std::io::Error::from)?;
        stats.borrow_mut().record(Phase::Connect, us(t));
        stream.set_nodelay(true).map_err(std::io::Error::from)?;
        let watch = Rc::new(Watch {
            fd: stream.as_raw_fd(),
            since: Cell::new(None),
            fired: Cell::new(false),
        });
        WATCHES.with(|w| w.borrow_mut().push(watch.clone()));
        let mut c = Conn {
            stream,
            watch,
            target,
            caps: Capabilities::default(),
            rbuf: vec![0; RBUF].into_boxed_slice(),
            rpos: 0,
            rend: 0,
            out: Vec::with_capacity(8 << 10),
            spare_heads: Vec::new(),
            sent: 0,
            chained: None,
            last_error: String::new(),
            unfinished: None,
            next_check: Instant::now() + FAILBACK_CHECK,
            leave: false,
        };
        let t = Instant::now();
        let code = c.reply(stats, None).await?;
        stats.borrow_mut().record(Phase::Banner, us(t));
        if code != 220 {
            return Err(io_err(format!("greeting: {}", c.last_error)));
        }
        let t = Instant::now();
        c.out.clear();
        client::ehlo(&mut c.out, &plan.helo);
        c.flush().await?;
        let mut lines = Vec::new();
        let code = c.reply(stats, Some(&mut lines)).await?;
        if code == 250 {
            stats.borrow_mut().record(Phase::Ehlo, us(t));
            let lines = lines.into_iter().map(Into::into).collect();
            c.caps = Capabilities::from_ehlo(&Reply::plain(250, lines));
        } else {
            // Not ESMTP: fall back to HELO, without extensions.
            c.out.clear();
            client::helo(&mut c.out, &plan.helo);
            c.flush().await?;
            let code = c.reply(stats, None).await?;
            stats.borrow_mut().record(Phase::Ehlo, us(t));
            if code != 250 {
                return Err(io_err(format!("EHLO/HELO: {}", c.last_error)));
            }
        }
        Ok(c)
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        self.watch.since.set(Some(Instant::now()));
        let r = self.stream.write_all(&self.out).await;
        self.watch.check(r)
    }

    /// Reads one (possibly multi-line) reply and returns its code,
    /// collecting the text of each line into `lines` if given.
    async fn reply(
        &mut self,
        stats: &Stats,
        mut lines: Option<&mut Vec<String>>,
    ) -> std::io::Result<u16> {
        loop {
            while let Some(pos) = self.rbuf[self.rpos..self.rend]
                .iter()
                .position(|&b| b == b'\n')
            {
                let line = &self.rbuf[self.rpos..self.rpos + pos + 1];
                self.rpos += pos + 1;
                if line.len() < 3 || !line[..3].iter().all(u8::is_ascii_digit) {
                    return Err(io_err(format!(
                        "malformed reply {:?}",
                        String::from_utf8_lossy(line)
                    )));
                }
                let code = (line[0] - b'0') as u16 * 100
                    + (line[1] - b'0') as u16 * 10
                    + (line[2] - b'0') as u16;
                let more = line.get(3) == Some(&b'-');
                let text = || {
                    let t = line.get(4..).unwrap_or(b"");
                    String::from_utf8_lossy(t.strip_suffix(b"\r\n").unwrap_or(t)).into_owned()
                };
                if let Some(l) = lines.as_mut() {
                    l.push(text());
                }
                if code >= 400 || !(200..600).contains(&code) {
                    self.last_error = format!("{code} {}", text());
                }
                if !more {
                    stats.borrow_mut().reply(code);
                    return Ok(code);
                }
            }
            if self.rpos > 0 {
                self.rbuf.copy_within(self.rpos..self.rend, 0);
                self.rend -= self.rpos;
                self.rpos = 0;
            }
            if self.rend == self.rbuf.len() {
                return Err(io_err("reply line too long"));
            }
            self.watch.since.set(Some(Instant::now()));
            let n = self.stream.read(&mut self.rbuf[self.rend..]).await;
            let n = self.watch.check(n)?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "connection closed by the server",
                ));
            }
            self.rend += n;
        }
    }

    fn push_mail(&mut self, plan: &Plan, size: usize) {
        let _ = write!(self.out, "MAIL FROM:<{}>", plan.from);
        if self.caps.size.is_some() {
            let _ = write!(self.out, " SIZE={size}");
        }
        self.out.extend_from_slice(b"\r\n");
    }

    fn push_rcpt(&mut self, rcpt: &str) {
        let _ = write!(self.out, "RCPT TO:<{rcpt}>\r\n");
    }

    /// True when transactions on this connection are pipelined with DATA,
    /// and the next transaction may ride on the previous one's content
    /// (RFC 2920 3.1: message content may start a group).
    fn pipelined_data(&self, plan: &Plan) -> bool {
        plan.pipelining && self.caps.pipelining && !(plan.bdat && self.caps.chunking)
    }

    /// A new message with its stamped header section.
    fn message(&mut self, plan: &Plan, body: Rc<Body>, seq: u64, due: Option<Instant>) -> Msg {
        let sent_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let run = plan.run;
        let mut head = self.spare_heads.pop().unwrap_or_default();
        head.clear();
        let _ = write!(
            head,
            "From: <{}>\r\nTo: <{}>\r\nSubject: tern-loadgen {run:016x} #{seq}\r\nMessage-ID: <{run:016x}.{seq}@tern-loadgen>\r\n{}: run={run:016x}; seq={seq}; sent={sent_us}; sum={:08x}\r\n\r\n",
            plan.from,
            plan.rcpts.first().map_or("", String::as_str),
            crate::stamp::HEADER,
            body.sum
        );
        Msg {
            seq,
            due,
            t0: Instant::now(),
            size: head.len() + body.bytes.len(),
            head,
            body,
        }
    }

    /// Appends MAIL, RCPTs and DATA for `m` (pipelined group).
    fn begin(&mut self, plan: &Plan, m: &mut Msg) {
        self.push_mail(plan, m.size);
        for r in &plan.rcpts {
            self.push_rcpt(r);
        }
        client::data(&mut self.out);
        m.t0 = Instant::now();
        self.sent += 1;
    }

    /// Appends or writes the content of `m`, then `trailer`; flushes unless
    /// `hold` (the caller appends more and flushes).
    async fn send_content(&mut self, m: &Msg, trailer: &[u8]) -> std::io::Result<()> {
        self.out.extend_from_slice(&m.head);
        if m.body.bytes.len() <= COPY_MAX {
            self.out.extend_from_slice(&m.body.bytes);
        } else {
            self.flush().await?;
            self.out.clear();
            self.watch.since.set(Some(Instant::now()));
            let r = self.stream.write_all(&m.body.bytes).await;
            self.watch.check(r)?;
        }
        self.out.extend_from_slice(trailer);
        Ok(())
    }

    /// Accounts a finished transaction.
    fn finish(&mut self, plan: &Plan, m: Msg, worst: u16, stats: &Stats) -> Outcome {
        self.unfinished = None;
        let mut s = stats.borrow_mut();
        let from = if plan.rate.is_some() {
            m.due.unwrap_or(m.t0)
        } else {
            m.t0
        };
        s.record(Phase::Transaction, us(from));
        let outcome = match worst {
            0 => {
                s.ok += 1;
                s.bytes += m.size as u64;
                if let Some(acked) = s.acked.as_mut() {
                    acked.push(m.seq);
                }
                Outcome::Ok
            }
            400..=499 => {
                s.temp_fail += 1;
                Outcome::Temp
            }
            _ => {
                s.perm_fail += 1;
                Outcome::Perm
            }
        };
        if outcome != Outcome::Ok {
            let (seq, e) = (m.seq, &self.last_error);
            s.error(|| format!("seq {seq}: {e}"));
        }
        s.completed_at(plan.start.elapsed().as_secs() as usize);
        self.spare_heads.push(m.head);
        outcome
    }

    /// Pipelined DATA: `m`'s MAIL/RCPT/DATA group has been written. Reads
    /// its replies, sends its content, and in the closed loop starts the
    /// next transaction in the same write (returned, its group written).
    async fn step(
        &mut self,
        plan: &Plan,
        m: Msg,
        stats: &Stats,
        next: &mut dyn FnMut(&mut Conn) -> Option<Msg>,
    ) -> std::io::Result<Option<Msg>> {
        self.unfinished = Some(m.seq);
        let mut worst = 0u16;
        let mail = self.reply(stats, None).await?;
        stats.borrow_mut().record(Phase::Mail, us(m.t0));
        note(mail, &mut worst);
        if mail == 421 {
            // The server closes: the message failed temporarily, as without
            // pipelining (not a connection error).
            self.finish(plan, m, mail, stats);
            return Err(io_err(self.last_error.clone()));
        }
        let mut rcpts = Vec::with_capacity(plan.rcpts.len());
        for _ in &plan.rcpts {
            let code = self.reply(stats, None).await?;
            stats.borrow_mut().record(Phase::Rcpt, us(m.t0));
            note(code, &mut worst);
            if code == 421 {
                self.finish(plan, m, code, stats);
                return Err(io_err(self.last_error.clone()));
            }
            rcpts.push(code);
        }
        let code = self.reply(stats, None).await?;
        stats.borrow_mut().record(Phase::Data, us(m.t0));
        self.out.clear();
        let mut chained = None;
        if code == 354 {
            let t = Instant::now();
            self.send_content(&m, b".\r\n").await?;
            if plan.rate.is_none() && !self.should_quit(plan) {
                if let Some(mut n) = next(self) {
                    self.begin(plan, &mut n);
                    self.chained = Some(n.seq);
                    chained = Some(n);
                }
            }
            self.flush().await?;
            let code = self.reply(stats, None).await?;
            stats.borrow_mut().record(Phase::Eod, us(t));
            note(code, &mut worst);
            let outcome = self.finish(plan, m, worst, stats);
            if outcome != Outcome::Ok && worst == 421 {
                return Err(io_err(self.last_error.clone()));
            }
        } else {
            match envelope_failure(mail, &rcpts) {
                Some(code) => worst = code,
                None => note(code.max(400), &mut worst),
            }
            let outcome = self.finish(plan, m, worst, stats);
            if outcome != Outcome::Ok {
                self.after_failure(worst, stats).await?;
            }
        }
        self.chained = None;
        Ok(chained)
    }

    /// True when this connection should QUIT after its transaction: its
    /// `--per-conn` is used up, or (checked at most every
    /// [`FAILBACK_CHECK`]) a better priority group than its target's is up
    /// again. Once true, stays true.
    fn should_quit(&mut self, plan: &Plan) -> bool {
        if plan.per_conn > 0 && self.sent >= plan.per_conn {
            return true;
        }
        if !self.leave && Instant::now() >= self.next_check {
            self.next_check = Instant::now() + FAILBACK_CHECK;
            self.leave = better_group_up(plan, self.target);
        }
        self.leave
    }

    /// After a failed transaction: 421 closes; anything else is RSET.
    async fn after_failure(&mut self, worst: u16, stats: &Stats) -> std::io::Result<()> {
        if worst == 421 {
            return Err(io_err(self.last_error.clone()));
        }
        self.out.clear();
        client::rset(&mut self.out);
        self.flush().await?;
        self.reply(stats, None).await?;
        Ok(())
    }

    /// One transaction without pipelining, or with BDAT.
    async fn transaction(&mut self, plan: &Plan, m: Msg, stats: &Stats) -> std::io::Result<()> {
        let pipelining = plan.pipelining && self.caps.pipelining;
        let bdat = plan.bdat && self.caps.chunking;
        self.unfinished = Some(m.seq);
        let mut worst = 0u16;
        self.sent += 1;
        let t0 = m.t0;
        self.out.clear();
        self.push_mail(plan, m.size);
        if pipelining {
            // BDAT: the whole transaction is one group.
            for r in &plan.rcpts {
                self.push_rcpt(r);
            }
            let _ = write!(self.out, "BDAT {} LAST\r\n", m.size);
            self.send_content(&m, b"").await?;
            self.flush().await?;
            let mail = self.reply(stats, None).await?;
            stats.borrow_mut().record(Phase::Mail, us(t0));
            note(mail, &mut worst);
            let mut rcpts = Vec::with_capacity(plan.rcpts.len());
            for _ in &plan.rcpts {
                let code = self.reply(stats, None).await?;
                stats.borrow_mut().record(Phase::Rcpt, us(t0));
                note(code, &mut worst);
                rcpts.push(code);
            }
            let code = self.reply(stats, None).await?;
            stats.borrow_mut().record(Phase::Eod, us(t0));
            match envelope_failure(mail, &rcpts) {
                Some(code) => worst = code,
                None => note(code, &mut worst),
            }
        } else {
            self.flush().await?;
            let code = self.reply(stats, None).await?;
            stats.borrow_mut().record(Phase::Mail, us(t0));
            note(code, &mut worst);
            let mut accepted = 0;
            if code < 400 {
                for r in &plan.rcpts {
                    self.out.clear();
                    self.push_rcpt(r);
                    let t = Instant::now();
                    self.flush().await?;
                    let code = self.reply(stats, None).await?;
                    stats.borrow_mut().record(Phase::Rcpt, us(t));
                    note(code, &mut worst);
                    accepted += usize::from(code < 400);
                }
            }
            if accepted > 0 {
                self.out.clear();
                let t = Instant::now();
                if bdat {
                    let _ = write!(self.out, "BDAT {} LAST\r\n", m.size);
                    self.send_content(&m, b"").await?;
                    self.flush().await?;
                } else {
                    client::data(&mut self.out);
                    self.flush().await?;
                    let code = self.reply(stats, None).await?;
                    stats.borrow_mut().record(Phase::Data, us(t));
                    if code != 354 {
                        note(code.max(400), &mut worst);
                        let outcome = self.finish(plan, m, worst, stats);
                        if outcome != Outcome::Ok {
                            self.after_failure(worst, stats).await?;
                        }
                        return Ok(());
                    }
                    self.out.clear();
                    self.send_content(&m, b".\r\n").await?;
                    self.flush().await?;
                }
                let t = if bdat { t } else { Instant::now() };
                let code = self.reply(stats, None).await?;
                stats.borrow_mut().record(Phase::Eod, us(t));
                note(code, &mut worst);
            }
        }
        let outcome = self.finish(plan, m, worst, stats);
        if outcome != Outcome::Ok {
            self.after_failure(worst, stats).await?;
        }
        Ok(())
    }

    async fn quit(mut self, stats: &Stats) {
        self.out.clear();
        client::quit(&mut self.out);
        if self.flush().await.is_ok() {
            let _ = self.reply(stats, None).await;
        }
        let _ = self.stream.close().await;
    }
}

/// True when a priority group better than `target`'s has a target up
/// (may be tried).
fn better_group_up(plan: &Plan, target: usize) -> bool {
    let now_us = plan.now_us();
    let mine = plan.priorities[target];
    plan.priorities
        .iter()
        .zip(&plan.health)
        .any(|(&p, h)| p < mine && h.is_up(now_us))
}

/// Connects to the best target up, failing over within the attempt; `Err`
/// with the last error when none could be reached.
async fn connect_any(plan: &Plan, stats: &Stats, spread: &mut usize) -> Result<Conn, String> {
    let n = plan.addrs.len();
    let mut last = String::from("no target up");
    let mut waited = false;
    let mut attempts = 0;
    while attempts < n {
        if plan.aborted.load(Ordering::Relaxed) {
            return Err(last);
        }
        let now_us = plan.now_us();
        let up: Vec<bool> = plan.health.iter().map(|h| h.is_up(now_us)).collect();
        let Some(i) = choose(&plan.priorities, &up, *spread) else {
            if plan.all_down(now_us) {
                return Err(format!(
                    "every target down for longer than the timeout ({:?}); last: {last}",
                    plan.timeout
                ));
            }
            if waited {
                break;
            }
            // Everything is down: wait for the first retry (at most 1 s).
            waited = true;
            let at = plan
                .health
                .iter()
                .map(Health::retry_at_us)
                .min()
                .unwrap_or(0);
            let wait = Duration::from_micros(at.saturating_sub(now_us)).min(Duration::from_secs(1));
            glommio::timer::sleep(wait).await;
            continue;
        };
        *spread = spread.wrapping_add(1);
        attempts += 1;
        match Conn::open(plan, i, stats).await {
            Ok(c) => {
                plan.health[i].succeeded();
                plan.down_since_us.store(NOT_DOWN, Ordering::Relaxed);
                return Ok(c);
            }
            Err(e) => {
                plan.health[i].failed(plan.now_us());
                stats.borrow_mut().target_connect_failures[i] += 1;
                last = format!("{}: {e}", plan.addrs[i]);
            }
        }
    }
    Err(last)
}

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

async fn worker(plan: Arc<Plan>, stats: Stats, bodies: Rc<Bodies>, id: usize) {
    let mut conn: Option<Conn> = None;
    let mut spread = id;
    let mut rng = XorShift((plan.run ^ (id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1);
    let lost = |stats: &Stats, seq: u64, e: &str| {
        let mut s = stats.borrow_mut();
        s.conn_errors += 1;
        s.error(|| format!("seq {seq}: {e}"));
        s.completed_at(plan.start.elapsed().as_secs() as usize);
    };
    // A message whose pipelined group is already written on `conn`.
    let mut pending: Option<Msg> = None;
    loop {
        let m = match pending.take() {
            Some(m) => m,
            None => {
                let Some((seq, due)) = plan.ticket() else {
                    break;
                };
                if let Some(due) = due {
                    let now = Instant::now();
                    if due > now {
                        glommio::timer::sleep(due - now).await;
                    }
                }
                if conn.is_none() {
                    match connect_any(&plan, &stats, &mut spread).await {
                        Ok(c) => conn = Some(c),
                        Err(e) => {
                            lost(&stats, seq, &e);
                            continue;
                        }
                    }
                }
                let c = conn.as_mut().expect("connected");
                let body = bodies.get(plan.run, plan.sizes.pick(rng.next() as u32));
                let mut m = c.message(&plan, body, seq, due);
                if c.pipelined_data(&plan) {
                    c.out.clear();
                    c.begin(&plan, &mut m);
                    if let Err(e) = c.flush().await {
                        let target = plan.addrs[c.target];
                        lost(&stats, seq, &format!("{target}: {e}"));
                        conn = None;
                        continue;
                    }
                }
                m
            }
        };
        let c = conn.as_mut().expect("connected");
        stats.borrow_mut().target_messages[c.target] += 1;
        let seq = m.seq;
        let result = if c.pipelined_data(&plan) {
            let mut next = |c: &mut Conn| {
                let (seq, due) = plan.ticket()?;
                let body = bodies.get(plan.run, plan.sizes.pick(rng.next() as u32));
                Some(c.message(&plan, body, seq, due))
            };
            c.step(&plan, m, &stats, &mut next).await
        } else {
            c.transaction(&plan, m, &stats).await.map(|()| None)
        };
        match result {
            Ok(next) => pending = next,
            Err(e) => {
                let e = format!("{}: {e}", plan.addrs[c.target]);
                // Unless finish() already accounted it (a 421 or a failed
                // RSET after the reply).
                if c.unfinished.take() == Some(seq) {
                    lost(&stats, seq, &e);
                }
                if let Some(next) = c.chained.take() {
                    lost(&stats, next, &e);
                }
                conn = None;
                continue;
            }
        }
        if pending.is_none() && c.should_quit(&plan) {
            if let Some(c) = conn.take() {
                c.quit(&stats).await;
            }
        }
    }
    if let Some(c) = conn {
        c.quit(&stats).await;
    }
}

/// Runs `conns` connections on this executor; `first_id` numbers them
/// globally (for spreading over targets).
pub async fn run(plan: Arc<Plan>, core: usize, conns: usize, first_id: usize) -> CoreStats {
    let stats: Stats = Rc::new(RefCell::new(CoreStats::new(plan.addrs.len())));
    if plan.record_acked {
        stats.borrow_mut().acked = Some(Vec::new());
    }
    let bodies = Rc::new(Bodies::default());
    let done = Rc::new(Cell::new(false));
    let ticker = {
        let (plan, stats, done) = (plan.clone(), stats.clone(), done.clone());
        glommio::spawn_local(async move {
            while !done.get() {
                plan.live[core].publish(&stats.borrow());
                Watch::sweep(plan.timeout);
                glommio::timer::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let workers: Vec<_> = (0..conns)
        .map(|w| {
            glommio::spawn_local(worker(
                plan.clone(),
                stats.clone(),
                bodies.clone(),
                first_id + w,
            ))
        })
        .collect();
    for w in workers {
        w.await;
    }
    stats.borrow_mut().elapsed = plan.start.elapsed();
    done.set(true);
    ticker.await;
    plan.live[core].publish(&stats.borrow());
    drop(bodies);
    Rc::try_unwrap(stats)
        .map(RefCell::into_inner)
        .unwrap_or_else(|rc| {
            let mut s = CoreStats::new(plan.addrs.len());
            s.merge(std::mem::replace(&mut rc.borrow_mut(), CoreStats::new(0)));
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_loop_schedule() {
        // 1000/s: message k is due at k ms.
        assert_eq!(open_loop_due(0, 1000.0, None, None), Some(Duration::ZERO));
        assert_eq!(
            open_loop_due(250, 1000.0, None, None),
            Some(Duration::from_millis(250))
        );
        // Fractional rates.
        assert_eq!(
            open_loop_due(3, 0.5, None, None),
            Some(Duration::from_secs(6))
        );
        // Bounded by messages.
        assert_eq!(
            open_loop_due(9, 10.0, Some(10), None),
            Some(Duration::from_millis(900))
        );
        assert_eq!(open_loop_due(10, 10.0, Some(10), None), None);
        // Bounded by duration: 2 s at 10/s is messages 0..20.
        let d = Some(Duration::from_secs(2));
        assert!(open_loop_due(19, 10.0, None, d).is_some());
        assert_eq!(open_loop_due(20, 10.0, None, d), None);
        // The schedule is fixed: it does not depend on when earlier
        // messages finished (no coordinated omission).
        let due: Vec<_> = (0..5)
            .map(|k| open_loop_due(k, 4.0, None, None).unwrap())
            .collect();
        assert_eq!(due[4] - due[0], Duration::from_secs(1));
    }

    #[test]
    fn envelope_failure_ignores_the_follow_up_data_reply() {
        assert_eq!(envelope_failure(250, &[250, 250]), None);
        assert_eq!(envelope_failure(451, &[503]), Some(451));
        assert_eq!(envelope_failure(250, &[451, 451]), Some(451));
        assert_eq!(envelope_failure(250, &[451, 550]), Some(550));
        // One recipient accepted: the message goes on.
        assert_eq!(envelope_failure(250, &[451, 250]), None);
    }

    #[test]
    fn bodies_are_shared_and_stamp_verifies() {
        let bodies = Bodies::default();
        let a = bodies.get(7, 4096);
        let b = bodies.get(7, 4096);
        assert!(Rc::ptr_eq(&a, &b));
        assert!(a.bytes.len() + 300 >= 4096);
        assert_eq!(a.sum, crc32fast::hash(&a.bytes));
    }

    #[test]
    fn size_picking_follows_weights() {
        let sizes: Sizes = "1KiB:60,16KiB:30,1MiB:10".parse().unwrap();
        let mut rng = XorShift(12345);
        let mut counts = HashMap::new();
        for _ in 0..100_000 {
            *counts.entry(sizes.pick(rng.next() as u32)).or_insert(0u32) += 1;
        }
        let share = |s: usize| counts[&s] as f64 / 100_000.0;
        assert!((share(1024) - 0.6).abs() < 0.01);
        assert!((share(16384) - 0.3).abs() < 0.01);
        assert!((share(1 << 20) - 0.1).abs() < 0.01);
    }
}
