//! The operator's queue summary on this core: pending recipients grouped
//! by destination, in chunks with a pause between them
//! ([`super::operate::pause`]), without cloning entries.

use std::collections::HashMap;
use std::rc::Rc;

use tern_storage::TimestampMs;

use super::operate::{normal_sender, pause, CHUNK};
use super::queue::Entry;
use super::Delivery;
use crate::ops::command::{DestLine, SummaryFilter};

impl Delivery {
    /// Reads the meta of the entries among `keys` that have none yet.
    pub(super) fn fill_meta(&self, keys: &[u64]) {
        let missing: Vec<(u64, Entry)> = {
            let q = self.queue.borrow();
            keys.iter()
                .filter_map(|k| {
                    q.get(*k)
                        .filter(|e| e.meta.is_none())
                        .map(|e| (*k, e.clone()))
                })
                .collect()
        };
        for (key, entry) in missing {
            self.meta(key, &entry);
        }
    }

    /// This core's part of the summary: one line per destination.
    pub(super) async fn summary(&self, f: &SummaryFilter) -> Vec<DestLine> {
        let now = TimestampMs::now().0;
        let mut lines: HashMap<Rc<str>, DestLine> = HashMap::new();
        let mut targets: HashMap<Rc<str>, Rc<str>> = HashMap::new();
        let sender = f.sender.as_deref().map(normal_sender);
        let domain = f.domain.as_deref().map(str::to_ascii_lowercase);
        let mut here: Vec<(Rc<str>, u64)> = Vec::new();
        let mut from = 0;
        loop {
            let keys = self.queue.borrow().keys_from(from, CHUNK);
            let Some(&last) = keys.last() else { break };
            from = last + 1;
            self.fill_meta(&keys);
            {
                let q = self.queue.borrow();
                for key in keys {
                    let Some(entry) = q.get(key) else { continue };
                    let Some(meta) = &entry.meta else { continue };
                    if f.min_age_ms
                        .is_some_and(|a| now.saturating_sub(entry.received_ms) < a)
                    {
                        continue;
                    }
                    if sender.as_ref().is_some_and(|s| **s != *meta.sender) {
                        continue;
                    }
                    // Per destination: this message's pending recipients.
                    here.clear();
                    for i in (0..entry.rcpts).filter(|&i| !entry.is_final(i)) {
                        let Some(d) = meta.domains.get(i as usize) else {
                            continue;
                        };
                        if domain.as_ref().is_some_and(|x| **x != **d) {
                            continue;
                        }
                        let t = targets
                            .entry(d.clone())
                            .or_insert_with(|| Rc::from(self.target_name(d)));
                        match here.iter_mut().find(|(n, _)| Rc::ptr_eq(n, t)) {
                            Some((_, c)) => *c += 1,
                            None => here.push((t.clone(), 1)),
                        }
                    }
                    for (t, rcpts) in here.drain(..) {
                        let line = lines.entry(t.clone()).or_insert_with(|| DestLine {
                            destination: t.to_string(),
                            ..DestLine::default()
                        });
                        line.messages += 1;
                        line.recipients += rcpts;
                        line.bytes += meta.bytes;
                        line.oldest_age_s = line
                            .oldest_age_s
                            .max(now.saturating_sub(entry.received_ms) / 1000);
                        if entry.held {
                            line.held += 1;
                        } else if entry.in_flight {
                            line.in_flight += 1;
                        } else {
                            line.next_ms =
                                Some(line.next_ms.map_or(entry.next_ms, |n| n.min(entry.next_ms)));
                        }
                    }
                }
            }
            pause().await;
        }
        let errors = self.operate.last_errors.borrow();
        lines
            .into_values()
            .map(|mut l| {
                if let Some((at, e)) = errors.get(&l.destination) {
                    l.last_error = Some(e.clone());
                    l.error_ms = *at;
                }
                l
            })
            .collect()
    }
}
