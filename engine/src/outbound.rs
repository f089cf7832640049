//! One outbound SMTP connection on the core's executor: connect, banner,
//! EHLO (HELO fallback), STARTTLS by the connection's [`Security`] (then
//! EHLO again, RFC 3207), then any number of transactions, each driven by
//! the sans-IO [`tern_smtp::transaction::Transaction`], and QUIT. Every
//! read and write has the send-side inactivity timeout.
//!
//! TLS levels are Postfix's: `may` uses STARTTLS when offered and, when
//! the handshake fails, connects once more in clear text (counted in
//! `tern_tls_cleartext_fallbacks_total`); `encrypt` and `verify` never
//! send in clear text: no STARTTLS offered, a refused STARTTLS or a
//! failed handshake is a temporary failure of that host.

use std::net::SocketAddr;
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use std::sync::atomic::Ordering::Relaxed;
use tern_smtp::client::{self, Capabilities, MailOptions};
use tern_smtp::reply::ReplyParser;
use tern_smtp::transaction::{Outcome, RcptStatus, Transaction};
use tern_smtp::{Reply, Status};

use crate::config::TlsPolicy;
use crate::tls::{Check, Failure, Stream, Tls, TlsInfo};

/// Why a connection failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// TCP connect failed or timed out.
    #[error("cannot connect to {0}: {1}")]
    Connect(SocketAddr, std::io::Error),
    /// The greeting was not 220, or EHLO and HELO were refused.
    #[error("{0} refused the session: {1}")]
    Refused(SocketAddr, Reply),
    /// Read/write error, timeout, or the peer closed.
    #[error("connection to {0} lost: {1}")]
    Io(SocketAddr, std::io::Error),
    /// The peer broke the protocol.
    #[error("{0} broke the protocol: {1}")]
    Protocol(SocketAddr, String),
    /// TLS is required and the peer did not offer or refused STARTTLS.
    #[error("TLS is required but {0} {1}")]
    TlsRefused(SocketAddr, String),
    /// The TLS handshake failed.
    #[error("TLS handshake with {0} failed ({reason})", reason = .1.as_str())]
    Handshake(SocketAddr, Failure),
}

/// How a connection is secured.
#[derive(Clone, Copy)]
pub struct Security<'a> {
    /// The node's TLS configs and counters.
    pub tls: &'a Tls,
    /// The level.
    pub policy: TlsPolicy,
    /// The next hop's name (SNI; what `verify` checks the certificate
    /// against).
    pub host: &'a str,
    /// The shadow link: only this certificate is accepted and ours is
    /// shown (the policy is then `encrypt` in effect).
    pub pin: Option<crate::config::Fingerprint>,
    /// Verify the certificate but only report a failure (MTA-STS
    /// `testing`); `verify` and pins still refuse.
    pub report: bool,
}

impl Security<'_> {
    fn check(&self) -> Check {
        match (self.pin, self.policy) {
            (Some(f), _) => Check::Pinned(f),
            (None, TlsPolicy::Verify) => Check::Verify,
            (None, _) if self.report => Check::Report,
            (None, _) => Check::Any,
        }
    }

    fn required(&self) -> bool {
        self.pin.is_some() || self.policy.required()
    }

    fn wanted(&self) -> bool {
        self.pin.is_some() || self.policy != TlsPolicy::None
    }
}

impl ConnError {
    /// The reply recorded for recipients that could not be tried.
    pub fn as_reply(&self) -> Reply {
        match self {
            ConnError::Refused(_, r) if r.is_transient() || r.is_permanent() => {
                // A refused session says nothing about the recipients: try
                // again later (another host, or this one when it is back).
                Reply::new(451, Status(4, 4, 0), format!("{self}"))
            }
            // RFC 3463 X.7.4 "security features not supported", X.7.5
            // "cryptographic failure" (what Postfix answers for the same).
            ConnError::TlsRefused(..) => Reply::new(451, Status(4, 7, 4), format!("{self}")),
            ConnError::Handshake(..) => Reply::new(451, Status(4, 7, 5), format!("{self}")),
            _ => Reply::new(451, Status(4, 4, 1), format!("{self}")),
        }
    }
}

/// Runs `fut` with a time limit; `TimedOut` when it passes.
pub async fn timed<T>(
    limit: Duration,
    fut: impl std::future::Future<Output = std::io::Result<T>>,
) -> std::io::Result<T> {
    let timer = async {
        glommio::timer::sleep(limit).await;
        Err(std::io::ErrorKind::TimedOut.into())
    };
    futures_lite::future::or(fut, timer).await
}

/// The time limits of opening a connection.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// TCP connect.
    pub connect: Duration,
    /// The banner.
    pub greeting: Duration,
    /// Every later read and write.
    pub inactivity: Duration,
}

/// Largest single write (each has its own inactivity deadline).
const WRITE_CHUNK: usize = 256 * 1024;

/// An open, greeted connection.
pub struct Conn {
    stream: Stream,
    /// Protocol and cipher when the connection is in TLS.
    pub tls: Option<TlsInfo>,
    /// Who.
    pub peer: SocketAddr,
    /// What the peer offers.
    pub caps: Capabilities,
    parser: ReplyParser,
    buf: Vec<u8>,
    timeout: Duration,
    /// Transactions run on it.
    pub sent: usize,
    /// Replies received in the current transaction.
    pub txn_replies: usize,
    /// The connection cannot be used again (RSET failed after a result).
    pub broken: bool,
}

impl Conn {
    /// Connects, greets (banner, EHLO; HELO if EHLO is refused) and
    /// secures the connection as `sec` says. Under `may`, a failed
    /// handshake is followed by one more connection in clear text.
    pub async fn open(
        peer: SocketAddr,
        helo_name: &str,
        t: &Timeouts,
        sec: Security<'_>,
    ) -> Result<Conn, ConnError> {
        match Conn::open_once(peer, helo_name, t, sec, sec.wanted()).await {
            Err(ConnError::Handshake(_, f)) if !sec.required() => {
                sec.tls.stats.cleartext_fallbacks.fetch_add(1, Relaxed);
                tracing::info!(%peer, reason = f.as_str(), "TLS handshake failed; tls_policy = \"may\": trying once in clear text");
                Conn::open_once(peer, helo_name, t, sec, false).await
            }
            r => r,
        }
    }

    async fn open_once(
        peer: SocketAddr,
        helo_name: &str,
        t: &Timeouts,
        sec: Security<'_>,
        starttls: bool,
    ) -> Result<Conn, ConnError> {
        let stream = TcpStream::connect_timeout(peer, t.connect)
            .await
            .map_err(|e| ConnError::Connect(peer, std::io::Error::other(e.to_string())))?;
        let _ = stream.set_nodelay(true);
        let mut c = Conn {
            stream: Stream::Plain(stream),
            tls: None,
            peer,
            caps: Capabilities::default(),
            parser: ReplyParser::new(),
            buf: vec![0; 16 * 1024],
            timeout: t.greeting,
            sent: 0,
            txn_replies: 0,
            broken: false,
        };
        let banner = c.reply().await?;
        if banner.code != 220 {
            return Err(ConnError::Refused(peer, banner));
        }
        c.timeout = t.inactivity;
        c.greet(helo_name).await?;
        if starttls {
            c.starttls(helo_name, sec).await?;
        }
        Ok(c)
    }

    /// EHLO, or HELO if EHLO is refused.
    async fn greet(&mut self, helo_name: &str) -> Result<(), ConnError> {
        let mut out = Vec::new();
        client::ehlo(&mut out, helo_name);
        let ehlo = self.command(&out).await?;
        if ehlo.code == 250 {
            self.caps = Capabilities::from_ehlo(&ehlo);
            return Ok(());
        }
        out.clear();
        client::helo(&mut out, helo_name);
        let helo = self.command(&out).await?;
        if helo.code != 250 {
            return Err(ConnError::Refused(self.peer, helo));
        }
        self.caps = Capabilities::default();
        Ok(())
    }

    /// STARTTLS, the handshake, EHLO again. Not offered or refused: an
    /// error only when TLS is required.
    async fn starttls(&mut self, helo_name: &str, sec: Security<'_>) -> Result<(), ConnError> {
        let peer = self.peer;
        if !self.caps.starttls {
            return match sec.required() {
                true => Err(ConnError::TlsRefused(
                    peer,
                    "does not offer STARTTLS".into(),
                )),
                false => Ok(()),
            };
        }
        let mut out = Vec::new();
        client::starttls(&mut out);
        let r = self.command(&out).await?;
        if r.code != 220 {
            return match sec.required() {
                true => Err(ConnError::TlsRefused(
                    peer,
                    format!("answered STARTTLS with {r}"),
                )),
                false => Ok(()),
            };
        }
        if self.parser.buffered() > 0 {
            // Bytes after the 220 were sent in clear text before the
            // handshake: never read them as if they came inside TLS. It
            // is a failed negotiation (`may` falls back to clear text).
            tracing::info!(%peer, "data after the 220 to STARTTLS: TLS negotiation failed");
            sec.tls
                .stats
                .failed(crate::tls::stats::Direction::Out, Failure::Protocol);
            return Err(ConnError::Handshake(peer, Failure::Protocol));
        }
        let tcp = self
            .stream
            .take_plain()
            .expect("STARTTLS on a plain connection");
        self.stream = sec
            .tls
            .connect(tcp, sec.host, sec.check())
            .await
            .map_err(|f| ConnError::Handshake(peer, f))?;
        self.tls = self.stream.tls_info();
        self.greet(helo_name).await
    }

    /// Writes everything; the inactivity timeout applies to each write
    /// that makes progress, not to the whole (a large message on a slow
    /// link is fine as long as bytes move).
    async fn write(&mut self, bytes: &[u8]) -> Result<(), ConnError> {
        let peer = self.peer;
        let mut at = 0;
        while at < bytes.len() {
            let end = bytes.len().min(at + WRITE_CHUNK);
            let n = timed(self.timeout, self.stream.write(&bytes[at..end]))
                .await
                .map_err(|e| ConnError::Io(peer, e))?;
            if n == 0 {
                return Err(ConnError::Io(peer, std::io::ErrorKind::WriteZero.into()));
            }
            at += n;
        }
        // TLS keeps what the socket did not take yet: push it out.
        timed(self.timeout, self.stream.flush())
            .await
            .map_err(|e| ConnError::Io(peer, e))
    }

    /// The next complete reply.
    async fn reply(&mut self) -> Result<Reply, ConnError> {
        loop {
            match self.parser.next_reply() {
                Ok(Some(r)) => {
                    self.txn_replies += 1;
                    return Ok(r);
                }
                Ok(None) => {}
                Err(e) => return Err(ConnError::Protocol(self.peer, e.to_string())),
            }
            let peer = self.peer;
            let n = timed(self.timeout, self.stream.read(&mut self.buf))
                .await
                .map_err(|e| ConnError::Io(peer, e))?;
            if n == 0 {
                return Err(ConnError::Io(
                    peer,
                    std::io::ErrorKind::UnexpectedEof.into(),
                ));
            }
            self.parser.feed(&self.buf[..n]);
        }
    }

    /// Runs one transaction. `Err` when the connection broke before every
    /// reply arrived (the caller treats its recipients as temporary).
    pub async fn send(
        &mut self,
        from: &str,
        rcpts: &[String],
        opts: &MailOptions,
        content: &[u8],
    ) -> Result<Outcome, ConnError> {
        self.sent += 1;
        self.txn_replies = 0;
        let mut t = Transaction::new(&self.caps, from, rcpts, opts, content);
        loop {
            let out = t.transmit();
            if !out.is_empty() {
                self.write(&out).await?;
            }
            if let Some(o) = t.outcome() {
                let o = o.clone();
                if !o
                    .recipients
                    .iter()
                    .any(|r| matches!(r, RcptStatus::Delivered(_)))
                {
                    // Leave the server in a known state for the next one.
                    // A failure here changes nothing about the result: the
                    // connection is just not reused.
                    let mut rset = Vec::new();
                    client::rset(&mut rset);
                    let ok = match self.write(&rset).await {
                        Ok(()) => self.reply().await.is_ok_and(|r| r.is_positive()),
                        Err(_) => false,
                    };
                    self.broken = !ok;
                }
                return Ok(o);
            }
            let r = self.reply().await?;
            if r.code == 421 {
                // Closing: what is still unanswered fails temporarily.
                let _ = t.handle(r.clone());
                return Err(ConnError::Refused(self.peer, r));
            }
            t.handle(r)
                .map_err(|e| ConnError::Protocol(self.peer, e.to_string()))?;
        }
    }

    /// Runs several transactions pipelined back to back (RFC 2920 with
    /// RFC 3030 BDAT: each one's MAIL, RCPTs and `BDAT ... LAST` go out
    /// with the others in one write, and the replies are matched in
    /// order). Needs PIPELINING and CHUNKING; `Err` when the connection
    /// broke or the peer broke the protocol before every reply arrived
    /// (transactions without an outcome then count as not made).
    pub async fn send_batch(&mut self, txns: &mut [Transaction]) -> Result<(), ConnError> {
        if !(self.caps.pipelining && self.caps.chunking) {
            return Err(ConnError::Protocol(
                self.peer,
                "pipelined transactions need PIPELINING and CHUNKING".into(),
            ));
        }
        self.sent += 1;
        self.txn_replies = 0;
        let mut out = Vec::new();
        for t in txns.iter_mut() {
            out.extend_from_slice(&t.transmit());
        }
        self.write(&out).await?;
        for t in txns.iter_mut() {
            while t.outcome().is_none() {
                let r = self.reply().await?;
                if r.code == 421 {
                    return Err(ConnError::Refused(self.peer, r));
                }
                t.handle(r)
                    .map_err(|e| ConnError::Protocol(self.peer, e.to_string()))?;
                if !t.transmit().is_empty() {
                    // With PIPELINING and CHUNKING everything went out at
                    // once; anything more means the transaction changed
                    // course and the batch's reply order is lost.
                    return Err(ConnError::Protocol(
                        self.peer,
                        "a pipelined transaction wanted another round trip".into(),
                    ));
                }
            }
        }
        if self.parser.buffered() > 0 {
            // More than the batch's replies: the next batch would match
            // its replies from the wrong place. Every transaction above has
            // its own outcome already; this connection is not used again.
            return Err(ConnError::Protocol(
                self.peer,
                "data after the last reply of a pipelined batch".into(),
            ));
        }
        Ok(())
    }

    /// Writes `bytes` as they are (a proxy's commands and content).
    pub async fn write_all(&mut self, bytes: &[u8]) -> Result<(), ConnError> {
        self.write(bytes).await
    }

    /// The next reply.
    pub async fn read_reply(&mut self) -> Result<Reply, ConnError> {
        self.reply().await
    }

    /// The limit of every later read and write.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// XCLIENT (a front end naming the real client): the server greets
    /// again with 220 and is greeted again (EHLO). `Err(Refused)` when it
    /// did not answer 220.
    pub async fn xclient(
        &mut self,
        x: &tern_smtp::xclient::Xclient,
        helo_name: &str,
    ) -> Result<(), ConnError> {
        let mut out = Vec::new();
        tern_smtp::xclient::encode(&mut out, x);
        let r = self.command(&out).await?;
        if r.code != 220 {
            return Err(ConnError::Refused(self.peer, r));
        }
        self.greet(helo_name).await
    }

    /// Sends one command line and returns its reply.
    pub async fn command(&mut self, line: &[u8]) -> Result<Reply, ConnError> {
        self.write(line).await?;
        self.reply().await
    }

    /// Did this transaction fail because a reused connection had been
    /// closed by the peer while idle (nothing answered yet)? Then the
    /// message never reached it: send it again on a new connection.
    pub fn stale(&self, e: &ConnError) -> bool {
        self.sent > 1
            && match e {
                ConnError::Io(..) => self.txn_replies == 0,
                // The server timed the idle session out: its 421 came first.
                ConnError::Refused(_, r) => r.code == 421 && self.txn_replies == 1,
                _ => false,
            }
    }

    /// Closes without QUIT (a transaction abandoned mid-content: the
    /// server sees the connection end before the content's end, and
    /// keeps nothing).
    pub async fn abort(mut self) {
        let _ = self.stream.close().await;
    }

    /// QUIT and close (errors ignored: the work is done).
    pub async fn quit(mut self) {
        let mut out = Vec::new();
        client::quit(&mut out);
        if self.write(&out).await.is_ok() {
            let _ = timed(Duration::from_secs(1).min(self.timeout), async {
                let _ = self.reply().await;
                Ok(())
            })
            .await;
        }
        let _ = self.stream.close().await;
    }
}
