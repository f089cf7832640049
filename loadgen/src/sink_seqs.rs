//! Sets of sequence numbers, for telling lost and duplicated messages
//! apart: [`SeqSet`], one per run and core (a bitmap for the numbers
//! `send` produces, a hash set beyond), merged at the end; and the
//! [`ExpectTracker`] that `--expect N` shares across cores (one atomic
//! `fetch_or` per new sequence number), so a message that reached two
//! cores counts once.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// `f` of both when both are set, else whichever is (merging optional
/// extremes: highest sequence number, first and last arrival).
pub(super) fn combine<T>(a: Option<T>, b: Option<T>, f: impl FnOnce(T, T) -> T) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(f(a, b)),
        (a, b) => a.or(b),
    }
}

/// Sequence numbers below this are kept in a bitmap (16 MiB at most);
/// larger ones (not produced by `send`, but a stamp may say anything) in a
/// hash set.
pub(super) const DENSE_MAX: u64 = 1 << 27;

/// How many missing sequence numbers the report lists.
pub const LOST_FIRST: usize = 20;

/// A set of sequence numbers.
#[derive(Clone, Debug, Default)]
pub struct SeqSet {
    bits: Vec<u64>,
    sparse: HashSet<u64>,
    len: u64,
    max: Option<u64>,
}

impl SeqSet {
    /// Adds `seq`; false if it was there already.
    pub fn insert(&mut self, seq: u64) -> bool {
        let new = if seq < DENSE_MAX {
            let (word, bit) = ((seq / 64) as usize, seq % 64);
            if word >= self.bits.len() {
                let want = (word + 1)
                    .max(self.bits.len() * 2)
                    .min((DENSE_MAX / 64) as usize);
                self.bits.resize(want, 0);
            }
            let w = &mut self.bits[word];
            let new = *w & (1 << bit) == 0;
            *w |= 1 << bit;
            new
        } else {
            self.sparse.insert(seq)
        };
        if new {
            self.len += 1;
            self.max = Some(self.max.map_or(seq, |m| m.max(seq)));
        }
        new
    }

    /// Distinct sequence numbers.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Highest sequence number seen.
    pub fn max(&self) -> Option<u64> {
        self.max
    }

    /// Adds every member of `other`.
    pub fn merge(&mut self, other: &SeqSet) {
        if self.bits.len() < other.bits.len() {
            self.bits.resize(other.bits.len(), 0);
        }
        let mut len = 0u64;
        for (i, w) in self.bits.iter_mut().enumerate() {
            *w |= other.bits.get(i).copied().unwrap_or(0);
            len += u64::from(w.count_ones());
        }
        self.sparse.extend(other.sparse.iter().copied());
        self.len = len + self.sparse.len() as u64;
        self.max = combine(self.max, other.max, u64::max);
    }

    /// True if `seq` is a member.
    pub fn contains(&self, seq: u64) -> bool {
        if seq < DENSE_MAX {
            let w = self.bits.get((seq / 64) as usize).copied().unwrap_or(0);
            w & (1 << (seq % 64)) != 0
        } else {
            self.sparse.contains(&seq)
        }
    }

    /// Members of `self` that are not in `other`.
    pub fn count_not_in(&self, other: &SeqSet) -> u64 {
        let dense: u64 = self
            .bits
            .iter()
            .enumerate()
            .map(|(i, &w)| u64::from((w & !other.bits.get(i).copied().unwrap_or(0)).count_ones()))
            .sum();
        dense
            + self
                .sparse
                .iter()
                .filter(|s| !other.sparse.contains(s))
                .count() as u64
    }

    /// Sequence numbers missing below the highest seen: how many, and the
    /// first [`LOST_FIRST`] of them.
    pub fn lost(&self) -> (u64, Vec<u64>) {
        self.missing(0, &SeqSet::default())
    }

    /// Sequence numbers in neither `self` nor `excluded`, below
    /// `max(expect, highest member of either + 1)`: how many, and the
    /// first [`LOST_FIRST`] of them.
    pub fn missing(&self, expect: u64, excluded: &SeqSet) -> (u64, Vec<u64>) {
        let top = combine(self.max, excluded.max, u64::max);
        let bound = top.map_or(0, |m| m + 1).max(expect);
        // Every member of either set is below `bound`.
        let count = bound - self.len - excluded.count_not_in(self);
        let mut first = Vec::new();
        let mut seq = 0u64;
        while first.len() < LOST_FIRST && seq < bound && (first.len() as u64) < count {
            if seq < DENSE_MAX {
                let i = (seq / 64) as usize;
                let w = self.bits.get(i).copied().unwrap_or(0)
                    | excluded.bits.get(i).copied().unwrap_or(0);
                if w == u64::MAX && seq.is_multiple_of(64) {
                    seq += 64;
                    continue;
                }
                if w & (1 << (seq % 64)) == 0 {
                    first.push(seq);
                }
            } else if !self.sparse.contains(&seq) && !excluded.sparse.contains(&seq) {
                first.push(seq);
            }
            seq += 1;
        }
        (count, first)
    }
}

/// Bits per lazily allocated chunk of a run's global bitmap (8 KiB).
const CHUNK_BITS: u64 = 1 << 16;

/// Shared by all cores when `--expect N` is given: one bitmap of every
/// sequence number per run (chunks allocated on first use; numbers of
/// `DENSE_MAX` and more in a locked set), set with `fetch_or`, so a
/// message that reached two cores counts once. The run's distinct count
/// reaching N fires, whatever the sequence numbers are.
pub struct ExpectTracker {
    n: u64,
    runs: Mutex<HashMap<u64, Arc<RunBits>>>,
    /// Set when some run has N distinct messages.
    pub reached: AtomicBool,
}

/// The global bitmap of one run.
pub struct RunBits {
    chunks: Box<[OnceLock<Box<[AtomicU64]>>]>,
    sparse: Mutex<HashSet<u64>>,
    count: AtomicU64,
}

impl ExpectTracker {
    /// Expecting `n` messages of one run.
    pub fn new(n: u64) -> ExpectTracker {
        ExpectTracker {
            n,
            runs: Mutex::default(),
            reached: AtomicBool::new(n == 0),
        }
    }

    /// The bitmap of `run` (taken once per run and core).
    pub fn run(&self, run: u64) -> Arc<RunBits> {
        let mut runs = self.runs.lock().expect("expect tracker poisoned");
        runs.entry(run)
            .or_insert_with(|| {
                Arc::new(RunBits {
                    chunks: (0..DENSE_MAX / CHUNK_BITS)
                        .map(|_| OnceLock::new())
                        .collect(),
                    sparse: Mutex::default(),
                    count: AtomicU64::new(0),
                })
            })
            .clone()
    }

    /// `seq` of the run with bitmap `bits` arrived.
    pub fn mark(&self, bits: &RunBits, seq: u64) {
        let new = match bits.chunks.get((seq / CHUNK_BITS) as usize) {
            Some(chunk) => {
                let chunk =
                    chunk.get_or_init(|| (0..CHUNK_BITS / 64).map(|_| AtomicU64::new(0)).collect());
                let word = &chunk[((seq % CHUNK_BITS) / 64) as usize];
                let mask = 1 << (seq % 64);
                word.fetch_or(mask, Ordering::Relaxed) & mask == 0
            }
            None => bits
                .sparse
                .lock()
                .expect("expect tracker poisoned")
                .insert(seq),
        };
        if new && bits.count.fetch_add(1, Ordering::Relaxed) + 1 == self.n {
            self.reached.store(true, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seqset_large_and_sparse() {
        let mut s = SeqSet::default();
        assert!(s.insert(0));
        assert!(s.insert(DENSE_MAX + 5));
        assert!(!s.insert(DENSE_MAX + 5));
        assert_eq!(s.len(), 2);
        let (lost, first) = s.lost();
        assert_eq!(lost, DENSE_MAX + 4);
        assert_eq!(first.len(), LOST_FIRST);
        assert_eq!(first[0], 1);
    }
}
