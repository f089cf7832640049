//! Destination suspensions on this core: the check dispatch makes per
//! recipient (the list copied only when its generation changed), and what
//! a suspension's start and end do to waiting jobs and messages.

use tern_storage::TimestampMs;

use super::dispatch::domain_of;
use super::{Delivery, Outcome};
use crate::ops::command::Selector;
use crate::ops::Destination;

impl Delivery {
    /// Is a recipient of `domain` routed to `target` suspended at
    /// `now`? `Some(until)` if so (`None` inside: until resumed).
    pub(super) fn suspended(&self, target: &str, domain: &str, now: u64) -> Option<Option<u64>> {
        let ops = &self.parts.ops;
        let generation = ops.generation();
        if self.operate.suspensions.borrow().0 != generation {
            let list = ops
                .suspensions(0)
                .into_iter()
                .map(|s| (Destination::from_key(&s.destination), s.until_ms))
                .collect();
            *self.operate.suspensions.borrow_mut() = (generation, list);
        }
        let cache = self.operate.suspensions.borrow();
        cache
            .1
            .iter()
            .find(|(d, until)| until.is_none_or(|u| u > now) && d.matches(target, domain))
            .map(|(_, until)| *until)
    }

    /// A suspension began: jobs waiting for a connection to it go back as
    /// suspended (transactions under way finish).
    pub(super) fn on_suspended(&self, d: &Destination) {
        let now = TimestampMs::now().0;
        for dest in self.dispatch.destinations() {
            let mut keep = Vec::new();
            while let Some(mut job) = dest.pop_job() {
                let host = &self.parts.config.hostname;
                let (stopped, go): (Vec<u32>, Vec<u32>) = job.rcpts.iter().partition(|&&i| {
                    let dom = domain_of(&job.attempt.msg.recipients[i as usize], host);
                    d.matches(&dest.name, &dom)
                });
                if stopped.is_empty() {
                    keep.push(job);
                    continue;
                }
                let until = self
                    .parts
                    .ops
                    .suspensions(now)
                    .into_iter()
                    .find(|s| s.destination == d.key())
                    .and_then(|s| s.until_ms);
                let results = stopped
                    .iter()
                    .map(|&i| (i, Outcome::Suspended(until)))
                    .collect();
                if !go.is_empty() {
                    // The job splits in two branches.
                    job.attempt.branches.set(job.attempt.branches.get() + 1);
                    self.branch_done(&job.attempt, results);
                    job.rcpts = go;
                    keep.push(job);
                } else {
                    self.report(job, results);
                }
            }
            for job in keep.into_iter().rev() {
                dest.push_front(job);
            }
        }
    }

    /// A suspension ended: its messages are due now.
    pub(super) async fn on_resumed(&self, d: &Destination) {
        let sel = Selector {
            destination: Some(d.key()),
            ..Selector::default()
        };
        let now = TimestampMs::now().0;
        if let Ok(hits) = self.select(&sel).await {
            let mut q = self.queue.borrow_mut();
            for h in hits {
                q.retime(h.key, now);
            }
        }
        self.shard().notify_appended();
    }
}
