//! The delivery status record: what happened to queued messages.
//!
//! # Layout
//!
//! Record kind [`STATUS`] (2). One record carries a batch of events (the
//! outcomes collected since the previous one). Integers little endian:
//!
//! ```text
//! { u32 magic = "TNQ1" | u16 version = 1 | u16 reserved = 0 | u32 count
//! | count * { u64 message     (queue sequence: the message record's first
//!                              sequence, kept across copy-forward)
//!            | u8 event      (1 delivered, 2 bounced, 3 deferred, 4 done,
//!                              5 snapshot, 6 held, 7 released, 8 deleted)
//!            | u64 at_ms     (deferred/snapshot: next attempt; else when)
//!            | u32 attempts  (attempts made so far)
//!            | u32 n | n * u32 recipient index } }
//! ```
//!
//! - `delivered` / `bounced`: those recipients are final (bounced: a DSN
//!   was queued first, unless the sender is null).
//! - `deferred`: the message's pending recipients are retried at `at_ms`.
//! - `done`: every recipient is final: the message's discard status. It
//!   leaves the queue (and stays in the Safety Net).
//! - `snapshot`: written right after a copy-forward: the recipients listed
//!   are final, the next attempt is `at_ms`. Replaces earlier state, whose
//!   records the `queue` cursor may now pass. A held message's snapshot
//!   is followed by a `held` event in the same record.
//! - `held`: an operator held the message: never attempted, never
//!   expired, until `released` (whose `at_ms` is the next attempt).
//! - `deleted`: an operator dropped those recipients: final, no DSN.
//!
//! Limits: at most [`EVENTS_MAX`] events per record and 100 000 recipient
//! indexes per event (the message limit).

use tern_storage::RecordKind;

/// Record kind of a status batch.
pub const STATUS: RecordKind = RecordKind(2);

const MAGIC: &[u8; 4] = b"TNQ1";
const VERSION: u16 = 1;
/// Events per record (a batch is split beyond it).
pub const EVENTS_MAX: usize = 65_536;
const RCPTS_MAX: usize = 100_000;

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// Recipients accepted by the next hop.
    Delivered = 1,
    /// Recipients failed permanently (or expired).
    Bounced = 2,
    /// Retry the rest at `at_ms`.
    Deferred = 3,
    /// Every recipient is final (discard status).
    Done = 4,
    /// Full state after a copy-forward.
    Snapshot = 5,
    /// Held by an operator.
    Held = 6,
    /// Released by an operator; the next attempt is `at_ms`.
    Released = 7,
    /// Recipients dropped by an operator (final, no DSN).
    Deleted = 8,
}

impl Event {
    fn from_u8(b: u8) -> Option<Event> {
        Some(match b {
            1 => Event::Delivered,
            2 => Event::Bounced,
            3 => Event::Deferred,
            4 => Event::Done,
            5 => Event::Snapshot,
            6 => Event::Held,
            7 => Event::Released,
            8 => Event::Deleted,
            _ => return None,
        })
    }
}

/// One event about one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusEvent {
    /// Queue sequence of the message.
    pub message: u64,
    /// What happened.
    pub event: Event,
    /// Next attempt (deferred, snapshot) or when it happened.
    pub at_ms: u64,
    /// Attempts made so far.
    pub attempts: u32,
    /// Recipient indexes concerned.
    pub rcpts: Vec<u32>,
}

/// Exact encoded size of `events`.
pub fn encoded_len(events: &[StatusEvent]) -> usize {
    12 + events.iter().map(|e| 25 + 4 * e.rcpts.len()).sum::<usize>()
}

/// Encodes a batch (at most [`EVENTS_MAX`] events).
pub fn encode(events: &[StatusEvent], out: &mut Vec<u8>) {
    debug_assert!(events.len() <= EVENTS_MAX);
    out.reserve(encoded_len(events));
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&(events.len() as u32).to_le_bytes());
    for e in events {
        out.extend_from_slice(&e.message.to_le_bytes());
        out.push(e.event as u8);
        out.extend_from_slice(&e.at_ms.to_le_bytes());
        out.extend_from_slice(&e.attempts.to_le_bytes());
        out.extend_from_slice(&(e.rcpts.len() as u32).to_le_bytes());
        for r in &e.rcpts {
            out.extend_from_slice(&r.to_le_bytes());
        }
    }
}

/// Why a payload is not a status record.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed status record: {0}")]
pub struct Malformed(&'static str);

/// Decodes a batch.
pub fn decode(payload: &[u8]) -> Result<Vec<StatusEvent>, Malformed> {
    let mut at = 0;
    let mut take = |n: usize| -> Result<&[u8], Malformed> {
        let b = payload.get(at..at + n).ok_or(Malformed("truncated"))?;
        at += n;
        Ok(b)
    };
    if take(4)? != MAGIC {
        return Err(Malformed("bad magic"));
    }
    if u16::from_le_bytes(take(2)?.try_into().expect("2")) != VERSION {
        return Err(Malformed("unknown version"));
    }
    take(2)?;
    let count = u32::from_le_bytes(take(4)?.try_into().expect("4")) as usize;
    if count > EVENTS_MAX {
        return Err(Malformed("too many events"));
    }
    let mut events = Vec::with_capacity(count);
    for _ in 0..count {
        let message = u64::from_le_bytes(take(8)?.try_into().expect("8"));
        let event = Event::from_u8(take(1)?[0]).ok_or(Malformed("unknown event"))?;
        let at_ms = u64::from_le_bytes(take(8)?.try_into().expect("8"));
        let attempts = u32::from_le_bytes(take(4)?.try_into().expect("4"));
        let n = u32::from_le_bytes(take(4)?.try_into().expect("4")) as usize;
        if n > RCPTS_MAX {
            return Err(Malformed("too many recipients"));
        }
        let raw = take(4 * n)?;
        let rcpts = raw
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().expect("4")))
            .collect();
        events.push(StatusEvent {
            message,
            event,
            at_ms,
            attempts,
            rcpts,
        });
    }
    if at != payload.len() {
        return Err(Malformed("trailing bytes"));
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn layout_is_pinned() {
        let e = StatusEvent {
            message: 0x0102,
            event: Event::Deferred,
            at_ms: 7,
            attempts: 3,
            rcpts: vec![1, 4],
        };
        let mut out = Vec::new();
        encode(std::slice::from_ref(&e), &mut out);
        let want: &[u8] = b"TNQ1\x01\x00\x00\x00\x01\x00\x00\x00\
\x02\x01\x00\x00\x00\x00\x00\x00\x03\x07\x00\x00\x00\x00\x00\x00\x00\
\x03\x00\x00\x00\x02\x00\x00\x00\x01\x00\x00\x00\x04\x00\x00\x00";
        assert_eq!(out, want);
        assert_eq!(out.len(), encoded_len(std::slice::from_ref(&e)));
        assert_eq!(decode(&out), Ok(vec![e]));
    }

    #[test]
    fn rejects_damage() {
        let mut out = Vec::new();
        encode(
            &[StatusEvent {
                message: 1,
                event: Event::Done,
                at_ms: 0,
                attempts: 1,
                rcpts: vec![],
            }],
            &mut out,
        );
        for cut in 0..out.len() {
            assert!(decode(&out[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = out.clone();
        bad[12 + 8] = 9;
        assert_eq!(decode(&bad), Err(Malformed("unknown event")));
        let mut long = out.clone();
        long.push(0);
        assert_eq!(decode(&long), Err(Malformed("trailing bytes")));
    }

    proptest! {
        #[test]
        fn round_trip(events in proptest::collection::vec(
            (any::<u64>(), 1u8..=8, any::<u64>(), any::<u32>(), proptest::collection::vec(any::<u32>(), 0..8)), 0..20)) {
            let events: Vec<StatusEvent> = events.into_iter().map(|(message, ev, at_ms, attempts, rcpts)| StatusEvent {
                message, event: Event::from_u8(ev).unwrap(), at_ms, attempts, rcpts }).collect();
            let mut out = Vec::new();
            encode(&events, &mut out);
            prop_assert_eq!(out.len(), encoded_len(&events));
            prop_assert_eq!(decode(&out).unwrap(), events);
        }
    }
}
