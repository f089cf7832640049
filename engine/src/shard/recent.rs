//! What the delivery tail needs of records this core just appended, so it
//! need not read them back from disk (with O_DIRECT writes a read-back
//! faults the page in from the device: measured, it halved relay
//! throughput), and the payloads of fresh messages for their first
//! attempt, within a byte budget.

use std::collections::{HashMap, HashSet};

/// What the delivery tail needs of a record this core appended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Announced {
    /// A new message record (not a copy).
    Message {
        /// Arrival (unix ms).
        received_ms: u64,
        /// Recipient count.
        rcpts: u32,
    },
    /// A record delivery ignores when tailing (status records).
    Other,
    /// A shadow copy held for a peer (pins the `shadow` cursor).
    Shadow {
        /// When it was stored (unix ms).
        at_ms: u64,
        /// Who holds the primary copy (node, database id) and its id there.
        origin: (String, String, String),
    },
}

/// Records just appended: their kind and queue facts (until the delivery
/// tail passes them) and message payloads (until delivery takes them,
/// within `max` bytes; past it, delivery reads the log).
#[derive(Debug, Default)]
pub(super) struct Recent {
    payloads: HashMap<u64, bytes::Bytes>,
    announced: HashMap<u64, Announced>,
    /// Messages whose shadow copy is still being made: the delivery tail
    /// stops before them until the outcome is known.
    pub(super) undecided: HashSet<u64>,
    bytes: usize,
    max: usize,
}

impl Recent {
    /// A cache of at most `max` payload bytes.
    pub(super) fn new(max: usize) -> Recent {
        Recent {
            max,
            ..Recent::default()
        }
    }

    pub(super) fn announce(&mut self, seq: u64, what: Announced) {
        self.announced.insert(seq, what);
    }

    pub(super) fn announced(&mut self, seq: u64) -> Option<Announced> {
        self.announced.remove(&seq)
    }

    pub(super) fn has_room(&self, size: usize) -> bool {
        self.bytes + size <= self.max
    }

    pub(super) fn insert(&mut self, seq: u64, payload: bytes::Bytes) {
        if self.has_room(payload.len()) {
            self.bytes += payload.len();
            self.payloads.insert(seq, payload);
        }
    }

    pub(super) fn get(&self, seq: u64) -> Option<bytes::Bytes> {
        self.payloads.get(&seq).cloned()
    }

    pub(super) fn take(&mut self, seq: u64) -> Option<bytes::Bytes> {
        let p = self.payloads.remove(&seq)?;
        self.bytes -= p.len();
        Some(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_stay_within_the_budget() {
        let mut r = Recent::new(10);
        r.insert(1, bytes::Bytes::from_static(b"123456"));
        r.insert(2, bytes::Bytes::from_static(b"123456"));
        assert!(r.take(2).is_none(), "over the budget: not kept");
        assert_eq!(r.take(1).as_deref(), Some(&b"123456"[..]));
        assert!(r.has_room(10));
        r.announce(7, Announced::Other);
        assert_eq!(r.announced(7), Some(Announced::Other));
        assert_eq!(r.announced(7), None, "taken once");
    }
}
