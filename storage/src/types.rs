//! Small newtypes shared by every storage module.

use std::fmt;

/// Position of a record in one log: assigned at append, strictly increasing
/// by one per record. The sequence of an acknowledged record is never
/// reused (the active segment is never deleted, so the next sequence
/// survives reclamation and restarts); sequences of records cut as a torn
/// tail after a crash (never acknowledged) may be.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Sequence(pub u64);

impl Sequence {
    /// The sequence after this one.
    pub fn next(self) -> Sequence {
        Sequence(self.0 + 1)
    }

    /// The raw number.
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Sequence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Milliseconds since the Unix epoch. Passed in by the caller (the clock is
/// injected); the log stores `max(given, previous)` so timestamps never go
/// backwards inside one log and the time index stays searchable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimestampMs(pub u64);

impl TimestampMs {
    /// Wall-clock now, for callers that do not inject a clock.
    pub fn now() -> TimestampMs {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        TimestampMs(since.as_millis() as u64)
    }

    /// `self + ms`, saturating.
    pub fn add_ms(self, ms: u64) -> TimestampMs {
        TimestampMs(self.0.saturating_add(ms))
    }
}

/// What a record holds. The storage layer does not interpret kinds below
/// [`RecordKind::RESERVED_MIN`]; the engine defines them (message, state
/// change, shadow copy, discard status, ...). Kinds from `RESERVED_MIN` up
/// belong to the storage layer itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RecordKind(pub u8);

impl RecordKind {
    /// First kind number reserved for the storage layer.
    pub const RESERVED_MIN: u8 = 0xF0;
    /// A record copied forward to the log head by [`crate::Log::copy_forward`];
    /// never returned to readers (they see the original kind and an `origin`).
    pub(crate) const FORWARDED: RecordKind = RecordKind(0xFF);

    /// True for kinds callers may append.
    pub fn is_user(self) -> bool {
        self.0 != 0 && self.0 < Self::RESERVED_MIN
    }
}

/// Identity of a segment: the sequence of its first record. Segment files
/// are named after it (`{first:020}.seg`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentId(pub Sequence);

impl fmt::Display for SegmentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:020}", self.0 .0)
    }
}
