//! One core's log shard and the one way to append to it.
//!
//! Every record a core writes goes through [`Shard::append`] (durable on
//! return) or [`Shard::enqueue`] (durable at the next group commit): the
//! appender announces what the record is to the delivery tail while the
//! log assigns its sequence, so the tail never reads back a record this
//! core just wrote (an append site cannot forget to announce). The shard
//! also keeps the payloads of fresh messages for their first delivery
//! attempt ([`Shard::keep_payload`], within `delivery.recent_cache_bytes`)
//! and the messages whose shadow copy is still being made
//! ([`Shard::hold_back`]): the tail stops before them.
//!
//! # Layout
//!
//! ```text
//! mod.rs        Shard: open, append/enqueue (announce + append), status records
//! recent.rs     what was announced, fresh payloads, held-back messages
//! failpoint.rs  the storage env (buffered / O_DIRECT) with a test failpoint
//! ```

pub mod failpoint;
mod recent;

use std::cell::RefCell;
use std::path::Path;

use tern_storage::{Class, Log, LogConfig, PayloadWriter, RecordKind, Sequence, TimestampMs};

use failpoint::EngineEnv;
pub use failpoint::IoMode;
pub use recent::Announced;
use recent::Recent;

use crate::record::message::{QueueId, StoreTag};
use crate::record::status::{self, StatusEvent, STATUS};

/// One core's log shard.
pub struct Shard {
    /// Shard number (= core index).
    pub id: u16,
    /// The store this shard belongs to (names its queue ids).
    pub store: StoreTag,
    /// The log. Append through [`Shard::append`] / [`Shard::enqueue`],
    /// never through the log directly (the tail would miss the
    /// announcement and read the record back).
    pub log: Log<EngineEnv>,
    recent: RefCell<Recent>,
    /// Notified when records became durable (delivery tails the log).
    appended: event_listener::Event,
}

impl Shard {
    /// Opens (recovering) shard `id`'s log under `data_dir`, the store
    /// with the transport database id `database_id`.
    pub async fn open(
        data_dir: &Path,
        database_id: &[u8; 16],
        id: u16,
        io: IoMode,
        storage: LogConfig,
        recent_cache_bytes: usize,
    ) -> anyhow::Result<Shard> {
        let dir = crate::layout::shard_dir(data_dir, usize::from(id));
        tern_storage::log::create_dir_durably(&dir)?;
        let io = failpoint::resolve(io, &dir);
        let env = EngineEnv::new(io).map_err(anyhow::Error::msg)?;
        let (log, report) = Log::open(env, &dir, storage, TimestampMs::now()).await?;
        tracing::info!(shard = id, dir = %dir.display(), ?io, segments = report.segments, next = %report.next_sequence,
            truncated = report.truncated.is_some(), "log opened");
        Ok(Shard {
            id,
            store: StoreTag::of_database(database_id),
            log,
            recent: RefCell::new(Recent::new(recent_cache_bytes)),
            appended: event_listener::Event::new(),
        })
    }

    /// The queue id of this shard's record `sequence`.
    pub fn queue_id(&self, sequence: Sequence) -> QueueId {
        QueueId {
            store: self.store,
            shard: self.id,
            sequence,
        }
    }

    /// Appends a record of `kind` (`size` payload bytes, written by
    /// `write`), announced to the delivery tail as `what`. Durable on
    /// return.
    pub async fn append(
        &self,
        kind: RecordKind,
        at: TimestampMs,
        size: usize,
        what: Announced,
        write: impl FnOnce(Sequence, &mut PayloadWriter<'_>),
    ) -> tern_storage::Result<Sequence> {
        let seq = self.enqueue(kind, at, size, what, write).await?;
        self.log.durable(seq).await?;
        Ok(seq)
    }

    /// Like [`Shard::append`], but returns once the record is queued for
    /// the next group commit: **not durable yet** (see [`Shard::durable`]).
    pub async fn enqueue(
        &self,
        kind: RecordKind,
        at: TimestampMs,
        size: usize,
        what: Announced,
        write: impl FnOnce(Sequence, &mut PayloadWriter<'_>),
    ) -> tern_storage::Result<Sequence> {
        self.log
            .enqueue_with(kind, at, size, |seq, w| {
                self.recent.borrow_mut().announce(seq.0, what);
                write(seq, w)
            })
            .await
    }

    /// Waits until record `seq` is durable.
    pub async fn durable(&self, seq: Sequence) -> tern_storage::Result<()> {
        self.log.durable(seq).await
    }

    /// Appends one delivery status record (durable on return). Status
    /// records are results of accepted work: they may use the log's
    /// reserve, which new messages may not (`Class::Reserved`).
    pub async fn append_status(&self, events: &[StatusEvent]) -> tern_storage::Result<Sequence> {
        self.append_status_with(events, &[]).await
    }

    /// Like [`Shard::append_status`], with the replies the attempts got
    /// (what `tern queue list/show` reports).
    pub async fn append_status_with(
        &self,
        events: &[StatusEvent],
        replies: &[status::Reply],
    ) -> tern_storage::Result<Sequence> {
        let size = status::encoded_len_with(events, replies);
        let seq = self
            .log
            .enqueue_class(
                Class::Reserved,
                STATUS,
                TimestampMs::now(),
                size,
                |seq, w| {
                    self.recent.borrow_mut().announce(seq.0, Announced::Other);
                    let mut buf = Vec::with_capacity(size);
                    status::encode_with(events, replies, &mut buf);
                    w.put(&buf);
                },
            )
            .await?;
        self.log.durable(seq).await?;
        Ok(seq)
    }

    /// Message `seq` is withdrawn before the delivery tail reached it (no
    /// peer took its shadow copy): the tail skips it.
    pub fn withdrawn(&self, seq: u64) {
        self.recent.borrow_mut().announce(seq, Announced::Other);
    }

    /// Takes what was announced about record `seq` (the delivery tail).
    pub fn announced(&self, seq: u64) -> Option<Announced> {
        self.recent.borrow_mut().announced(seq)
    }

    /// Would a fresh payload of `size` bytes be kept?
    pub fn has_room(&self, size: usize) -> bool {
        self.recent.borrow().has_room(size)
    }

    /// Keeps the payload of fresh message record `seq` for its first
    /// attempt, if it fits the budget.
    pub fn keep_payload(&self, seq: u64, payload: bytes::Bytes) {
        self.recent.borrow_mut().insert(seq, payload);
    }

    /// The kept payload of record `seq`, left in place (the operator's
    /// look at a message not yet attempted).
    pub fn peek_payload(&self, seq: u64) -> Option<bytes::Bytes> {
        self.recent.borrow().get(seq)
    }

    /// Takes the kept payload of record `seq`.
    pub fn take_payload(&self, seq: u64) -> Option<bytes::Bytes> {
        self.recent.borrow_mut().take(seq)
    }

    /// The delivery tail stops before message `seq` until [`Shard::decided`].
    pub fn hold_back(&self, seq: u64) {
        self.recent.borrow_mut().undecided.insert(seq);
    }

    /// Message `seq` may be delivered (or was withdrawn).
    pub fn decided(&self, seq: u64) {
        self.recent.borrow_mut().undecided.remove(&seq);
    }

    /// Is message `seq` held back?
    pub fn is_held_back(&self, seq: u64) -> bool {
        self.recent.borrow().undecided.contains(&seq)
    }

    /// Wakes the delivery tail (records became durable).
    pub fn notify_appended(&self) {
        self.appended.notify(usize::MAX);
    }

    /// Resolves at the next [`Shard::notify_appended`] after this call.
    pub fn listen_appended(&self) -> event_listener::EventListener {
        self.appended.listen()
    }
}
