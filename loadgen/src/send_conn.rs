//! One SMTP client connection of `send`: connect, greeting, EHLO (HELO
//! when EHLO is refused), TLS (implicit or STARTTLS) and AUTH when asked,
//! the reply reader, QUIT, and the choice of target with failover
//! ([`connect_any`]). The transactions on it are in `send_transaction.rs`.
//!
//! The reply reader works in place in a fixed 16 KiB buffer: it needs only
//! three digits and an LF per line, takes the code of a multi-line reply's
//! last line, and copies text out only for EHLO and for failure replies
//! (the text of the last one, for the report).

use std::cell::RefCell;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_rustls::TlsConnector;
use glommio::net::TcpStream;
use tern_smtp::client::{self, Capabilities};
use tern_smtp::reply::Reply;

use super::send_plan::{Plan, NOT_DOWN};
use super::send_stats::{CoreStats, Phase};
use super::send_target::{choose, Health};
use super::send_tls::{Stream, TlsMode};
use super::send_watchdog::Watch;

/// This core's measurements, shared by its workers.
pub(super) type Stats = Rc<RefCell<CoreStats>>;

pub(super) fn io_err(what: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.into())
}

/// Microseconds since `since`.
pub(super) fn us(since: Instant) -> u64 {
    since.elapsed().as_micros() as u64
}

/// One SMTP client connection with reusable buffers.
pub(super) struct Conn {
    stream: Stream,
    watch: Rc<Watch>,
    pub(super) target: usize,
    pub(super) caps: Capabilities,
    rbuf: Box<[u8]>,
    rpos: usize,
    rend: usize,
    pub(super) out: Vec<u8>,
    /// Recycled header buffers.
    pub(super) spare_heads: Vec<Vec<u8>>,
    /// Transactions begun.
    pub(super) sent: u64,
    /// A transaction begun in the same write as the current one's content.
    pub(super) chained: Option<u64>,
    /// Text of the last 4xx/5xx reply line.
    pub(super) last_error: String,
    /// The message of the transaction under way until it is accounted
    /// (`Conn::finish`): an error after that must not count it again.
    pub(super) unfinished: Option<u64>,
    /// Next check that this connection's target is still in the best
    /// priority group up (failback with `--per-conn 0`).
    next_check: Instant,
    /// This connection should QUIT after the current transaction.
    leave: bool,
}

/// How often a connection checks that its target is still in the best
/// priority group up.
const FAILBACK_CHECK: Duration = Duration::from_secs(1);

/// The reply read buffer: a reply line longer than this is an error.
const RBUF: usize = 16 << 10;

impl Conn {
    fn new(stream: TcpStream, target: usize) -> Conn {
        let watch = Watch::register(stream.as_raw_fd());
        Conn {
            stream: Stream::Plain(stream),
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
        }
    }

    /// Connects to target `target`, reads the greeting and says EHLO
    /// (HELO if EHLO is refused), with TLS (implicit: before the
    /// greeting; STARTTLS: after EHLO, then EHLO again) and AUTH when
    /// asked; `Err` unless every step succeeded.
    async fn open(
        plan: &Plan,
        target: usize,
        stats: &Stats,
        tls: Option<&TlsConnector>,
    ) -> std::io::Result<Conn> {
        let t = Instant::now();
        let stream = TcpStream::connect_timeout(plan.addrs[target], plan.timeout)
            .await
            .map_err(std::io::Error::from)?;
        stats.borrow_mut().record(Phase::Connect, us(t));
        stream.set_nodelay(true).map_err(std::io::Error::from)?;
        let mut c = Conn::new(stream, target);
        let mode = plan.tls.as_ref().map(|p| p.mode);
        if let (Some(TlsMode::Implicit), Some(tls)) = (mode, tls) {
            c = c.into_tls(plan, tls, stats, Instant::now()).await?;
        }
        let t = Instant::now();
        let code = c.reply(stats, None).await?;
        stats.borrow_mut().record(Phase::Banner, us(t));
        if code != 220 {
            return Err(io_err(format!("greeting: {}", c.last_error)));
        }
        c.hello(plan, stats).await?;
        if let (Some(TlsMode::StartTls), Some(tls)) = (mode, tls) {
            c = c.start_tls(plan, tls, stats).await?;
        }
        if let Some(creds) = &plan.auth {
            c.authenticate(creds, stats).await?;
        }
        Ok(c)
    }

    /// STARTTLS (RFC 3207), its 220, the handshake, and EHLO again (the
    /// capabilities may differ under TLS, RFC 3207 4.2).
    async fn start_tls(
        mut self,
        plan: &Plan,
        tls: &TlsConnector,
        stats: &Stats,
    ) -> std::io::Result<Conn> {
        if !self.caps.starttls {
            return Err(io_err("STARTTLS not offered (--starttls)"));
        }
        let t = Instant::now();
        self.out.clear();
        client::starttls(&mut self.out);
        self.flush().await?;
        let code = self.reply(stats, None).await?;
        if code != 220 {
            return Err(io_err(format!("STARTTLS: {}", self.last_error)));
        }
        // Bytes behind the 220 came before TLS: not to be trusted as
        // replies inside it (RFC 3207 6).
        (self.rpos, self.rend) = (0, 0);
        let mut c = self.into_tls(plan, tls, stats, t).await?;
        c.caps = Capabilities::default();
        c.hello(plan, stats).await?;
        Ok(c)
    }

    /// The TLS handshake on the plain stream, under the watchdog; the
    /// `tls` phase runs from `since`.
    async fn into_tls(
        mut self,
        plan: &Plan,
        tls: &TlsConnector,
        stats: &Stats,
        since: Instant,
    ) -> std::io::Result<Conn> {
        let tcp = match self.stream {
            Stream::Plain(tcp) => tcp,
            Stream::Tls(_) => return Err(io_err("TLS inside TLS")),
        };
        let name = plan.tls.as_ref().expect("TLS planned").name(self.target);
        self.watch.since.set(Some(Instant::now()));
        let r = tls.connect(name, tcp).await;
        match self.watch.check(r) {
            Ok(s) => {
                let mut st = stats.borrow_mut();
                st.record(Phase::Tls, us(since));
                st.tls.completed(s.get_ref().1);
                drop(st);
                self.stream = Stream::Tls(Box::new(s));
                Ok(self)
            }
            Err(e) => {
                stats.borrow_mut().tls.failed += 1;
                Err(io_err(format!("TLS handshake: {e}")))
            }
        }
    }

    /// EHLO, or HELO (without extensions) if the server is not ESMTP.
    async fn hello(&mut self, plan: &Plan, stats: &Stats) -> std::io::Result<()> {
        let t = Instant::now();
        self.out.clear();
        client::ehlo(&mut self.out, &plan.helo);
        self.flush().await?;
        let mut lines = Vec::new();
        let code = self.reply(stats, Some(&mut lines)).await?;
        if code == 250 {
            stats.borrow_mut().record(Phase::Ehlo, us(t));
            let lines = lines.into_iter().map(Into::into).collect();
            self.caps = Capabilities::from_ehlo(&Reply::plain(250, lines));
        } else {
            // Not ESMTP: fall back to HELO, without extensions.
            self.out.clear();
            client::helo(&mut self.out, &plan.helo);
            self.flush().await?;
            let code = self.reply(stats, None).await?;
            stats.borrow_mut().record(Phase::Ehlo, us(t));
            if code != 250 {
                return Err(io_err(format!("EHLO/HELO: {}", self.last_error)));
            }
        }
        Ok(())
    }

    /// Writes the output buffer, under the watchdog.
    pub(super) async fn flush(&mut self) -> std::io::Result<()> {
        self.watch.since.set(Some(Instant::now()));
        let r = self.stream.write_all(&self.out).await;
        self.watch.check(r)
    }

    /// Writes `bytes` (not the output buffer), under the watchdog.
    pub(super) async fn write_direct(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.watch.since.set(Some(Instant::now()));
        let r = self.stream.write_all(bytes).await;
        self.watch.check(r)
    }

    /// Reads one (possibly multi-line) reply and returns its code,
    /// collecting the text of each line into `lines` if given.
    pub(super) async fn reply(
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
            self.fill().await?;
        }
    }

    /// Reads more reply bytes behind those not yet consumed.
    async fn fill(&mut self) -> std::io::Result<()> {
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
        Ok(())
    }

    /// True when transactions on this connection are pipelined with DATA,
    /// and the next transaction may ride on the previous one's content
    /// (RFC 2920 3.1: message content may start a group).
    pub(super) fn pipelined_data(&self, plan: &Plan) -> bool {
        plan.pipelining && self.caps.pipelining && !(plan.bdat && self.caps.chunking)
    }

    /// True when this connection should QUIT after its transaction: its
    /// `--per-conn` is used up, or (checked at most every
    /// [`FAILBACK_CHECK`]) a better priority group than its target's is up
    /// again. Once true, stays true.
    pub(super) fn should_quit(&mut self, plan: &Plan) -> bool {
        if plan.per_conn > 0 && self.sent >= plan.per_conn {
            return true;
        }
        if !self.leave && Instant::now() >= self.next_check {
            self.next_check = Instant::now() + FAILBACK_CHECK;
            self.leave = plan.better_group_up(self.target);
        }
        self.leave
    }

    /// QUIT (its reply awaited if it could be written), then close.
    pub(super) async fn quit(mut self, stats: &Stats) {
        self.out.clear();
        client::quit(&mut self.out);
        if self.flush().await.is_ok() {
            let _ = self.reply(stats, None).await;
        }
        let _ = self.stream.close().await;
    }
}

/// Connects to the best target up, failing over within the attempt; `Err`
/// with the last error when none could be reached.
pub(super) async fn connect_any(
    plan: &Plan,
    stats: &Stats,
    spread: &mut usize,
    tls: Option<&TlsConnector>,
) -> Result<Conn, String> {
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
        match Conn::open(plan, i, stats, tls).await {
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
