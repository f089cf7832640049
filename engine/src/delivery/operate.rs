//! Operator requests on this core's queue, from the admin thread through
//! the core's channel (`crate::ops`): the summary per destination, retry
//! now, hold / release, bounce / delete, and the start and end of a
//! destination's suspension.
//!
//! Durable before answered: hold and release are status events
//! (`held`, `released`); bounce and delete are recorded as an attempt of
//! their own through the writer's [`Delivery::record`] (bounced
//! recipients with a DSN, deleted ones without). A message in the middle
//! of an attempt is acted on when that attempt is recorded
//! ([`Delivery::apply_pending`]). Retry now changes only the in-memory
//! schedule: a restart makes every due message due anyway.
//!
//! Scans of the queue go in chunks of [`CHUNK`] entries, pausing for the
//! core's other tasks in between, so a large queue does not stall
//! acceptance.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use tern_smtp::{Reply, Status};
use tern_storage::{Sequence, TimestampMs};

use super::dispatch::domain_of;
use super::queue::{Entry, Meta};
use super::{Attempt, Delivery, Outcome};
use crate::ops::command::{Acted, Action, Answer, Command, Selector};
use crate::ops::Destination;
use crate::record::message::{QueueId, StoredMessage};
use crate::record::status::{Event, StatusEvent};

/// Entries looked at between two yields.
pub(super) const CHUNK: usize = 1024;
/// Destinations whose last error is remembered.
const LAST_ERRORS_MAX: usize = 10_000;

/// Suspended destinations and when each suspension ends.
type Suspended = Vec<(Destination, Option<u64>)>;

/// An action waiting for the end of a message's attempt.
#[derive(Clone, Debug)]
enum Pending {
    Hold,
    Bounce(Reply, Option<Vec<u32>>),
    Delete(Option<Vec<u32>>),
}

/// This core's operator state.
#[derive(Default)]
pub(super) struct CoreOps {
    /// Actions on messages in flight, by queue key.
    pending: RefCell<HashMap<u64, Vec<Pending>>>,
    /// The suspensions in force, as of generation `.0`.
    pub(super) suspensions: RefCell<(u64, Suspended)>,
    /// Per destination: when and what went wrong last.
    pub(super) last_errors: RefCell<HashMap<String, (u64, String)>>,
    /// Senders and domains of queued messages, shared.
    strings: RefCell<HashSet<Rc<str>>>,
}

impl CoreOps {
    fn intern(&self, s: &str) -> Rc<str> {
        let mut set = self.strings.borrow_mut();
        if let Some(r) = set.get(s) {
            return r.clone();
        }
        let r: Rc<str> = Rc::from(s);
        set.insert(r.clone());
        r
    }

    /// Forgets strings no queued message uses (maintenance).
    pub(super) fn prune(&self) {
        self.strings
            .borrow_mut()
            .retain(|s| Rc::strong_count(s) > 1);
        let mut e = self.last_errors.borrow_mut();
        if e.len() > LAST_ERRORS_MAX {
            let mut by_age: Vec<(u64, String)> = e.iter().map(|(k, v)| (v.0, k.clone())).collect();
            by_age.sort();
            for (_, k) in by_age.iter().take(e.len() - LAST_ERRORS_MAX) {
                e.remove(k);
            }
        }
    }

    /// A job for `dest` came back with `results`: keeps the first error.
    pub(super) fn note_error(&self, dest: &str, results: &[(u32, Outcome)]) {
        let reply = results.iter().find_map(|(_, o)| match o {
            Outcome::Temporary(r, _) | Outcome::Permanent(r, _) => Some(r),
            _ => None,
        });
        if let Some(r) = reply {
            let text = format!("{} {}", r.code, r.text());
            let now = TimestampMs::now().0;
            self.last_errors
                .borrow_mut()
                .insert(dest.to_owned(), (now, text));
        }
    }
}

/// What a selection found in one message.
pub(super) struct Hit {
    pub(super) key: u64,
    /// The recipients concerned (`None`: every pending one).
    rcpts: Option<Vec<u32>>,
    in_flight: bool,
}

impl Delivery {
    /// What the operator's summary and selections keep of `msg`.
    pub(super) fn meta_for(&self, msg: &StoredMessage) -> Rc<Meta> {
        let ops = &self.operate;
        let host = &self.parts.config.hostname;
        Rc::new(Meta {
            sender: ops.intern(&msg.mail_from.to_ascii_lowercase()),
            domains: msg
                .recipients
                .iter()
                .map(|r| ops.intern(&domain_of(r, host)))
                .collect(),
            bytes: msg.message.len() as u64,
        })
    }

    /// The entry's meta, reading the message when it was never read.
    pub(super) fn meta(&self, key: u64, entry: &Entry) -> Option<Rc<Meta>> {
        if let Some(m) = &entry.meta {
            return Some(m.clone());
        }
        let msg = self.peek_message(entry).ok()?;
        let meta = self.meta_for(&msg);
        self.queue.borrow_mut().set_meta(key, meta.clone());
        Some(meta)
    }

    /// The queued message, leaving the fresh-payload cache as it is.
    pub(super) fn peek_message(&self, entry: &Entry) -> Result<StoredMessage, String> {
        self.read_message(entry, false)
    }

    /// Serves operator requests until delivery stops.
    pub(super) async fn operator(self: Rc<Self>) {
        let rx = self.parts.ops.receiver(self.shard().id as usize);
        loop {
            let stop = self.stopping.event.listen();
            if self.is_stopping() {
                return;
            }
            let next = futures_lite::future::or(async { rx.recv().await.ok() }, async {
                stop.await;
                None
            })
            .await;
            let Some(req) = next else { return };
            let answer = match req.command.clone() {
                Command::Summary(f) => Answer::Summary(self.summary(&f).await),
                Command::Act {
                    action,
                    selector,
                    reason,
                    dry_run,
                    by,
                } => match self.act(action, &selector, reason, dry_run, &by).await {
                    Ok(a) => Answer::Acted(a),
                    Err(e) => Answer::Failed(e),
                },
                Command::Suspended { destination } => {
                    self.on_suspended(&Destination::from_key(&destination));
                    Answer::Done
                }
                Command::Resumed { destination } => {
                    self.on_resumed(&Destination::from_key(&destination)).await;
                    Answer::Done
                }
                Command::Resubmit { id } => {
                    glommio::spawn_local(self.clone().resubmit(id)).detach();
                    Answer::Done
                }
            };
            req.answer(answer);
        }
    }

    /// The queued messages `sel` names, with the recipients concerned.
    pub(super) async fn select(&self, sel: &Selector) -> Result<Vec<Hit>, String> {
        let ops = &self.parts.ops;
        let dest = sel
            .destination
            .as_deref()
            .map(|d| ops.destination(d))
            .transpose()?;
        let sender = sel.sender.as_deref().map(normal_sender);
        let rcpt = sel.recipient.as_deref().map(str::to_ascii_lowercase);
        let rcpt_domain = rcpt
            .as_deref()
            .map(|r| domain_of(r, &self.parts.config.hostname));
        let keys: Vec<u64> = match &sel.id {
            Some(id) => {
                let id = QueueId::parse(id, self.shard().store)?;
                if id.store != self.shard().store || id.shard != self.shard().id {
                    return Ok(Vec::new());
                }
                vec![id.sequence.0]
            }
            None => Vec::new(),
        };
        let by_id = sel.id.is_some();
        let mut targets: HashMap<Rc<str>, String> = HashMap::new();
        let mut hits = Vec::new();
        let mut from = 0;
        loop {
            let chunk = if by_id {
                if from > 0 {
                    break;
                }
                from = 1;
                keys.clone()
            } else {
                let k = self.queue.borrow().keys_from(from, CHUNK);
                let Some(&last) = k.last() else { break };
                from = last + 1;
                k
            };
            for key in chunk {
                let Some(entry) = self.queue.borrow().get(key).cloned() else {
                    continue;
                };
                let needs_meta = sender.is_some() || dest.is_some() || rcpt.is_some();
                let meta = if needs_meta {
                    match self.meta(key, &entry) {
                        Some(m) => Some(m),
                        None => continue,
                    }
                } else {
                    None
                };
                if let (Some(s), Some(m)) = (&sender, &meta) {
                    if **s != *m.sender {
                        continue;
                    }
                }
                let mut rcpts: Vec<u32> = entry.pending();
                if let (Some(d), Some(m)) = (&dest, &meta) {
                    rcpts.retain(|&i| {
                        m.domains.get(i as usize).is_some_and(|dom| {
                            let t = targets
                                .entry(dom.clone())
                                .or_insert_with(|| self.target_name(dom));
                            d.matches(t, dom)
                        })
                    });
                }
                if let (Some(r), Some(rd), Some(m)) = (&rcpt, &rcpt_domain, &meta) {
                    rcpts.retain(|&i| m.domains.get(i as usize).is_some_and(|d| **d == **rd));
                    if !rcpts.is_empty() {
                        let Ok(msg) = self.peek_message(&entry) else {
                            continue;
                        };
                        rcpts.retain(|&i| {
                            msg.recipients
                                .get(i as usize)
                                .is_some_and(|x| x.eq_ignore_ascii_case(r))
                        });
                    }
                }
                if rcpts.is_empty() {
                    continue;
                }
                hits.push(Hit {
                    key,
                    rcpts: sel.narrows_recipients().then_some(rcpts),
                    in_flight: entry.in_flight,
                });
            }
            pause().await;
        }
        Ok(hits)
    }

    /// One queue action on this core.
    async fn act(
        &self,
        action: Action,
        sel: &Selector,
        reason: Option<String>,
        dry_run: bool,
        by: &str,
    ) -> Result<Acted, String> {
        let hits = self.select(sel).await?;
        let shard = self.shard().id;
        let id = |key: u64| self.shard().queue_id(Sequence(key)).to_string();
        let mut acted = Acted {
            matched: hits.len() as u64,
            in_flight: hits.iter().filter(|h| h.in_flight).count() as u64,
            messages: hits.iter().map(|h| id(h.key)).collect(),
        };
        if dry_run || hits.is_empty() {
            return Ok(acted);
        }
        let now = TimestampMs::now().0;
        match action {
            Action::Flush => {
                let mut q = self.queue.borrow_mut();
                let flushed = hits.iter().filter(|h| q.retime(h.key, now)).count();
                drop(q);
                acted.in_flight = (hits.len() - flushed) as u64;
                self.clear_backoff(sel);
                self.shard().notify_appended();
            }
            Action::Hold | Action::Release => {
                let (event, wanted) = match action {
                    Action::Hold => (Event::Held, false),
                    _ => (Event::Released, true),
                };
                let mut events = Vec::new();
                for h in &hits {
                    let q = self.queue.borrow();
                    let Some(e) = q.get(h.key) else { continue };
                    if e.held != wanted {
                        continue;
                    }
                    if action == Action::Hold && e.in_flight {
                        drop(q);
                        self.add_pending(h.key, Pending::Hold);
                        continue;
                    }
                    events.push(StatusEvent {
                        message: h.key,
                        event,
                        at_ms: now,
                        attempts: e.attempts,
                        rcpts: Vec::new(),
                    });
                }
                if !events.is_empty() {
                    self.shard()
                        .append_status(&events)
                        .await
                        .map_err(|e| format!("cannot record it: {e}"))?;
                    let mut q = self.queue.borrow_mut();
                    for e in &events {
                        q.apply(e);
                    }
                }
                self.shard().notify_appended();
            }
            Action::Bounce | Action::Delete => {
                let text = match &reason {
                    Some(r) => format!("bounced by the operator: {r}"),
                    None => "bounced by the operator".to_owned(),
                };
                let reply = Reply::new(550, Status(5, 0, 0), text);
                let mut batch = Vec::new();
                for h in hits {
                    let outcome = match action {
                        Action::Bounce => Outcome::Permanent(reply.clone(), None),
                        _ => Outcome::Deleted,
                    };
                    if let Some(a) = self.operator_attempt(h.key, h.rcpts.as_deref(), &outcome) {
                        batch.push(Rc::new(a));
                        continue;
                    }
                    // In flight now (the selection may be a moment old):
                    // acted on when its attempt is recorded.
                    let busy = self.queue.borrow().get(h.key).is_some_and(|e| e.in_flight);
                    if busy {
                        let p = match action {
                            Action::Bounce => Pending::Bounce(reply.clone(), h.rcpts),
                            _ => Pending::Delete(h.rcpts),
                        };
                        self.add_pending(h.key, p);
                    }
                }
                if !batch.is_empty() {
                    self.record(&batch).await;
                    // Not recorded (the log failed): the writer put them
                    // back; say so.
                    let left = batch
                        .iter()
                        .filter(|a| {
                            self.queue.borrow().get(a.key).is_some_and(|e| {
                                e.pending().iter().any(|i| {
                                    a.results
                                        .borrow()
                                        .iter()
                                        .any(|(j, o)| j == i && !matches!(o, Outcome::Untouched))
                                })
                            })
                        })
                        .count();
                    if left > 0 {
                        return Err(format!("{left} message(s) could not be recorded"));
                    }
                    self.shard().notify_appended();
                }
            }
        }
        tracing::info!(
            shard,
            action = action.as_str(),
            by,
            matched = acted.matched,
            in_flight = acted.in_flight,
            "operator action"
        );
        Ok(acted)
    }

    /// An attempt of its own for an operator's bounce or delete of
    /// message `key` (`rcpts`: those recipients, else every pending one);
    /// `None` when it is gone or in flight.
    fn operator_attempt(
        &self,
        key: u64,
        rcpts: Option<&[u32]>,
        outcome: &Outcome,
    ) -> Option<Attempt> {
        let entry = self.queue.borrow_mut().hold(key)?;
        let msg = match self.peek_message(&entry) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(key, error = %e, "cannot read the message to act on it");
                self.queue.borrow_mut().release(key, entry.next_ms);
                return None;
            }
        };
        let pending = entry.pending();
        let results = pending
            .iter()
            .map(|&i| match rcpts {
                Some(r) if !r.contains(&i) => (i, Outcome::Untouched),
                _ => (i, outcome.clone()),
            })
            .collect();
        Some(Attempt {
            key,
            id: self.shard().queue_id(Sequence(key)),
            msg,
            attempts: entry.attempts,
            started_ms: TimestampMs::now().0,
            due_ms: entry.next_ms,
            branches: std::cell::Cell::new(0),
            results: RefCell::new(results),
            rcpts: pending,
            closed: std::cell::Cell::new(true),
            operator: Some(entry.next_ms),
        })
    }

    fn add_pending(&self, key: u64, p: Pending) {
        self.operate
            .pending
            .borrow_mut()
            .entry(key)
            .or_default()
            .push(p);
    }

    /// Applies what an operator asked while `a` was in flight: bounce or
    /// delete turn its unfinished recipients' outcomes; true when the
    /// message is to be held after it.
    pub(super) fn apply_pending(&self, a: &Attempt) -> bool {
        if a.operator.is_some() {
            return false;
        }
        let Some(list) = self.operate.pending.borrow_mut().remove(&a.key) else {
            return false;
        };
        let mut hold = false;
        let mut results = a.results.borrow_mut();
        for p in list {
            let (rcpts, outcome) = match p {
                Pending::Hold => {
                    hold = true;
                    continue;
                }
                Pending::Bounce(reply, rcpts) => (rcpts, Outcome::Permanent(reply, None)),
                Pending::Delete(rcpts) => (rcpts, Outcome::Deleted),
            };
            for (i, o) in results.iter_mut() {
                let open = matches!(
                    o,
                    Outcome::Temporary(..) | Outcome::NotTried | Outcome::Suspended(_)
                );
                if open && rcpts.as_ref().is_none_or(|r| r.contains(i)) {
                    *o = outcome.clone();
                }
            }
        }
        hold
    }

    /// Retry now clears the host-down backoff: of the selected
    /// destination's hosts, or of every host.
    fn clear_backoff(&self, sel: &Selector) {
        let mut health = self.hosts.health.borrow_mut();
        let Some(d) = &sel.destination else {
            if sel.id.is_none() && sel.sender.is_none() && sel.recipient.is_none() {
                health.clear();
            }
            return;
        };
        let Ok(d) = self.parts.ops.destination(d) else {
            return;
        };
        let name = match &d {
            Destination::Target(t) => t.clone(),
            Destination::Domain(dom) => self.target_name(dom),
        };
        for addr in self.hosts_of(&name) {
            health.mark_up(&addr);
        }
    }
}

/// Lets the core's other tasks and its I/O run between two chunks of an
/// operator's scan. (`glommio::yield_if_needed` yields only once the task
/// queue's time slice is over, measured at whole scans of a large
/// queue; a short timer sends the task through the reactor.)
pub(super) async fn pause() {
    glommio::timer::sleep(std::time::Duration::from_micros(20)).await;
}

/// A sender as the selections compare it.
pub(super) fn normal_sender(s: &str) -> String {
    let s = s.trim();
    if s == "<>" {
        String::new()
    } else {
        s.trim_start_matches('<')
            .trim_end_matches('>')
            .to_ascii_lowercase()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn senders_compare_without_brackets_and_case() {
        assert_eq!(normal_sender("<>"), "");
        assert_eq!(normal_sender("<A@X.org>"), "a@x.org");
        assert_eq!(normal_sender(" a@x.org "), "a@x.org");
    }
}
