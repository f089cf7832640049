//! Our messages' side of shadow redundancy, per core: the copy of each
//! accepted message on a peer (shadow before acknowledge), the withdrawal
//! of a message no peer took (`reject_on_shadow_failure`), the copies of
//! messages this node generates (DSNs), the discard status our shadows ask
//! for (`XQDISCARD`: handled ids and watermarks) and duplicate detection
//! (SPEC 2.6). The inbound accept step decides what the client is told;
//! this module only reports what happened.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tern_smtp::address::ReversePath;
use tern_smtp::command::Body;
use tern_smtp::server::Envelope;
use tern_smtp::Reply;
use tern_storage::{Sequence, TimestampMs};

use super::dedupe::Digest;
use super::discard::{answer_lines, DiscardLog, Watermarks};
use super::link::{Copy, Links};
use super::{lock, ShadowShared};
use crate::config::Config;
use crate::metrics::CoreMetrics;
use crate::record::message::QueueId;
use crate::record::status::{Event, StatusEvent};
use crate::shard::Shard;

/// What every core shares of its primary side.
#[derive(Debug, Default)]
pub struct Shared {
    /// Handled messages, for the shadows' `XQDISCARD`.
    pub discards: Mutex<DiscardLog>,
    /// Each core's discard watermark (`shard -> sequence`, see
    /// `Queue::watermark`), published by its maintenance and sent to
    /// shadows with every `XQDISCARD` answer. Rebuilt from the log at
    /// start, so discards survive a restart.
    pub watermarks: Mutex<Watermarks>,
    /// Per shadow node: how many of our messages (of this store) it said
    /// it took over while we were unreachable, since this start. We
    /// deliver them too, so they may arrive twice (SPEC 4).
    pub taken_over: Mutex<BTreeMap<String, u64>>,
}

/// One core's primary side.
pub struct Primary {
    shard: Rc<Shard>,
    config: Arc<Config>,
    shared: Arc<ShadowShared>,
    metrics: Arc<CoreMetrics>,
    links: Links,
    /// `<node id>,<database id>,`: the start of every `XSHADOW=` value this
    /// node sends (formatted once, not per message).
    xshadow_prefix: String,
}

impl Primary {
    /// No links open yet.
    pub fn new(
        shard: Rc<Shard>,
        config: Arc<Config>,
        shared: Arc<ShadowShared>,
        metrics: Arc<CoreMetrics>,
        tls: Arc<crate::tls::Tls>,
    ) -> Primary {
        let xshadow_prefix = format!("{},{},", config.cluster.node_id, shared.database_id);
        Primary {
            links: Links::new(&config.hostname, shared.clone(), tls),
            shard,
            config,
            shared,
            metrics,
            xshadow_prefix,
        }
    }

    /// Is shadow redundancy on with someone to shadow to?
    pub fn shadowing(&self) -> bool {
        let c = &self.config.cluster;
        c.shadow_redundancy && !c.peers.is_empty()
    }

    /// The EHLO keyword offered to peers (`XSHADOW <node> <database>`).
    pub fn ehlo_keyword(&self) -> Option<String> {
        self.shadowing().then(|| {
            format!(
                "XSHADOW {} {}",
                self.config.cluster.node_id, self.shared.database_id
            )
        })
    }

    /// SPEC 2.6, only while shadowing (the window costs a digest and two
    /// cross-core locks per message): `Err(first queue id)` when the same
    /// message (Message-ID and envelope) was accepted within
    /// `cluster.duplicate_window`; else the digest to [`Primary::remember`].
    pub fn resent(
        &self,
        client: std::net::IpAddr,
        env: &Envelope,
        content: &[u8],
        ms: u64,
    ) -> Result<Option<Digest>, String> {
        if !self.shadowing() {
            return Ok(None);
        }
        let window = &self.shared.dedupe;
        let digest = window.digest(client, env, content);
        let window_ms = self.config.cluster.duplicate_window.as_millis() as u64;
        if let Some(first) = digest.as_ref().and_then(|d| window.seen(d, ms, window_ms)) {
            CoreMetrics::inc(&self.metrics.duplicates);
            return Err(first);
        }
        Ok(digest)
    }

    /// Notes an accepted message for [`Primary::resent`].
    pub fn remember(&self, digest: Option<Digest>, id: QueueId, ms: u64) {
        if let Some(d) = digest {
            self.shared.dedupe.insert(d, id.to_string(), ms);
        }
    }

    /// Makes the copy of accepted message `id` on a peer: the content as
    /// stored (`received` is the Received header around the queue id).
    /// The peer's node id, or the last error.
    pub async fn copy_message(
        &self,
        env: &Envelope,
        id: QueueId,
        received: (&[u8], &[u8]),
        content: &[u8],
    ) -> Result<String, String> {
        let id_text = id.to_string();
        let (prefix, suffix) = received;
        let mut message =
            Vec::with_capacity(prefix.len() + id_text.len() + suffix.len() + content.len());
        for part in [prefix, id_text.as_bytes(), suffix, content] {
            message.extend_from_slice(part);
        }
        let from = match &env.from {
            ReversePath::Null => String::new(),
            ReversePath::Mailbox(m) => m.to_string(),
        };
        let copy = Copy {
            from,
            rcpts: env.recipients.iter().map(|r| r.to_string()).collect(),
            eight_bit: env.params.body == Body::EightBitMime,
            smtputf8: env.params.smtputf8,
            xshadow: format!("{}{id_text}", self.xshadow_prefix),
            message,
        };
        let made = self.copy(copy).await;
        match &made {
            Ok(node) => {
                CoreMetrics::inc(&self.metrics.shadow_copies_made);
                tracing::debug!(id = %id, shadow = %node, "shadow copy made");
            }
            Err(_) => CoreMetrics::inc(&self.metrics.shadow_copies_failed),
        }
        made
    }

    /// A shadow copy of a message this node generated and stored (a DSN:
    /// null sender, one recipient, `content` as stored), made before the
    /// message it reports on is released. Without a peer it stays
    /// non-redundant (counted and logged); it is delivered either way.
    pub async fn copy_generated(&self, id: QueueId, recipient: &str, content: &[u8]) {
        self.copy_stored(id, "", &[recipient], content, "a generated message")
            .await
    }

    /// A shadow copy of a message this node stored itself (a DSN, a
    /// Safety Net resubmission: `what`), `content` as stored. Without a
    /// peer it stays non-redundant (counted and logged).
    pub async fn copy_stored(
        &self,
        id: QueueId,
        from: &str,
        rcpts: &[&str],
        content: &[u8],
        what: &str,
    ) {
        if !self.shadowing() {
            return;
        }
        let copy = Copy {
            from: from.to_owned(),
            rcpts: rcpts.iter().map(|r| r.to_string()).collect(),
            eight_bit: content.iter().any(|&b| b >= 0x80),
            smtputf8: !from.is_ascii() || rcpts.iter().any(|r| !r.is_ascii()),
            xshadow: format!("{}{id}", self.xshadow_prefix),
            message: content.to_vec(),
        };
        match self.copy(copy).await {
            Ok(node) => {
                CoreMetrics::inc(&self.metrics.shadow_copies_made);
                tracing::debug!(id = %id, shadow = %node, "shadow copy of {what} made");
            }
            Err(e) => {
                CoreMetrics::inc(&self.metrics.shadow_copies_failed);
                CoreMetrics::inc(&self.metrics.non_redundant_accepts);
                tracing::warn!(id = %id, error = %e, "no shadow copy of {what}: kept without redundancy");
            }
        }
    }

    /// Sends `copy` and counts the time it took in
    /// `tern_shadow_copy_seconds`.
    async fn copy(&self, copy: Copy) -> Result<String, String> {
        let started = Instant::now();
        let r = self.links.shadow(&self.config.cluster, copy).await;
        self.metrics
            .shadow_copy_us
            .observe(started.elapsed().as_micros() as u64);
        r
    }

    /// Message `id` could not be made redundant and must not be kept: a
    /// durable `done` status removes it from the queue (also after a
    /// restart).
    pub async fn withdraw(&self, id: QueueId) -> tern_storage::Result<Sequence> {
        let done = StatusEvent {
            message: id.sequence.0,
            event: Event::Done,
            at_ms: TimestampMs::now().0,
            attempts: 0,
            rcpts: Vec::new(),
        };
        self.shard.withdrawn(id.sequence.0);
        self.shard.append_status(std::slice::from_ref(&done)).await
    }

    /// Messages of this shard whose every recipient is final: their
    /// shadows may discard their copies (SPEC 3).
    pub fn handled(&self, now_ms: u64, done: impl Iterator<Item = u64>) {
        if !self.shadowing() {
            return;
        }
        let ids = done.map(|seq| self.shard.queue_id(Sequence(seq)).to_string());
        lock(&self.shared.primary.discards).push(now_ms, ids);
    }

    /// Publishes this core's discard watermark: every message of this
    /// shard below `mark` is handled.
    pub fn publish_watermark(&self, mark: u64) {
        lock(&self.shared.primary.watermarks).insert(self.shard.id, mark);
    }

    /// Drops handled ids every peer was told, or older than
    /// `shadow_message_auto_discard_interval`.
    pub fn expire_discards(&self, now_ms: u64) {
        let c = &self.config.cluster;
        let peers: Vec<&str> = c.peers.iter().map(|p| p.node_id.as_str()).collect();
        let keep_ms = c.shadow_message_auto_discard_interval.as_millis() as u64;
        lock(&self.shared.primary.discards).expire(now_ms, keep_ms, &peers);
    }

    /// The answer to a shadow's `XQDISCARD <node> <database>` (see
    /// `shadow::discard`): nothing but our database id when it asks about
    /// another store of ours.
    pub fn discard_answer(&self, node: &str, database: &str, taken: u64) -> Reply {
        let ours = self.shared.database_id.to_string();
        let same = database == ours;
        if taken > 0 {
            self.taken_over(node, taken, same);
        }
        let marks = if same {
            lock(&self.shared.primary.watermarks).clone()
        } else {
            Default::default()
        };
        let lines = answer_lines(&ours, &marks, |room| {
            if same {
                lock(&self.shared.primary.discards).take_for(node, room)
            } else {
                Vec::new()
            }
        });
        Reply::plain(250, lines.into_iter().map(Into::into).collect())
    }

    /// Shadow `node` says it took over `n` of our messages of the store it
    /// names (`same`: this one) while we were unreachable.
    fn taken_over(&self, node: &str, n: u64, same: bool) {
        if !same {
            // Copies of a store we no longer have: we cannot deliver them.
            tracing::info!(shadow = %node, messages = n, "a shadow took over messages of our former store");
            return;
        }
        let total = {
            let mut taken = lock(&self.shared.primary.taken_over);
            let t = taken.entry(node.to_owned()).or_insert(0);
            *t += n;
            *t
        };
        tracing::warn!(
            shadow = %node,
            messages = n,
            since_start = total,
            database = %self.shared.database_id,
            "a shadow took over our messages while we were unreachable; we deliver them too, so they may be delivered twice (SPEC 4)"
        );
    }
}
