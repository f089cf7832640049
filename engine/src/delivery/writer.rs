//! Recording outcomes. One writer task per core takes all finished
//! attempts, appends a DSN message record for each attempt with bounced
//! recipients (not for the null sender) and starts its shadow copy, waits
//! for those copies (SPEC 3: an original is released only with its DSN
//! redundant too), then appends one status record with all their events;
//! only after that group commit are the events applied in memory (so the
//! cursor never passes a message whose outcome is not durable).
//!
//! Delivered and bounced recipients become final; temporary failures
//! schedule the next attempt ([`retry_delay`]); once
//! `message_expiration_timeout` has passed, a temporary failure bounces
//! instead (5.4.7, with the last reply). When every recipient is final a
//! `done` event is written: the message's durable discard status.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tern_smtp::{Reply, Status};
use tern_storage::{Sequence, TimestampMs};

use super::logline::{self, Hop, Item, Times, Verdict};
use super::{Attempt, Delivery, Outcome};
use crate::config::DeliveryConfig;
use crate::dsn::{self, Action, Notice, RecipientReport};
use crate::metrics::CoreMetrics;
use crate::record::message::{Encoder, MESSAGE};
use crate::record::status::{Event, StatusEvent, EVENTS_MAX};
use crate::shard::Announced;

/// Exponential from `retry_initial`, doubling per attempt, capped.
pub fn retry_delay(cfg: &DeliveryConfig, attempts: u32) -> Duration {
    let factor = 1u32 << attempts.saturating_sub(1).min(20);
    cfg.retry_initial.saturating_mul(factor).min(cfg.retry_max)
}

/// Finished attempts waiting for the writer.
#[derive(Default)]
pub(super) struct Finished {
    list: RefCell<Vec<Rc<Attempt>>>,
    event: event_listener::Event,
}

impl Finished {
    pub(super) fn push(&self, a: Rc<Attempt>) {
        self.list.borrow_mut().push(a);
        self.event.notify(1);
    }

    pub(super) fn wake_all(&self) {
        self.event.notify(usize::MAX);
    }
}

/// A recipient that failed for good in this attempt.
struct Failed {
    rcpt: u32,
    reply: Reply,
    /// The next hop that refused it (None: refused before any was asked).
    host: Option<Rc<Hop>>,
    /// Failed temporarily past the expiry (5.4.7).
    expired: bool,
}

/// An attempt's outcomes, sorted.
#[derive(Default)]
pub(super) struct Sorted {
    delivered: Vec<(u32, Reply, Rc<Hop>)>,
    failed: Vec<Failed>,
    temporary: Vec<(u32, Reply, Option<Rc<Hop>>)>,
    deleted: Vec<u32>,
    not_tried: bool,
    /// Some recipient's destination is suspended (until the earliest end;
    /// `Some(None)`: until resumed).
    suspended: Option<Option<u64>>,
    /// An operator action left some recipient as it was.
    untouched: bool,
}

/// Until a suspension without an end is looked at again (resuming makes
/// its messages due at once anyway).
const SUSPENDED_RECHECK_MS: u64 = 3_600_000;

impl Delivery {
    /// Records finished attempts: DSNs first (new messages), then one
    /// status record; applied in memory once durable.
    pub(super) async fn writer(self: Rc<Self>) {
        loop {
            let listener = self.finished.event.listen();
            let batch = std::mem::take(&mut *self.finished.list.borrow_mut());
            if batch.is_empty() {
                if self.is_stopping() && self.open_attempts.get() == 0 {
                    return;
                }
                futures_lite::future::or(listener, async {
                    glommio::timer::sleep(Duration::from_millis(100)).await;
                })
                .await;
                continue;
            }
            self.record(&batch).await;
            self.open_attempts
                .set(self.open_attempts.get() - batch.len());
            self.shard().notify_appended();
        }
    }

    /// Records one batch of finished attempts (also an operator's
    /// bounce or delete, as attempts of their own).
    pub(super) async fn record(&self, batch: &[Rc<Attempt>]) {
        let now = TimestampMs::now().0;
        let mut events = Vec::new();
        let mut copies = Vec::new();
        let mut replies = Vec::new();
        for a in batch {
            // An operator acted on it while it was in flight.
            let hold = self.apply_pending(a);
            replies.extend(super::replies::of(a, now, &self.cfg));
            let first_delivery = self
                .queue
                .borrow()
                .get(a.key)
                .is_some_and(|e| e.finals().is_empty());
            let from = events.len();
            self.conclude(a, now, &mut events, &mut copies).await;
            let done = events[from..].iter().any(|e| e.event == Event::Done);
            if hold && !done {
                events.push(StatusEvent {
                    message: a.key,
                    event: Event::Held,
                    at_ms: now,
                    attempts: a.attempts,
                    rcpts: Vec::new(),
                });
            }
            let delivered = events[from..].iter().any(|e| e.event == Event::Delivered);
            if let Some(r) = &a.msg.resubmitted {
                if delivered && first_delivery {
                    self.parts.ops.update(r.request, |q| q.delivered += 1);
                }
            }
        }
        // SPEC 3: an original is released only with its DSN redundant
        // too, so the status waits for the DSNs' shadow copies. They run
        // side by side: with a peer that does not answer, the batch waits
        // one shadow_timeout per peer, not one per DSN.
        for c in copies {
            c.await;
        }
        let mut recorded = true;
        for (chunk, replies) in super::replies::chunks(&events, &replies, EVENTS_MAX) {
            if let Err(e) = self.shard().append_status_with(chunk, replies).await {
                tracing::error!(error = %e, "cannot record delivery results; they will be retried after restart");
                recorded = false;
                break;
            }
        }
        let mut q = self.queue.borrow_mut();
        if !recorded {
            for a in batch {
                q.release(a.key, now + self.cfg.retry_initial.as_millis() as u64);
            }
            return;
        }
        for e in &events {
            q.apply(e);
        }
        drop(q);
        // Discard status for the shadows (SPEC 3).
        let done = events.iter().filter(|e| e.event == Event::Done);
        self.parts.primary.handled(now, done.map(|e| e.message));
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
        let mut s = self.sort(a, now);
        let event = |event, at_ms, attempts, rcpts| StatusEvent {
            message: a.key,
            event,
            at_ms,
            attempts,
            rcpts,
        };
        if !s.delivered.is_empty() {
            let rcpts = s.delivered.iter().map(|d| d.0).collect();
            events.push(event(Event::Delivered, now, a.attempts, rcpts));
        }
        if !s.deleted.is_empty() {
            tracing::info!(id = %a.id, rcpts = s.deleted.len(), "deleted by the operator");
            events.push(event(Event::Deleted, now, a.attempts, s.deleted.clone()));
        }
        if !s.failed.is_empty() {
            self.count_bounces(&s.failed);
            // No DSN for the null sender, nor for a resubmitted message
            // (its sender had the outcome of the original already).
            if !a.msg.mail_from.is_empty()
                && a.msg.resubmitted.is_none()
                && self.queue_dsn(a, &s.failed, now, copies).await.is_err()
            {
                // Not recorded: the recipients stay pending and are tried
                // again (the log is failing anyway).
                let failed = s.failed.drain(..).map(|f| (f.rcpt, f.reply, f.host));
                s.temporary.extend(failed);
            }
            if !s.failed.is_empty() {
                let rcpts = s.failed.iter().map(|f| f.rcpt).collect();
                events.push(event(Event::Bounced, now, a.attempts, rcpts));
            }
        }
        log_lines(a, &s, now);
        if s.temporary.is_empty() && !s.not_tried && s.suspended.is_none() && !s.untouched {
            events.push(event(Event::Done, now, a.attempts, Vec::new()));
            return;
        }
        let (at_ms, attempts) = if s.temporary.is_empty() && s.not_tried {
            // Not tried (shutdown): at once after restart, uncounted.
            (now, a.attempts.saturating_sub(1))
        } else if let (true, Some(until)) = (s.temporary.is_empty(), s.suspended) {
            // Waits for the suspension's end (or resume), uncounted.
            let at = until.unwrap_or(now + SUSPENDED_RECHECK_MS);
            (at, a.attempts.saturating_sub(1))
        } else if s.temporary.is_empty() {
            // An operator's action on other recipients: as it was.
            (a.operator.unwrap_or(now), a.attempts)
        } else {
            CoreMetrics::inc(&self.metrics().deferred);
            let delay = retry_delay(&self.cfg, a.attempts);
            self.warn_if_due(a, &s.temporary, now, copies).await;
            (now + delay.as_millis() as u64, a.attempts)
        };
        events.push(event(Event::Deferred, at_ms, attempts, Vec::new()));
    }

    /// Sorts the attempt's outcomes (a temporary failure past the expiry
    /// is a failure) and counts delivered recipients.
    fn sort(&self, a: &Attempt, now: u64) -> Sorted {
        let expires = a.msg.received_ms + self.cfg.message_expiration_timeout.as_millis() as u64;
        let mut s = Sorted::default();
        for (i, r) in a.results.borrow().iter() {
            let failed = |reply: &Reply, host: &Option<Rc<Hop>>, expired| Failed {
                rcpt: *i,
                reply: reply.clone(),
                host: host.clone(),
                expired,
            };
            match r {
                Outcome::Delivered(reply, hop) => {
                    s.delivered.push((*i, reply.clone(), hop.clone()))
                }
                Outcome::Permanent(reply, host) => s.failed.push(failed(reply, host, false)),
                Outcome::Temporary(reply, host) if now >= expires => {
                    s.failed.push(failed(reply, host, true))
                }
                Outcome::Temporary(reply, host) => {
                    s.temporary.push((*i, reply.clone(), host.clone()))
                }
                Outcome::NotTried => s.not_tried = true,
                Outcome::Deleted => s.deleted.push(*i),
                Outcome::Untouched => s.untouched = true,
                Outcome::Suspended(until) => {
                    // Look again at the earliest end of any of them.
                    s.suspended = Some(match (s.suspended.flatten(), *until) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (Some(a), None) | (None, Some(a)) => Some(a),
                        (None, None) => None,
                    })
                }
            }
        }
        let m = self.metrics();
        m.delivered_rcpts
            .fetch_add(s.delivered.len() as u64, Ordering::Relaxed);
        s
    }

    fn count_bounces(&self, failed: &[Failed]) {
        let m = self.metrics();
        let expired = failed.iter().filter(|f| f.expired).count() as u64;
        m.expired_rcpts.fetch_add(expired, Ordering::Relaxed);
        m.bounced_rcpts
            .fetch_add(failed.len() as u64 - expired, Ordering::Relaxed);
    }

    /// Appends the DSN for `failed` (a new message to the sender) and
    /// starts its shadow copy (into `copies`).
    async fn queue_dsn(
        &self,
        a: &Attempt,
        failed: &[Failed],
        now: u64,
        copies: &mut Vec<glommio::Task<()>>,
    ) -> Result<(), ()> {
        let expired_text = format!(
            "the message could not be delivered within {} and expired",
            humantime::format_duration(self.cfg.message_expiration_timeout)
        );
        let reports: Vec<RecipientReport> = failed
            .iter()
            .map(|f| report(a, f, now, &expired_text))
            .collect();
        self.queue_report(a, &reports, now, copies, "bounce").await
    }

    /// Appends a report about `a` to its sender (a new message) and
    /// starts its shadow copy (into `copies`). `kind`: for the log.
    pub(super) async fn queue_report(
        &self,
        a: &Attempt,
        reports: &[RecipientReport<'_>],
        now: u64,
        copies: &mut Vec<glommio::Task<()>>,
        kind: &str,
    ) -> Result<(), ()> {
        let hostname = &self.parts.config.hostname;
        let id = a.id.to_string();
        let content = dsn::build(&Notice {
            reporting_mta: hostname,
            queue_id: &id,
            envelope_from: &a.msg.mail_from,
            arrival_ms: a.msg.received_ms,
            now_ms: now,
            original: &a.msg.message,
            recipients: reports,
            return_content_bytes_max: self.cfg.dsn_return_content_max,
        });
        let enc = Encoder::generated(hostname, &a.msg.mail_from, now, &content);
        let shard = self.shard();
        let what = Announced::Message {
            received_ms: now,
            rcpts: 1,
        };
        let appended = self
            .shard()
            .append(MESSAGE, TimestampMs(now), enc.len(), what, |sequence, w| {
                enc.write(shard.queue_id(sequence), &mut |b| w.put(b))
            })
            .await;
        let sequence: Sequence = appended.map_err(|e| {
            tracing::error!(id = %a.id, error = %e, kind, "cannot queue the report");
        })?;
        CoreMetrics::inc(&self.metrics().dsns_queued);
        let dsn = shard.queue_id(sequence);
        tracing::info!(id = %a.id, dsn = %dsn, to = %a.msg.mail_from, kind, "report queued");
        // SPEC 3: the original is released (`done`) only with its DSN
        // redundant too: the writer waits for this copy before it records
        // the original's status.
        let primary = self.parts.primary.clone();
        let to = a.msg.mail_from.clone();
        copies.push(glommio::spawn_local(async move {
            primary.copy_generated(dsn, &to, &content).await
        }));
        Ok(())
    }
}

/// The delivery log's lines for this attempt's sent, bounced, expired
/// and deferred recipients (`logline`).
fn log_lines(a: &Attempt, s: &Sorted, now: u64) {
    let rcpt = |i: u32| a.msg.recipients[i as usize].as_str();
    let mut items = Vec::new();
    for (i, reply, hop) in &s.delivered {
        items.push(Item {
            rcpt: rcpt(*i),
            status: Verdict::Sent,
            reply,
            hop: Some(hop),
        });
    }
    for f in &s.failed {
        items.push(Item {
            rcpt: rcpt(f.rcpt),
            status: if f.expired {
                Verdict::Expired
            } else {
                Verdict::Bounced
            },
            reply: &f.reply,
            hop: f.host.as_ref(),
        });
    }
    for (i, reply, hop) in &s.temporary {
        items.push(Item {
            rcpt: rcpt(*i),
            status: Verdict::Deferred,
            reply,
            hop: hop.as_ref(),
        });
    }
    let times = Times {
        received_ms: a.msg.received_ms,
        started_ms: a.started_ms,
        now_ms: now,
    };
    logline::log(&a.id, a.attempts, &times, &items);
}

/// The DSN's report of one failed recipient.
fn report<'a>(
    a: &'a Attempt,
    f: &'a Failed,
    now: u64,
    expired_text: &'a str,
) -> RecipientReport<'a> {
    RecipientReport {
        recipient: &a.msg.recipients[f.rcpt as usize],
        action: Action::Failed,
        status: if f.expired {
            Status(5, 4, 7)
        } else {
            f.reply.status.unwrap_or(Status(5, 0, 0))
        },
        remote_mta: f.host.as_deref().map(|h| h.name.as_str()),
        diagnostic: (f.host.is_some() || f.expired).then_some(&f.reply),
        explanation: if f.expired {
            expired_text
        } else if f.host.is_some() {
            "the next hop rejected the recipient"
        } else {
            f.reply
                .lines
                .first()
                .map_or("undeliverable", |s| s.as_ref())
        },
        last_attempt_ms: Some(now),
    }
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
}
