//! Tailing the log into the queue. At start the queue is rebuilt by
//! replaying the log from the `queue` cursor (message records add entries,
//! status records apply their events); afterwards the tail takes each
//! newly durable record, mostly from what the appender announced
//! (`crate::shard`) instead of reading it back.
//!
//! [`replay`] is the one rule for what a record does to a queue being
//! rebuilt; the server's rebuild and `tern queue` both use it, so the
//! operator sees the queue the server will have.

use std::cell::Cell;

use tern_storage::{Record, Sequence};

use super::queue::Queue;
use super::Delivery;
use crate::metrics::CoreMetrics;
use crate::record::message::{self, MESSAGE};
use crate::record::shadow::SHADOW;
use crate::record::status::{self, Event, StatusEvent, STATUS};
use crate::shard::Announced;

/// What replaying a record did.
#[derive(Debug)]
pub enum Replayed {
    /// A message entered the queue under this key.
    Message(u64),
    /// Status events, applied.
    Status(Vec<StatusEvent>),
    /// A shadow copy held for a peer (not a queue entry).
    Shadow,
    /// Nothing the queue knows.
    Other,
}

/// A record that could not be replayed.
#[derive(Debug)]
pub struct Unreadable {
    /// The queue key, for a message record.
    pub key: Option<u64>,
    /// What is wrong.
    pub error: String,
}

/// Applies `rec` to a queue being rebuilt: message records add entries
/// (a copy made by copy-forward moves its message: the key is the
/// original's sequence), status records apply their events.
pub fn replay(q: &mut Queue, rec: &Record) -> Result<Replayed, Unreadable> {
    match rec.kind {
        MESSAGE => {
            let key = rec.origin.unwrap_or(rec.sequence).0;
            let (received_ms, rcpts) = message::peek(&rec.payload).map_err(|e| Unreadable {
                key: Some(key),
                error: e.to_string(),
            })?;
            q.add(key, rec.sequence.0, received_ms, rcpts);
            Ok(Replayed::Message(key))
        }
        STATUS => {
            let events = status::decode(&rec.payload).map_err(|e| Unreadable {
                key: None,
                error: e.to_string(),
            })?;
            for e in &events {
                q.apply(e);
            }
            Ok(Replayed::Status(events))
        }
        SHADOW => Ok(Replayed::Shadow),
        _ => Ok(Replayed::Other),
    }
}

/// Where the tail is.
pub(super) struct Tail {
    /// Next sequence to read from the log.
    pub(super) scanned: Cell<u64>,
    /// The lowest queue key of a message record that could not be read
    /// (`u64::MAX`: none): the discard watermark never passes it, so its
    /// shadow copies stay (the primary cannot deliver it).
    pub(super) unreadable_min: Cell<u64>,
}

impl Default for Tail {
    fn default() -> Tail {
        Tail {
            scanned: Cell::new(0),
            unreadable_min: Cell::new(u64::MAX),
        }
    }
}

impl Tail {
    pub(super) fn unreadable(&self, key: u64) {
        self.unreadable_min.set(self.unreadable_min.get().min(key));
    }
}

impl Delivery {
    /// At start: finds the shadow copies held before the queue cursor,
    /// rebuilds the queue from it, publishes the first watermark.
    pub(super) fn rebuild(&self) -> anyhow::Result<()> {
        let log = &self.shard().log;
        let from = log.cursor("queue").unwrap_or_else(|| log.first_sequence());
        // Shadow copies held for peers may sit before the queue cursor
        // (they pin the `shadow` cursor instead): find them first, or
        // they would be forgotten, released and never taken over.
        let held_from = log
            .cursor("shadow")
            .unwrap_or(from)
            .max(log.first_sequence());
        if held_from < from {
            self.ingest_held_shadows(held_from, from);
        }
        self.tail.scanned.set(from.0.max(log.first_sequence().0));
        let replayed = self.ingest(true)?;
        tracing::info!(shard = self.shard().id, from = %from, records = replayed,
            queued = self.queue.borrow().len(), "delivery queue rebuilt");
        self.publish_watermark();
        Ok(())
    }

    /// Reads new durable records into the queue. `rebuild`: replaying at
    /// start (status records apply; copies of unknown messages are added).
    pub(super) fn ingest(&self, rebuild: bool) -> anyhow::Result<usize> {
        let shard = self.shard();
        let end = shard.log.durable_end().0;
        let mut n = 0;
        while self.tail.scanned.get() < end {
            let seq = self.tail.scanned.get().max(shard.log.first_sequence().0);
            if !rebuild && shard.is_held_back(seq) {
                // Its shadow copy is still being made: wait for the outcome.
                break;
            }
            self.tail.scanned.set(seq + 1);
            if seq >= end {
                break;
            }
            match shard.announced(seq) {
                Some(Announced::Message { received_ms, rcpts }) if !rebuild => {
                    self.queue.borrow_mut().add(seq, seq, received_ms, rcpts);
                }
                Some(Announced::Other) if !rebuild => {}
                Some(Announced::Shadow { at_ms, origin }) if !rebuild => {
                    self.parts.replica.hold(seq, at_ms, origin);
                }
                _ => match shard.log.read(Sequence(seq)) {
                    Ok(rec) => self.ingest_record(&rec, rebuild),
                    Err(e) => {
                        // A damaged record (a failed read, a checksum that
                        // does not verify) stops neither the start nor the
                        // tail: it is reported, counted and skipped.
                        // Perhaps a message: the discard watermark never
                        // passes it (its shadows keep their copy).
                        self.tail.unreadable(seq);
                        CoreMetrics::inc(&self.metrics().unreadable);
                        tracing::error!(shard = shard.id, seq, error = %e,
                            "unreadable record skipped: if it was a message, it is not delivered from here (its shadow copy, if any, is kept)");
                    }
                },
            }
            n += 1;
        }
        Ok(n)
    }

    /// At start: the shadow copies (and the `done` events that ended some
    /// of them) in `[from, to)`, the part of the log before the queue
    /// cursor that the `shadow` cursor still holds.
    fn ingest_held_shadows(&self, from: Sequence, to: Sequence) {
        let log = &self.shard().log;
        let replica = &self.parts.replica;
        for seq in from.0.max(log.first_sequence().0)..to.0 {
            let rec = match log.read(Sequence(seq)) {
                Ok(rec) => rec,
                Err(e) => {
                    // An old record (perhaps long delivered) must not stop
                    // the start; if it was a shadow copy, it is lost here.
                    tracing::error!(seq, error = %e, "unreadable record skipped while looking for held shadow copies");
                    continue;
                }
            };
            match rec.kind {
                SHADOW => replica.hold_record(&rec),
                // Only the end of shadow copies: these records' queue
                // events are older than the queue cursor, already applied.
                STATUS => match status::decode(&rec.payload) {
                    Ok(events) => events
                        .iter()
                        .filter(|e| e.event == Event::Done)
                        .for_each(|e| replica.released(e.message)),
                    Err(e) => {
                        tracing::error!(seq = %rec.sequence, error = %e, "unreadable status record skipped")
                    }
                },
                _ => {}
            }
        }
        tracing::info!(shard = self.shard().id, from = %from, held = replica.len(),
            "shadow copies held before the queue cursor found");
    }

    fn ingest_record(&self, rec: &Record, rebuild: bool) {
        if !rebuild && (rec.kind == STATUS || (rec.kind == MESSAGE && rec.origin.is_some())) {
            // Status events are applied by whoever wrote them; a message
            // with an origin is our own copy-forward, already relocated.
            return;
        }
        let replayed = replay(&mut self.queue.borrow_mut(), rec);
        match replayed {
            Ok(Replayed::Shadow) => self.parts.replica.hold_record(rec),
            Ok(Replayed::Status(events)) => events
                .iter()
                .filter(|e| e.event == Event::Done)
                // A shadow copy discarded or taken over.
                .for_each(|e| self.parts.replica.released(e.message)),
            Ok(Replayed::Message(key)) if rebuild => {
                // What the operator's summary and selections need, while
                // the record is at hand anyway.
                if let Ok(m) = message::decode(&rec.payload) {
                    let meta = self.meta_for(&m);
                    self.queue.borrow_mut().set_meta(key, meta);
                }
            }
            Ok(Replayed::Message(_) | Replayed::Other) => {}
            Err(Unreadable {
                key: Some(key),
                error,
            }) => {
                self.tail.unreadable(key);
                tracing::error!(seq = %rec.sequence, error = %error,
                    "unreadable message record skipped (not deliverable)")
            }
            Err(Unreadable { key: None, error }) => {
                tracing::error!(seq = %rec.sequence, error = %error, "unreadable status record skipped")
            }
        }
    }
}
