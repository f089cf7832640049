//! Maintenance, every `maintenance_interval`: copy-forward, the cursors,
//! the discard watermark, the upkeep of shadow copies held for peers, and
//! reclamation.
//!
//! - Copy-forward: a waiting message whose record lies in a segment
//!   created more than `copy_forward_after` ago (never the newest segment)
//!   is held, copied to the head (`Log::copy_forward`), followed by a
//!   `snapshot` status record, then relocated; only then may the cursor
//!   pass the old record.
//! - Cursors: `queue` at the oldest location of a queued message, else
//!   everything read so far; `shadow` at the oldest copy held for a peer;
//!   `safety-net` at the first record younger than `safety_net_hold_time`
//!   (the Safety Net is the log between the two: nothing is copied).
//! - Then `Log::reclaim` deletes the segments every cursor passed.
//!
//! A step that fails is logged and the others still run, so one bad
//! record cannot stop reclamation and fill the disk. The same failure is
//! logged once, then again only if it lasts a minute (or changes).
//!
//! The log's room goes to back pressure (`crate::pressure`) every pass:
//! the bytes it holds and whether it could make its next segment. While
//! it cannot (a full file system), the pass tries again, and copy-forward
//! waits: it would take room that results need, to free room later.

use std::rc::Rc;
use std::sync::atomic::Ordering;

use tern_storage::{Sequence, TimestampMs};

use super::Delivery;
use crate::logbuf::Repeated;
use crate::metrics::CoreMetrics;
use crate::record::status::{Event, StatusEvent};

/// Failures of maintenance steps that recur every pass.
#[derive(Default)]
pub(super) struct Failing {
    pass: Repeated,
    copy_forward: Repeated,
}

impl Delivery {
    /// Runs [`Delivery::maintain`] every `maintenance_interval` until stop.
    pub(super) async fn maintenance(self: Rc<Self>) {
        while !self.is_stopping() {
            let stop = self.stopping.event.listen();
            futures_lite::future::or(
                async {
                    glommio::timer::sleep(self.cfg.maintenance_interval).await;
                },
                stop,
            )
            .await;
            if self.is_stopping() {
                break;
            }
            let r = self.maintain().await;
            self.failing
                .pass
                .report("queue maintenance failed", r.err().map(|e| e.to_string()));
        }
    }

    /// One maintenance pass.
    async fn maintain(&self) -> anyhow::Result<()> {
        let now = TimestampMs::now().0;
        let log = &self.shard().log;
        let full = log.spare_failure().is_some();
        if full {
            log.retry_spare();
        }
        let held = log.segments().iter().map(|s| s.bytes).sum();
        self.parts
            .pressure
            .set_log(usize::from(self.shard().id), held, full);
        if !full {
            let r = self.copy_forward(now).await;
            self.failing
                .copy_forward
                .report("copy-forward failed", r.err().map(|e| e.to_string()));
        }
        self.set_queue_cursor().await?;
        self.publish_watermark();
        let replica = &self.parts.replica;
        if let Err(e) = replica.upkeep(now).await {
            tracing::error!(error = %e, "shadow copy upkeep failed; retried at the next pass");
        }
        replica.publish_depth();
        self.parts.primary.expire_discards(now);
        self.set_retention_cursors(now).await?;
        self.dispatch.forget_idle(now);
        self.operate.prune();
        self.hosts.health.borrow_mut().prune(now);
        let freed = log.reclaim(TimestampMs(now)).await?;
        let m = self.metrics();
        m.segments_reclaimed
            .fetch_add(freed.deleted.len() as u64, Ordering::Relaxed);
        let q = self.queue.borrow();
        m.queue_messages.store(q.len() as u64, Ordering::Relaxed);
        m.queue_in_flight
            .store(q.in_flight() as u64, Ordering::Relaxed);
        drop(q);
        m.set_log_stats(&log.stats());
        Ok(())
    }

    /// Moves `name` to `at` if it changed and `at` is in the log.
    async fn set_cursor(&self, name: &str, at: u64) -> tern_storage::Result<()> {
        let log = &self.shard().log;
        if log.cursor(name) != Some(Sequence(at)) && at >= log.first_sequence().0 {
            log.set_cursor(name, Sequence(at)).await?;
        }
        Ok(())
    }

    /// The `queue` cursor: the oldest record a queued message needs.
    pub(super) async fn set_queue_cursor(&self) -> tern_storage::Result<()> {
        let at = self.queue.borrow().cursor(self.tail.scanned.get());
        self.set_cursor("queue", at).await
    }

    /// The `shadow` cursor (oldest copy held for a peer) and the
    /// `safety-net` cursor (first record younger than
    /// `safety_net_hold_time`), never past what the tail has read.
    async fn set_retention_cursors(&self, now: u64) -> tern_storage::Result<()> {
        let scanned = self.tail.scanned.get();
        let shadow_at = self
            .parts
            .replica
            .first_held()
            .map_or(scanned, |s| s.min(scanned));
        self.set_cursor("shadow", shadow_at).await?;
        let hold = self.cfg.safety_net_hold_time.as_millis() as u64;
        let net = self
            .shard()
            .log
            .first_at_or_after(TimestampMs(now.saturating_sub(hold)))
            .map_or(scanned, |s| s.0.min(scanned));
        self.set_cursor("safety-net", net).await
    }

    /// Publishes this core's discard watermark for `XQDISCARD` answers:
    /// every message of this shard below it is handled (the lowest queued
    /// key, or the tail's position; never past an unreadable record).
    pub(super) fn publish_watermark(&self) {
        let w = self
            .queue
            .borrow()
            .watermark(self.tail.scanned.get())
            .min(self.tail.unreadable_min.get());
        self.parts.primary.publish_watermark(w);
    }

    /// Copies waiting messages whose record sits in an old segment to the
    /// head of the log (with a snapshot of their state), so the segment
    /// can be reclaimed while they wait.
    async fn copy_forward(&self, now: u64) -> anyhow::Result<()> {
        let log = &self.shard().log;
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
            if let Err(e) = self.copy_one_forward(key, now).await {
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

    /// Copies message `key` forward, held (as if in flight) so no attempt
    /// runs during the copy.
    async fn copy_one_forward(&self, key: u64, now: u64) -> tern_storage::Result<()> {
        let Some(entry) = self.queue.borrow_mut().hold(key) else {
            return Ok(());
        };
        let log = &self.shard().log;
        let copied = log
            .copy_forward(Sequence(entry.location), TimestampMs(now))
            .await;
        let result = match copied {
            Ok(new) => {
                let mut snap = self.queue.borrow().snapshot(key).expect("held");
                snap.at_ms = entry.next_ms;
                let mut events = vec![snap];
                if entry.held {
                    // The operator's hold outlives the records before
                    // the copy, which the cursor may now pass.
                    events.push(StatusEvent {
                        message: key,
                        event: Event::Held,
                        at_ms: now,
                        attempts: entry.attempts,
                        rcpts: Vec::new(),
                    });
                }
                let r = self.shard().append_status(&events).await;
                if r.is_ok() {
                    self.shard().take_payload(entry.location);
                    self.queue.borrow_mut().relocate(key, new.0);
                    CoreMetrics::inc(&self.metrics().copied_forward);
                }
                r.map(|_| ())
            }
            Err(e) => Err(e),
        };
        self.queue.borrow_mut().release(key, entry.next_ms);
        result
    }
}
