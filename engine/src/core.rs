//! One core: its executor runs this. Own log shard, own SO_REUSEPORT
//! listener, own sessions; nothing shared on the per-message path (the
//! per-IP connection table is touched once per connection).

use std::cell::Cell;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures_lite::AsyncWriteExt;
use glommio::net::{TcpListener, TcpStream};
use tern_smtp::server::{Envelope, ServerConfig};
use tern_smtp::{Reply, Status};
use tern_storage::{Log, TimestampMs};

use crate::config::{Config, RelayRules};
use crate::failpoint::EngineEnv;
use crate::message::{Encoder, QueueId, MESSAGE};
use crate::metrics::CoreMetrics;
use crate::received;

/// State shared by all cores (not on the per-message path).
#[derive(Default)]
pub struct Shared {
    /// Set by SIGTERM/SIGINT.
    pub stop: std::sync::atomic::AtomicBool,
    /// Cores whose listener is bound.
    pub ready: std::sync::atomic::AtomicUsize,
    /// Open connections per client address, whole server.
    pub per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Run-time route overrides (admin).
    pub routes: crate::delivery::route::RouteOverrides,
    /// This node's transport database id: set once by `serve` before any
    /// core starts (announced to peers on the shadow link).
    pub database_id: std::sync::OnceLock<crate::cluster::DatabaseId>,
    /// Primary side: handled messages, for the shadows' `XQDISCARD`.
    pub discards: Mutex<crate::shadow::discard::DiscardLog>,
    /// Shadow side: copies the primaries said may go.
    pub discarded: Mutex<crate::shadow::discard::Discarded>,
    /// Messages accepted within `cluster.duplicate_window` (resends are
    /// answered with the first one's queue id).
    pub recent_messages: crate::shadow::dedupe::Window,
    /// Shadow side: copies held per (core, primary node), published by each
    /// core's maintenance (for `tern shadow status` and /metrics).
    pub shadow_depth: Mutex<HashMap<(u16, String), u64>>,
    /// Primary side: each core's discard watermark (`shard -> sequence`,
    /// see `Queue::watermark`), published by its maintenance and sent to
    /// shadows with every `XQDISCARD` answer. Rebuilt from the log at
    /// start, so discards survive a restart.
    pub watermarks: Mutex<std::collections::BTreeMap<u16, u64>>,
    /// Shadow side: what the heartbeats learned of each primary.
    pub primaries: Mutex<HashMap<String, crate::shadow::discard::PrimaryState>>,
}

/// Core-local shutdown signal.
#[derive(Default)]
pub struct Shutdown {
    set: Cell<bool>,
    event: event_listener::Event,
}

impl Shutdown {
    /// Has shutdown begun?
    pub fn is_set(&self) -> bool {
        self.set.get()
    }

    fn trigger(&self) {
        self.set.set(true);
        self.event.notify(usize::MAX);
    }

    /// Resolves once shutdown begins.
    pub async fn wait(&self) {
        if self.is_set() {
            return;
        }
        let listener = self.event.listen();
        if self.is_set() {
            return;
        }
        listener.await;
    }
}

/// Everything a session needs from its core.
pub struct Core {
    /// Shard number (= core index).
    pub shard: u16,
    /// The configuration.
    pub config: Arc<Config>,
    /// Protocol settings shared by this core's sessions.
    pub smtp: Rc<ServerConfig>,
    /// Relay rules.
    pub relay: Rc<RelayRules>,
    /// This core's log shard.
    pub log: Log<EngineEnv>,
    /// This core's counters.
    pub metrics: Arc<CoreMetrics>,
    /// Shutdown signal.
    pub shutdown: Shutdown,
    open: Cell<usize>,
    /// Message content held by this core's sessions (see
    /// `smtp.message_memory_max`).
    pub content_bytes: Cell<usize>,
    /// State shared by all cores.
    pub shared: Arc<Shared>,
    /// Notified when records were appended (delivery tails the log).
    pub delivery_wake: event_listener::Event,
    /// Payloads of just-accepted messages, taken by delivery.
    pub recent: std::cell::RefCell<Recent>,
    /// Cluster peers' addresses (they may use the shadow link).
    pub peer_ips: Vec<IpAddr>,
    /// This core's shadow links to its peers.
    pub links: crate::shadow::link::Links,
    /// `<node id>,<database id>,`: the start of every `XSHADOW=` value this
    /// node sends (formatted once, not per message).
    pub xshadow_prefix: String,
}

/// What the delivery tail needs of a record this core appended, so it
/// need not read the record back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Announced {
    /// A new message record (not a copy).
    Message {
        /// Arrival (unix ms).
        received_ms: u64,
        /// Recipient count.
        rcpts: u32,
    },
    /// A record delivery ignores when tailing (status records).
    Other,
    /// A shadow copy held for a peer (pins the `shadow` cursor).
    Shadow {
        /// When it was stored (unix ms).
        at_ms: u64,
        /// Who holds the primary copy (node, database id) and its id there.
        origin: (String, String, String),
    },
}

/// Records just appended by this core: their kind and queue facts (until
/// the delivery tail passes them) and message payloads (until delivery
/// takes them, within a byte budget; past it, delivery reads the log).
#[derive(Debug, Default)]
pub struct Recent {
    map: HashMap<u64, bytes::Bytes>,
    announced: HashMap<u64, Announced>,
    /// Messages whose shadow copy is still being made: the delivery tail
    /// stops before them until the outcome is known.
    pub undecided: std::collections::HashSet<u64>,
    bytes: usize,
    max: usize,
}

impl Recent {
    /// A cache of at most `max` bytes.
    pub fn new(max: usize) -> Recent {
        Recent {
            map: HashMap::new(),
            announced: HashMap::new(),
            undecided: std::collections::HashSet::new(),
            bytes: 0,
            max,
        }
    }

    /// Notes what record `seq` is (called while appending it).
    pub fn announce(&mut self, seq: u64, what: Announced) {
        self.announced.insert(seq, what);
    }

    /// Takes what was announced about record `seq`.
    pub fn announced(&mut self, seq: u64) -> Option<Announced> {
        self.announced.remove(&seq)
    }

    /// Would a payload of `size` bytes fit?
    pub fn has_room(&self, size: usize) -> bool {
        self.bytes + size <= self.max
    }

    /// Keeps `payload` of record `seq` if it fits.
    pub fn insert(&mut self, seq: u64, payload: bytes::Bytes) {
        if self.has_room(payload.len()) {
            self.bytes += payload.len();
            self.map.insert(seq, payload);
        }
    }

    /// Takes the payload of record `seq`, if kept.
    pub fn take(&mut self, seq: u64) -> Option<bytes::Bytes> {
        let p = self.map.remove(&seq)?;
        self.bytes -= p.len();
        Some(p)
    }
}

impl Core {
    /// Is shadow redundancy on with someone to shadow to?
    fn shadowing(&self) -> bool {
        let c = &self.config.cluster;
        c.shadow_redundancy && !c.peers.is_empty()
    }

    /// Makes a message durable in this core's log and, with shadow
    /// redundancy, a copy on a peer, in parallel; `Ok` only after the group
    /// commit that covers it and the peer's 250. Any storage error is a
    /// 452, never 250. A copy from a peer's shadow link (`XSHADOW=`) goes
    /// through [`Core::queue_shadow`] instead.
    pub async fn accept(
        &self,
        env: &Envelope,
        content: &[u8],
        peer: SocketAddr,
    ) -> Result<QueueId, Reply> {
        debug_assert!(
            env.params.xshadow.is_none(),
            "shadow copies go through queue_shadow"
        );
        let now = SystemTime::now();
        let ms = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        let window_ms = self.config.cluster.duplicate_window.as_millis() as u64;
        let digest = if self.config.cluster.shadow_redundancy {
            self.shared.recent_messages.digest(env, content)
        } else {
            None
        };
        if let Some(d) = &digest {
            if let Some(first) = self.shared.recent_messages.seen(d, ms, window_ms) {
                CoreMetrics::inc(&self.metrics.duplicates);
                tracing::info!(first = %first, client = %peer, from = %env.from, "resent message: accepted, not queued again");
                return first.parse().map_err(|_| {
                    Reply::new(451, Status(4, 3, 0), "Error: internal (duplicate id)")
                });
            }
        }
        let (prefix, suffix) = received::header(&self.config.hostname, env, peer, now);
        let encoder = Encoder::new(env, peer, ms, Some((&prefix, &suffix)), content);
        let shard = self.shard;
        let size = encoder.len();
        let shadowing = self.shadowing();
        // A copy for delivery, so it need not read the record back from
        // disk (O_DIRECT writes bypass the page cache) while it is fresh.
        let mut copy = self
            .recent
            .borrow()
            .has_room(size)
            .then(|| Vec::with_capacity(size));
        let assigned: Cell<Option<tern_storage::Sequence>> = Cell::new(None);
        let append_done = Cell::new(false);
        let progress = event_listener::Event::new();
        let append = async {
            let r = self
                .log
                .append_with(MESSAGE, TimestampMs(ms), size, |sequence, w| {
                    let mut recent = self.recent.borrow_mut();
                    recent.announce(
                        sequence.0,
                        Announced::Message {
                            received_ms: ms,
                            rcpts: env.recipients.len() as u32,
                        },
                    );
                    if shadowing {
                        // Delivery waits for the shadow outcome.
                        recent.undecided.insert(sequence.0);
                    }
                    drop(recent);
                    assigned.set(Some(sequence));
                    progress.notify(usize::MAX);
                    encoder.write(QueueId { shard, sequence }, &mut |b| {
                        w.put(b);
                        if let Some(c) = copy.as_mut() {
                            c.extend_from_slice(b);
                        }
                    })
                })
                .await;
            append_done.set(true);
            progress.notify(usize::MAX);
            r
        };
        let shadow = async {
            if !shadowing {
                return None;
            }
            // The queue id names the copy: wait until the log assigned it.
            let sequence = loop {
                if let Some(s) = assigned.get() {
                    break s;
                }
                if append_done.get() {
                    return None;
                }
                let l = progress.listen();
                if assigned.get().is_none() && !append_done.get() {
                    l.await;
                }
            };
            let id = QueueId { shard, sequence };
            let mut message = Vec::with_capacity(prefix.len() + 14 + suffix.len() + content.len());
            message.extend_from_slice(&prefix);
            message.extend_from_slice(id.to_string().as_bytes());
            message.extend_from_slice(&suffix);
            message.extend_from_slice(content);
            let from = match &env.from {
                tern_smtp::address::ReversePath::Null => String::new(),
                tern_smtp::address::ReversePath::Mailbox(m) => m.to_string(),
            };
            let rcpts: Vec<String> = env.recipients.iter().map(|r| r.to_string()).collect();
            let copy = crate::shadow::link::Copy {
                from,
                rcpts,
                eight_bit: env.params.body == tern_smtp::command::Body::EightBitMime,
                smtputf8: env.params.smtputf8,
                xshadow: format!("{}{id}", self.xshadow_prefix),
                message,
            };
            let r = self.shadow_copy(copy).await;
            Some(r)
        };
        let (appended, shadowed) = futures_lite::future::zip(append, shadow).await;
        let sequence = match appended {
            Ok(s) => s,
            Err(e) => {
                if let Some(s) = assigned.get() {
                    self.recent.borrow_mut().undecided.remove(&s.0);
                }
                CoreMetrics::inc(&self.metrics.rejected_storage);
                tracing::error!(error = %e, client = %peer, "cannot store message; answering 452");
                return Err(Reply::new(
                    452,
                    Status(4, 3, 1),
                    "Error: insufficient system storage",
                ));
            }
        };
        let id = QueueId { shard, sequence };
        let verdict = match shadowed {
            None => Ok(()),
            Some(Ok(node)) => {
                CoreMetrics::inc(&self.metrics.shadow_copies_made);
                tracing::debug!(id = %id, shadow = %node, "shadow copy made");
                Ok(())
            }
            Some(Err(e)) if self.config.cluster.reject_on_shadow_failure => {
                CoreMetrics::inc(&self.metrics.shadow_copies_failed);
                tracing::warn!(id = %id, error = %e, "no shadow copy: refusing the message (reject_on_shadow_failure)");
                Err(self.withdraw(id).await)
            }
            Some(Err(e)) => {
                CoreMetrics::inc(&self.metrics.shadow_copies_failed);
                CoreMetrics::inc(&self.metrics.non_redundant_accepts);
                tracing::warn!(id = %id, error = %e, "no shadow copy: accepted without redundancy");
                Ok(())
            }
        };
        self.recent.borrow_mut().undecided.remove(&sequence.0);
        self.delivery_wake.notify(usize::MAX);
        verdict?;
        if let Some(c) = copy {
            self.recent.borrow_mut().insert(sequence.0, c.into());
        }
        CoreMetrics::inc(&self.metrics.messages_accepted);
        self.metrics
            .bytes_accepted
            .fetch_add(size as u64, Ordering::Relaxed);
        tracing::info!(id = %id, size, client = %peer, from = %env.from, rcpts = env.recipients.len(), "accepted");
        if let Some(d) = digest {
            self.shared.recent_messages.insert(d, id.to_string(), ms);
        }
        Ok(id)
    }

    /// Makes `copy` on a peer (the peer's node id, or the last error) and
    /// adds the time it took to `tern_shadow_latency_microseconds_total`.
    async fn shadow_copy(&self, copy: crate::shadow::link::Copy) -> Result<String, String> {
        let started = std::time::Instant::now();
        let r = self.links.shadow(&self.config.cluster, copy).await;
        self.metrics
            .shadow_latency_us
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        r
    }

    /// A shadow copy of a message this node generated and stored (a DSN:
    /// null sender, one recipient, `content` as stored), made before the
    /// message it reports on is released. Without a peer it stays
    /// non-redundant (counted and logged); it is delivered either way.
    pub async fn shadow_generated(&self, id: QueueId, recipient: &str, content: &[u8]) {
        if !self.shadowing() {
            return;
        }
        let r = self
            .shadow_copy(crate::shadow::link::Copy {
                from: String::new(),
                rcpts: vec![recipient.to_owned()],
                eight_bit: content.iter().any(|&b| b >= 0x80),
                smtputf8: !recipient.is_ascii(),
                xshadow: format!("{}{id}", self.xshadow_prefix),
                message: content.to_vec(),
            })
            .await;
        match r {
            Ok(node) => {
                CoreMetrics::inc(&self.metrics.shadow_copies_made);
                tracing::debug!(id = %id, shadow = %node, "shadow copy of a generated message made");
            }
            Err(e) => {
                CoreMetrics::inc(&self.metrics.shadow_copies_failed);
                CoreMetrics::inc(&self.metrics.non_redundant_accepts);
                tracing::warn!(id = %id, error = %e, "no shadow copy of a generated message: kept without redundancy");
            }
        }
    }

    /// The shadow copy failed and the message must not be kept: a durable
    /// `done` status removes it from the queue (also after a restart).
    async fn withdraw(&self, id: QueueId) -> Reply {
        let done = crate::delivery::status::StatusEvent {
            message: id.sequence.0,
            event: crate::delivery::status::Event::Done,
            at_ms: TimestampMs::now().0,
            attempts: 0,
            rcpts: Vec::new(),
        };
        self.recent
            .borrow_mut()
            .announce(id.sequence.0, Announced::Other);
        if let Err(e) = self.append_status(std::slice::from_ref(&done)).await {
            tracing::error!(id = %id, error = %e, "cannot record the withdrawal");
            return Reply::new(452, Status(4, 3, 1), "Error: insufficient system storage");
        }
        Reply::new(451, Status(4, 4, 0), "Message failed to be made redundant")
    }

    /// Appends one delivery status record (durable on return).
    pub async fn append_status(
        &self,
        events: &[crate::delivery::status::StatusEvent],
    ) -> tern_storage::Result<tern_storage::Sequence> {
        use crate::delivery::status;
        let size = status::encoded_len(events);
        self.log
            .append_with(status::STATUS, TimestampMs::now(), size, |seq, w| {
                self.recent.borrow_mut().announce(seq.0, Announced::Other);
                let mut buf = Vec::with_capacity(size);
                status::encode(events, &mut buf);
                w.put(&buf);
            })
            .await
    }

    /// The answer to a shadow's `XQDISCARD` (see `shadow::discard`).
    pub fn discard_answer(&self, node: &str, database: &str) -> Reply {
        let ours = self
            .shared
            .database_id
            .get()
            .map(|d| d.to_string())
            .unwrap_or_default();
        let same = database == ours;
        let marks = if same {
            self.shared
                .watermarks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
        } else {
            Default::default()
        };
        let lines = crate::shadow::discard::answer_lines(&ours, &marks, |room| {
            if same {
                self.shared
                    .discards
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take_for(node, room)
            } else {
                Vec::new()
            }
        });
        let lines: Vec<std::borrow::Cow<'static, str>> =
            lines.into_iter().map(Into::into).collect();
        Reply::plain(250, lines)
    }

    /// A peer's shadow copy (`XSHADOW=` on MAIL), queued in this core's
    /// log as a shadow record (no Received header: the message is as the
    /// primary stored it) for the next group commit. **Not durable yet**:
    /// the session holds its 250 until [`Core::shadows_durable`] for the
    /// returned sequence succeeds, so a pipelined shadow link gets many
    /// copies into one commit. `Err` is the reply to give instead.
    pub async fn queue_shadow(
        &self,
        env: &Envelope,
        content: &[u8],
        peer: SocketAddr,
    ) -> Result<PendingShadow, Reply> {
        let origin = env
            .params
            .xshadow
            .as_deref()
            .and_then(crate::shadow::record::Origin::from_param)
            .ok_or_else(|| Reply::new(501, Status(5, 5, 4), "Bad parameter value: XSHADOW"))?;
        let ms = TimestampMs::now();
        let encoder = Encoder::new(env, peer, ms.0, None, content).with_preamble(origin.preamble());
        let shard = self.shard;
        let queued = self
            .log
            .enqueue_with(
                crate::shadow::record::SHADOW,
                ms,
                encoder.len(),
                |sequence, w| {
                    self.recent.borrow_mut().announce(
                        sequence.0,
                        Announced::Shadow {
                            at_ms: ms.0,
                            origin: (
                                origin.node.clone(),
                                origin.database.clone(),
                                origin.queue_id.clone(),
                            ),
                        },
                    );
                    encoder.write(QueueId { shard, sequence }, &mut |b| w.put(b))
                },
            )
            .await;
        match queued {
            Ok(sequence) => Ok(PendingShadow {
                id: QueueId { shard, sequence },
                primary: origin.node,
                primary_id: origin.queue_id,
            }),
            Err(e) => {
                CoreMetrics::inc(&self.metrics.rejected_storage);
                tracing::error!(error = %e, client = %peer, "cannot store a shadow copy; answering 452");
                Err(Reply::new(
                    452,
                    Status(4, 3, 1),
                    "Error: insufficient system storage",
                ))
            }
        }
    }

    /// Waits for the group commit covering every copy in `pending` (queued
    /// by [`Core::queue_shadow`], in order). `Ok`: all are durable and their
    /// 250s may go out. `Err`: the log failed; none may be acknowledged.
    pub async fn shadows_durable(&self, pending: &[PendingShadow]) -> tern_storage::Result<()> {
        let Some(last) = pending.last() else {
            return Ok(());
        };
        self.log.durable(last.id.sequence).await?;
        self.delivery_wake.notify(usize::MAX);
        self.metrics
            .shadow_copies_held
            .fetch_add(pending.len() as u64, Ordering::Relaxed);
        for p in pending {
            tracing::info!(id = %p.id, primary = %p.primary, primary_id = %p.primary_id, "shadow copy stored");
        }
        Ok(())
    }
}

/// A shadow copy queued in the log whose 250 waits for its commit.
#[derive(Debug)]
pub struct PendingShadow {
    /// Its queue id here.
    pub id: QueueId,
    /// The primary's node id.
    pub primary: String,
    /// The message's queue id on the primary.
    pub primary_id: String,
}

/// Releases a connection slot (core and per-IP) when the session ends.
struct Slot {
    core: Rc<Core>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.core.open.set(self.core.open.get() - 1);
        CoreMetrics::inc(&self.core.metrics.connections_closed);
        let mut map = self
            .core
            .shared
            .per_ip
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

fn admit(core: &Rc<Core>, ip: IpAddr) -> Option<Slot> {
    let limits = &core.config.smtp;
    if core.open.get() >= limits.connections_per_core_max {
        return None;
    }
    let mut map = core.shared.per_ip.lock().unwrap_or_else(|e| e.into_inner());
    let n = map.entry(ip).or_insert(0);
    if *n >= limits.connections_per_ip_max {
        return None;
    }
    *n += 1;
    drop(map);
    core.open.set(core.open.get() + 1);
    CoreMetrics::inc(&core.metrics.connections_total);
    Some(Slot {
        core: core.clone(),
        ip,
    })
}

async fn refuse(mut stream: TcpStream) {
    let reply = Reply::new(
        421,
        Status(4, 7, 0),
        "Error: too many connections, try again later",
    );
    let _ = stream.write_all(&reply.to_bytes()).await;
    let _ = stream.close().await;
}

/// Runs core `shard` until shutdown: opens its log, listens, serves.
pub async fn run(
    shard: usize,
    cpu: usize,
    config: Arc<Config>,
    shared: Arc<Shared>,
    metrics: Arc<CoreMetrics>,
) -> anyhow::Result<()> {
    let dir = config.data_dir.join(format!("shard-{shard}"));
    tern_storage::log::create_dir_durably(&dir)?;
    let io = config.io.resolve(&dir);
    let env = EngineEnv::new(io).map_err(anyhow::Error::msg)?;
    let (log, report) = Log::open(env, &dir, config.storage.clone(), TimestampMs::now()).await?;
    tracing::info!(shard, dir = %dir.display(), ?io, segments = report.segments, next = %report.next_sequence,
        truncated = report.truncated.is_some(), "log opened");
    let incoming_cpu = config.incoming_cpu.then_some(cpu);
    let listener = crate::server::bind_listener(config.listen, incoming_cpu)?;
    // (Start-up probes wait for this line from every core.)
    tracing::info!(
        shard,
        cpu,
        incoming_cpu = config.incoming_cpu,
        "listener bound"
    );
    shared.ready.fetch_add(1, Ordering::SeqCst);
    let database_id = shared
        .database_id
        .get()
        .map(|d| d.to_string())
        .unwrap_or_default();
    let smtp = Rc::new(ServerConfig {
        hostname: config.hostname.clone(),
        message_bytes_max: config.smtp.message_size_max,
        recipients_max: config.smtp.recipients_max,
        errors_max: config.smtp.errors_max,
        extra_ehlo: Vec::new(),
        shadow_ehlo: (config.cluster.shadow_redundancy && !config.cluster.peers.is_empty())
            .then(|| format!("XSHADOW {} {database_id}", config.cluster.node_id)),
    });
    let core = Rc::new(Core {
        shard: shard as u16,
        relay: Rc::new(config.relay.clone()),
        config: config.clone(),
        smtp,
        log,
        metrics,
        shutdown: Shutdown::default(),
        open: Cell::new(0),
        content_bytes: Cell::new(0),
        shared: shared.clone(),
        delivery_wake: event_listener::Event::new(),
        recent: std::cell::RefCell::new(Recent::new(config.delivery.recent_cache_bytes)),
        peer_ips: config.cluster.peers.iter().map(|p| p.addr.ip()).collect(),
        links: crate::shadow::link::Links::new(&config.hostname, shared.clone()),
        xshadow_prefix: format!("{},{database_id},", config.cluster.node_id),
    });
    glommio::spawn_local(watch(core.clone())).detach();
    let batching = crate::logbuf::batch_this_thread();
    glommio::spawn_local(crate::logbuf::flusher()).detach();
    let delivery = crate::delivery::Delivery::start(core.clone())?;
    if shard == 0 && core.config.cluster.shadow_redundancy && !core.config.cluster.peers.is_empty()
    {
        glommio::spawn_local(crate::shadow::heartbeat::run(core.clone())).detach();
    }
    accept_loop(&core, &listener).await;
    drop(listener);
    let deadline = Instant::now() + config.shutdown_grace;
    while core.open.get() > 0 && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(20)).await;
    }
    if core.open.get() > 0 {
        tracing::warn!(
            shard,
            open = core.open.get(),
            "grace period over; closing sessions mid-transaction (none was answered 250)"
        );
    }
    // Delivery gets what is left of the grace period (at least 1 s) to
    // finish the transactions it is in and record every outcome.
    let left = deadline.saturating_duration_since(Instant::now());
    delivery.stop(left.max(Duration::from_secs(1))).await;
    core.log.clone().close().await?;
    core.metrics.set_log_stats(&core.log.stats());
    drop(batching);
    tracing::info!(shard, "core stopped");
    Ok(())
}

async fn accept_loop(core: &Rc<Core>, listener: &TcpListener) {
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            core.shutdown.wait().await;
            None
        })
        .await;
        let stream = match accepted {
            None => return,
            Some(Ok(stream)) => stream,
            Some(Err(e)) => {
                // EMFILE and the like: back off briefly instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Ok(peer) = stream.peer_addr() else {
            continue;
        };
        match admit(core, peer.ip()) {
            Some(slot) => {
                let core = core.clone();
                glommio::spawn_local(async move {
                    crate::session::run(core, stream, peer).await;
                    drop(slot);
                })
                .detach();
            }
            None => {
                CoreMetrics::inc(&core.metrics.connections_refused);
                glommio::spawn_local(refuse(stream)).detach();
            }
        }
    }
}

/// Publishes log stats and turns the process-wide stop flag into this
/// core's shutdown signal.
async fn watch(core: Rc<Core>) {
    let mut ticks = 0u32;
    while !core.shutdown.is_set() {
        glommio::timer::sleep(Duration::from_millis(50)).await;
        if core.shared.stop.load(Ordering::SeqCst) {
            core.shutdown.trigger();
        }
        ticks += 1;
        if ticks.is_multiple_of(20) {
            core.metrics.set_log_stats(&core.log.stats());
        }
    }
}
