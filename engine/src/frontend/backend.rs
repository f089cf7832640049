//! One back-end connection of a client session: opened on the first
//! transaction (the route's pool, the first host up by priority and
//! weight, failing over to the next on a connect, session or XCLIENT
//! failure), told who the client is (XCLIENT), then fed the session's
//! commands and content as they come; reused for the session's next
//! transaction when it goes to the same pool.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use tern_smtp::client::{self, DotStuffer};
use tern_smtp::xclient::Xclient;
use tern_smtp::Reply;

use super::stats::{Failure, PoolStats};
use super::Frontend;
use crate::config::ClientIdentity;
use crate::delivery::route::Candidate;
use crate::outbound::{Conn, ConnError, Security, Timeouts};

/// How the content goes to the back end.
enum Content {
    /// Not started.
    Idle,
    /// As BDAT chunks (the back end offers CHUNKING).
    Chunks,
    /// As DATA, dot-stuffed as it comes.
    Data(DotStuffer),
}

/// An open back-end connection.
pub(super) struct Backend {
    conn: Conn,
    /// The pool it belongs to.
    pub(super) pool: Rc<str>,
    /// The pool the route named (`pool` or, after a failover, the pool
    /// this one stands in for).
    pub(super) route: Rc<str>,
    /// The host.
    pub(super) addr: SocketAddr,
    stats: Arc<PoolStats>,
    /// MAIL was accepted: a transaction is open.
    pub(super) in_tx: bool,
    content: Content,
    out: Vec<u8>,
}

/// Who the client is, for XCLIENT.
pub(super) struct Client<'a> {
    pub(super) addr: SocketAddr,
    pub(super) helo: Option<(&'a str, bool)>,
}

/// The TLS server name of a candidate: its host without the port.
fn host_of(c: &Candidate) -> &str {
    match c.name.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => host.trim_matches(['[', ']']),
        _ => &c.name,
    }
}

/// Why a connection failed, for the counters.
fn reason(e: &ConnError) -> Failure {
    match e {
        ConnError::Connect(..) => Failure::Connect,
        ConnError::Refused(..) | ConnError::TlsRefused(..) | ConnError::Handshake(..) => {
            Failure::Session
        }
        ConnError::Io(..) | ConnError::Protocol(..) => Failure::Lost,
    }
}

impl Backend {
    /// Opens a connection to the best host up among `candidates`,
    /// trying the next on failure (each failed host marked down).
    pub(super) async fn open(
        fe: &Frontend,
        config: &crate::config::Config,
        candidates: &[(Candidate, Rc<str>)],
        client: &Client<'_>,
    ) -> Result<Backend, Failure> {
        let plain: Vec<Candidate> = candidates.iter().map(|(c, _)| c.clone()).collect();
        let mut tried: Vec<SocketAddr> = Vec::new();
        loop {
            let now = fe.now_ms();
            let roll = fe.roll();
            let Some(c) = fe.health.borrow().pick(&plain, now, &tried, roll).cloned() else {
                fe.stats.failed(Failure::Unavailable);
                return Err(Failure::Unavailable);
            };
            tried.push(c.addr);
            let pool = candidates
                .iter()
                .find(|(k, _)| k.addr == c.addr)
                .map(|(_, p)| p.clone())
                .expect("picked from the list");
            match Backend::connect(fe, config, &c, client).await {
                Ok(conn) => {
                    fe.health.borrow_mut().mark_up(&c.addr);
                    let stats = fe.pool_stats(&pool);
                    crate::metrics::CoreMetrics::inc(&stats.connections);
                    return Ok(Backend {
                        conn,
                        route: pool.clone(),
                        pool,
                        addr: c.addr,
                        stats,
                        in_tx: false,
                        content: Content::Idle,
                        out: Vec::new(),
                    });
                }
                Err((why, text)) => {
                    fe.stats.failed(why);
                    tracing::warn!(backend = %c.addr, pool = %pool, reason = why.as_str(), error = %text, "back end failed; trying the next");
                    fe.health.borrow_mut().mark_down(c.addr, now, &text);
                }
            }
        }
    }

    async fn connect(
        fe: &Frontend,
        config: &crate::config::Config,
        c: &Candidate,
        client: &Client<'_>,
    ) -> Result<Conn, (Failure, String)> {
        let f = &config.frontend;
        let t = Timeouts {
            connect: f.connect_timeout,
            greeting: f.command_timeout,
            inactivity: f.command_timeout,
        };
        let sec = Security {
            tls: &fe.tls,
            policy: c.tls_policy,
            host: host_of(c),
            pin: None,
            report: false,
        };
        let mut conn = Conn::open(c.addr, &config.hostname, &t, sec)
            .await
            .map_err(|e| (reason(&e), e.to_string()))?;
        if f.client_identity == ClientIdentity::Xclient {
            let offered = conn.caps.other.iter().any(|(k, _)| k == "XCLIENT");
            if !offered {
                conn.quit().await;
                return Err((
                    Failure::Xclient,
                    format!("{} does not offer XCLIENT (list this front end in its relay.front_end_networks, or set frontend.client_identity = \"none\")", c.addr),
                ));
            }
            let x = Xclient {
                addr: Some(Some(client.addr.ip())),
                port: Some(Some(client.addr.port())),
                helo: Some(client.helo.map(|(n, _)| n.to_owned())),
                esmtp: Some(Some(client.helo.is_none_or(|(_, e)| e))),
                ..Xclient::default()
            };
            conn.xclient(&x, &config.hostname).await.map_err(|e| {
                let why = match e {
                    ConnError::Refused(..) => Failure::Xclient,
                    ref other => reason(other),
                };
                (why, e.to_string())
            })?;
        }
        Ok(conn)
    }

    /// MAIL FROM with the client's parameters (those the back end offers).
    pub(super) async fn mail(
        &mut self,
        from: &tern_smtp::address::ReversePath,
        params: &tern_smtp::command::MailParams,
    ) -> Result<Reply, ConnError> {
        self.out.clear();
        let opts = client::MailOptions {
            size: params.size,
            body: params.body,
            smtputf8: params.smtputf8,
            extra: Vec::new(),
        };
        client::mail_from(&mut self.out, &from.to_string(), &opts, &self.conn.caps);
        let line = std::mem::take(&mut self.out);
        let r = self.conn.command(&line).await;
        self.out = line;
        if r.as_ref().is_ok_and(Reply::is_positive) {
            self.in_tx = true;
        }
        r
    }

    /// RCPT TO.
    pub(super) async fn rcpt(
        &mut self,
        to: &tern_smtp::address::ForwardPath,
    ) -> Result<Reply, ConnError> {
        self.out.clear();
        client::rcpt_to(&mut self.out, &to.to_string());
        let line = std::mem::take(&mut self.out);
        let r = self.conn.command(&line).await;
        self.out = line;
        r
    }

    /// The client sent DATA (or its first BDAT): with CHUNKING the
    /// content goes as chunks and the go-ahead is ours (`None`); else
    /// DATA, and its reply is the go-ahead.
    pub(super) async fn start_content(&mut self) -> Result<Option<Reply>, ConnError> {
        if self.conn.caps.chunking {
            self.content = Content::Chunks;
            return Ok(None);
        }
        let mut line = Vec::new();
        client::data(&mut line);
        let r = self.conn.command(&line).await?;
        if r.code == 354 {
            self.content = Content::Data(DotStuffer::default());
        }
        Ok(Some(r))
    }

    /// Content started: the transaction can no longer be reset, only
    /// abandoned by closing.
    pub(super) fn in_content(&self) -> bool {
        !matches!(self.content, Content::Idle)
    }

    /// Forwards a piece of the content; the last one returns the back
    /// end's end-of-data reply (waited for up to `data_timeout`).
    pub(super) async fn content(
        &mut self,
        bytes: &[u8],
        last: bool,
        data_timeout: std::time::Duration,
        command_timeout: std::time::Duration,
    ) -> Result<Option<Reply>, ConnError> {
        self.out.clear();
        match &mut self.content {
            Content::Idle => {
                return Err(ConnError::Protocol(self.addr, "content before DATA".into()))
            }
            Content::Chunks => {
                let head = if last {
                    format!("BDAT {} LAST\r\n", bytes.len())
                } else {
                    format!("BDAT {}\r\n", bytes.len())
                };
                self.out.extend_from_slice(head.as_bytes());
                self.out.extend_from_slice(bytes);
            }
            Content::Data(stuffer) => {
                stuffer.push(&mut self.out, bytes);
                if last {
                    stuffer.finish(&mut self.out);
                }
            }
        }
        let out = std::mem::take(&mut self.out);
        let written = self.conn.write_all(&out).await;
        self.out = out;
        written?;
        let chunked = matches!(self.content, Content::Chunks);
        if !last {
            if chunked {
                let r = self.conn.read_reply().await?;
                if !r.is_positive() {
                    return Err(ConnError::Refused(self.addr, r));
                }
            }
            return Ok(None);
        }
        self.conn.set_timeout(data_timeout);
        let started = std::time::Instant::now();
        let r = self.conn.read_reply().await;
        self.conn.set_timeout(command_timeout);
        self.stats
            .eod_us
            .observe(started.elapsed().as_micros() as u64);
        self.in_tx = false;
        self.content = Content::Idle;
        r.map(Some)
    }

    /// The client dropped the transaction: RSET (false: the connection
    /// is not usable any more).
    pub(super) async fn reset(&mut self) -> bool {
        if self.in_content() {
            return false;
        }
        self.in_tx = false;
        let mut line = Vec::new();
        client::rset(&mut line);
        matches!(self.conn.command(&line).await, Ok(r) if r.is_positive())
    }

    /// QUIT and close; mid-content, close without a word (the back end
    /// keeps nothing of a message whose end never came).
    pub(super) async fn close(self) {
        if self.in_content() {
            self.conn.abort().await;
        } else {
            self.conn.quit().await;
        }
    }
}
