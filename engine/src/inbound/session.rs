//! The socket loop of one SMTP connection (STYLE rule 2: this layer owns
//! the buffer, the deadlines and the quotas; `tern_smtp::server::Session`
//! owns the protocol). Reads, feeds the session, turns a complete message
//! into a durable log record, and writes the replies (pipelined replies go
//! out in one write). STARTTLS and AUTH are in `tls_auth.rs`, XCLIENT
//! (the real client behind a front end) in `xclient.rs`.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use tern_smtp::address::ForwardPath;
use tern_smtp::server::{Event, Policy, Session};
use tern_smtp::{Reply, Status};

use super::relay::{RelayPolicy, Trust};
use super::Inbound;
use crate::metrics::CoreMetrics;
use crate::shadow::replica::PendingCopy;
use crate::tls::{Stream, TlsInfo};

/// Read buffer per connection. Bounded: 2000 connections per core use
/// 32 MiB; a larger message just takes more reads.
const READ_BUF_BYTES: usize = 16 * 1024;
/// Read buffer of a connection from a cluster peer (a few per core).
const PEER_READ_BUF_BYTES: usize = 256 * 1024;

/// Relay policy that also counts refusals (for metrics).
pub(super) struct CountingPolicy {
    inner: RelayPolicy,
    refused: Rc<std::cell::Cell<u32>>,
    metrics: std::sync::Arc<CoreMetrics>,
    /// The client (the real one, once XCLIENT named it).
    client: SocketAddr,
    pressure: std::sync::Arc<crate::pressure::Pressure>,
    /// The connection is from a front end: it may use XCLIENT.
    front_end: bool,
}

impl CountingPolicy {
    /// XCLIENT named the real client: relay control (and the log lines)
    /// are about it from now on. `logged_out`: `LOGIN=[UNAVAILABLE]`, it
    /// is not authenticated (`LOGIN=user` comes through
    /// [`Policy::authenticated`]).
    pub(super) fn real_client(&mut self, client: SocketAddr, logged_out: bool) {
        self.client = client;
        self.inner.set_client(client.ip());
        if logged_out {
            self.inner.forget_authentication();
        }
    }
}

impl Policy for CountingPolicy {
    fn check_sender(
        &mut self,
        _from: &tern_smtp::address::ReversePath,
        params: &tern_smtp::command::MailParams,
    ) -> Result<(), Reply> {
        // Back pressure refuses at MAIL, before any content is sent.
        match self
            .pressure
            .refuse_mail(params.size, params.xshadow.is_some())
        {
            Some(reply) => {
                CoreMetrics::inc(&self.metrics.rejected_pressure);
                Err(reply)
            }
            None => Ok(()),
        }
    }
    fn allow_shadow(&mut self) -> bool {
        self.inner.allow_shadow()
    }
    fn allow_xclient(&mut self) -> bool {
        self.front_end
    }
    fn authenticated(&mut self, user: &str) {
        self.inner.authenticated(user)
    }
    fn shadow_refused(&mut self) {
        CoreMetrics::inc(&self.metrics.shadow_untrusted);
        tracing::warn!(client = %self.client, "XSHADOW/XQDISCARD refused: the client did not show a pinned peer certificate");
    }
    fn check_recipient(&mut self, to: &ForwardPath) -> Result<(), Reply> {
        let r = self.inner.check_recipient(to);
        if r.is_err() {
            self.refused.set(self.refused.get() + 1);
        }
        r
    }
}

enum Wake {
    Read(usize),
    TimedOut,
    Shutdown,
}

async fn read_some(
    stream: &mut Stream,
    buf: &mut [u8],
    wait: Duration,
    core: &Inbound,
    watch_shutdown: bool,
) -> std::io::Result<Wake> {
    let read = async { stream.read(buf).await.map(Wake::Read) };
    let timer = async {
        glommio::timer::sleep(wait).await;
        Ok(Wake::TimedOut)
    };
    let read_or_timer = futures_lite::future::or(read, timer);
    if watch_shutdown {
        let stop = async {
            core.shutdown.wait().await;
            Ok(Wake::Shutdown)
        };
        futures_lite::future::or(read_or_timer, stop).await
    } else {
        read_or_timer.await
    }
}

pub(super) async fn flush<P: Policy>(
    stream: &mut Stream,
    s: &mut Session<P>,
    wait: Duration,
) -> std::io::Result<()> {
    if s.transmit().is_empty() {
        return Ok(());
    }
    while !s.transmit().is_empty() {
        let write = async { stream.write(s.transmit()).await };
        let timer = async {
            glommio::timer::sleep(wait).await;
            Err(std::io::ErrorKind::TimedOut.into())
        };
        let n = futures_lite::future::or(write, timer).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        s.transmitted(n);
    }
    // TLS keeps what the socket did not take yet: push it out.
    let flush = async { stream.flush().await };
    let timer = async {
        glommio::timer::sleep(wait).await;
        Err(std::io::ErrorKind::TimedOut.into())
    };
    futures_lite::future::or(flush, timer).await
}

/// What the socket loop keeps besides the protocol session.
pub(super) struct Loop {
    /// The client asked to close (QUIT, or the session ended it).
    closing: bool,
    /// Shutdown was seen once (idle sessions then get 421).
    shutdown_seen: bool,
    /// Error replies already counted.
    errors: u32,
    /// Content bytes this session holds in the core's budget.
    held: usize,
    /// Shadow copies queued in the log whose 250s are in the output: the
    /// output goes out only once they are durable (one commit for all the
    /// copies a pipelining primary sent in one go).
    pending: Vec<PendingCopy>,
    /// The connection (plain, or TLS after STARTTLS).
    pub(super) stream: Stream,
    /// What TLS negotiated, once in TLS.
    pub(super) tls: Option<TlsInfo>,
    /// What the client proved about itself.
    pub(super) trust: Rc<Trust>,
    /// The settings this session started with (kept across a reload).
    pub(super) settings: Rc<super::Settings>,
    /// The client: the connection's peer, or the real client a front
    /// end named with XCLIENT (relay control, the accept step, AUTH's
    /// limiter and log lines are about it).
    pub(super) client: SocketAddr,
    /// The connection's slot (the per-IP count follows `client`).
    pub(super) slot: super::listener::Slot,
}

/// Serves one accepted connection to its end. `implicit`: the listener
/// is implicit TLS (RFC 8314): the handshake comes before the greeting.
/// `slot` (its admission) is released when the session ends.
pub(super) async fn run(
    core: Rc<Inbound>,
    tcp: TcpStream,
    peer: SocketAddr,
    implicit: bool,
    slot: super::listener::Slot,
) {
    let _ = tcp.set_nodelay(true);
    let settings = core.settings();
    let refused = Rc::new(std::cell::Cell::new(0));
    let trust = Rc::new(Trust::default());
    let policy = CountingPolicy {
        inner: RelayPolicy::new(settings.relay.clone(), peer.ip(), trust.clone()),
        refused: refused.clone(),
        metrics: core.metrics.clone(),
        client: peer,
        pressure: core.pressure.clone(),
        front_end: slot.front_end(),
    };
    let mut l = Loop {
        closing: false,
        shutdown_seen: false,
        errors: 0,
        held: 0,
        pending: Vec::new(),
        stream: Stream::Plain(tcp),
        tls: None,
        trust,
        settings: settings.clone(),
        client: peer,
        slot,
    };
    let limits = &settings.config.smtp;
    if !greet_under_pressure(&core, &mut l.stream, peer).await {
        return;
    }
    if implicit && !super::tls_auth::handshake(&core, &mut l, peer).await {
        return;
    }
    let mut s = Session::new(settings.smtp.clone(), policy);
    super::tls_auth::offer(&core, &mut s, &l, peer);
    let started = Instant::now();
    // A peer's shadow link brings batches of copies (up to
    // `shadow::link::BATCH_BYTES_MAX`): read a batch in one go.
    let buf_bytes = if core.peer_ips.contains(&peer.ip()) {
        PEER_READ_BUF_BYTES
    } else {
        READ_BUF_BYTES
    };
    let mut buf = vec![0u8; buf_bytes];
    loop {
        if !commit_copies(&core, &s, &mut l.pending, peer).await {
            break;
        }
        // Held 250s (copies not yet durable) never go out early.
        if l.pending.is_empty()
            && (flush(&mut l.stream, &mut s, limits.inactivity_timeout)
                .await
                .is_err()
                || l.closing)
        {
            break;
        }
        if core.shutdown.is_set() && s.is_idle() {
            s.shutdown(Reply::new(
                421,
                Status(4, 3, 2),
                "Service shutting down, try again later",
            ));
        } else {
            let remaining = limits.session_timeout.saturating_sub(started.elapsed());
            let wait = limits.inactivity_timeout.min(remaining);
            let watch = !l.shutdown_seen;
            match read_some(&mut l.stream, &mut buf, wait, &core, watch).await {
                Ok(Wake::Read(0)) | Err(_) => break,
                Ok(Wake::Read(n)) => s.receive(&buf[..n]),
                Ok(Wake::TimedOut) => {
                    CoreMetrics::inc(&core.metrics.timeouts);
                    s.timeout();
                }
                Ok(Wake::Shutdown) => l.shutdown_seen = true,
            }
        }
        if !handle_events(&core, &mut s, &mut l, peer).await {
            break;
        }
        l.errors = count_errors(&core, l.errors, s.error_count(), &refused);
        l.held = account_memory(&core, &mut s, l.held, &settings);
    }
    core.content_bytes.set(core.content_bytes.get() - l.held);
    let _ = l.stream.close().await;
}

/// Before the greeting: a node whose store failed answers `421` and
/// closes (false); under back pressure the greeting waits
/// `pressure.greeting_delay` (slowing new senders while delivery drains).
async fn greet_under_pressure(core: &Inbound, stream: &mut Stream, peer: SocketAddr) -> bool {
    if let Some(failed) = core.pressure.failed() {
        tracing::debug!(client = %peer, failed, "refusing a session: the message store failed");
        let reply = crate::pressure::store_failed(Some(&core.settings().config.hostname));
        let mut out = Vec::new();
        reply.encode(&mut out);
        let write = async { stream.write_all(&out).await };
        let timer = glommio::timer::sleep(Duration::from_secs(5));
        let _ = futures_lite::future::or(write, async {
            timer.await;
            Ok(())
        })
        .await;
        CoreMetrics::inc(&core.metrics.rejected_pressure);
        return false;
    }
    // Cluster peers are not slowed: their shadow links and heartbeats are
    // what keeps mail redundant and lets delivery drain.
    if let Some(delay) = core
        .pressure
        .greeting_delay()
        .filter(|_| !core.peer_ips.contains(&peer.ip()))
    {
        CoreMetrics::inc(&core.metrics.greetings_delayed);
        let stop = core.shutdown.wait();
        futures_lite::future::or(glommio::timer::sleep(delay), stop).await;
    }
    true
}

/// Makes the queued shadow copies durable before their 250s go out,
/// unless a BDAT chunk is still incomplete (the primary is still writing
/// its batch: read the rest first, so the whole batch shares one commit;
/// anything else may wait for a reply: commit now). False: the log
/// failed; the link must close without a word, so the primary tries
/// another shadow for every copy in flight.
async fn commit_copies<P: Policy>(
    core: &Inbound,
    s: &Session<P>,
    pending: &mut Vec<PendingCopy>,
    peer: SocketAddr,
) -> bool {
    if pending.is_empty() || s.mid_chunk() {
        return true;
    }
    if let Err(e) = core.copies_durable(pending).await {
        core.metrics
            .rejected_storage
            .fetch_add(pending.len() as u64, std::sync::atomic::Ordering::Relaxed);
        tracing::error!(error = %e, client = %peer, copies = pending.len(), "cannot store shadow copies; closing the shadow link");
        return false;
    }
    pending.clear();
    true
}

/// Acts on what the session asked for: messages to accept, copies to
/// queue, discard questions, TLS, AUTH, closing. False: the connection
/// is gone (a failed TLS handshake).
async fn handle_events(
    core: &Inbound,
    s: &mut Session<CountingPolicy>,
    l: &mut Loop,
    peer: SocketAddr,
) -> bool {
    while let Some(event) = s.poll() {
        match event {
            Event::Message { envelope, content } if envelope.params.xshadow.is_some() => {
                match core.accept_copy(&envelope, &content, peer).await {
                    Ok(p) => {
                        s.complete(Ok(&p.id.to_string()));
                        l.pending.push(p);
                    }
                    Err(reply) => s.complete(Err(reply)),
                }
            }
            Event::Message { envelope, content } => {
                let trace = crate::received::Trace {
                    tls: l.tls.map(|t| (t.version, t.cipher)),
                    auth: envelope.authenticated.as_deref(),
                };
                match core.accept(&envelope, &content, l.client, &trace).await {
                    Ok(id) => s.complete(Ok(&id.to_string())),
                    Err(reply) => s.complete(Err(reply)),
                }
            }
            Event::Discard {
                node,
                database,
                taken,
            } => {
                s.answer(core.discard_answer(&node, &database, taken));
            }
            Event::StartTls => {
                if !super::tls_auth::starttls(core, s, l, peer).await {
                    return false;
                }
            }
            Event::Auth {
                mechanism,
                authzid,
                user,
                password,
            } => {
                let client = l.client;
                let r = super::tls_auth::authenticate(
                    core, client, mechanism, &authzid, &user, password,
                );
                match r.await {
                    // The limiter refused the client: end the session.
                    Err(reply) if reply.code == 421 => s.shutdown(reply),
                    r => s.auth_result(r),
                }
            }
            Event::Xclient(x) => super::xclient::answer(core, s, l, peer, x),
            // This session is not in proxy mode (the front end's is).
            Event::Mail { .. }
            | Event::Rcpt { .. }
            | Event::Data
            | Event::Content { .. }
            | Event::Reset => unreachable!("inbound sessions are not in proxy mode"),
            Event::Close => l.closing = true,
        }
    }
    true
}

/// Moves this session's new error replies into the metrics, split into
/// relay refusals and everything else. Returns the new total.
fn count_errors(core: &Inbound, before: u32, now: u32, refused: &std::cell::Cell<u32>) -> u32 {
    use std::sync::atomic::Ordering::Relaxed;
    let relay = refused.replace(0);
    let new = now.saturating_sub(before);
    core.metrics
        .rejected_relay
        .fetch_add(u64::from(relay), Relaxed);
    core.metrics
        .rejected_protocol
        .fetch_add(u64::from(new.saturating_sub(relay)), Relaxed);
    now
}

/// Moves this session's message bytes in memory into the core's total; if
/// the total passes `smtp.message_memory_max`, this session is refused
/// (421 4.3.2, nothing accepted) so memory stays bounded. Returns what the
/// session now holds.
fn account_memory<P: Policy>(
    core: &Inbound,
    s: &mut Session<P>,
    held_before: usize,
    settings: &super::Settings,
) -> usize {
    let now = s.content_bytes();
    let total = core.content_bytes.get() - held_before + now;
    core.content_bytes.set(total);
    if now > held_before && total > settings.config.smtp.message_memory_max {
        tracing::warn!(total, "message memory budget exceeded; refusing a session");
        CoreMetrics::inc(&core.metrics.rejected_memory);
        s.shutdown(Reply::new(
            421,
            Status(4, 3, 2),
            "Error: too much mail in flight, try again later",
        ));
    }
    now
}
