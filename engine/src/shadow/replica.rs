//! Copies held here for peers, per core: queued from a peer's shadow link
//! (`MAIL ... XSHADOW=`), found again at start, dropped when their primary
//! says the message was handled (discard ids or watermarks) or when they
//! expire, and taken over (queued as this node's own messages) when their
//! primary lost its store or stayed unreachable for
//! `shadow_resubmit_time_span` (SPEC 3). Held copies pin the log's
//! `shadow` cursor ([`Replica::first_held`]).

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tern_smtp::server::Envelope;
use tern_storage::{Record, Sequence, TimestampMs};

use super::discard::{Answer, Discarded, PrimaryState, TOLD_IDS_KEEP_MS};
use super::{lock, ShadowShared};
use crate::config::Config;
use crate::metrics::CoreMetrics;
use crate::record::message::{self, Encoder, QueueId, MESSAGE};
use crate::record::shadow::{self as shadow_record, Origin, SHADOW};
use crate::record::status::{Event, StatusEvent};
use crate::shard::{Announced, Shard};

/// What every core shares of its shadow side.
#[derive(Debug, Default)]
pub struct Shared {
    /// Copies the primaries said may go.
    pub discarded: Mutex<Discarded>,
    /// What the heartbeats learned of each primary.
    pub primaries: Mutex<HashMap<String, PrimaryState>>,
    /// Copies held per (core, primary node), published by each core's
    /// maintenance (for `tern shadow status` and /metrics).
    pub depth: Mutex<HashMap<(u16, String), u64>>,
    /// Copies taken over per (primary node, its database id) that the
    /// primary was not told of yet (the heartbeat tells it with
    /// `XQDISCARD ... TAKEN=n`, SPEC 4). In memory: a restart of this node
    /// before the primary is back forgets them (the takeovers are logged).
    pub untold: Mutex<BTreeMap<(String, String), u64>>,
}

impl Shared {
    /// Keeps what primary `node` answered to `XQDISCARD` (its database id,
    /// watermarks and the ids that may go) for the cores' upkeep; the
    /// number of ids. Used by the heartbeat and by the shadow link, which
    /// asks on the sessions it has open anyway.
    pub fn record_answer(&self, node: &str, answer: Answer) -> usize {
        let now = TimestampMs::now().0;
        let n = answer.ids.len();
        let state = PrimaryState {
            database: Some(answer.database.clone()),
            last_ok_ms: now,
            watermarks: answer.watermarks,
        };
        lock(&self.primaries).insert(node.to_owned(), state);
        lock(&self.discarded).add(node, &answer.database, now, answer.ids);
        n
    }

    /// Takeovers of `node`'s messages of store `database` not told yet.
    pub fn untold_takeovers(&self, node: &str, database: &str) -> u64 {
        lock(&self.untold)
            .get(&(node.to_owned(), database.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    /// `node` (now with store `database`) was told of `n` takeovers of that
    /// store. Takeovers of its older stores are forgotten: that store is
    /// gone, so nothing of it is delivered twice.
    pub fn told_takeovers(&self, node: &str, database: &str, n: u64) {
        let mut untold = lock(&self.untold);
        untold.retain(|(p, db), _| p != node || db == database);
        let key = (node.to_owned(), database.to_owned());
        if let Some(left) = untold.get_mut(&key) {
            *left = left.saturating_sub(n);
            if *left == 0 {
                untold.remove(&key);
            }
        }
    }

    /// Copies held here per primary node, summed over cores.
    pub fn held_per_primary(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for ((_, node), n) in lock(&self.depth).iter() {
            *out.entry(node.clone()).or_insert(0) += n;
        }
        out
    }
}

/// A copy held here: when it was stored (unix ms) and its origin
/// (primary node, its database id, its queue id).
#[derive(Clone, Debug)]
struct Held {
    at_ms: u64,
    origin: (String, String, String),
}

/// A copy queued in the log whose 250 waits for its commit.
#[derive(Debug)]
pub struct PendingCopy {
    /// Its queue id here.
    pub id: QueueId,
    /// The primary's node id.
    pub primary: String,
    /// The message's queue id on the primary.
    pub primary_id: String,
}

/// Why a peer's copy was not queued.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// The `XSHADOW=` value does not parse.
    #[error("bad XSHADOW parameter")]
    BadOrigin,
    /// The log failed.
    #[error("cannot store the copy: {0}")]
    Storage(#[from] tern_storage::Error),
}

/// What upkeep decided for one held copy.
enum Verdict {
    Keep,
    Drop,
    TakeOver(String),
}

/// One core's shadow side.
pub struct Replica {
    shard: Rc<Shard>,
    config: Arc<Config>,
    shared: Arc<ShadowShared>,
    metrics: Arc<CoreMetrics>,
    /// Copies held for peers, by sequence, until they go.
    held: RefCell<BTreeMap<u64, Held>>,
    /// When this core started (unix ms): a primary never heard from counts
    /// as reachable from then on.
    started_ms: u64,
}

impl Replica {
    /// Nothing held yet (delivery's rebuild finds the copies in the log).
    pub fn new(
        shard: Rc<Shard>,
        config: Arc<Config>,
        shared: Arc<ShadowShared>,
        metrics: Arc<CoreMetrics>,
    ) -> Replica {
        Replica {
            shard,
            config,
            shared,
            metrics,
            held: RefCell::new(BTreeMap::new()),
            started_ms: TimestampMs::now().0,
        }
    }

    /// A peer's copy (`XSHADOW=` on MAIL), queued in this core's log as a
    /// shadow record (no Received header: the message is as the primary
    /// stored it) for the next group commit. **Not durable yet**: the
    /// session holds its 250 until [`Replica::copies_durable`] covers it,
    /// so a pipelined shadow link gets many copies into one commit.
    pub async fn queue_copy(
        &self,
        env: &Envelope,
        content: &[u8],
        peer: SocketAddr,
    ) -> Result<PendingCopy, CopyError> {
        let origin = env
            .params
            .xshadow
            .as_deref()
            .and_then(Origin::from_param)
            .ok_or(CopyError::BadOrigin)?;
        let ms = TimestampMs::now();
        let encoder = Encoder::new(env, peer, ms.0, None, content).with_preamble(origin.preamble());
        let shard = &self.shard;
        let what = Announced::Shadow {
            at_ms: ms.0,
            origin: (
                origin.node.clone(),
                origin.database.clone(),
                origin.queue_id.clone(),
            ),
        };
        let sequence = self
            .shard
            .enqueue(SHADOW, ms, encoder.len(), what, |sequence, w| {
                encoder.write(shard.queue_id(sequence), &mut |b| w.put(b))
            })
            .await?;
        Ok(PendingCopy {
            id: shard.queue_id(sequence),
            primary: origin.node,
            primary_id: origin.queue_id,
        })
    }

    /// Waits for the group commit covering every copy in `pending` (queued
    /// by [`Replica::queue_copy`], in order). `Ok`: all are durable and
    /// their 250s may go out. `Err`: the log failed; none may be
    /// acknowledged.
    pub async fn copies_durable(&self, pending: &[PendingCopy]) -> tern_storage::Result<()> {
        let Some(last) = pending.last() else {
            return Ok(());
        };
        self.shard.durable(last.id.sequence).await?;
        self.shard.notify_appended();
        self.metrics
            .shadow_copies_held
            .fetch_add(pending.len() as u64, Ordering::Relaxed);
        for p in pending {
            tracing::info!(id = %p.id, primary = %p.primary, primary_id = %p.primary_id, "shadow copy stored");
        }
        Ok(())
    }

    /// Holds copy `seq` (announced by [`Replica::queue_copy`]).
    pub fn hold(&self, seq: u64, at_ms: u64, origin: (String, String, String)) {
        self.held.borrow_mut().insert(seq, Held { at_ms, origin });
    }

    /// Holds the copy in shadow record `rec`, read from the log.
    pub fn hold_record(&self, rec: &Record) {
        match shadow_record::split(&rec.payload) {
            Ok((o, _)) => self.hold(
                rec.sequence.0,
                rec.timestamp.0,
                (o.node, o.database, o.queue_id),
            ),
            Err(e) => {
                tracing::error!(seq = %rec.sequence, error = %e, "unreadable shadow record skipped")
            }
        }
    }

    /// Record `seq` got a `done` event: if it was a copy, it is released.
    pub fn released(&self, seq: u64) {
        self.held.borrow_mut().remove(&seq);
    }

    /// The oldest copy held (it pins the `shadow` cursor).
    pub fn first_held(&self) -> Option<u64> {
        self.held.borrow().first_key_value().map(|(s, _)| *s)
    }

    /// Copies held by this core.
    pub fn len(&self) -> usize {
        self.held.borrow().len()
    }

    /// Does this core hold no copy?
    pub fn is_empty(&self) -> bool {
        self.held.borrow().is_empty()
    }

    /// Publishes the copies held per primary (for `tern shadow status`).
    pub fn publish_depth(&self) {
        let mut per_node: HashMap<String, u64> = HashMap::new();
        for held in self.held.borrow().values() {
            *per_node.entry(held.origin.0.clone()).or_insert(0) += 1;
        }
        let shard = self.shard.id;
        let mut depth = lock(&self.shared.replica.depth);
        depth.retain(|(core, _), _| *core != shard);
        depth.extend(per_node.into_iter().map(|(n, c)| ((shard, n), c)));
    }

    /// The upkeep of the held copies (every maintenance tick): copies whose
    /// primary handled the message (discard ids, watermarks) or that
    /// expired (SPEC 5: `safety_net_hold_time + message_expiration_timeout`
    /// after they arrived) go; copies whose primary lost its store or
    /// stayed unreachable for `shadow_resubmit_time_span` are taken over.
    /// Each decision is a durable `done` event on the shadow record, so a
    /// restart does not repeat it. A copy that cannot be read is logged,
    /// counted (`tern_unreadable_messages_total`) and dropped: it must not stop the
    /// upkeep of the others nor pin the `shadow` cursor for good.
    pub async fn upkeep(&self, now: u64) -> tern_storage::Result<()> {
        let delivery = &self.config.delivery;
        // Ids told for copies no core here holds go soon (every core
        // takes its own matches each maintenance tick).
        let told_keep = TOLD_IDS_KEEP_MS.max(10 * delivery.maintenance_interval.as_millis() as u64);
        lock(&self.shared.replica.discarded).expire(now, told_keep);
        if self.is_empty() {
            return Ok(());
        }
        let verdicts = self.judge(now);
        let mut gone = Vec::new();
        let mut dropped = 0u64;
        for (seq, verdict) in verdicts {
            match verdict {
                Verdict::Keep => continue,
                Verdict::Drop => dropped += 1,
                Verdict::TakeOver(why) => match self.take_over(seq, &why, now).await {
                    Ok(()) => {}
                    Err(TakeOverError::Unreadable(e)) => {
                        CoreMetrics::inc(&self.metrics.unreadable);
                        tracing::error!(seq, error = %e, "unreadable shadow copy dropped instead of taken over");
                    }
                    Err(TakeOverError::Storage(e)) => {
                        self.record_gone(&gone, dropped, now).await?;
                        return Err(e);
                    }
                },
            }
            gone.push(seq);
        }
        self.record_gone(&gone, dropped, now).await
    }

    /// What becomes of each held copy now.
    fn judge(&self, now: u64) -> Vec<(u64, Verdict)> {
        let cluster = &self.config.cluster;
        let delivery = &self.config.delivery;
        let span = cluster.shadow_resubmit_time_span.as_millis() as u64;
        let keep_ms = (delivery.safety_net_hold_time + delivery.message_expiration_timeout)
            .as_millis() as u64;
        let primaries = lock(&self.shared.replica.primaries).clone();
        let mut discarded = lock(&self.shared.replica.discarded);
        let held = self.held.borrow();
        held.iter()
            .map(|(seq, h)| {
                let (node, db, qid) = &h.origin;
                let state = primaries.get(node);
                let last_ok = state.map_or(self.started_ms, |s| s.last_ok_ms.max(self.started_ms));
                let verdict = if discarded.take(node, db, qid)
                    || state.is_some_and(|s| s.below_watermark(db, qid))
                {
                    Verdict::Drop
                } else if state
                    .and_then(|s| s.database.as_deref())
                    .is_some_and(|d| d != db)
                {
                    Verdict::TakeOver(format!("{node} has a new store"))
                } else if now.saturating_sub(last_ok) >= span {
                    Verdict::TakeOver(format!("{node} unreachable"))
                } else if h.at_ms.saturating_add(keep_ms) <= now {
                    Verdict::Drop
                } else {
                    Verdict::Keep
                };
                (*seq, verdict)
            })
            .collect()
    }

    /// Queues the message in copy `seq` as this node's own (a new queue
    /// id; the primary's Received header stays in the content).
    async fn take_over(&self, seq: u64, why: &str, now: u64) -> Result<(), TakeOverError> {
        let unreadable = |e: String| TakeOverError::Unreadable(e);
        let rec = self
            .shard
            .log
            .read(Sequence(seq))
            .map_err(|e| unreadable(e.to_string()))?;
        let (origin, payload) =
            shadow_record::split(&rec.payload).map_err(|e| unreadable(e.to_string()))?;
        let (received_ms, rcpts) =
            message::peek(&payload).map_err(|e| unreadable(e.to_string()))?;
        let what = Announced::Message { received_ms, rcpts };
        let new = self
            .shard
            .append(MESSAGE, TimestampMs(now), payload.len(), what, |_, w| {
                w.put(&payload)
            })
            .await?;
        CoreMetrics::inc(&self.metrics.takeovers);
        *lock(&self.shared.replica.untold)
            .entry((origin.node.clone(), origin.database.clone()))
            .or_insert(0) += 1;
        let id = self.shard.queue_id(new);
        tracing::warn!(primary = %origin.node, primary_id = %origin.queue_id, id = %id, reason = %why,
            "took over a shadow copy");
        Ok(())
    }

    /// Records `done` for the copies in `gone` and releases them.
    async fn record_gone(&self, gone: &[u64], dropped: u64, now: u64) -> tern_storage::Result<()> {
        if gone.is_empty() {
            return Ok(());
        }
        let events: Vec<StatusEvent> = gone
            .iter()
            .map(|&seq| StatusEvent {
                message: seq,
                event: Event::Done,
                at_ms: now,
                attempts: 0,
                rcpts: Vec::new(),
            })
            .collect();
        self.shard.append_status(&events).await?;
        for seq in gone {
            self.released(*seq);
        }
        self.metrics
            .shadow_discards
            .fetch_add(dropped, Ordering::Relaxed);
        self.shard.notify_appended();
        Ok(())
    }
}

/// Why a copy was not taken over.
enum TakeOverError {
    /// The copy cannot be read (it is dropped).
    Unreadable(String),
    /// The log failed (upkeep stops; tried again next tick).
    Storage(tern_storage::Error),
}

impl From<tern_storage::Error> for TakeOverError {
    fn from(e: tern_storage::Error) -> Self {
        TakeOverError::Storage(e)
    }
}

#[cfg(test)]
mod tests;
