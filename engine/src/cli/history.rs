//! What the status records say about each recipient of a message: its
//! last reply and, once final, how and when it became final. Gathered
//! while `tern queue` reads the log (`queue.rs`); the server keeps none
//! of this in memory.

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use crate::record::status::{Event, Reply, StatusEvent};

/// How a recipient became final.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Final {
    /// Accepted by a next hop.
    Delivered,
    /// Failed for good (a DSN went to the sender, unless it is null).
    Bounced,
    /// Dropped by an operator (no DSN).
    Deleted,
}

impl Final {
    /// The word `tern queue show` prints.
    pub fn as_str(self) -> &'static str {
        match self {
            Final::Delivered => "delivered",
            Final::Bounced => "bounced",
            Final::Deleted => "deleted",
        }
    }
}

/// One recipient's history.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recipient {
    /// The last reply: when, and "HOST said: CODE TEXT".
    pub reply: Option<(u64, Rc<str>)>,
    /// Final: how, and when.
    pub outcome: Option<(Final, u64)>,
}

/// One message's history.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Message {
    /// By recipient index.
    pub recipients: BTreeMap<u32, Recipient>,
    /// When every recipient was final (its `done` event).
    pub done_ms: Option<u64>,
}

impl Message {
    /// Recipient `i`'s history (empty when the log says nothing of it).
    pub fn recipient(&self, i: u32) -> Recipient {
        self.recipients.get(&i).cloned().unwrap_or_default()
    }
}

/// Histories by queue key.
#[derive(Debug, Default)]
pub struct Histories {
    by_key: HashMap<u64, Message>,
}

impl Histories {
    /// Applies one status record's events and replies; `keep(key)`
    /// says which messages to follow (memory stays bounded by them).
    pub fn note(&mut self, events: &[StatusEvent], replies: &[Reply], keep: impl Fn(u64) -> bool) {
        for e in events.iter().filter(|e| keep(e.message)) {
            let outcome = match e.event {
                Event::Delivered => Final::Delivered,
                Event::Bounced => Final::Bounced,
                Event::Deleted => Final::Deleted,
                Event::Done => {
                    self.by_key.entry(e.message).or_default().done_ms = Some(e.at_ms);
                    continue;
                }
                _ => continue,
            };
            let m = self.by_key.entry(e.message).or_default();
            for &r in &e.rcpts {
                m.recipients.entry(r).or_default().outcome = Some((outcome, e.at_ms));
            }
        }
        for r in replies.iter().filter(|r| keep(r.message)) {
            let text: Rc<str> = r.text.as_str().into();
            let m = self.by_key.entry(r.message).or_default();
            for &i in &r.rcpts {
                m.recipients.entry(i).or_default().reply = Some((r.at_ms, text.clone()));
            }
        }
    }

    /// Stops following `key`.
    pub fn forget(&mut self, key: u64) {
        self.by_key.remove(&key);
    }

    /// Takes `key`'s history (empty when nothing was noted).
    pub fn take(&mut self, key: u64) -> Message {
        self.by_key.remove(&key).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(message: u64, event: Event, at_ms: u64, rcpts: &[u32]) -> StatusEvent {
        StatusEvent {
            message,
            event,
            at_ms,
            attempts: 1,
            rcpts: rcpts.to_vec(),
        }
    }

    #[test]
    fn last_reply_and_final_outcome_per_recipient() {
        let mut h = Histories::default();
        let first = [Reply::new(
            1,
            10,
            vec![0, 1],
            "mx said: 451 4.3.0 later".into(),
        )];
        h.note(&[ev(1, Event::Deferred, 70, &[])], &first, |_| true);
        let second = [
            Reply::new(1, 80, vec![0], "mx said: 250 2.0.0 ok".into()),
            Reply::new(1, 80, vec![1], "mx said: 550 5.1.1 unknown".into()),
            Reply::new(2, 80, vec![0], "ignored".into()),
        ];
        let events = [
            ev(1, Event::Delivered, 80, &[0]),
            ev(1, Event::Bounced, 80, &[1]),
            ev(1, Event::Done, 80, &[]),
        ];
        h.note(&events, &second, |k| k == 1);
        let m = h.take(1);
        assert_eq!(m.done_ms, Some(80));
        let r0 = m.recipient(0);
        assert_eq!(r0.outcome, Some((Final::Delivered, 80)));
        assert_eq!(r0.reply.unwrap().1.as_ref(), "mx said: 250 2.0.0 ok");
        assert_eq!(m.recipient(1).outcome, Some((Final::Bounced, 80)));
        assert_eq!(m.recipient(2), Recipient::default());
        assert_eq!(h.take(2), Message::default(), "not followed");
    }
}
