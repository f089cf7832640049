//! One outbound SMTP connection on the core's executor: connect, banner,
//! EHLO (HELO fallback), then any number of transactions, each driven by
//! the sans-IO [`tern_smtp::transaction::Transaction`], and QUIT. Every
//! read and write has the send-side inactivity timeout.

use std::net::SocketAddr;
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use tern_smtp::client::{self, Capabilities, MailOptions};
use tern_smtp::reply::ReplyParser;
use tern_smtp::transaction::{Outcome, RcptStatus, Transaction};
use tern_smtp::{Reply, Status};

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

/// Largest single write (each has its own inactivity deadline).
const WRITE_CHUNK: usize = 256 * 1024;

/// An open, greeted connection.
pub struct Conn {
    stream: TcpStream,
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
    /// Connects and greets: banner, EHLO (HELO if EHLO is refused).
    pub async fn open(
        peer: SocketAddr,
        helo_name: &str,
        connect_timeout: Duration,
        greeting_timeout: Duration,
        timeout: Duration,
    ) -> Result<Conn, ConnError> {
        let stream = TcpStream::connect_timeout(peer, connect_timeout)
            .await
            .map_err(|e| ConnError::Connect(peer, std::io::Error::other(e.to_string())))?;
        let _ = stream.set_nodelay(true);
        let mut c = Conn {
            stream,
            peer,
            caps: Capabilities::default(),
            parser: ReplyParser::new(),
            buf: vec![0; 16 * 1024],
            timeout: greeting_timeout,
            sent: 0,
            txn_replies: 0,
            broken: false,
        };
        let banner = c.reply().await?;
        if banner.code != 220 {
            return Err(ConnError::Refused(peer, banner));
        }
        c.timeout = timeout;
        let mut out = Vec::new();
        client::ehlo(&mut out, helo_name);
        c.write(&out).await?;
        let ehlo = c.reply().await?;
        if ehlo.code == 250 {
            c.caps = Capabilities::from_ehlo(&ehlo);
        } else {
            out.clear();
            client::helo(&mut out, helo_name);
            c.write(&out).await?;
            let helo = c.reply().await?;
            if helo.code != 250 {
                return Err(ConnError::Refused(peer, helo));
            }
        }
        Ok(c)
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
        Ok(())
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
