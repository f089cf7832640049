//! Delivery: per core, the queue is a cursor over this core's log shard.
//!
//! ```text
//! accept ──append──▶ log ──tail──▶ Queue (in memory) ──due──▶ dispatch
//!                     ▲                                          │ route, DNS
//!                     │ status records (batched)                 ▼
//!                  writer ◀──── attempt finished ◀──── Dest ── connections
//! ```
//!
//! - The scheduler tails the log: message records become queue entries
//!   ([`queue::Queue`]); at start the queue is rebuilt by replaying the log
//!   from the `queue` cursor (message and [`status`] records).
//! - A due message is read from the log (zero-copy), its pending
//!   recipients are grouped by next hop ([`route`]) and handed to that
//!   destination's connections ([`outbound`]) as jobs. When every branch
//!   reported, the attempt is finished.
//! - One writer task turns finished attempts into status events (and DSNs,
//!   which are new message records), appends them as one record, and only
//!   after the group commit applies them in memory.
//! - Maintenance moves the `queue`, `shadow` and `safety-net` cursors,
//!   copies pinned deferred messages forward and reclaims segments.
//!
//! Restart: a clean stop records everything (jobs not yet sent are
//! recorded as not tried), so nothing is delivered twice. After a crash,
//! attempts whose outcome was not yet durable run again: at-least-once.

pub mod outbound;
pub mod queue;
pub mod route;
pub mod status;

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tern_smtp::client::MailOptions;
use tern_smtp::command::Body;
use tern_smtp::transaction::RcptStatus;
use tern_smtp::{Reply, Status};
use tern_storage::{Record, Sequence, TimestampMs};

use crate::config::DeliveryConfig;
use crate::core::{Announced, Core};
use crate::dns::{DnsError, Resolver};
use crate::message::{self, Encoder, QueueId, StoredMessage, MESSAGE};
use crate::metrics::CoreMetrics;
use outbound::Conn;
use queue::Queue;
use route::{Candidates, Health, Router, Target};
use status::{Event, StatusEvent, STATUS};

/// Unix ms now.
pub fn now_ms() -> u64 {
    TimestampMs::now().0
}

/// What became of one recipient in one attempt.
#[derive(Clone, Debug)]
enum Result_ {
    Delivered,
    Temporary(Reply, Option<String>),
    Permanent(Reply, Option<String>),
    /// Not sent (shutdown): retry at once after restart, no attempt counted.
    NotTried,
}

/// One delivery attempt of one message (all its pending recipients).
struct Attempt {
    key: u64,
    id: QueueId,
    msg: StoredMessage,
    attempts: u32,
    /// Branches (destinations) still working, plus one while dispatching.
    branches: Cell<usize>,
    results: RefCell<Vec<(u32, Result_)>>,
    /// The recipients this attempt is for.
    rcpts: Vec<u32>,
    /// Recorded early (shutdown): later reports are ignored.
    closed: Cell<bool>,
}

/// Recipients of one attempt going to one destination.
struct Job {
    attempt: Rc<Attempt>,
    rcpts: Vec<u32>,
}

/// A destination: a pool (with failover chain) or an MX domain.
struct Dest {
    name: String,
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

/// The delivery side of one core.
pub struct Delivery {
    core: Rc<Core>,
    cfg: DeliveryConfig,
    queue: RefCell<Queue>,
    /// Next sequence to read from the log.
    scanned: Cell<u64>,
    finished: RefCell<Vec<Rc<Attempt>>>,
    finished_event: event_listener::Event,
    dests: RefCell<HashMap<String, Rc<Dest>>>,
    health: RefCell<Health>,
    router: RefCell<(u64, Router)>,
    resolver: Option<Resolver>,
    rng: Cell<u64>,
    stopping: Cell<bool>,
    stop_event: event_listener::Event,
    /// Attempts created and not yet recorded.
    open_attempts: Cell<usize>,
    /// Open outbound connections per host.
    host_conns: RefCell<HashMap<SocketAddr, usize>>,
    /// When this core started (unix ms): a primary never heard from counts
    /// as reachable from then on.
    started_ms: u64,
    /// The lowest queue key of a message record that could not be read
    /// (`u64::MAX`: none): the discard watermark never passes it, so its
    /// shadow copies stay (the primary cannot deliver it).
    unreadable_min: Cell<u64>,
    /// Shadow copies held for peers (sequence -> stored at), until they
    /// expire; they hold the `shadow` cursor.
    shadows: RefCell<std::collections::BTreeMap<u64, HeldShadow>>,
    /// Attempts under way (dispatched, not yet finished).
    live: RefCell<HashMap<u64, Rc<Attempt>>>,
    /// MX answers (and permanent failures) per domain, briefly, so busy
    /// domains do not cross to the DNS thread for every message.
    mx_cache: RefCell<HashMap<String, MxCached>>,
}

type MxCached = (u64, Result<Candidates, Result_>);

/// A shadow copy held here: (stored at ms, (primary node, its database
/// id, its queue id)).
type HeldShadow = (u64, (String, String, String));

/// How long a core reuses an MX answer (the resolver itself caches by TTL).
const MX_CACHE_MS: u64 = 10_000;

/// Counts an open connection to a host while alive.
struct HostSlot {
    d: Rc<Delivery>,
    addr: SocketAddr,
}

impl HostSlot {
    fn new(d: &Rc<Delivery>, addr: SocketAddr) -> HostSlot {
        *d.host_conns.borrow_mut().entry(addr).or_insert(0) += 1;
        HostSlot { d: d.clone(), addr }
    }
}

impl Drop for HostSlot {
    fn drop(&mut self) {
        let mut m = self.d.host_conns.borrow_mut();
        if let Some(n) = m.get_mut(&self.addr) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.addr);
            }
        }
    }
}

impl Delivery {
    /// Rebuilds this core's queue from the log (from the `queue` cursor)
    /// and starts the scheduler, the writer and maintenance.
    pub fn start(core: Rc<Core>) -> anyhow::Result<Rc<Delivery>> {
        let cfg = core.config.delivery.clone();
        let resolver = Resolver::start(&crate::dns::DnsConfig {
            servers: cfg.dns_servers.clone(),
            timeout: cfg.dns_timeout,
        })
        .map_err(|e| tracing::warn!(error = %e, "no DNS resolver: MX delivery will be deferred"))
        .ok();
        let generation = core.shared.routes.generation();
        let router = Router::new(
            &core.config.routes,
            &core.shared.routes.overrides(),
            &core.config.pools,
        );
        let d = Rc::new(Delivery {
            health: RefCell::new(Health::new(cfg.host_down_initial, cfg.host_down_max)),
            cfg,
            queue: RefCell::new(Queue::new()),
            scanned: Cell::new(0),
            finished: RefCell::new(Vec::new()),
            finished_event: event_listener::Event::new(),
            dests: RefCell::new(HashMap::new()),
            router: RefCell::new((generation, router)),
            resolver,
            rng: Cell::new(u64::from(core.shard) * 0x9E37_79B9 + now_ms()),
            stopping: Cell::new(false),
            stop_event: event_listener::Event::new(),
            open_attempts: Cell::new(0),
            host_conns: RefCell::new(HashMap::new()),
            live: RefCell::new(HashMap::new()),
            shadows: RefCell::new(std::collections::BTreeMap::new()),
            unreadable_min: Cell::new(u64::MAX),
            started_ms: now_ms(),
            mx_cache: RefCell::new(HashMap::new()),
            core,
        });
        let log = &d.core.log;
        let from = log.cursor("queue").unwrap_or_else(|| log.first_sequence());
        // Shadow copies held for peers may sit before the queue cursor
        // (they pin the `shadow` cursor instead): find them first, or
        // they would be forgotten, released and never taken over.
        let held_from = log
            .cursor("shadow")
            .unwrap_or(from)
            .max(log.first_sequence());
        if held_from < from {
            d.ingest_held_shadows(held_from, from)?;
        }
        d.scanned.set(from.0.max(log.first_sequence().0));
        let replayed = d.ingest(true)?;
        tracing::info!(shard = d.core.shard, from = %from, records = replayed,
            queued = d.queue.borrow().len(), "delivery queue rebuilt");
        d.publish_watermark();
        glommio::spawn_local(d.clone().scheduler()).detach();
        glommio::spawn_local(d.clone().writer()).detach();
        glommio::spawn_local(d.clone().maintenance()).detach();
        Ok(d)
    }

    /// Reads new durable records into the queue. `rebuild`: replaying at
    /// start (status records apply; copies of unknown messages are added).
    fn ingest(&self, rebuild: bool) -> anyhow::Result<usize> {
        let log = &self.core.log;
        let end = log.durable_end().0;
        let mut n = 0;
        while self.scanned.get() < end {
            let seq = self.scanned.get().max(log.first_sequence().0);
            if !rebuild && self.core.recent.borrow().undecided.contains(&seq) {
                // Its shadow copy is still being made: wait for the outcome.
                break;
            }
            self.scanned.set(seq + 1);
            if seq >= end {
                break;
            }
            let announced = self.core.recent.borrow_mut().announced(seq);
            match announced {
                Some(Announced::Message { received_ms, rcpts }) if !rebuild => {
                    self.queue.borrow_mut().add(seq, seq, received_ms, rcpts);
                }
                Some(Announced::Other) if !rebuild => {}
                Some(Announced::Shadow { at_ms, origin }) if !rebuild => {
                    self.shadows.borrow_mut().insert(seq, (at_ms, origin));
                }
                _ => {
                    let rec = match log.read(Sequence(seq)) {
                        Ok(rec) => rec,
                        Err(e) => {
                            // Perhaps a message: the discard watermark must
                            // never pass it (its shadows keep their copy).
                            self.unreadable_min.set(self.unreadable_min.get().min(seq));
                            return Err(e.into());
                        }
                    };
                    self.ingest_record(&rec, rebuild);
                }
            }
            n += 1;
        }
        Ok(n)
    }

    /// At start: the shadow copies (and the `done` events that ended some
    /// of them) in `[from, to)`, the part of the log before the queue
    /// cursor that the `shadow` cursor still holds.
    fn ingest_held_shadows(&self, from: Sequence, to: Sequence) -> anyhow::Result<()> {
        for seq in from.0.max(self.core.log.first_sequence().0)..to.0 {
            let rec = match self.core.log.read(Sequence(seq)) {
                Ok(rec) => rec,
                Err(e) => {
                    // An old record (perhaps long delivered) must not stop
                    // the start; if it was a shadow copy, it is lost here.
                    tracing::error!(seq, error = %e, "unreadable record skipped while looking for held shadow copies");
                    continue;
                }
            };
            match rec.kind {
                crate::shadow::record::SHADOW => self.ingest_record(&rec, true),
                // Only the end of shadow copies: these records' queue
                // events are older than the queue cursor, already applied.
                STATUS => match status::decode(&rec.payload) {
                    Ok(events) => {
                        let mut shadows = self.shadows.borrow_mut();
                        for e in events.iter().filter(|e| e.event == Event::Done) {
                            shadows.remove(&e.message);
                        }
                    }
                    Err(e) => {
                        tracing::error!(seq = %rec.sequence, error = %e, "unreadable status record skipped")
                    }
                },
                _ => {}
            }
        }
        tracing::info!(shard = self.core.shard, from = %from, held = self.shadows.borrow().len(),
            "shadow copies held before the queue cursor found");
        Ok(())
    }

    fn ingest_record(&self, rec: &Record, rebuild: bool) {
        let mut q = self.queue.borrow_mut();
        match rec.kind {
            MESSAGE => {
                let key = rec.origin.unwrap_or(rec.sequence).0;
                if rec.origin.is_some() && !rebuild {
                    // Our own copy-forward: already relocated.
                    return;
                }
                match message::peek(&rec.payload) {
                    Ok((received_ms, rcpts)) => q.add(key, rec.sequence.0, received_ms, rcpts),
                    Err(e) => {
                        self.unreadable_min.set(self.unreadable_min.get().min(key));
                        tracing::error!(seq = %rec.sequence, error = %e,
                            "unreadable message record skipped (not deliverable)")
                    }
                }
            }
            crate::shadow::record::SHADOW => match crate::shadow::record::split(&rec.payload) {
                Ok((o, _)) => {
                    self.shadows.borrow_mut().insert(
                        rec.sequence.0,
                        (rec.timestamp.0, (o.node, o.database, o.queue_id)),
                    );
                }
                Err(e) => {
                    tracing::error!(seq = %rec.sequence, error = %e, "unreadable shadow record skipped")
                }
            },
            STATUS if rebuild => match status::decode(&rec.payload) {
                Ok(events) => {
                    let mut shadows = self.shadows.borrow_mut();
                    for e in &events {
                        q.apply(e);
                        if e.event == Event::Done {
                            // A shadow copy discarded or taken over.
                            shadows.remove(&e.message);
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(seq = %rec.sequence, error = %e, "unreadable status record skipped")
                }
            },
            _ => {}
        }
    }

    fn random(&self) -> u64 {
        // xorshift64*: spreads load by weight; not for secrets.
        let mut x = self.rng.get() | 1;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn metrics(&self) -> &CoreMetrics {
        &self.core.metrics
    }

    /// Tails the log and starts attempts for due messages.
    async fn scheduler(self: Rc<Self>) {
        loop {
            let listener = self.core.delivery_wake.listen();
            if self.stopping.get() {
                return;
            }
            if let Err(e) = self.ingest(false) {
                tracing::error!(error = %e, "cannot read the log; delivery paused");
            }
            let now = now_ms();
            let room = if self.cfg.hold {
                0
            } else {
                self.cfg
                    .in_flight_max
                    .saturating_sub(self.open_attempts.get())
            };
            let due = self.queue.borrow_mut().pop_due(now, room);
            for key in due {
                self.open_attempts.set(self.open_attempts.get() + 1);
                glommio::spawn_local(self.clone().dispatch(key)).detach();
            }
            let wait = match self.queue.borrow().next_due() {
                Some(t) if room > 0 => Duration::from_millis(t.saturating_sub(now).clamp(1, 1000)),
                _ => Duration::from_secs(1),
            };
            let timer = glommio::timer::sleep(wait);
            let stop = self.stop_event.listen();
            futures_lite::future::or(futures_lite::future::or(listener, stop), async {
                timer.await;
            })
            .await;
        }
    }

    fn router(&self) -> std::cell::Ref<'_, (u64, Router)> {
        let routes = &self.core.shared.routes;
        if routes.generation() != self.router.borrow().0 {
            let g = routes.generation();
            let r = Router::new(
                &self.core.config.routes,
                &routes.overrides(),
                &self.core.config.pools,
            );
            *self.router.borrow_mut() = (g, r);
        }
        self.router.borrow()
    }

    /// One attempt: read, route, hand out jobs.
    async fn dispatch(self: Rc<Self>, key: u64) {
        let Some(entry) = self.queue.borrow().get(key).cloned() else {
            self.open_attempts.set(self.open_attempts.get() - 1);
            return;
        };
        let id = QueueId {
            shard: self.core.shard,
            sequence: Sequence(key),
        };
        let fresh = self.core.recent.borrow_mut().take(entry.location);
        let payload = match fresh {
            Some(p) => Ok(p),
            None => self
                .core
                .log
                .read(Sequence(entry.location))
                .map(|r| r.payload)
                .map_err(|e| e.to_string()),
        };
        let msg = match payload.and_then(|p| message::decode(&p).map_err(|e| e.to_string())) {
            Ok(m) => m,
            Err(e) => {
                CoreMetrics::inc(&self.metrics().unreadable);
                let expires =
                    entry.received_ms + self.cfg.message_expiration_timeout.as_millis() as u64;
                if now_ms() < expires {
                    tracing::error!(id = %id, error = %e, "cannot read queued message; retrying later");
                    self.queue
                        .borrow_mut()
                        .release(key, now_ms() + self.cfg.retry_max.as_millis() as u64);
                } else {
                    // It cannot be delivered nor bounced (the sender is in
                    // the damaged record); stop it from pinning the log.
                    tracing::error!(id = %id, error = %e, "queued message unreadable until expiry; removed from the queue (LOST)");
                    self.unreadable_min.set(self.unreadable_min.get().min(key));
                    let done = StatusEvent {
                        message: key,
                        event: Event::Done,
                        at_ms: now_ms(),
                        attempts: entry.attempts,
                        rcpts: Vec::new(),
                    };
                    if self
                        .append_status(std::slice::from_ref(&done))
                        .await
                        .is_ok()
                    {
                        self.queue.borrow_mut().apply(&done);
                    } else {
                        self.queue
                            .borrow_mut()
                            .release(key, now_ms() + self.cfg.retry_max.as_millis() as u64);
                    }
                }
                self.open_attempts.set(self.open_attempts.get() - 1);
                return;
            }
        };
        let pending = entry.pending();
        let attempt = Rc::new(Attempt {
            key,
            id,
            msg,
            attempts: entry.attempts + 1,
            branches: Cell::new(1),
            results: RefCell::new(Vec::with_capacity(pending.len())),
            rcpts: pending.clone(),
            closed: Cell::new(false),
        });
        self.live.borrow_mut().insert(key, attempt.clone());
        // An expired message still gets this attempt: if it fails
        // temporarily, it bounces with that reply (see `conclude`).
        // Group recipients by destination.
        let mut groups: Vec<(Target, Vec<u32>)> = Vec::new();
        {
            let router = self.router();
            for &i in &pending {
                let rcpt = &attempt.msg.recipients[i as usize];
                let domain = domain_of(rcpt, &self.core.config.hostname);
                let target = router.1.route(&domain);
                match groups.iter_mut().find(|(t, _)| *t == target) {
                    Some((_, v)) => v.push(i),
                    None => groups.push((target, vec![i])),
                }
            }
        }
        for (target, rcpts) in groups {
            if self.stopping.get() {
                let results = rcpts.iter().map(|&i| (i, Result_::NotTried)).collect();
                attempt.branches.set(attempt.branches.get() + 1);
                self.branch_done(&attempt, results);
                continue;
            }
            match self.destination(&target).await {
                Ok(dest) => {
                    // At most recipients_per_transaction_max per transaction.
                    for part in rcpts.chunks(self.cfg.recipients_per_transaction_max) {
                        attempt.branches.set(attempt.branches.get() + 1);
                        self.push(
                            &dest,
                            Job {
                                attempt: attempt.clone(),
                                rcpts: part.to_vec(),
                            },
                        );
                    }
                }
                Err(result) => {
                    let results = rcpts.iter().map(|&i| (i, result.clone())).collect();
                    attempt.branches.set(attempt.branches.get() + 1);
                    self.branch_done(&attempt, results);
                }
            }
        }
        self.branch_done(&attempt, Vec::new());
    }

    /// The destination for `target`, with fresh candidates (MX: resolved
    /// now; the resolver caches by TTL). `Err`: the recipients' result.
    async fn destination(&self, target: &Target) -> Result<Rc<Dest>, Result_> {
        let name = target.name();
        let candidates: Option<Candidates> = match target {
            Target::Pool(p) => {
                if self.dests.borrow().contains_key(&name) {
                    None
                } else {
                    let c = route::pool_candidates(&self.core.config.pools, p);
                    if c.is_empty() {
                        return Err(Result_::Temporary(
                            Reply::new(451, Status(4, 3, 5), format!("no hosts in pool {p:?}")),
                            None,
                        ));
                    }
                    Some(Rc::new(c))
                }
            }
            Target::Mx(domain) => {
                let now = now_ms();
                let cached = self
                    .mx_cache
                    .borrow()
                    .get(domain)
                    .filter(|(until, _)| *until > now)
                    .map(|(_, r)| r.clone());
                let answer = match cached {
                    Some(r) => r,
                    None => {
                        let r = self.mx(domain).await.map(Rc::new);
                        if !matches!(r, Err(Result_::Temporary(..))) {
                            self.mx_cache
                                .borrow_mut()
                                .insert(domain.clone(), (now + MX_CACHE_MS, r.clone()));
                        }
                        r
                    }
                };
                Some(answer?)
            }
        };
        let mut dests = self.dests.borrow_mut();
        let dest = dests
            .entry(name.clone())
            .or_insert_with(|| {
                Rc::new(Dest {
                    name,
                    candidates: RefCell::new(Rc::new(Vec::new())),
                    jobs: RefCell::new(VecDeque::new()),
                    conns: Cell::new(0),
                    idle: Cell::new(0),
                    probing: Cell::new(0),
                    event: event_listener::Event::new(),
                })
            })
            .clone();
        if let Some(c) = candidates {
            *dest.candidates.borrow_mut() = c;
        }
        Ok(dest)
    }

    async fn mx(&self, domain: &str) -> Result<Vec<route::Candidate>, Result_> {
        let port = self.cfg.mx_port;
        if let Some(ip) = domain_literal(domain) {
            return Ok(vec![route::Candidate {
                addr: SocketAddr::new(ip, port),
                name: domain.to_owned(),
                priority: 0,
                weight: 1,
            }]);
        }
        let Some(resolver) = &self.resolver else {
            return Err(Result_::Temporary(
                Reply::new(451, Status(4, 4, 3), "no DNS resolver available"),
                None,
            ));
        };
        match resolver.mx(domain).await {
            Ok(answer) => match route::mx_verdict(&answer) {
                Ok(hosts) => {
                    let c = route::mx_candidates(hosts, port);
                    if c.is_empty() {
                        Err(Result_::Temporary(
                            Reply::new(
                                451,
                                Status(4, 4, 4),
                                format!("no address for the MX hosts of {domain}"),
                            ),
                            None,
                        ))
                    } else {
                        Ok(c)
                    }
                }
                Err(why) => {
                    let (code, status) = if matches!(answer, crate::dns::MxAnswer::NullMx) {
                        (556, Status(5, 1, 10))
                    } else {
                        (550, Status(5, 1, 2))
                    };
                    Err(Result_::Permanent(
                        Reply::new(code, status, format!("{domain}: {why}")),
                        None,
                    ))
                }
            },
            Err(DnsError::Temporary(e)) | Err(DnsError::Unavailable(e)) => Err(Result_::Temporary(
                Reply::new(
                    451,
                    Status(4, 4, 3),
                    format!("DNS lookup of {domain} failed: {e}"),
                ),
                None,
            )),
        }
    }

    fn push(self: &Rc<Self>, dest: &Rc<Dest>, job: Job) {
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

    /// A branch of `attempt` reported `results`; the last one finishes it.
    fn branch_done(&self, attempt: &Rc<Attempt>, results: Vec<(u32, Result_)>) {
        if attempt.closed.get() {
            return;
        }
        attempt.results.borrow_mut().extend(results);
        let left = attempt.branches.get() - 1;
        attempt.branches.set(left);
        if left == 0 {
            self.finish(attempt);
        }
    }

    /// Hands a finished attempt to the writer.
    fn finish(&self, attempt: &Rc<Attempt>) {
        attempt.closed.set(true);
        self.live.borrow_mut().remove(&attempt.key);
        self.finished.borrow_mut().push(attempt.clone());
        self.finished_event.notify(1);
    }

    fn report(&self, job: Job, results: Vec<(u32, Result_)>) {
        self.branch_done(&job.attempt, results);
    }

    fn fail_job(&self, job: Job, result: Result_) {
        let results = job.rcpts.iter().map(|&i| (i, result.clone())).collect();
        self.report(job, results);
    }

    fn pop_job(dest: &Dest) -> Option<Job> {
        dest.jobs.borrow_mut().pop_front()
    }

    /// One connection of `dest`: picks a host (failing over), sends jobs
    /// until idle, the per-connection limit, a better host coming back,
    /// an error, or shutdown.
    async fn connection(self: Rc<Self>, dest: Rc<Dest>) {
        let mut excluded: Vec<SocketAddr> = Vec::new();
        let mut last_error: Option<Reply> = None;
        'hosts: loop {
            if dest.jobs.borrow().is_empty() {
                break;
            }
            if self.stopping.get() {
                while let Some(job) = Self::pop_job(&dest) {
                    self.fail_job(job, Result_::NotTried);
                }
                break;
            }
            let candidates = dest.candidates.borrow().clone();
            let picked = self
                .health
                .borrow()
                .pick(&candidates, now_ms(), &excluded, self.random())
                .cloned();
            let Some(host) = picked else {
                if dest.conns.get() > 1 {
                    // Other connections are working: leave them the jobs
                    // (the last one to end defers what is left).
                    break;
                }
                // Every host is down: the waiting jobs are deferred.
                let reply = last_error.take().unwrap_or_else(|| {
                    let why = self
                        .health
                        .borrow()
                        .last_error(&candidates)
                        .map_or(String::new(), |e| format!(" (last error: {e})"));
                    Reply::new(
                        451,
                        Status(4, 4, 1),
                        format!("all hosts of {} are down{why}", dest.name),
                    )
                });
                while let Some(job) = Self::pop_job(&dest) {
                    self.fail_job(job, Result_::Temporary(reply.clone(), None));
                }
                break;
            };
            CoreMetrics::inc(&self.metrics().outbound_connections);
            let probe = dest.probing.get() > now_ms()
                && self
                    .health
                    .borrow()
                    .best_priority(&candidates, now_ms())
                    .is_some_and(|p| p == host.priority);
            let opened = Conn::open(
                host.addr,
                &self.core.config.hostname,
                self.cfg.connect_timeout,
                self.cfg.greeting_timeout,
                self.cfg.inactivity_timeout,
            )
            .await;
            if probe {
                dest.probing.set(0);
            }
            let mut conn = match opened {
                Ok(c) => c,
                Err(e) => {
                    CoreMetrics::inc(&self.metrics().outbound_connect_failures);
                    tracing::warn!(dest = %dest.name, host = %host.name, addr = %host.addr, error = %e, "next hop unavailable; trying another");
                    // A refused TCP connect, or a failing greeting with no
                    // other session to the host, marks it down; a greeting
                    // refusal while other sessions work (a connection
                    // limit) only moves this connection elsewhere.
                    let busy = self
                        .host_conns
                        .borrow()
                        .get(&host.addr)
                        .is_some_and(|&n| n > 0);
                    if matches!(e, outbound::ConnError::Connect(..)) || !busy {
                        self.health
                            .borrow_mut()
                            .mark_down(host.addr, now_ms(), &e.to_string());
                    }
                    excluded.push(host.addr);
                    last_error = Some(e.as_reply());
                    continue 'hosts;
                }
            };
            let _slot = HostSlot::new(&self, host.addr);
            self.health.borrow_mut().mark_up(&host.addr);
            loop {
                let job = match Self::pop_job(&dest) {
                    Some(j) => j,
                    None => {
                        if !self.wait_for_job(&dest).await {
                            conn.quit().await;
                            break 'hosts;
                        }
                        continue;
                    }
                };
                if self.stopping.get() {
                    self.fail_job(job, Result_::NotTried);
                    continue;
                }
                let better = dest.probing.get() <= now_ms()
                    && self
                        .health
                        .borrow()
                        .best_priority(&candidates, now_ms())
                        .is_some_and(|p| p < host.priority);
                if better {
                    let limit = self.cfg.connect_timeout + self.cfg.greeting_timeout;
                    dest.probing.set(now_ms() + limit.as_millis() as u64);
                }
                if better || conn.sent >= self.cfg.messages_per_connection_max {
                    // Fail back to a better host, or recycle the connection.
                    dest.jobs.borrow_mut().push_front(job);
                    conn.quit().await;
                    excluded.clear();
                    continue 'hosts;
                }
                match self.send(&mut conn, &host.name, &job).await {
                    Ok(results) => {
                        self.report(job, results);
                        if conn.broken {
                            continue 'hosts;
                        }
                    }
                    Err(e) if conn.stale(&e) => {
                        tracing::debug!(dest = %dest.name, host = %host.name, error = %e, "reused connection was closed by the peer; reconnecting");
                        dest.jobs.borrow_mut().push_front(job);
                        continue 'hosts;
                    }
                    Err(e) => {
                        tracing::warn!(dest = %dest.name, host = %host.name, error = %e, "connection failed during a transaction");
                        let reply = e.as_reply();
                        self.fail_job(
                            job,
                            Result_::Temporary(reply.clone(), Some(host.name.clone())),
                        );
                        // Deferred; one broken session does not mark the
                        // host down (others may be fine), but this
                        // connection tries elsewhere first.
                        excluded.push(host.addr);
                        last_error = Some(reply);
                        continue 'hosts;
                    }
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

    /// Waits up to `connection_idle` for a job; false: give up the
    /// connection.
    async fn wait_for_job(&self, dest: &Dest) -> bool {
        let listener = dest.event.listen();
        if !dest.jobs.borrow().is_empty() {
            return true;
        }
        if self.stopping.get() {
            return false;
        }
        dest.idle.set(dest.idle.get() + 1);
        let stop = self.stop_event.listen();
        let got = futures_lite::future::or(
            async {
                listener.await;
                true
            },
            futures_lite::future::or(
                async {
                    glommio::timer::sleep(self.cfg.connection_idle).await;
                    false
                },
                async {
                    stop.await;
                    false
                },
            ),
        )
        .await;
        dest.idle.set(dest.idle.get() - 1);
        got || !dest.jobs.borrow().is_empty()
    }

    async fn send(
        &self,
        conn: &mut Conn,
        host: &str,
        job: &Job,
    ) -> Result<Vec<(u32, Result_)>, outbound::ConnError> {
        let msg = &job.attempt.msg;
        let content: &[u8] = &msg.message;
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
                let r = Reply::new(
                    553,
                    Status(5, 6, 7),
                    format!("{host} does not support SMTPUTF8 (RFC 6531)"),
                );
                return Ok(refuse_all(job, &r, host));
            }
            smtputf8 = false;
        }
        if let Some(max) = conn.caps.size.filter(|&m| m > 0) {
            if content.len() as u64 > max {
                let r = Reply::new(
                    552,
                    Status(5, 3, 4),
                    format!("message too big for {host} (SIZE {max})"),
                );
                return Ok(refuse_all(job, &r, host));
            }
        }
        let rcpts: Vec<String> = job
            .rcpts
            .iter()
            .map(|&i| msg.recipients[i as usize].clone())
            .collect();
        let opts = MailOptions {
            size: Some(content.len() as u64),
            body: if msg.eight_bit {
                Body::EightBitMime
            } else {
                Body::SevenBit
            },
            smtputf8,
            extra: Vec::new(),
        };
        CoreMetrics::inc(&self.metrics().delivery_transactions);
        let outcome = conn.send(&msg.mail_from, &rcpts, &opts, content).await?;
        Ok(job
            .rcpts
            .iter()
            .zip(outcome.recipients)
            .map(|(&i, s)| {
                let r = match s {
                    RcptStatus::Delivered(_) => Result_::Delivered,
                    RcptStatus::Temporary(r) => Result_::Temporary(r, Some(host.into())),
                    RcptStatus::Permanent(r) => Result_::Permanent(r, Some(host.into())),
                };
                (i, r)
            })
            .collect())
    }

    /// Records finished attempts: DSNs first (new messages), then one
    /// status record; applied in memory once durable.
    async fn writer(self: Rc<Self>) {
        loop {
            let listener = self.finished_event.listen();
            let batch = std::mem::take(&mut *self.finished.borrow_mut());
            if batch.is_empty() {
                if self.stopping.get() && self.open_attempts.get() == 0 {
                    return;
                }
                futures_lite::future::or(listener, async {
                    glommio::timer::sleep(Duration::from_millis(100)).await;
                })
                .await;
                continue;
            }
            let now = now_ms();
            let mut events = Vec::new();
            let mut copies = Vec::new();
            for a in &batch {
                self.conclude(a, now, &mut events, &mut copies).await;
            }
            // SPEC 3: an original is released only with its DSN redundant
            // too, so the status waits for the DSNs' shadow copies. They run
            // side by side: with a peer that does not answer, the batch
            // waits one shadow_timeout per peer, not one per DSN.
            for c in copies {
                c.await;
            }
            let mut ok = true;
            for chunk in events.chunks(status::EVENTS_MAX) {
                if let Err(e) = self.append_status(chunk).await {
                    tracing::error!(error = %e, "cannot record delivery results; they will be retried after restart");
                    ok = false;
                    break;
                }
            }
            let mut q = self.queue.borrow_mut();
            if ok {
                for e in &events {
                    q.apply(e);
                }
                if self.core.config.cluster.shadow_redundancy
                    && !self.core.config.cluster.peers.is_empty()
                {
                    // Discard status for the shadows (SPEC 3).
                    let shard = self.core.shard;
                    let done = events.iter().filter(|e| e.event == Event::Done).map(|e| {
                        QueueId {
                            shard,
                            sequence: Sequence(e.message),
                        }
                        .to_string()
                    });
                    self.core
                        .shared
                        .discards
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(now, done);
                }
            } else {
                for a in &batch {
                    q.release(a.key, now + self.cfg.retry_initial.as_millis() as u64);
                }
            }
            drop(q);
            self.open_attempts
                .set(self.open_attempts.get() - batch.len());
            self.core.delivery_wake.notify(usize::MAX);
        }
    }

    /// Appends one status record (durable on return).
    async fn append_status(&self, events: &[StatusEvent]) -> tern_storage::Result<Sequence> {
        self.core.append_status(events).await
    }

    /// The events for a finished attempt (and its DSN, appended here; its
    /// shadow copy, started here, goes to `copies`).
    async fn conclude(
        &self,
        a: &Attempt,
        now: u64,
        events: &mut Vec<StatusEvent>,
        copies: &mut Vec<glommio::Task<()>>,
    ) {
        let results = a.results.borrow().clone();
        let m = self.metrics();
        let expires = a.msg.received_ms + self.cfg.message_expiration_timeout.as_millis() as u64;
        let mut delivered = Vec::new();
        let mut failed: Vec<(u32, Reply, Option<String>, bool)> = Vec::new();
        let mut temporary = Vec::new();
        let mut not_tried = false;
        for (i, r) in results.iter() {
            match r {
                Result_::Delivered => delivered.push(*i),
                Result_::Permanent(reply, host) => {
                    failed.push((*i, reply.clone(), host.clone(), false))
                }
                Result_::Temporary(reply, host) if now >= expires => {
                    failed.push((*i, reply.clone(), host.clone(), true))
                }
                Result_::Temporary(reply, host) => {
                    temporary.push((*i, reply.clone(), host.clone()))
                }
                Result_::NotTried => not_tried = true,
            }
        }
        m.delivered_rcpts
            .fetch_add(delivered.len() as u64, Ordering::Relaxed);
        if !delivered.is_empty() {
            events.push(StatusEvent {
                message: a.key,
                event: Event::Delivered,
                at_ms: now,
                attempts: a.attempts,
                rcpts: delivered.clone(),
            });
            tracing::info!(id = %a.id, rcpts = delivered.len(), "delivered");
        }
        if !failed.is_empty() {
            let expired = failed.iter().filter(|f| f.3).count() as u64;
            m.expired_rcpts.fetch_add(expired, Ordering::Relaxed);
            m.bounced_rcpts
                .fetch_add(failed.len() as u64 - expired, Ordering::Relaxed);
            for (i, reply, host, exp) in &failed {
                tracing::info!(id = %a.id, rcpt = %a.msg.recipients[*i as usize], host = host.as_deref().unwrap_or("-"),
                    reply = %reply.text(), expired = exp, "bounced");
            }
            if !a.msg.mail_from.is_empty() && self.queue_dsn(a, &failed, now, copies).await.is_err()
            {
                // Not recorded: the recipients stay pending and are tried
                // again (the log is failing anyway).
                temporary.extend(failed.drain(..).map(|(i, r, h, _)| (i, r, h)));
            }
            if !failed.is_empty() {
                events.push(StatusEvent {
                    message: a.key,
                    event: Event::Bounced,
                    at_ms: now,
                    attempts: a.attempts,
                    rcpts: failed.iter().map(|f| f.0).collect(),
                });
            }
        }
        if temporary.is_empty() && !not_tried {
            events.push(StatusEvent {
                message: a.key,
                event: Event::Done,
                at_ms: now,
                attempts: a.attempts,
                rcpts: Vec::new(),
            });
            return;
        }
        let (at_ms, attempts) = if temporary.is_empty() {
            (now, a.attempts - 1)
        } else {
            CoreMetrics::inc(&m.deferred);
            let (_, reply, host) = &temporary[0];
            let delay = retry_delay(&self.cfg, a.attempts);
            tracing::info!(id = %a.id, rcpts = temporary.len(), host = host.as_deref().unwrap_or("-"),
                reply = %reply.text(), retry_in = ?delay, "deferred");
            (now + delay.as_millis() as u64, a.attempts)
        };
        events.push(StatusEvent {
            message: a.key,
            event: Event::Deferred,
            at_ms,
            attempts,
            rcpts: Vec::new(),
        });
    }

    async fn queue_dsn(
        &self,
        a: &Attempt,
        failed: &[(u32, Reply, Option<String>, bool)],
        now: u64,
        copies: &mut Vec<glommio::Task<()>>,
    ) -> Result<(), ()> {
        let expired_text = format!(
            "the message could not be delivered within {} and expired",
            humantime::format_duration(self.cfg.message_expiration_timeout)
        );
        let reports: Vec<crate::dsn::RecipientReport> = failed
            .iter()
            .map(|(i, reply, host, expired)| crate::dsn::RecipientReport {
                recipient: &a.msg.recipients[*i as usize],
                action: crate::dsn::Action::Failed,
                status: if *expired {
                    Status(5, 4, 7)
                } else {
                    reply.status.unwrap_or(Status(5, 0, 0))
                },
                remote_mta: host.as_deref(),
                diagnostic: (host.is_some() || *expired).then_some(reply),
                explanation: if *expired {
                    &expired_text
                } else if host.is_some() {
                    "the next hop rejected the recipient"
                } else {
                    reply.lines.first().map_or("undeliverable", |s| s.as_ref())
                },
                last_attempt_ms: Some(now),
            })
            .collect();
        let id = a.id.to_string();
        let content = crate::dsn::build(&crate::dsn::Notice {
            reporting_mta: &self.core.config.hostname,
            queue_id: &id,
            envelope_from: &a.msg.mail_from,
            arrival_ms: a.msg.received_ms,
            now_ms: now,
            original: &a.msg.message,
            recipients: &reports,
            return_content_bytes_max: self.cfg.dsn_return_content_max,
        });
        let enc = Encoder::generated(&self.core.config.hostname, &a.msg.mail_from, now, &content);
        let shard = self.core.shard;
        match self
            .core
            .log
            .append_with(MESSAGE, TimestampMs(now), enc.len(), |sequence, w| {
                self.core.recent.borrow_mut().announce(
                    sequence.0,
                    Announced::Message {
                        received_ms: now,
                        rcpts: 1,
                    },
                );
                enc.write(QueueId { shard, sequence }, &mut |b| w.put(b))
            })
            .await
        {
            Ok(seq) => {
                CoreMetrics::inc(&self.metrics().dsns_queued);
                let dsn = QueueId {
                    shard,
                    sequence: seq,
                };
                tracing::info!(id = %a.id, dsn = %dsn, to = %a.msg.mail_from, "bounce queued");
                // SPEC 3: the original is released (`done`) only with its
                // DSN redundant too: the writer waits for this copy before
                // it records the original's status.
                let core = self.core.clone();
                let to = a.msg.mail_from.clone();
                copies.push(glommio::spawn_local(async move {
                    core.shadow_generated(dsn, &to, &content).await
                }));
                Ok(())
            }
            Err(e) => {
                tracing::error!(id = %a.id, error = %e, "cannot queue the bounce");
                Err(())
            }
        }
    }

    /// Cursors, copy-forward and reclamation, every
    /// `maintenance_interval`.
    async fn maintenance(self: Rc<Self>) {
        while !self.stopping.get() {
            let stop = self.stop_event.listen();
            futures_lite::future::or(
                async {
                    glommio::timer::sleep(self.cfg.maintenance_interval).await;
                },
                stop,
            )
            .await;
            if self.stopping.get() {
                break;
            }
            if let Err(e) = self.maintain().await {
                tracing::error!(error = %e, "queue maintenance failed");
            }
        }
    }

    async fn maintain(&self) -> anyhow::Result<()> {
        let log = &self.core.log;
        let now = now_ms();
        if let Err(e) = self.copy_forward(now).await {
            tracing::error!(error = %e, "copy-forward failed");
        }
        let scanned = self.scanned.get();
        let queue_at = self.queue.borrow().cursor(scanned);
        let first = log.first_sequence().0;
        if log.cursor("queue") != Some(Sequence(queue_at)) && queue_at >= first {
            log.set_cursor("queue", Sequence(queue_at)).await?;
        }
        self.publish_watermark();
        // Shadow copies held for peers pin the shadow cursor until they
        // expire (discard notifications are not built yet): SPEC 5, never
        // confirmed copies go after safety_net_hold_time +
        // message_expiration_timeout.
        let keep_ms = (self.cfg.safety_net_hold_time + self.cfg.message_expiration_timeout)
            .as_millis() as u64;
        self.shadow_upkeep(now, keep_ms).await?;
        {
            let mut per_node: HashMap<String, u64> = HashMap::new();
            for (_, (_, (node, _, _))) in self.shadows.borrow().iter() {
                *per_node.entry(node.clone()).or_insert(0) += 1;
            }
            let shard = self.core.shard;
            let mut depth = self
                .core
                .shared
                .shadow_depth
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            depth.retain(|(core, _), _| *core != shard);
            depth.extend(per_node.into_iter().map(|(n, c)| ((shard, n), c)));
        }
        self.core
            .shared
            .discards
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .expire(
                now,
                self.core
                    .config
                    .cluster
                    .shadow_message_auto_discard_interval
                    .as_millis() as u64,
                &self
                    .core
                    .config
                    .cluster
                    .peers
                    .iter()
                    .map(|p| p.node_id.as_str())
                    .collect::<Vec<_>>(),
            );
        let shadow_at = self
            .shadows
            .borrow()
            .first_key_value()
            .map_or(scanned, |(s, _)| *s)
            .min(scanned);
        if log.cursor("shadow") != Some(Sequence(shadow_at)) && shadow_at >= first {
            log.set_cursor("shadow", Sequence(shadow_at)).await?;
        }
        let hold = self.cfg.safety_net_hold_time.as_millis() as u64;
        let net = log
            .first_at_or_after(TimestampMs(now.saturating_sub(hold)))
            .map_or(scanned, |s| s.0)
            .min(scanned);
        if log.cursor("safety-net") != Some(Sequence(net)) && net >= first {
            log.set_cursor("safety-net", Sequence(net)).await?;
        }
        // Forget idle destinations (per-domain ones would pile up) and old
        // host failures.
        self.dests
            .borrow_mut()
            .retain(|_, d| d.conns.get() > 0 || !d.jobs.borrow().is_empty());
        self.health.borrow_mut().prune(now);
        self.mx_cache
            .borrow_mut()
            .retain(|_, (until, _)| *until > now);
        let freed = log.reclaim(TimestampMs(now)).await?;
        if !freed.deleted.is_empty() {
            self.metrics()
                .segments_reclaimed
                .fetch_add(freed.deleted.len() as u64, Ordering::Relaxed);
        }
        let q = self.queue.borrow();
        self.metrics()
            .queue_messages
            .store(q.len() as u64, Ordering::Relaxed);
        self.metrics()
            .queue_in_flight
            .store(q.in_flight() as u64, Ordering::Relaxed);
        drop(q);
        self.metrics().set_log_stats(&log.stats());
        Ok(())
    }

    /// Publishes this core's discard watermark for `XQDISCARD` answers:
    /// every message of this shard below it is handled (the lowest queued
    /// key, or the tail's position; never past an unreadable record).
    fn publish_watermark(&self) {
        let w = self
            .queue
            .borrow()
            .watermark(self.scanned.get())
            .min(self.unreadable_min.get());
        self.core
            .shared
            .watermarks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(self.core.shard, w);
    }

    /// The shadow queue's upkeep: copies whose primary handled the message
    /// (discard notifications) or that expired go; copies whose primary
    /// lost its store (new database id) or stayed unreachable for
    /// `shadow_resubmit_time_span` are taken over: re-queued here as this
    /// node's own messages (SPEC 3). Each decision is a durable `done`
    /// event on the shadow record, so a restart does not repeat it.
    async fn shadow_upkeep(&self, now: u64, keep_ms: u64) -> anyhow::Result<()> {
        // Ids told for copies no core here holds go soon (every core
        // takes its own matches each maintenance tick).
        let told_keep = crate::shadow::discard::TOLD_IDS_KEEP_MS
            .max(10 * self.cfg.maintenance_interval.as_millis() as u64);
        self.core
            .shared
            .discarded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .expire(now, told_keep);
        if self.shadows.borrow().is_empty() {
            return Ok(());
        }
        let cluster = &self.core.config.cluster;
        let span = cluster.shadow_resubmit_time_span.as_millis() as u64;
        let primaries = self
            .core
            .shared
            .primaries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut gone = Vec::new();
        let mut promote = Vec::new();
        {
            let mut discarded = self
                .core
                .shared
                .discarded
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            for (seq, (at, (node, db, qid))) in self.shadows.borrow().iter() {
                let state = primaries.get(node);
                let last_ok = state.map_or(self.started_ms, |s| s.last_ok_ms.max(self.started_ms));
                if discarded.take(node, db, qid)
                    || state.is_some_and(|s| s.below_watermark(db, qid))
                {
                    gone.push(*seq);
                } else if state
                    .and_then(|s| s.database.as_deref())
                    .is_some_and(|d| d != db)
                {
                    promote.push((*seq, format!("{node} has a new store")));
                } else if now.saturating_sub(last_ok) >= span {
                    promote.push((*seq, format!("{node} unreachable")));
                } else if at.saturating_add(keep_ms) <= now {
                    gone.push(*seq);
                }
            }
        }
        let dropped = gone.len() as u64;
        let mut events: Vec<StatusEvent> = Vec::new();
        for (seq, why) in promote {
            let rec = self.core.log.read(Sequence(seq))?;
            let (origin, payload) = crate::shadow::record::split(&rec.payload)?;
            let (received_ms, rcpts) = message::peek(&payload)?;
            let shard = self.core.shard;
            let new = self
                .core
                .log
                .append_with(MESSAGE, TimestampMs(now), payload.len(), |sequence, w| {
                    self.core
                        .recent
                        .borrow_mut()
                        .announce(sequence.0, Announced::Message { received_ms, rcpts });
                    w.put(&payload);
                })
                .await?;
            CoreMetrics::inc(&self.metrics().takeovers);
            tracing::warn!(primary = %origin.node, primary_id = %origin.queue_id,
                id = %QueueId { shard, sequence: new }, reason = %why, "took over a shadow copy");
            gone.push(seq);
        }
        for seq in &gone {
            events.push(StatusEvent {
                message: *seq,
                event: Event::Done,
                at_ms: now,
                attempts: 0,
                rcpts: Vec::new(),
            });
        }
        if !events.is_empty() {
            self.append_status(&events).await?;
            let mut shadows = self.shadows.borrow_mut();
            for seq in &gone {
                shadows.remove(seq);
            }
            self.metrics()
                .shadow_discards
                .fetch_add(dropped, Ordering::Relaxed);
            self.core.delivery_wake.notify(usize::MAX);
        }
        Ok(())
    }

    /// Copies waiting messages whose record sits in an old segment to the
    /// head of the log (with a snapshot of their state), so the segment
    /// can be reclaimed while they wait.
    async fn copy_forward(&self, now: u64) -> anyhow::Result<()> {
        let log = &self.core.log;
        let segments = log.segments();
        let Some(last) = segments.last() else {
            return Ok(());
        };
        let cutoff = now.saturating_sub(self.cfg.copy_forward_after.as_millis() as u64);
        let young_from = segments
            .iter()
            .find(|s| s.created.0 > cutoff)
            .map_or(last.first, |s| s.first)
            .min(last.first);
        let keys = self.queue.borrow().pinned(young_from.0, 256);
        for key in keys {
            // Held (as if in flight) so no attempt runs during the copy.
            let Some(entry) = self.queue.borrow_mut().hold(key) else {
                continue;
            };
            let copied = log
                .copy_forward(Sequence(entry.location), TimestampMs(now))
                .await;
            let result = match copied {
                Ok(new) => {
                    let mut snap = self.queue.borrow().snapshot(key).expect("held");
                    snap.at_ms = entry.next_ms;
                    let r = self.append_status(std::slice::from_ref(&snap)).await;
                    if r.is_ok() {
                        self.core.recent.borrow_mut().take(entry.location);
                        self.queue.borrow_mut().relocate(key, new.0);
                        CoreMetrics::inc(&self.metrics().copied_forward);
                    }
                    r.map(|_| ())
                }
                Err(e) => Err(e),
            };
            self.queue.borrow_mut().release(key, entry.next_ms);
            if let Err(e) = result {
                // Try the others; this one stays where it is for now.
                tracing::error!(message = key, error = %e, "cannot copy a queued message forward");
                if matches!(
                    e,
                    tern_storage::Error::Fatal(_) | tern_storage::Error::Closed
                ) {
                    return Err(e.into());
                }
            }
        }
        Ok(())
    }

    /// Stops delivery: no new attempts; connections finish the
    /// transaction they are in, jobs not started are recorded as not
    /// tried; returns when every attempt is recorded (or `grace` passed).
    pub async fn stop(&self, grace: Duration) {
        self.stopping.set(true);
        self.stop_event.notify(usize::MAX);
        self.finished_event.notify(usize::MAX);
        // Jobs no connection has started are not tried: recorded as such
        // now, without waiting for connections still connecting or
        // greeting.
        let dests: Vec<Rc<Dest>> = self.dests.borrow().values().cloned().collect();
        for d in dests {
            while let Some(job) = Self::pop_job(&d) {
                self.fail_job(job, Result_::NotTried);
            }
            d.event.notify(usize::MAX);
        }
        let deadline = std::time::Instant::now() + grace;
        while self.open_attempts.get() > 0 && std::time::Instant::now() < deadline {
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
        let live: Vec<Rc<Attempt>> = self.live.borrow().values().cloned().collect();
        if !live.is_empty() {
            // Record what is known (e.g. recipients another transaction of
            // the same message already delivered); the transactions still
            // waiting for a reply count as not tried and run again after
            // restart.
            tracing::warn!(
                open = live.len(),
                "grace period over with transactions in flight; they will run again after restart"
            );
            for a in live {
                let answered: Vec<u32> = a.results.borrow().iter().map(|(i, _)| *i).collect();
                let missing: Vec<(u32, Result_)> = a
                    .rcpts
                    .iter()
                    .filter(|i| !answered.contains(i))
                    .map(|&i| (i, Result_::NotTried))
                    .collect();
                a.results.borrow_mut().extend(missing);
                self.finish(&a);
            }
            let end = std::time::Instant::now() + Duration::from_secs(5);
            while self.open_attempts.get() > 0 && std::time::Instant::now() < end {
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
        }
        let _ = self.maintain_cursor().await;
    }

    async fn maintain_cursor(&self) -> anyhow::Result<()> {
        let scanned = self.scanned.get();
        let at = self.queue.borrow().cursor(scanned);
        if at >= self.core.log.first_sequence().0 {
            self.core.log.set_cursor("queue", Sequence(at)).await?;
        }
        Ok(())
    }
}

/// Every recipient of `job` failed permanently with `reply` at `host`.
fn refuse_all(job: &Job, reply: &Reply, host: &str) -> Vec<(u32, Result_)> {
    job.rcpts
        .iter()
        .map(|&i| (i, Result_::Permanent(reply.clone(), Some(host.into()))))
        .collect()
}

/// Exponential from `retry_initial`, doubling per attempt, capped.
pub fn retry_delay(cfg: &DeliveryConfig, attempts: u32) -> Duration {
    let factor = 1u32 << attempts.saturating_sub(1).min(20);
    cfg.retry_initial.saturating_mul(factor).min(cfg.retry_max)
}

/// The lower-case domain of a stored recipient (`Postmaster` alone goes
/// to this host's own domain).
fn domain_of(rcpt: &str, hostname: &str) -> String {
    match rcpt.rsplit_once('@') {
        Some((_, d)) => d.to_ascii_lowercase(),
        None => hostname.to_ascii_lowercase(),
    }
}

/// `[192.0.2.1]` or `[IPv6:2001:db8::1]`.
fn domain_literal(domain: &str) -> Option<IpAddr> {
    let inner = domain.strip_prefix('[')?.strip_suffix(']')?;
    let inner = inner
        .strip_prefix("ipv6:")
        .or_else(|| inner.strip_prefix("IPv6:"))
        .unwrap_or(inner);
    inner.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_schedule() {
        let cfg = crate::config::Config::from_toml("", &Default::default())
            .unwrap()
            .delivery;
        let d: Vec<u64> = (1..=8).map(|a| retry_delay(&cfg, a).as_secs()).collect();
        assert_eq!(d, vec![60, 120, 240, 480, 960, 1920, 3600, 3600]);
        assert_eq!(retry_delay(&cfg, 1000).as_secs(), 3600);
    }

    #[test]
    fn domains() {
        assert_eq!(domain_of("a@Example.COM", "h"), "example.com");
        assert_eq!(domain_of("Postmaster", "Mx.Host"), "mx.host");
        assert_eq!(
            domain_literal("[127.0.0.2]"),
            Some("127.0.0.2".parse().unwrap())
        );
        assert_eq!(domain_literal("[ipv6:::1]"), Some("::1".parse().unwrap()));
        assert_eq!(domain_literal("example.com"), None);
    }
}
