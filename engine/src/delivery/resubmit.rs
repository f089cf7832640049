//! Safety Net resubmission (SPEC 5): one request's part on this core.
//!
//! The core reads its log from the later of the `safety-net` cursor and
//! the first record at or after the window's start (the log's time
//! index) to the durable end, and collects:
//!
//! - own Safety Net: message records that arrived in the window
//!   (`received_ms`), the recipients their status events say were
//!   delivered, and whether they are done (a message still queued, or
//!   withdrawn without any delivery, is not resubmitted);
//! - with `unresponsive_primary = NODE`: the shadow copies held for NODE
//!   that arrived in the window and were released (`done`: NODE told us
//!   they were handled), every recipient;
//! - the originals that earlier resubmissions already copied (their
//!   records name them), so a message is resubmitted once however many
//!   requests cover it.
//!
//! Each chosen message is appended as a new message record (a new queue
//! id, received now, flagged RESUBMITTED: no DSN is ever sent for it)
//! for its matching recipients, with a shadow copy made before delivery
//! may take it, as for any accepted message. Batches of [`BATCH`] go in
//! parallel (one group commit); the scan pauses every [`SCAN_YIELD`]
//! records, so acceptance on the core goes on.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::rc::Rc;

use tern_storage::{Sequence, TimestampMs};

use super::dispatch::domain_of;
use super::Delivery;
use crate::ops::state::Request;
use crate::record::message::{self, Encoder, QueueId, StoredMessage, MESSAGE};
use crate::record::shadow::{self as shadow_record, SHADOW};
use crate::record::status::{self, Event, STATUS};
use crate::shard::Announced;

/// Resubmissions appended side by side.
const BATCH: usize = 64;
/// Records read between two yields.
const SCAN_YIELD: usize = 256;

/// A Safety Net message that may be resubmitted.
struct Candidate {
    /// Where its record is (own: the message record; shadow: the shadow
    /// record).
    seq: u64,
    /// Its id as resubmitted copies name it.
    original: String,
    /// Own: the recipient indexes delivered so far.
    delivered: BTreeSet<u32>,
    done: bool,
}

impl Delivery {
    /// Runs resubmission request `id` on this core's log; marks this
    /// core's part finished (a failure leaves it pending: it runs again
    /// at the next start).
    pub(super) async fn resubmit(self: Rc<Self>, id: u64) {
        let ops = self.parts.ops.clone();
        let Some(req) = ops.request(id) else { return };
        if req.disabled {
            return;
        }
        let core = self.shard().id;
        match self.run_request(&req).await {
            Ok((matched, resubmitted)) => {
                ops.finished(id, core);
                tracing::info!(
                    request = id,
                    shard = core,
                    matched,
                    resubmitted,
                    "resubmission request done on this core"
                );
            }
            Err(e) => {
                tracing::error!(request = id, shard = core, error = %e, "resubmission request failed on this core; it runs again at the next start");
            }
        }
    }

    async fn run_request(&self, req: &Request) -> Result<(u64, u64), String> {
        let log = &self.shard().log;
        let end = log.durable_end().0;
        let from = log
            .first_at_or_after(TimestampMs(req.start_ms))
            .map_or(end, |s| s.0)
            .max(log.cursor("safety-net").map_or(0, |s| s.0))
            .max(log.first_sequence().0);
        let shadow = req.unresponsive_primary.as_deref();
        let mut candidates: BTreeMap<u64, Candidate> = BTreeMap::new();
        let mut already: HashSet<String> = HashSet::new();
        let store = self.shard().store;
        for (n, seq) in (from..end).enumerate() {
            if n % SCAN_YIELD == 0 {
                super::operate::pause().await;
            }
            let Ok(rec) = log.read(Sequence(seq)) else {
                continue;
            };
            match rec.kind {
                MESSAGE => {
                    let Ok(m) = message::decode(&rec.payload) else {
                        continue;
                    };
                    if let Some(r) = &m.resubmitted {
                        // An original named in the old id form is the
                        // same message as in the new one.
                        let original = QueueId::parse(&r.original, store)
                            .map_or_else(|_| r.original.clone(), |id| id.to_string());
                        already.insert(original);
                        continue;
                    }
                    if shadow.is_some() || !in_window(req, &m) {
                        continue;
                    }
                    let key = rec.origin.unwrap_or(rec.sequence).0;
                    let original = self.shard().queue_id(Sequence(key)).to_string();
                    let c = candidates.entry(key).or_insert(Candidate {
                        seq,
                        original,
                        delivered: BTreeSet::new(),
                        done: false,
                    });
                    // The latest copy (copy-forward) is the one to read.
                    c.seq = seq;
                }
                SHADOW => {
                    let Some(node) = shadow else { continue };
                    let Ok((origin, m)) = shadow_record::decode(&rec.payload) else {
                        continue;
                    };
                    if origin.node != node || !in_window(req, &m) {
                        continue;
                    }
                    candidates.insert(
                        seq,
                        Candidate {
                            seq,
                            original: format!("{}:{}", origin.node, origin.queue_id),
                            delivered: BTreeSet::new(),
                            done: false,
                        },
                    );
                }
                STATUS => {
                    let Ok(events) = status::decode(&rec.payload) else {
                        continue;
                    };
                    for e in events {
                        let Some(c) = candidates.get_mut(&e.message) else {
                            continue;
                        };
                        match e.event {
                            Event::Delivered => c.delivered.extend(e.rcpts),
                            Event::Done => c.done = true,
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        // Choose: handled, matching, not resubmitted before.
        let mut chosen: Vec<(StoredMessage, Vec<String>, String)> = Vec::new();
        let (mut matched, mut counted, mut resubmitted) = (0u64, 0u64, 0u64);
        let mut targets: HashMap<String, String> = HashMap::new();
        let host = &self.parts.config.hostname;
        for (n, c) in candidates.into_values().enumerate() {
            if n % SCAN_YIELD == SCAN_YIELD - 1 {
                super::operate::pause().await;
            }
            if !c.done {
                continue;
            }
            let Some(m) = self.read_candidate(c.seq, shadow.is_some()) else {
                continue;
            };
            if !self.matches(req, &m) {
                continue;
            }
            let rcpts: Vec<String> = m
                .recipients
                .iter()
                .enumerate()
                .filter(|(i, _)| shadow.is_some() || c.delivered.contains(&(*i as u32)))
                .filter(|(_, r)| {
                    let d = domain_of(r, host);
                    req.recipient
                        .as_ref()
                        .is_none_or(|x| r.eq_ignore_ascii_case(x))
                        && req.recipient_domain.as_ref().is_none_or(|x| *x == d)
                        && req.next_hop.as_ref().is_none_or(|p| {
                            let t = targets
                                .entry(d.clone())
                                .or_insert_with(|| self.target_name(&d));
                            *t == format!("pool:{p}")
                        })
                })
                .map(|(_, r)| r.clone())
                .collect();
            if rcpts.is_empty() {
                continue;
            }
            matched += 1;
            if already.contains(&c.original) {
                continue;
            }
            chosen.push((m, rcpts, c.original));
            if chosen.len() == BATCH {
                resubmitted += self.queue_batch(req, std::mem::take(&mut chosen)).await?;
                let new = matched - counted;
                self.parts.ops.update(req.id, |r| r.matched += new);
                counted = matched;
                if !self.parts.ops.request_active(req.id) {
                    tracing::info!(
                        request = req.id,
                        "resubmission request disabled or removed; stopped"
                    );
                    return Ok((matched, resubmitted));
                }
            }
        }
        resubmitted += self.queue_batch(req, chosen).await?;
        let new = matched - counted;
        self.parts.ops.update(req.id, |r| r.matched += new);
        Ok((matched, resubmitted))
    }

    /// The message of a candidate's record.
    fn read_candidate(&self, seq: u64, shadow: bool) -> Option<StoredMessage> {
        let rec = self.shard().log.read(Sequence(seq)).ok()?;
        if shadow {
            shadow_record::decode(&rec.payload).ok().map(|(_, m)| m)
        } else {
            message::decode(&rec.payload).ok()
        }
    }

    /// The request's sender and Message-ID filters.
    fn matches(&self, req: &Request, m: &StoredMessage) -> bool {
        if let Some(s) = &req.sender {
            let from = if m.mail_from.is_empty() {
                "<>"
            } else {
                &m.mail_from
            };
            // (The request's sender is lower case; `<>` is the null one.)
            if !from.eq_ignore_ascii_case(s.trim_matches(['<', '>'])) && from != s {
                return false;
            }
        }
        if let Some(id) = &req.message_id {
            if message_id(&m.message).as_deref() != Some(id.as_str()) {
                return false;
            }
        }
        true
    }

    /// Queues `batch` again; how many made it.
    async fn queue_batch(
        &self,
        req: &Request,
        batch: Vec<(StoredMessage, Vec<String>, String)>,
    ) -> Result<u64, String> {
        if batch.is_empty() {
            return Ok(0);
        }
        let tasks = batch
            .iter()
            .map(|(m, rcpts, original)| self.queue_again(req.id, m, rcpts, original));
        let mut done = 0u64;
        let mut first_error = None;
        for r in join_all(tasks).await {
            match r {
                Ok(()) => done += 1,
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        let ops = &self.parts.ops;
        ops.update(req.id, |r| r.resubmitted += done);
        ops.stats
            .resubmitted
            .fetch_add(done, std::sync::atomic::Ordering::Relaxed);
        self.shard().notify_appended();
        match first_error {
            Some(e) => Err(e),
            None => Ok(done),
        }
    }

    /// One message queued again, with its shadow copy.
    async fn queue_again(
        &self,
        request: u64,
        m: &StoredMessage,
        rcpts: &[String],
        original: &str,
    ) -> Result<(), String> {
        let now = TimestampMs::now().0;
        let rcpts: Vec<&str> = rcpts.iter().map(String::as_str).collect();
        let enc = Encoder::resubmitted(m, &rcpts, now, request, original);
        let shard = self.shard();
        let shadowing = self.parts.primary.shadowing();
        let what = Announced::Message {
            received_ms: now,
            rcpts: rcpts.len() as u32,
        };
        let assigned = Cell::new(None);
        let appended = shard
            .append(MESSAGE, TimestampMs(now), enc.len(), what, |sequence, w| {
                if shadowing {
                    // Delivery waits for the shadow copy, as for any
                    // accepted message.
                    shard.hold_back(sequence.0);
                }
                assigned.set(Some(sequence));
                enc.write(shard.queue_id(sequence), &mut |b| w.put(b))
            })
            .await;
        let sequence = match appended {
            Ok(s) => s,
            Err(e) => {
                if let Some(s) = assigned.get() {
                    shard.decided(s.0);
                }
                return Err(format!("cannot queue a resubmitted message: {e}"));
            }
        };
        let id = shard.queue_id(sequence);
        if shadowing {
            // The copy carries the content as stored, like the record.
            self.parts
                .primary
                .copy_stored(
                    id,
                    &m.mail_from,
                    &rcpts,
                    &m.message,
                    "a resubmitted message",
                )
                .await;
            shard.decided(sequence.0);
        }
        tracing::info!(id = %id, original, request, rcpts = rcpts.len(), "resubmitted from the Safety Net");
        Ok(())
    }
}

/// Did `m` arrive in the request's window?
fn in_window(req: &Request, m: &StoredMessage) -> bool {
    (req.start_ms..=req.end_ms).contains(&m.received_ms)
}

/// Runs the futures side by side on this core; their outputs in order.
async fn join_all<F: std::future::Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    let tasks: Vec<_> = futures.map(Box::pin).collect();
    let mut out = Vec::with_capacity(tasks.len());
    let mut pending: Vec<_> = tasks.into_iter().map(Some).collect();
    let mut results: Vec<Option<F::Output>> = (0..pending.len()).map(|_| None).collect();
    futures_lite::future::poll_fn(|cx| {
        let mut all = true;
        for (i, slot) in pending.iter_mut().enumerate() {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        results[i] = Some(v);
                        *slot = None;
                    }
                    std::task::Poll::Pending => all = false,
                }
            }
        }
        if all {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    out.extend(
        results
            .into_iter()
            .map(|r| r.expect("every future finished")),
    );
    out
}

/// The Message-ID of `content` without its angle brackets (the header
/// reader of duplicate detection, `crate::shadow::dedupe::message_id`).
pub(super) fn message_id(content: &[u8]) -> Option<String> {
    crate::shadow::dedupe::message_id(content).map(|v| v.trim_matches(['<', '>']).trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids() {
        assert_eq!(
            message_id(b"Subject: x\r\nMessage-ID: <a@b>\r\n\r\nMessage-ID: <c@d>\r\n").as_deref(),
            Some("a@b")
        );
        assert_eq!(
            message_id(b"message-id:\r\n  <folded@x>\r\nTo: y\r\n\r\nbody").as_deref(),
            Some("folded@x")
        );
        assert_eq!(message_id(b"Subject: x\r\n\r\nMessage-ID: <c@d>\r\n"), None);
    }
}
