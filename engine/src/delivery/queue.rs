//! The delivery queue of one core, in memory and sans-IO: which messages
//! are waiting, which recipients are final, when to try next.
//!
//! It is rebuilt at start by replaying the log from the `queue` cursor
//! (message records add entries, status records apply events) and then
//! kept current by the scheduler. The message content stays in the log;
//! an entry is a few dozen bytes plus one bit per recipient
//! ([`ENTRY_BYTES_APPROX`]).

use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use crate::record::status::{Event, StatusEvent};

/// One queued message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Sequence of the record that holds the message now (its queue
    /// sequence, or a later one after copy-forward).
    pub location: u64,
    /// When it was received (unix ms), for expiry.
    pub received_ms: u64,
    /// Next attempt (unix ms); 0 = as soon as possible.
    pub next_ms: u64,
    /// Attempts made.
    pub attempts: u32,
    /// Recipient count.
    pub rcpts: u32,
    /// Bit per recipient: final (delivered or bounced).
    done: Box<[u8]>,
    /// Being delivered now (not in the timer set).
    pub in_flight: bool,
    /// Held by an operator: never due (not in the timer set) until
    /// released.
    pub held: bool,
    /// Sender, recipient domains and size, for the operator's summary and
    /// selections; known once the message was read (first attempt, or
    /// the rebuild at start).
    pub meta: Option<Rc<Meta>>,
    /// Replay only: a copy of this message seen in the log, adopted as its
    /// location when the snapshot written after it is applied (a copy
    /// without its snapshot was interrupted and is ignored). [`NO_COPY`]:
    /// none (a plain u64 keeps the entry small).
    copy: u64,
}

/// [`Entry::copy`] when there is none.
const NO_COPY: u64 = u64::MAX;

/// What the operator's summary and selections need of a message, kept
/// in memory once it was read (strings shared per core).
#[derive(Debug, PartialEq, Eq)]
pub struct Meta {
    /// Envelope sender ("" for the null sender).
    pub sender: Rc<str>,
    /// Lower-case domain of each recipient, by index.
    pub domains: Box<[Rc<str>]>,
    /// Record size (trace header + content).
    pub bytes: u64,
}

/// Approximate memory per queued message beyond its recipient bits:
/// the entry, its B-tree slots in the entry map, the timer set and the
/// location set (checked in a test against `size_of`).
pub const ENTRY_BYTES_APPROX: usize = 160;

impl Entry {
    /// Is recipient `i` final?
    pub fn is_final(&self, i: u32) -> bool {
        self.done
            .get(i as usize / 8)
            .is_some_and(|b| b & (1 << (i % 8)) != 0)
    }

    fn set_final(&mut self, i: u32) {
        if let Some(b) = self.done.get_mut(i as usize / 8) {
            *b |= 1 << (i % 8);
        }
    }

    /// Recipients not yet final.
    pub fn pending(&self) -> Vec<u32> {
        (0..self.rcpts).filter(|&i| !self.is_final(i)).collect()
    }

    /// Recipients already final.
    pub fn finals(&self) -> Vec<u32> {
        (0..self.rcpts).filter(|&i| self.is_final(i)).collect()
    }
}

/// The queue.
#[derive(Debug, Default)]
pub struct Queue {
    entries: BTreeMap<u64, Entry>,
    /// (next_ms, key) of every entry waiting (not in flight).
    timers: BTreeSet<(u64, u64)>,
    /// Every entry's location -> its key, for the cursor.
    locations: BTreeMap<u64, u64>,
    /// Entries held (neither in the timers nor in flight, unless in
    /// flight as well).
    held: usize,
}

impl Queue {
    /// An empty queue.
    pub fn new() -> Queue {
        Queue::default()
    }

    /// Messages queued.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Nothing queued?
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry for queue sequence `key`.
    pub fn get(&self, key: u64) -> Option<&Entry> {
        self.entries.get(&key)
    }

    /// Iterates entries by queue sequence.
    pub fn iter(&self) -> impl Iterator<Item = (&u64, &Entry)> {
        self.entries.iter()
    }

    /// A message record at `location` with queue sequence `key` (equal,
    /// unless it is a copy made by copy-forward). A copy of a message still
    /// queued from its original becomes its location only when the
    /// snapshot that follows the copy is applied; a copy whose original was
    /// already passed starts the entry, and its snapshot restores the state.
    pub fn add(&mut self, key: u64, location: u64, received_ms: u64, rcpts: u32) {
        if let Some(e) = self.entries.get_mut(&key) {
            if location != e.location {
                e.copy = location;
            }
            return;
        }
        let entry = Entry {
            location,
            received_ms,
            next_ms: 0,
            attempts: 0,
            rcpts,
            done: vec![0; (rcpts as usize).div_ceil(8)].into_boxed_slice(),
            in_flight: false,
            held: false,
            meta: None,
            copy: NO_COPY,
        };
        self.timers.insert((0, key));
        self.locations.insert(location, key);
        self.entries.insert(key, entry);
    }

    /// Applies one event (replayed from the log, or just made durable).
    /// Events about unknown messages (already passed) are ignored.
    pub fn apply(&mut self, ev: &StatusEvent) {
        let key = ev.message;
        let Some(e) = self.entries.get_mut(&key) else {
            return;
        };
        match ev.event {
            Event::Delivered | Event::Bounced | Event::Deleted => {
                for &r in &ev.rcpts {
                    e.set_final(r);
                }
                e.attempts = e.attempts.max(ev.attempts);
            }
            Event::Held => {
                if !e.held {
                    if !e.in_flight {
                        self.timers.remove(&(e.next_ms, key));
                    }
                    self.held += 1;
                }
                e.held = true;
            }
            Event::Released => {
                if e.held {
                    self.held -= 1;
                    e.held = false;
                    e.next_ms = ev.at_ms;
                    if !e.in_flight {
                        self.timers.insert((e.next_ms, key));
                    }
                }
            }
            Event::Deferred | Event::Snapshot => {
                if ev.event == Event::Snapshot {
                    e.done.iter_mut().for_each(|b| *b = 0);
                    for &r in &ev.rcpts {
                        e.set_final(r);
                    }
                    let copy = std::mem::replace(&mut e.copy, NO_COPY);
                    if copy != NO_COPY {
                        self.locations.remove(&e.location);
                        e.location = copy;
                        self.locations.insert(copy, key);
                    }
                }
                if !e.in_flight && !e.held {
                    self.timers.remove(&(e.next_ms, key));
                }
                e.next_ms = ev.at_ms;
                e.attempts = ev.attempts;
                e.in_flight = false;
                if !e.held {
                    self.timers.insert((e.next_ms, key));
                }
            }
            Event::Done => {
                if !e.in_flight && !e.held {
                    self.timers.remove(&(e.next_ms, key));
                }
                if e.held {
                    self.held -= 1;
                }
                self.locations.remove(&e.location);
                self.entries.remove(&key);
            }
        }
    }

    /// Earliest next attempt among waiting entries.
    pub fn next_due(&self) -> Option<u64> {
        self.timers.first().map(|&(t, _)| t)
    }

    /// Takes up to `max` entries due at `now_ms`, oldest first, and marks
    /// them in flight.
    pub fn pop_due(&mut self, now_ms: u64, max: usize) -> Vec<u64> {
        let mut out = Vec::new();
        while out.len() < max {
            let Some(&(t, key)) = self.timers.first() else {
                break;
            };
            if t > now_ms {
                break;
            }
            self.timers.pop_first();
            if let Some(e) = self.entries.get_mut(&key) {
                e.in_flight = true;
                out.push(key);
            }
        }
        out
    }

    /// Puts an in-flight entry back without a recorded outcome (e.g. the
    /// attempt was abandoned at shutdown), to be tried at `next_ms`.
    pub fn release(&mut self, key: u64, next_ms: u64) {
        if let Some(e) = self.entries.get_mut(&key) {
            if e.in_flight {
                e.in_flight = false;
                e.next_ms = next_ms;
                if !e.held {
                    self.timers.insert((next_ms, key));
                }
            }
        }
    }

    /// A waiting (not held, not in flight) entry is due at `now_ms`
    /// (retry now); true if it was waiting.
    pub fn retime(&mut self, key: u64, now_ms: u64) -> bool {
        let Some(e) = self.entries.get_mut(&key) else {
            return false;
        };
        if e.in_flight || e.held {
            return false;
        }
        self.timers.remove(&(e.next_ms, key));
        e.next_ms = e.next_ms.min(now_ms);
        self.timers.insert((e.next_ms, key));
        true
    }

    /// Keeps what was read of message `key`.
    pub fn set_meta(&mut self, key: u64, meta: Rc<Meta>) {
        if let Some(e) = self.entries.get_mut(&key) {
            e.meta = Some(meta);
        }
    }

    /// Where the `queue` cursor may go: the oldest record still needed
    /// (the lowest location), or `scanned` (everything read so far) when
    /// nothing is queued.
    pub fn cursor(&self, scanned: u64) -> u64 {
        self.locations
            .first_key_value()
            .map_or(scanned, |(l, _)| *l)
            .min(scanned)
    }

    /// The discard watermark: every message whose key (its first queue
    /// sequence, kept across copy-forward) is below it has been handled.
    /// The lowest key still queued, or `scanned` (nothing read past it)
    /// when nothing is queued.
    pub fn watermark(&self, scanned: u64) -> u64 {
        self.entries
            .first_key_value()
            .map_or(scanned, |(k, _)| *k)
            .min(scanned)
    }

    /// Waiting (not in flight) entries whose record is below `before`,
    /// oldest first, at most `max`: candidates for copy-forward.
    pub fn pinned(&self, before: u64, max: usize) -> Vec<u64> {
        self.locations
            .range(..before)
            .map(|(_, k)| *k)
            .filter(|k| self.entries.get(k).is_some_and(|e| !e.in_flight))
            .take(max)
            .collect()
    }

    /// Takes a waiting entry out of the timers (as if in flight) and
    /// returns it; `None` when it is in flight or gone.
    pub fn hold(&mut self, key: u64) -> Option<Entry> {
        let e = self.entries.get_mut(&key)?;
        if e.in_flight {
            return None;
        }
        if !e.held {
            self.timers.remove(&(e.next_ms, key));
        }
        e.in_flight = true;
        Some(e.clone())
    }

    /// Moves message `key` to its copy at `location`.
    pub fn relocate(&mut self, key: u64, location: u64) {
        if let Some(e) = self.entries.get_mut(&key) {
            self.locations.remove(&e.location);
            e.location = location;
            self.locations.insert(location, key);
        }
    }

    /// The snapshot event that restores `key`'s state after a copy.
    pub fn snapshot(&self, key: u64) -> Option<StatusEvent> {
        let e = self.entries.get(&key)?;
        Some(StatusEvent {
            message: key,
            event: Event::Snapshot,
            at_ms: e.next_ms,
            attempts: e.attempts,
            rcpts: e.finals(),
        })
    }

    /// Entries in flight.
    /// (A held entry in flight counts as held only.)
    pub fn in_flight(&self) -> usize {
        (self.entries.len() - self.timers.len()).saturating_sub(self.held)
    }

    /// Entries held.
    pub fn held(&self) -> usize {
        self.held
    }

    /// Keys from `from` on, at most `max` (operator scans go in chunks).
    pub fn keys_from(&self, from: u64, max: usize) -> Vec<u64> {
        self.entries
            .range(from..)
            .take(max)
            .map(|(k, _)| *k)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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
    fn lifecycle() {
        let mut q = Queue::new();
        q.add(10, 10, 1000, 3);
        q.add(11, 11, 1001, 1);
        assert_eq!(q.cursor(12), 10);
        assert_eq!(q.pop_due(5, 10), vec![10, 11]);
        assert_eq!(q.in_flight(), 2);
        q.apply(&ev(10, Event::Delivered, 0, &[0, 2]));
        q.apply(&ev(10, Event::Deferred, 500, &[]));
        assert_eq!(q.get(10).unwrap().pending(), vec![1]);
        assert_eq!(q.next_due(), Some(500));
        assert!(q.pop_due(499, 10).is_empty());
        q.apply(&ev(11, Event::Delivered, 0, &[0]));
        q.apply(&ev(11, Event::Done, 0, &[]));
        assert_eq!(q.len(), 1);
        assert_eq!(q.cursor(20), 10);
        assert_eq!(q.pop_due(500, 10), vec![10]);
        q.apply(&ev(10, Event::Bounced, 0, &[1]));
        q.apply(&ev(10, Event::Done, 0, &[]));
        assert!(q.is_empty());
        assert_eq!(q.cursor(20), 20);
        // Events about messages no longer queued are ignored.
        q.apply(&ev(10, Event::Deferred, 9, &[]));
        assert!(q.is_empty());
    }

    #[test]
    fn held_entries_are_never_due_until_released() {
        let mut q = Queue::new();
        q.add(1, 1, 0, 2);
        q.add(2, 2, 0, 1);
        q.apply(&ev(1, Event::Held, 0, &[]));
        assert_eq!(q.held(), 1);
        assert_eq!(q.pop_due(u64::MAX, 10), vec![2]);
        assert_eq!(q.in_flight(), 1);
        // A deferral (e.g. replayed) keeps it held; a retry-now too.
        q.apply(&ev(1, Event::Deferred, 5, &[]));
        assert!(!q.retime(1, 0));
        assert!(q.pop_due(u64::MAX, 10).is_empty());
        q.apply(&ev(1, Event::Released, 7, &[]));
        assert_eq!(q.held(), 0);
        assert_eq!(q.next_due(), Some(7));
        assert_eq!(q.pop_due(7, 10), vec![1]);
        // Held while in flight: after its outcome it stays out.
        q.apply(&ev(1, Event::Held, 0, &[]));
        q.apply(&ev(1, Event::Deferred, 9, &[]));
        assert!(q.pop_due(u64::MAX, 10).is_empty());
        q.apply(&ev(1, Event::Deleted, 0, &[0, 1]));
        assert!(q.get(1).unwrap().pending().is_empty());
        q.apply(&ev(1, Event::Done, 0, &[]));
        assert_eq!(q.held(), 0);
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn copy_forward_keeps_state() {
        let mut q = Queue::new();
        q.add(5, 5, 1, 2);
        q.add(6, 6, 1, 1);
        q.pop_due(0, 1);
        q.apply(&ev(5, Event::Delivered, 0, &[1]));
        q.apply(&ev(5, Event::Deferred, 99, &[]));
        assert_eq!(q.pinned(6, 10), vec![5]);
        q.relocate(5, 40);
        let snap = q.snapshot(5).unwrap();
        assert_eq!(q.cursor(50), 6);
        // A replay from the cursor: the copy, then the snapshot.
        let mut r = Queue::new();
        r.add(6, 6, 1, 1);
        r.add(5, 40, 1, 2);
        r.apply(&snap);
        assert_eq!(r.get(5).unwrap().pending(), vec![0]);
        assert_eq!(r.get(5).unwrap().next_ms, 99);
        assert_eq!(r.get(5).unwrap().location, 40);
        assert_eq!(r.cursor(50), 6);
        // Replay with the original still in range: the copy is adopted
        // only with its snapshot.
        let mut r = Queue::new();
        r.add(5, 5, 1, 2);
        r.add(6, 6, 1, 1);
        r.add(5, 40, 1, 2);
        assert_eq!(
            r.get(5).unwrap().location,
            5,
            "copy without snapshot ignored"
        );
        r.apply(&snap);
        assert_eq!(r.get(5).unwrap().location, 40);
        assert_eq!(r.get(5).unwrap().pending(), vec![0]);
    }

    #[test]
    fn entry_memory_is_small() {
        // Entry + key in a B-tree leaf (about 1.5x for fill), a timer pair
        // and a location: well under the 200-byte target.
        let per = (std::mem::size_of::<Entry>() + 8) * 3 / 2 + (16 + 8) * 3 / 2;
        assert!(per <= ENTRY_BYTES_APPROX, "{per}");
        const { assert!(ENTRY_BYTES_APPROX < 200) };
    }

    proptest! {
        /// Rebuilding from the same event sequence gives the same queue,
        /// and the cursor never passes a queued message.
        #[test]
        fn replay_matches_live(ops in proptest::collection::vec((0u64..8, 0u8..4, 0u64..100, 0u32..3), 0..60)) {
            let mut live = Queue::new();
            let mut log: Vec<(u64, Option<StatusEvent>)> = Vec::new();
            let mut next = 1u64;
            for (pick, op, t, r) in ops {
                match op {
                    0 => { live.add(next, next, t, 3); log.push((next, None)); next += 1; }
                    _ => {
                        let keys: Vec<u64> = live.iter().map(|(k, _)| *k).collect();
                        if keys.is_empty() { continue; }
                        let key = keys[(pick as usize) % keys.len()];
                        let event = match (op, t % 3) { (1, _) => Event::Delivered, (2, 0) => Event::Held, (2, 1) => Event::Released, (2, _) => Event::Deferred, _ => Event::Done };
                        let e = StatusEvent { message: key, event, at_ms: t, attempts: 1, rcpts: vec![r] };
                        live.apply(&e);
                        log.push((0, Some(e)));
                    }
                }
            }
            let mut replay = Queue::new();
            for (k, e) in &log {
                match e { None => replay.add(*k, *k, 0, 3), Some(e) => replay.apply(e) }
            }
            let a: Vec<(u64, Vec<u32>, u64, bool)> = live.iter().map(|(k, e)| (*k, e.pending(), e.next_ms, e.held)).collect();
            let b: Vec<(u64, Vec<u32>, u64, bool)> = replay.iter().map(|(k, e)| (*k, e.pending(), e.next_ms, e.held)).collect();
            prop_assert_eq!(live.next_due(), replay.next_due());
            prop_assert_eq!(a, b);
            let c = live.cursor(next);
            prop_assert!(live.iter().all(|(_, e)| e.location >= c));
        }
    }
}
