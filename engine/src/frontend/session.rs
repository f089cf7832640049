//! One proxied client session: the sans-IO session in proxy mode owns the
//! protocol (framing, pipelining, limits, STARTTLS); its events go to the
//! back end (`backend.rs`) and the back end's replies come back as the
//! verdicts. The content passes in pieces of at most
//! `tern_smtp::server::proxy::CONTENT_PIECE_BYTES`: memory per session is
//! bounded whatever the message size.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use tern_smtp::address::{ForwardPath, ReversePath};
use tern_smtp::command::MailParams;
use tern_smtp::server::{proxy, AcceptAll, Event, Session};
use tern_smtp::{Reply, Status};

use super::backend::{Backend, Client};
use super::stats::Failure;
use super::{Frontend, Settings};
use crate::metrics::CoreMetrics;
use crate::tls::Stream;

/// Read buffer per client connection.
const READ_BUF_BYTES: usize = 16 * 1024;

/// Over the connection limit.
pub(super) async fn refuse(mut stream: TcpStream) {
    let reply = Reply::new(
        421,
        Status(4, 7, 0),
        "Error: too many connections, try again later",
    );
    let _ = stream.write_all(&reply.to_bytes()).await;
    let _ = stream.close().await;
}

/// What a session holds besides the protocol.
struct Proxy<'a> {
    fe: &'a Frontend,
    settings: Rc<Settings>,
    peer: SocketAddr,
    backend: Option<Backend>,
    /// MAIL answered here (routes by domain): sent to the back end of the
    /// first recipient's pool.
    pending_mail: Option<(ReversePath, MailParams)>,
}

fn unavailable() -> Reply {
    Reply::new(
        451,
        Status(4, 4, 0),
        "Error: no back end is available; try again later",
    )
}

impl Proxy<'_> {
    /// Drops the back-end connection after a failure (the host marked
    /// down: its transaction is lost, the next goes elsewhere).
    async fn failed(&mut self, why: Failure, error: &str) {
        self.fe.stats.failed(why);
        if let Some(b) = self.backend.take() {
            tracing::warn!(backend = %b.addr, pool = %b.pool, client = %self.peer, reason = why.as_str(), error, "back end failed mid-transaction");
            if why != Failure::Deferred {
                let now = self.fe.now_ms();
                self.fe.health.borrow_mut().mark_down(b.addr, now, error);
            }
            b.close().await;
        }
    }

    /// A back end of `pool` for a new transaction: the open one if it
    /// belongs to that pool, else a new one.
    async fn backend_for(
        &mut self,
        pool: &str,
        helo: Option<(&str, bool)>,
    ) -> Result<&mut Backend, Reply> {
        if self.backend.as_ref().is_some_and(|b| &*b.route != pool) {
            if let Some(b) = self.backend.take() {
                b.close().await;
            }
        }
        if self.backend.is_none() {
            let config = self.settings.config.clone();
            let candidates =
                super::choose::candidates(&self.fe.srv, self.fe.resolver.as_ref(), &config, pool)
                    .await;
            let client = Client {
                addr: self.peer,
                helo,
            };
            let b = Backend::open(self.fe, &config, &candidates, &client)
                .await
                .map_err(|_| unavailable())?;
            let mut b = b;
            if &*b.pool != pool {
                tracing::debug!(route_pool = pool, pool = %b.pool, "failing over");
            }
            b.route = Rc::from(pool);
            let pattern = self.settings.pattern_for(pool);
            self.fe.stats.route_uses(&pattern, &b.pool);
            self.backend = Some(b);
        }
        Ok(self.backend.as_mut().expect("set above"))
    }

    /// MAIL to the back end of `pool`.
    async fn mail(
        &mut self,
        pool: &str,
        helo: Option<(&str, bool)>,
        from: &ReversePath,
        params: &MailParams,
    ) -> Reply {
        let b = match self.backend_for(pool, helo).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        match b.mail(from, params).await {
            Ok(r) => {
                if r.is_positive() {
                    CoreMetrics::inc(&self.fe.stats.transactions);
                }
                r
            }
            Err(e) => {
                self.failed(Failure::Lost, &e.to_string()).await;
                proxy::backend_failed()
            }
        }
    }

    async fn rcpt(&mut self, to: &ForwardPath, helo: Option<(&str, bool)>) -> Reply {
        let domain = match to {
            ForwardPath::Mailbox(m) => m.domain_lowercase(),
            ForwardPath::Postmaster => String::new(),
        };
        let settings = self.settings.clone();
        let pool = settings.pool_for(&domain);
        let open = self.backend.as_ref().is_some_and(|b| b.in_tx);
        if !open {
            let Some((from, params)) = self.pending_mail.clone() else {
                return proxy::backend_failed();
            };
            let r = self.mail(pool, helo, &from, &params).await;
            if !r.is_positive() {
                return r;
            }
        } else if self.backend.as_ref().is_some_and(|b| &*b.route != pool) {
            // One transaction goes to one back end: the client sends these
            // recipients again in a transaction of their own (RFC 5321
            // 4.5.3.1.10).
            return Reply::new(
                452,
                Status(4, 5, 3),
                format!("Error: recipients of {domain} go in another transaction"),
            );
        }
        let b = self.backend.as_mut().expect("a transaction is open");
        match b.rcpt(to).await {
            Ok(r) => r,
            Err(e) => {
                self.failed(Failure::Lost, &e.to_string()).await;
                proxy::backend_failed()
            }
        }
    }

    async fn data(&mut self) -> Reply {
        let Some(b) = self.backend.as_mut().filter(|b| b.in_tx) else {
            return proxy::backend_failed();
        };
        match b.start_content().await {
            Ok(None) => Reply::new(354, Status(2, 0, 0), "go ahead"),
            Ok(Some(r)) => r,
            Err(e) => {
                self.failed(Failure::Lost, &e.to_string()).await;
                proxy::backend_failed()
            }
        }
    }

    /// A piece of content to the back end. `Some(reply)`: the end of data
    /// (the client's reply); `Err(())`: the back end failed mid-content.
    async fn content(&mut self, bytes: &[u8], last: bool) -> Result<Option<Reply>, ()> {
        let f = &self.settings.config.frontend;
        let (data_timeout, command_timeout) = (f.data_timeout, f.command_timeout);
        let Some(b) = self.backend.as_mut() else {
            return Err(());
        };
        match b.content(bytes, last, data_timeout, command_timeout).await {
            Ok(None) => Ok(None),
            Ok(Some(r)) if r.is_positive() => {
                CoreMetrics::inc(&self.fe.stats.messages);
                Ok(Some(r))
            }
            Ok(Some(r)) if r.is_permanent() => {
                CoreMetrics::inc(&self.fe.stats.refused);
                Ok(Some(r))
            }
            Ok(Some(r)) => {
                // A back end that could not make the message durable (and
                // shadowed): transient for the client, whatever it said.
                let text = format!("Error: the back end deferred the message ({})", r.text());
                self.fe.stats.failed(Failure::Deferred);
                Ok(Some(Reply::new(451, Status(4, 4, 0), text)))
            }
            Err(e) => {
                self.failed(Failure::Lost, &e.to_string()).await;
                Err(())
            }
        }
    }

    /// The client dropped the transaction.
    async fn reset(&mut self) {
        self.pending_mail = None;
        let usable = match self.backend.as_mut() {
            Some(b) if b.in_tx || b.in_content() => b.reset().await,
            _ => true,
        };
        if !usable {
            if let Some(b) = self.backend.take() {
                b.close().await;
            }
        }
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
    fe: &Frontend,
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
            fe.shutdown.wait().await;
            Ok(Wake::Shutdown)
        };
        futures_lite::future::or(read_or_timer, stop).await
    } else {
        read_or_timer.await
    }
}

async fn flush(stream: &mut Stream, s: &mut Session<AcceptAll>, wait: Duration) -> bool {
    while !s.transmit().is_empty() {
        let n = match crate::outbound::timed(wait, stream.write(s.transmit())).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        s.transmitted(n);
    }
    crate::outbound::timed(wait, stream.flush()).await.is_ok()
}

async fn handshake(fe: &Frontend, stream: &mut Stream, peer: SocketAddr) -> bool {
    let Some(tcp) = stream.take_plain() else {
        return false;
    };
    match fe.tls.accept(tcp, false).await {
        Ok(s) => {
            *stream = s;
            true
        }
        Err(f) => {
            tracing::info!(client = %peer, reason = f.as_str(), "TLS handshake failed");
            false
        }
    }
}

/// Serves one client connection to its end.
pub(super) async fn run(fe: &Frontend, tcp: TcpStream, peer: SocketAddr, implicit: bool) {
    let _ = tcp.set_nodelay(true);
    let settings = fe.settings();
    let limits = settings.config.smtp.clone();
    let mut stream = Stream::Plain(tcp);
    if implicit && !handshake(fe, &mut stream, peer).await {
        return;
    }
    let mut s = Session::new(settings.smtp.clone(), AcceptAll);
    s.set_tls_active(implicit);
    s.set_tls_offer(fe.tls.offers_tls() && !implicit);
    let mut p = Proxy {
        fe,
        settings,
        peer,
        backend: None,
        pending_mail: None,
    };
    let started = Instant::now();
    let mut buf = vec![0u8; READ_BUF_BYTES];
    let (mut closing, mut shutdown_seen) = (false, false);
    loop {
        if !flush(&mut stream, &mut s, limits.inactivity_timeout).await || closing {
            break;
        }
        if fe.shutdown.is_set() && s.is_idle() {
            s.shutdown(Reply::new(
                421,
                Status(4, 3, 2),
                "Service shutting down, try again later",
            ));
        } else {
            let remaining = limits.session_timeout.saturating_sub(started.elapsed());
            let wait = limits.inactivity_timeout.min(remaining);
            match read_some(&mut stream, &mut buf, wait, fe, !shutdown_seen).await {
                Ok(Wake::Read(0)) | Err(_) => break,
                Ok(Wake::Read(n)) => s.receive(&buf[..n]),
                Ok(Wake::TimedOut) => {
                    CoreMetrics::inc(&fe.metrics.timeouts);
                    s.timeout();
                }
                Ok(Wake::Shutdown) => shutdown_seen = true,
            }
        }
        while let Some(event) = s.poll() {
            match event {
                Event::Mail { from, params } => {
                    if p.settings.by_domain {
                        // The pool depends on the first recipient.
                        p.pending_mail = Some((from, params));
                        s.verdict(Reply::new(250, Status(2, 1, 0), "Ok"));
                    } else {
                        let pool = p.settings.default_pool.clone();
                        let helo = s.helo().map(|(n, e)| (n.to_owned(), e));
                        let helo = helo.as_ref().map(|(n, e)| (n.as_str(), *e));
                        let r = p.mail(&pool, helo, &from, &params).await;
                        s.verdict(r);
                    }
                }
                Event::Rcpt { to } => {
                    let helo = s.helo().map(|(n, e)| (n.to_owned(), e));
                    let helo = helo.as_ref().map(|(n, e)| (n.as_str(), *e));
                    let r = p.rcpt(&to, helo).await;
                    s.verdict(r);
                }
                Event::Data => {
                    let r = p.data().await;
                    s.verdict(r);
                }
                Event::Content { bytes, last } => match p.content(&bytes, last).await {
                    Ok(Some(r)) => s.complete_with(r),
                    Ok(None) => {}
                    Err(()) if last => s.complete_with(proxy::backend_failed()),
                    Err(()) => s.abandon(proxy::backend_failed()),
                },
                Event::Reset => p.reset().await,
                Event::StartTls => {
                    if !flush(&mut stream, &mut s, limits.inactivity_timeout).await
                        || !handshake(fe, &mut stream, peer).await
                    {
                        closing = true;
                        break;
                    }
                    s.tls_established();
                }
                Event::Close => closing = true,
                // Not offered by a front end (no AUTH, no XCLIENT, no
                // shadow link) and not produced in proxy mode: refused
                // should the session ever ask.
                Event::Message { .. } => s.complete(Err(proxy::backend_failed())),
                Event::Discard { .. } => s.answer(Reply::new(
                    502,
                    Status(5, 5, 1),
                    "Error: command not implemented",
                )),
                Event::Auth { .. } => s.auth_result(Err(Reply::new(
                    502,
                    Status(5, 5, 1),
                    "Error: AUTH is not offered here",
                ))),
                Event::Xclient(_) => s.xclient_result(Err(Reply::new(
                    550,
                    Status(5, 7, 0),
                    "Error: insufficient authorization",
                ))),
            }
        }
        if closing && s.transmit().is_empty() {
            break;
        }
    }
    let _ = flush(&mut stream, &mut s, Duration::from_secs(1)).await;
    if let Some(b) = p.backend.take() {
        b.close().await;
    }
    let _ = stream.close().await;
}
