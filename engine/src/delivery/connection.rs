//! Destinations and their connections. A destination (a pool with its
//! failover chain, or an MX domain) queues jobs and opens connections up
//! to `concurrency_per_destination` while jobs wait and no connection is
//! idle. A connection picks a host (lowest priority with a host up, by
//! weight), marks hosts that fail to connect or greet down and tries the
//! next, sends jobs until idle for `connection_idle`,
//! `messages_per_connection_max`, an error, or a better-priority host
//! being up again (fail back), then QUITs. When every candidate is down
//! the waiting jobs are deferred.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;

use tern_smtp::client::MailOptions;
use tern_smtp::command::Body;
use tern_smtp::transaction::RcptStatus;
use tern_smtp::{Reply, Status};
use tern_storage::TimestampMs;

use super::route::{Candidate, Candidates, Health};
use super::{Delivery, Job, Outcome};
use crate::config::DeliveryConfig;
use crate::metrics::CoreMetrics;
use crate::outbound::{Conn, ConnError, Security, Timeouts};

fn now_ms() -> u64 {
    TimestampMs::now().0
}

/// A destination: a pool (with failover chain) or an MX domain.
pub(super) struct Dest {
    pub(super) name: String,
    candidates: RefCell<Candidates>,
    jobs: RefCell<VecDeque<Job>>,
    conns: Cell<usize>,
    idle: Cell<usize>,
    /// A connection is trying a better host that just came back; the
    /// others stay where they are until it is known to work.
    /// (Until this time, unix ms; 0 = nobody.)
    probing: Cell<u64>,
    event: event_listener::Event,
}

impl Dest {
    pub(super) fn new(name: String) -> Dest {
        Dest {
            name,
            candidates: RefCell::new(Rc::new(Vec::new())),
            jobs: RefCell::new(VecDeque::new()),
            conns: Cell::new(0),
            idle: Cell::new(0),
            probing: Cell::new(0),
            event: event_listener::Event::new(),
        }
    }

    /// The hosts it goes to now.
    pub(super) fn candidates(&self) -> Candidates {
        self.candidates.borrow().clone()
    }

    /// Puts a job back at the front (an operator took it out).
    pub(super) fn push_front(&self, job: Job) {
        self.jobs.borrow_mut().push_front(job);
    }

    pub(super) fn set_candidates(&self, c: Candidates) {
        *self.candidates.borrow_mut() = c;
    }

    pub(super) fn pop_job(&self) -> Option<Job> {
        self.jobs.borrow_mut().pop_front()
    }

    /// No connection and no job: may be forgotten.
    pub(super) fn is_idle(&self) -> bool {
        self.conns.get() == 0 && self.jobs.borrow().is_empty()
    }

    pub(super) fn wake_all(&self) {
        self.event.notify(usize::MAX);
    }
}

/// Host health and open connections per host, for one core.
pub(super) struct Hosts {
    pub(super) health: RefCell<Health>,
    /// Open outbound connections per host.
    conns: RefCell<HashMap<SocketAddr, usize>>,
}

impl Hosts {
    pub(super) fn new(cfg: &DeliveryConfig) -> Hosts {
        Hosts {
            health: RefCell::new(Health::new(cfg.host_down_initial, cfg.host_down_max)),
            conns: RefCell::new(HashMap::new()),
        }
    }
}

/// Counts an open connection to a host while alive.
struct HostSlot {
    d: Rc<Delivery>,
    addr: SocketAddr,
}

impl HostSlot {
    fn new(d: &Rc<Delivery>, addr: SocketAddr) -> HostSlot {
        *d.hosts.conns.borrow_mut().entry(addr).or_insert(0) += 1;
        HostSlot { d: d.clone(), addr }
    }
}

impl Drop for HostSlot {
    fn drop(&mut self) {
        let mut m = self.d.hosts.conns.borrow_mut();
        if let Some(n) = m.get_mut(&self.addr) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.addr);
            }
        }
    }
}

/// How a connection's run on one host ended.
enum Served {
    /// No more jobs (or stopping): the connection is done.
    Done,
    /// Fail back to a better host, or recycle the connection.
    Again,
    /// The session broke or the pooled one was stale: open another.
    Reconnect,
    /// A transaction failed: try another host first.
    Failed(Reply),
}

impl Delivery {
    /// Queues `job` at `dest`, opening a connection if none is idle.
    pub(super) fn push(self: &Rc<Self>, dest: &Rc<Dest>, job: Job) {
        dest.jobs.borrow_mut().push_back(job);
        // Wake one more idle connection per job (not the same one twice).
        dest.event
            .notify(event_listener::IntoNotification::additional(1));
        let waiting = dest.jobs.borrow().len();
        if dest.conns.get() < self.cfg.concurrency_per_destination && waiting > dest.idle.get() {
            dest.conns.set(dest.conns.get() + 1);
            glommio::spawn_local(self.clone().connection(dest.clone())).detach();
        }
    }

    /// One connection of `dest`: picks a host (failing over), sends jobs
    /// until idle, the per-connection limit, a better host coming back,
    /// an error, or shutdown.
    async fn connection(self: Rc<Self>, dest: Rc<Dest>) {
        let mut excluded: Vec<SocketAddr> = Vec::new();
        let mut last_error: Option<Reply> = None;
        while !dest.jobs.borrow().is_empty() {
            if self.is_stopping() {
                while let Some(job) = dest.pop_job() {
                    self.fail_job(job, Outcome::NotTried);
                }
                break;
            }
            let candidates = dest.candidates.borrow().clone();
            let picked =
                self.hosts
                    .health
                    .borrow()
                    .pick(&candidates, now_ms(), &excluded, rand::random());
            let Some(host) = picked.cloned() else {
                // Other connections are working: leave them the jobs (the
                // last one to end defers what is left).
                if dest.conns.get() <= 1 {
                    self.defer_all(&dest, &candidates, last_error.take());
                }
                break;
            };
            let conn = match self.open_host(&dest, &candidates, &host).await {
                Ok(c) => c,
                Err(reply) => {
                    excluded.push(host.addr);
                    last_error = Some(reply);
                    continue;
                }
            };
            match self.serve(&dest, conn, &host, &candidates).await {
                Served::Done => break,
                Served::Again => excluded.clear(),
                Served::Reconnect => {}
                Served::Failed(reply) => {
                    excluded.push(host.addr);
                    last_error = Some(reply);
                }
            }
        }
        dest.conns.set(dest.conns.get() - 1);
        // Jobs pushed while this connection was ending need a connection.
        if !dest.jobs.borrow().is_empty() && dest.conns.get() == 0 {
            dest.conns.set(1);
            glommio::spawn_local(self.clone().connection(dest.clone())).detach();
        }
    }

    /// Every host is down: the waiting jobs are deferred.
    fn defer_all(&self, dest: &Dest, candidates: &[Candidate], last_error: Option<Reply>) {
        let reply = last_error.unwrap_or_else(|| {
            let why = self
                .hosts
                .health
                .borrow()
                .last_error(candidates)
                .map_or(String::new(), |e| format!(" (last error: {e})"));
            let text = format!("all hosts of {} are down{why}", dest.name);
            Reply::new(451, Status(4, 4, 1), text)
        });
        while let Some(job) = dest.pop_job() {
            self.fail_job(job, Outcome::Temporary(reply.clone(), None));
        }
    }

    /// Connects to `host` and greets. A refused TCP connect, or a failing
    /// greeting with no other session to the host, marks it down; a
    /// greeting refusal while other sessions work (a connection limit)
    /// only moves this connection elsewhere. `Err`: the reply to keep.
    async fn open_host(
        &self,
        dest: &Dest,
        candidates: &[Candidate],
        host: &Candidate,
    ) -> Result<Conn, Reply> {
        CoreMetrics::inc(&self.metrics().outbound_connections);
        let probe = dest.probing.get() > now_ms()
            && self
                .hosts
                .health
                .borrow()
                .best_priority(candidates, now_ms())
                .is_some_and(|p| p == host.priority);
        let hostname = &self.parts.config.hostname;
        let c = &self.cfg;
        let timeouts = Timeouts {
            connect: c.connect_timeout,
            greeting: c.greeting_timeout,
            inactivity: c.inactivity_timeout,
        };
        let sec = Security {
            tls: &self.parts.tls,
            policy: host.tls_policy,
            host: &host.name,
            pin: None,
            report: host.mta_sts_testing,
        };
        let opened = Conn::open(host.addr, hostname, &timeouts, sec).await;
        if probe {
            dest.probing.set(0);
        }
        if let Ok(conn) = &opened {
            if host.mta_sts_testing && conn.tls.is_none() {
                self.parts
                    .mta_sts
                    .stats
                    .count(crate::mta_sts::Outcome::TestingNoTls);
                tracing::warn!(dest = %dest.name, host = %host.name, addr = %host.addr,
                    "MTA-STS testing: no TLS to this MX host, which the policy would refuse; delivering anyway");
            }
            let tls = conn.tls.map(|t| format!("{} {}", t.version, t.cipher));
            tracing::debug!(dest = %dest.name, host = %host.name, addr = %host.addr, tls = tls.as_deref().unwrap_or("none"), "connected");
        }
        opened.map_err(|e| {
            CoreMetrics::inc(&self.metrics().outbound_connect_failures);
            tracing::warn!(dest = %dest.name, host = %host.name, addr = %host.addr, error = %e, "next hop unavailable; trying another");
            let busy = self
                .hosts
                .conns
                .borrow()
                .get(&host.addr)
                .is_some_and(|&n| n > 0);
            if matches!(e, ConnError::Connect(..)) || !busy {
                let mut health = self.hosts.health.borrow_mut();
                health.mark_down(host.addr, now_ms(), &e.to_string());
            }
            e.as_reply()
        })
    }

    /// Sends `dest`'s jobs on `conn` (to `host`) until the connection is
    /// done with, and says why.
    async fn serve(
        self: &Rc<Self>,
        dest: &Dest,
        mut conn: Conn,
        host: &Candidate,
        candidates: &[Candidate],
    ) -> Served {
        let _slot = HostSlot::new(self, host.addr);
        self.hosts.health.borrow_mut().mark_up(&host.addr);
        loop {
            let Some(job) = dest.pop_job() else {
                if !self.wait_for_job(dest).await {
                    conn.quit().await;
                    return Served::Done;
                }
                continue;
            };
            if self.is_stopping() {
                self.fail_job(job, Outcome::NotTried);
                continue;
            }
            if self.should_move(dest, candidates, host, &conn) {
                dest.jobs.borrow_mut().push_front(job);
                conn.quit().await;
                return Served::Again;
            }
            match self.send(&mut conn, &host.name, &job).await {
                Ok(results) => {
                    self.report(job, results);
                    if conn.broken {
                        return Served::Reconnect;
                    }
                }
                Err(e) if conn.stale(&e) => {
                    tracing::debug!(dest = %dest.name, host = %host.name, error = %e, "reused connection was closed by the peer; reconnecting");
                    dest.jobs.borrow_mut().push_front(job);
                    return Served::Reconnect;
                }
                Err(e) => {
                    tracing::warn!(dest = %dest.name, host = %host.name, error = %e, "connection failed during a transaction");
                    // Deferred; one broken session does not mark the host
                    // down (others may be fine), but this connection tries
                    // elsewhere first.
                    let reply = e.as_reply();
                    let host = Some(host.name.clone());
                    self.fail_job(job, Outcome::Temporary(reply.clone(), host));
                    return Served::Failed(reply);
                }
            }
        }
    }

    /// Fail back to a better host that is up again (one connection probes
    /// it first), or recycle after `messages_per_connection_max`.
    fn should_move(
        &self,
        dest: &Dest,
        candidates: &[Candidate],
        host: &Candidate,
        conn: &Conn,
    ) -> bool {
        let better = dest.probing.get() <= now_ms()
            && self
                .hosts
                .health
                .borrow()
                .best_priority(candidates, now_ms())
                .is_some_and(|p| p < host.priority);
        if better {
            let limit = self.cfg.connect_timeout + self.cfg.greeting_timeout;
            dest.probing.set(now_ms() + limit.as_millis() as u64);
        }
        better || conn.sent >= self.cfg.messages_per_connection_max
    }

    /// Waits up to `connection_idle` for a job; false: give up the
    /// connection.
    async fn wait_for_job(&self, dest: &Dest) -> bool {
        let listener = dest.event.listen();
        if !dest.jobs.borrow().is_empty() {
            return true;
        }
        if self.is_stopping() {
            return false;
        }
        dest.idle.set(dest.idle.get() + 1);
        let stop = self.stopping.event.listen();
        let idle = async {
            glommio::timer::sleep(self.cfg.connection_idle).await;
            false
        };
        let stopped = async {
            stop.await;
            false
        };
        let job = async {
            listener.await;
            true
        };
        let got = futures_lite::future::or(job, futures_lite::future::or(idle, stopped)).await;
        dest.idle.set(dest.idle.get() - 1);
        got || !dest.jobs.borrow().is_empty()
    }

    /// One transaction for `job` on `conn`: the outcome per recipient.
    async fn send(
        &self,
        conn: &mut Conn,
        host: &str,
        job: &Job,
    ) -> Result<Vec<(u32, Outcome)>, ConnError> {
        let msg = &job.attempt.msg;
        let converted;
        let mut content: &[u8] = &msg.message;
        let mut body = if msg.eight_bit {
            Body::EightBitMime
        } else {
            Body::SevenBit
        };
        if !conn.caps.eight_bit_mime && !content.is_ascii() {
            // RFC 6152 3: 8-bit content to a next hop without 8BITMIME is
            // converted (quoted-printable), not sent as is.
            match tern_smtp::downgrade::to_seven_bit(content) {
                Ok(seven) => {
                    converted = seven.into_owned();
                    content = &converted;
                    body = Body::SevenBit;
                    CoreMetrics::inc(&self.metrics().downgraded);
                }
                Err(why) => {
                    // What the conversion cannot handle (8-bit header
                    // fields, binary parts) goes as before, counted.
                    CoreMetrics::inc(&self.metrics().eight_bit_as_is);
                    tracing::info!(host, why = %why, "8-bit message sent as is to a next hop without 8BITMIME");
                }
            }
        }
        // RFC 6531 3.7.4: a message that needs SMTPUTF8 cannot go to a
        // server without it; one whose envelope and header are ASCII is
        // sent without the parameter.
        let mut smtputf8 = msg.smtputf8;
        if smtputf8 && !conn.caps.smtputf8 {
            let header_end = memchr::memmem::find(content, b"\r\n\r\n").unwrap_or(content.len());
            let ascii = msg.mail_from.is_ascii()
                && job
                    .rcpts
                    .iter()
                    .all(|&i| msg.recipients[i as usize].is_ascii())
                && content[..header_end].is_ascii();
            if !ascii {
                let why = format!("{host} does not support SMTPUTF8 (RFC 6531)");
                return Ok(refuse_all(job, Reply::new(553, Status(5, 6, 7), why), host));
            }
            smtputf8 = false;
        }
        if let Some(max) = conn.caps.size.filter(|&m| m > 0) {
            if content.len() as u64 > max {
                let why = format!("message too big for {host} (SIZE {max})");
                return Ok(refuse_all(job, Reply::new(552, Status(5, 3, 4), why), host));
            }
        }
        let rcpts: Vec<String> = job
            .rcpts
            .iter()
            .map(|&i| msg.recipients[i as usize].clone())
            .collect();
        let opts = MailOptions {
            size: Some(content.len() as u64),
            body,
            smtputf8,
            extra: Vec::new(),
        };
        CoreMetrics::inc(&self.metrics().delivery_transactions);
        let outcome = conn.send(&msg.mail_from, &rcpts, &opts, content).await?;
        let host = || Some(host.to_owned());
        Ok(job
            .rcpts
            .iter()
            .zip(outcome.recipients)
            .map(|(&i, s)| match s {
                RcptStatus::Delivered(r) => (i, Outcome::Delivered(r, host())),
                RcptStatus::Temporary(r) => (i, Outcome::Temporary(r, host())),
                RcptStatus::Permanent(r) => (i, Outcome::Permanent(r, host())),
            })
            .collect())
    }
}

/// Every recipient of `job` failed permanently with `reply` at `host`.
fn refuse_all(job: &Job, reply: Reply, host: &str) -> Vec<(u32, Outcome)> {
    job.all(&Outcome::Permanent(reply, Some(host.into())))
}
