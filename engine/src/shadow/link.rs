//! The primary side of the shadow link: sends a copy of each accepted
//! message to a peer (tern's `XSHADOW` extension over SMTP) and waits for
//! the peer's 250, which it gives only after its own group commit.
//!
//! Per core, per peer, a [`Pipe`]: copies queue there and up to
//! [`LINKS_PER_PEER`] driver tasks, each on its own connection, take them
//! in batches. A batch is pipelined (RFC 2920 + RFC 3030): every copy's
//! MAIL, RCPTs and `BDAT <n> LAST` go out in one write and the replies
//! come back in order; the peer queues all the copies it read and answers
//! them after one commit (`inbound/session.rs`). So a busy core pays one write,
//! one read and one peer commit per batch instead of per message, and
//! while one connection waits for its batch's replies the next batch
//! goes out on another. Connections stay open for the next batches.
//! Peers are tried in `ClusterConfig::shadow_order`, each bounded by
//! `shadow_timeout` (waiting in the queue included).

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tern_smtp::client::MailOptions;
use tern_smtp::command::Body;
use tern_smtp::transaction::{RcptStatus, Transaction};

use super::ShadowShared;
use crate::cluster::{ClusterConfig, Peer};
use crate::config::TlsPolicy;
use crate::outbound::{timed, Conn, ConnError, Security, Timeouts};
use crate::tls::Tls;

/// Connections per core per peer carrying batches at the same time.
pub const LINKS_PER_PEER: usize = 2;
/// Most copies in one batch.
pub const BATCH_COPIES_MAX: usize = 64;
/// Most message bytes in one batch (a larger copy goes alone).
pub const BATCH_BYTES_MAX: usize = 1 << 20;
/// A link to a peer asks it for discard notifications (`XQDISCARD`, as
/// the heartbeat does) at most this often, after a batch (SPEC 3: on any
/// session the shadow has open to the primary anyway).
pub const DISCARD_ASK_EVERY: Duration = Duration::from_secs(1);

/// What the shadow copy needs of a message.
pub struct Copy {
    /// Envelope sender ("" = null).
    pub from: String,
    /// Envelope recipients.
    pub rcpts: Vec<String>,
    /// 8BITMIME.
    pub eight_bit: bool,
    /// SMTPUTF8.
    pub smtputf8: bool,
    /// The `XSHADOW=` value: primary node, database id, queue id.
    pub xshadow: String,
    /// The message exactly as stored (Received header included).
    pub message: Vec<u8>,
}

impl Copy {
    fn transaction(&self, conn: &Conn) -> Transaction {
        let opts = MailOptions {
            size: Some(self.message.len() as u64),
            body: if self.eight_bit {
                Body::EightBitMime
            } else {
                Body::SevenBit
            },
            smtputf8: self.smtputf8,
            extra: vec![format!("XSHADOW={}", self.xshadow)],
        };
        Transaction::new(&conn.caps, &self.from, &self.rcpts, &opts, &self.message)
    }
}

/// One copy waiting for a peer's answer.
struct Job {
    copy: Rc<Copy>,
    /// Set by the driver: made, or why not.
    result: RefCell<Option<Result<(), String>>>,
    done: event_listener::Event,
    /// The caller gave up (timed out) before the job was sent.
    cancelled: Cell<bool>,
}

impl Job {
    fn finish(&self, r: Result<(), String>) {
        *self.result.borrow_mut() = Some(r);
        self.done.notify(usize::MAX);
    }
}

/// One core's copies for one peer, and its connections to it.
struct Pipe {
    peer: Peer,
    hostname: String,
    /// This node's id (for `XQDISCARD`).
    node_id: String,
    shared: Arc<ShadowShared>,
    tls: Arc<Tls>,
    /// When this pipe last asked its peer for discards.
    asked: Cell<Option<Instant>>,
    limit: Duration,
    queue: RefCell<VecDeque<Rc<Job>>>,
    idle: RefCell<Vec<Conn>>,
    drivers: Cell<usize>,
}

/// One core's links to its peers.
pub struct Links {
    pipes: RefCell<HashMap<SocketAddr, Rc<Pipe>>>,
    next: Cell<usize>,
    hostname: String,
    shared: Arc<ShadowShared>,
    tls: Arc<Tls>,
}

impl Links {
    /// No connections yet.
    pub fn new(hostname: &str, shared: Arc<ShadowShared>, tls: Arc<Tls>) -> Links {
        Links {
            pipes: RefCell::new(HashMap::new()),
            next: Cell::new(0),
            hostname: hostname.to_owned(),
            shared,
            tls,
        }
    }

    /// Makes a shadow copy of `copy` on one peer; the peer's node id, or
    /// the last error.
    pub async fn shadow(&self, cluster: &ClusterConfig, copy: Copy) -> Result<String, String> {
        let start = self.next.get();
        self.next.set(start.wrapping_add(1));
        let copy = Rc::new(copy);
        let mut last = "no peer to try".to_string();
        for peer in cluster.shadow_order(start) {
            match self.try_peer(cluster, peer, &copy).await {
                Ok(()) => return Ok(peer.node_id.clone()),
                Err(e) => {
                    tracing::warn!(peer = %peer.node_id, addr = %peer.addr, error = %e, "shadow copy failed; trying the next peer");
                    last = format!("{}: {e}", peer.node_id);
                }
            }
        }
        Err(last)
    }

    fn pipe(&self, cluster: &ClusterConfig, peer: &Peer) -> Rc<Pipe> {
        self.pipes
            .borrow_mut()
            .entry(peer.addr)
            .or_insert_with(|| {
                Rc::new(Pipe {
                    peer: peer.clone(),
                    hostname: self.hostname.clone(),
                    node_id: cluster.node_id.clone(),
                    shared: self.shared.clone(),
                    tls: self.tls.clone(),
                    asked: Cell::new(None),
                    limit: cluster.shadow_timeout,
                    queue: RefCell::new(VecDeque::new()),
                    idle: RefCell::new(Vec::new()),
                    drivers: Cell::new(0),
                })
            })
            .clone()
    }

    async fn try_peer(
        &self,
        cluster: &ClusterConfig,
        peer: &Peer,
        copy: &Rc<Copy>,
    ) -> Result<(), String> {
        let pipe = self.pipe(cluster, peer);
        let job = Rc::new(Job {
            copy: copy.clone(),
            result: RefCell::new(None),
            done: event_listener::Event::new(),
            cancelled: Cell::new(false),
        });
        pipe.queue.borrow_mut().push_back(job.clone());
        if pipe.drivers.get() < LINKS_PER_PEER {
            pipe.drivers.set(pipe.drivers.get() + 1);
            glommio::spawn_local(drive(pipe.clone())).detach();
        }
        let waited = timed(cluster.shadow_timeout, async {
            loop {
                if let Some(r) = job.result.borrow_mut().take() {
                    return Ok(r);
                }
                let l = job.done.listen();
                if job.result.borrow().is_none() {
                    l.await;
                }
            }
        })
        .await;
        match waited {
            Ok(r) => r,
            Err(e) => {
                // Not sent yet: the driver skips it. Already in flight:
                // the peer may still keep a copy, which then expires there.
                job.cancelled.set(true);
                Err(format!("no answer within shadow_timeout: {e}"))
            }
        }
    }
}

/// Takes the next batch off the queue (cancelled jobs dropped).
fn take_batch(pipe: &Pipe) -> Vec<Rc<Job>> {
    let mut q = pipe.queue.borrow_mut();
    let mut batch = Vec::new();
    let mut bytes = 0;
    while let Some(j) = q.front() {
        if j.cancelled.get() {
            q.pop_front();
            continue;
        }
        let len = j.copy.message.len();
        if !batch.is_empty() && (batch.len() >= BATCH_COPIES_MAX || bytes + len > BATCH_BYTES_MAX) {
            break;
        }
        bytes += len;
        batch.extend(q.pop_front());
    }
    batch
}

/// A driver: sends batches from the pipe's queue until it is empty.
async fn drive(pipe: Rc<Pipe>) {
    loop {
        // Let the other tasks that are ready in this executor pass run
        // first: sessions finishing their DATA at the same moment add
        // their copies to this batch instead of the next one (no timer,
        // no added wait when nothing else is ready).
        futures_lite::future::yield_now().await;
        let batch = take_batch(&pipe);
        if batch.is_empty() {
            break;
        }
        if let Err(e) = run_batch(&pipe, &batch).await {
            for j in &batch {
                if j.result.borrow().is_none() {
                    j.finish(Err(e.clone()));
                }
            }
        }
    }
    pipe.drivers.set(pipe.drivers.get() - 1);
}

/// Sends one batch on a pooled connection (once more on a new one if the
/// pooled one turns out closed) and settles every job it answered.
async fn run_batch(pipe: &Pipe, batch: &[Rc<Job>]) -> Result<(), String> {
    let pooled = pipe.idle.borrow_mut().pop();
    let reused = pooled.is_some();
    let mut conn = match pooled {
        Some(c) => c,
        None => open(pipe).await?,
    };
    let mut txns: Vec<Transaction> = batch.iter().map(|j| j.copy.transaction(&conn)).collect();
    let mut sent = send(pipe, &mut conn, &mut txns).await;
    if let Err(e) = &sent {
        // Not after a timeout: the peer may have the batch and be slow to
        // answer; sending it again would store every copy twice there.
        let timed_out =
            matches!(e, ConnError::Io(_, io) if io.kind() == std::io::ErrorKind::TimedOut);
        if reused && conn.stale(e) && !timed_out {
            // A pooled connection the peer closed while idle: nothing was
            // answered, so once more on a new one.
            tracing::debug!(peer = %pipe.peer.node_id, error = %e, "stale shadow link; reconnecting");
            conn = open(pipe).await?;
            txns = batch.iter().map(|j| j.copy.transaction(&conn)).collect();
            sent = send(pipe, &mut conn, &mut txns).await;
        }
    }
    // Every transaction with an outcome is settled, even if the connection
    // broke later in the batch.
    for (j, t) in batch.iter().zip(&txns) {
        if let Some(o) = t.outcome() {
            let refused = o.recipients.iter().find_map(|r| match r {
                RcptStatus::Temporary(r) | RcptStatus::Permanent(r) => Some(r.text()),
                RcptStatus::Delivered(_) => None,
            });
            j.finish(match refused {
                None => Ok(()),
                Some(why) => Err(format!("refused: {why}")),
            });
        }
    }
    match sent {
        Ok(()) => {
            if ask_discards(pipe, &mut conn).await {
                pipe.idle.borrow_mut().push(conn);
            }
            Ok(())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Asks the peer, as a primary, which of the copies this node holds for it
/// may go, if the last ask on this pipe is [`DISCARD_ASK_EVERY`] old (the
/// batch's copies are settled already: this delays nobody). False when
/// the connection is no longer usable.
async fn ask_discards(pipe: &Pipe, conn: &mut Conn) -> bool {
    if pipe
        .asked
        .get()
        .is_some_and(|t| t.elapsed() < DISCARD_ASK_EVERY)
    {
        return true;
    }
    pipe.asked.set(Some(Instant::now()));
    let Some(db) = offered_database(conn) else {
        return true;
    };
    let mut line = Vec::new();
    // Takeovers are told by the heartbeat only.
    tern_smtp::client::xqdiscard(&mut line, &pipe.node_id, &db, 0);
    let asked = timed(pipe.limit, async { Ok(conn.command(&line).await) }).await;
    match asked {
        Ok(Ok(reply)) if reply.code == 250 => {
            if let Some(answer) = super::discard::parse_answer(&reply.lines) {
                let n = pipe
                    .shared
                    .replica
                    .record_answer(&pipe.peer.node_id, answer);
                tracing::debug!(peer = %pipe.peer.node_id, discards = n, "discards asked on the shadow link");
            }
            true
        }
        Ok(Ok(reply)) => {
            tracing::debug!(peer = %pipe.peer.node_id, reply = %reply.text(), "XQDISCARD refused on the shadow link");
            true
        }
        Ok(Err(_)) | Err(_) => false,
    }
}

async fn send(pipe: &Pipe, conn: &mut Conn, txns: &mut [Transaction]) -> Result<(), ConnError> {
    match timed(pipe.limit, async { Ok(conn.send_batch(txns).await) }).await {
        Ok(r) => r,
        Err(timed_out) => Err(ConnError::Io(pipe.peer.addr, timed_out)),
    }
}

async fn open(pipe: &Pipe) -> Result<Conn, String> {
    let limit = pipe.limit;
    let conn = open_peer(&pipe.tls, &pipe.peer, &pipe.hostname, limit)
        .await
        .map_err(|e| e.to_string())?;
    if !conn.caps.other.iter().any(|(k, _)| k == "XSHADOW") {
        return Err(
            "the peer does not offer XSHADOW (not a tern peer, or it does not list us)".into(),
        );
    }
    Ok(conn)
}

/// A connection to cluster peer `peer`: TLS at once after EHLO, the
/// peer's certificate checked against its pinned fingerprint and ours
/// shown, so the peer lets us use XSHADOW and XQDISCARD. Never in clear
/// text.
pub async fn open_peer(
    tls: &Tls,
    peer: &Peer,
    hostname: &str,
    limit: Duration,
) -> Result<Conn, ConnError> {
    let timeouts = Timeouts {
        connect: limit,
        greeting: limit,
        inactivity: limit,
    };
    let sec = Security {
        tls,
        policy: TlsPolicy::Encrypt,
        host: &peer.name,
        pin: Some(peer.fingerprint),
        report: false,
    };
    Conn::open(peer.addr, hostname, &timeouts, sec).await
}

/// The database id a peer announced in its EHLO (`XSHADOW <node> <db>`).
pub fn offered_database(conn: &Conn) -> Option<String> {
    conn.caps
        .other
        .iter()
        .find(|(k, _)| k == "XSHADOW")
        .and_then(|(_, p)| p.split(' ').nth(1))
        .map(str::to_owned)
}
