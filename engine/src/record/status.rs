//! The delivery status record: what happened to queued messages.
//!
//! # Layout
//!
//! Record kind [`STATUS`] (2). One record carries a batch of events (the
//! outcomes collected since the previous one) and, from version 2 on, the
//! replies the attempts got. Integers little endian:
//!
//! ```text
//! { u32 magic = "TNQ1" | u16 version = 2 (1: no replies) | u16 reserved = 0
//! | u32 count
//! | count * { u64 message     (queue sequence: the message record's first
//!                              sequence, kept across copy-forward)
//!            | u8 event      (1 delivered, 2 bounced, 3 deferred, 4 done,
//!                              5 snapshot, 6 held, 7 released, 8 deleted)
//!            | u64 at_ms     (deferred/snapshot: next attempt; else when)
//!            | u32 attempts  (attempts made so far)
//!            | u32 n | n * u32 recipient index }
//! | version 2 only: u32 replies
//! | replies * { u64 message  (as above)
//!              | u64 at_ms    (when the reply came)
//!              | u32 n | n * u32 recipient index
//!              | u16 len | len * u8 text (UTF-8: "HOST said: 451 4.3.0 ...",
//!                                         or tern's own reply) } }
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
//! - A reply ([`Reply`]) changes no state: it is what the operator reads
//!   (`tern queue list/show`: the last reply of each recipient). It is in
//!   the same record as the events of its attempt. The queue in memory
//!   does not keep replies; a snapshot does not repeat them (after a
//!   copy-forward the last reply is known again after the next attempt).
//!
//! Version 1 records (no replies) are read as before; version 2 is
//! written. Limits: at most [`EVENTS_MAX`] events and as many replies per
//! record, 100 000 recipient indexes per event or reply (the message
//! limit), [`REPLY_TEXT_MAX`] bytes of reply text.

use tern_storage::RecordKind;

/// Record kind of a status batch.
pub const STATUS: RecordKind = RecordKind(2);

const MAGIC: &[u8; 4] = b"TNQ1";
/// Written; [`VERSION_1`] is read too.
const VERSION: u16 = 2;
/// Records without replies.
const VERSION_1: u16 = 1;
/// Events per record (a batch is split beyond it).
pub const EVENTS_MAX: usize = 65_536;
const RCPTS_MAX: usize = 100_000;
/// Bytes of one reply's text kept (longer text is cut at a character
/// boundary): a reply line is at most 512 octets (RFC 5321 4.5.3.1.5);
/// this keeps the host's name and two lines.
pub const REPLY_TEXT_MAX: usize = 1024;

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

/// The reply some recipients of a message got in one attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// Queue sequence of the message.
    pub message: u64,
    /// When it came.
    pub at_ms: u64,
    /// Recipient indexes concerned.
    pub rcpts: Vec<u32>,
    /// "HOST said: CODE TEXT", or tern's own reply; at most
    /// [`REPLY_TEXT_MAX`] bytes (see [`Reply::new`]).
    pub text: String,
}

impl Reply {
    /// A reply, its text cut to [`REPLY_TEXT_MAX`] bytes.
    pub fn new(message: u64, at_ms: u64, rcpts: Vec<u32>, mut text: String) -> Reply {
        if text.len() > REPLY_TEXT_MAX {
            let mut cut = REPLY_TEXT_MAX;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
        }
        Reply {
            message,
            at_ms,
            rcpts,
            text,
        }
    }
}

/// Exact encoded size of `events`.
pub fn encoded_len(events: &[StatusEvent]) -> usize {
    encoded_len_with(events, &[])
}

/// Exact encoded size of `events` and `replies`.
pub fn encoded_len_with(events: &[StatusEvent], replies: &[Reply]) -> usize {
    let events_len: usize = events.iter().map(|e| 25 + 4 * e.rcpts.len()).sum();
    let replies_len: usize = replies
        .iter()
        .map(|r| 22 + 4 * r.rcpts.len() + r.text.len())
        .sum();
    16 + events_len + replies_len
}

/// Encodes a batch (at most [`EVENTS_MAX`] events).
pub fn encode(events: &[StatusEvent], out: &mut Vec<u8>) {
    encode_with(events, &[], out)
}

/// Encodes a batch with the attempts' replies (at most [`EVENTS_MAX`]
/// of each; reply texts made by [`Reply::new`]).
pub fn encode_with(events: &[StatusEvent], replies: &[Reply], out: &mut Vec<u8>) {
    debug_assert!(events.len() <= EVENTS_MAX && replies.len() <= EVENTS_MAX);
    out.reserve(encoded_len_with(events, replies));
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&(events.len() as u32).to_le_bytes());
    let put_rcpts = |out: &mut Vec<u8>, rcpts: &[u32]| {
        out.extend_from_slice(&(rcpts.len() as u32).to_le_bytes());
        for r in rcpts {
            out.extend_from_slice(&r.to_le_bytes());
        }
    };
    for e in events {
        out.extend_from_slice(&e.message.to_le_bytes());
        out.push(e.event as u8);
        out.extend_from_slice(&e.at_ms.to_le_bytes());
        out.extend_from_slice(&e.attempts.to_le_bytes());
        put_rcpts(out, &e.rcpts);
    }
    out.extend_from_slice(&(replies.len() as u32).to_le_bytes());
    for r in replies {
        assert!(r.text.len() <= REPLY_TEXT_MAX, "reply text not cut");
        out.extend_from_slice(&r.message.to_le_bytes());
        out.extend_from_slice(&r.at_ms.to_le_bytes());
        put_rcpts(out, &r.rcpts);
        out.extend_from_slice(&(r.text.len() as u16).to_le_bytes());
        out.extend_from_slice(r.text.as_bytes());
    }
}

/// Why a payload is not a status record.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed status record: {0}")]
pub struct Malformed(&'static str);

/// Decodes a batch's events (its replies are checked, not returned).
pub fn decode(payload: &[u8]) -> Result<Vec<StatusEvent>, Malformed> {
    decode_with(payload).map(|(events, _)| events)
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], Malformed> {
        let b = self
            .buf
            .get(self.at..self.at + n)
            .ok_or(Malformed("truncated"))?;
        self.at += n;
        Ok(b)
    }
    fn u16(&mut self) -> Result<u16, Malformed> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2")))
    }
    fn u32(&mut self) -> Result<u32, Malformed> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> Result<u64, Malformed> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn count(&mut self) -> Result<usize, Malformed> {
        let n = self.u32()? as usize;
        if n > EVENTS_MAX {
            return Err(Malformed("too many events"));
        }
        Ok(n)
    }
    fn rcpts(&mut self) -> Result<Vec<u32>, Malformed> {
        let n = self.u32()? as usize;
        if n > RCPTS_MAX {
            return Err(Malformed("too many recipients"));
        }
        let raw = self.take(4 * n)?;
        Ok(raw
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().expect("4")))
            .collect())
    }
}

/// Decodes a batch: its events and (version 2) its replies.
pub fn decode_with(payload: &[u8]) -> Result<(Vec<StatusEvent>, Vec<Reply>), Malformed> {
    let mut r = Reader {
        buf: payload,
        at: 0,
    };
    if r.take(4)? != MAGIC {
        return Err(Malformed("bad magic"));
    }
    let version = r.u16()?;
    if version != VERSION && version != VERSION_1 {
        return Err(Malformed("unknown version"));
    }
    r.take(2)?;
    let count = r.count()?;
    let mut events = Vec::with_capacity(count);
    for _ in 0..count {
        let message = r.u64()?;
        let event = Event::from_u8(r.take(1)?[0]).ok_or(Malformed("unknown event"))?;
        events.push(StatusEvent {
            message,
            event,
            at_ms: r.u64()?,
            attempts: r.u32()?,
            rcpts: r.rcpts()?,
        });
    }
    let mut replies = Vec::new();
    if version == VERSION {
        let count = r.count()?;
        replies.reserve(count);
        for _ in 0..count {
            let (message, at_ms, rcpts) = (r.u64()?, r.u64()?, r.rcpts()?);
            let len = r.u16()? as usize;
            if len > REPLY_TEXT_MAX {
                return Err(Malformed("reply text too long"));
            }
            let text =
                std::str::from_utf8(r.take(len)?).map_err(|_| Malformed("reply text not UTF-8"))?;
            replies.push(Reply {
                message,
                at_ms,
                rcpts,
                text: text.to_owned(),
            });
        }
    }
    if r.at != payload.len() {
        return Err(Malformed("trailing bytes"));
    }
    Ok((events, replies))
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
        let r = Reply::new(0x0102, 9, vec![4], "h said: 451 x".into());
        let mut out = Vec::new();
        encode_with(std::slice::from_ref(&e), std::slice::from_ref(&r), &mut out);
        let want: &[u8] = b"TNQ1\x02\x00\x00\x00\x01\x00\x00\x00\
\x02\x01\x00\x00\x00\x00\x00\x00\x03\x07\x00\x00\x00\x00\x00\x00\x00\
\x03\x00\x00\x00\x02\x00\x00\x00\x01\x00\x00\x00\x04\x00\x00\x00\
\x01\x00\x00\x00\
\x02\x01\x00\x00\x00\x00\x00\x00\x09\x00\x00\x00\x00\x00\x00\x00\
\x01\x00\x00\x00\x04\x00\x00\x00\x0d\x00h said: 451 x";
        assert_eq!(out, want);
        assert_eq!(
            out.len(),
            encoded_len_with(std::slice::from_ref(&e), std::slice::from_ref(&r))
        );
        assert_eq!(decode_with(&out), Ok((vec![e.clone()], vec![r])));
        assert_eq!(decode(&out), Ok(vec![e]));
    }

    #[test]
    fn version_1_is_read() {
        // Written before replies were recorded.
        let v1: &[u8] = b"TNQ1\x01\x00\x00\x00\x01\x00\x00\x00\
\x02\x01\x00\x00\x00\x00\x00\x00\x03\x07\x00\x00\x00\x00\x00\x00\x00\
\x03\x00\x00\x00\x02\x00\x00\x00\x01\x00\x00\x00\x04\x00\x00\x00";
        let (events, replies) = decode_with(v1).unwrap();
        assert_eq!(
            events,
            vec![StatusEvent {
                message: 0x0102,
                event: Event::Deferred,
                at_ms: 7,
                attempts: 3,
                rcpts: vec![1, 4],
            }]
        );
        assert!(replies.is_empty());
        let mut v3 = v1.to_vec();
        v3[4] = 3;
        assert_eq!(decode(&v3), Err(Malformed("unknown version")));
    }

    #[test]
    fn reply_text_is_cut_at_a_character_boundary() {
        let long = "é".repeat(REPLY_TEXT_MAX);
        let r = Reply::new(1, 2, vec![0], long);
        assert_eq!(r.text.len(), REPLY_TEXT_MAX);
        assert!(r.text.chars().all(|c| c == 'é'));
        let r = Reply::new(1, 2, vec![0], format!("x{}", "é".repeat(REPLY_TEXT_MAX)));
        assert_eq!(r.text.len(), REPLY_TEXT_MAX - 1, "no half character");
        let mut out = Vec::new();
        encode_with(&[], std::slice::from_ref(&r), &mut out);
        assert_eq!(decode_with(&out).unwrap().1, vec![r]);
    }

    #[test]
    fn rejects_damage() {
        let mut out = Vec::new();
        encode_with(
            &[StatusEvent {
                message: 1,
                event: Event::Done,
                at_ms: 0,
                attempts: 1,
                rcpts: vec![],
            }],
            &[Reply::new(1, 0, vec![0], "250 ok".into())],
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
        let mut not_utf8 = out.clone();
        let last = not_utf8.len() - 1;
        not_utf8[last] = 0xFF;
        assert_eq!(decode(&not_utf8), Err(Malformed("reply text not UTF-8")));
    }

    proptest! {
        #[test]
        fn round_trip(events in proptest::collection::vec(
            (any::<u64>(), 1u8..=8, any::<u64>(), any::<u32>(), proptest::collection::vec(any::<u32>(), 0..8)), 0..20),
            replies in proptest::collection::vec(
            (any::<u64>(), any::<u64>(), proptest::collection::vec(any::<u32>(), 0..8), ".{0,40}"), 0..5)) {
            let events: Vec<StatusEvent> = events.into_iter().map(|(message, ev, at_ms, attempts, rcpts)| StatusEvent {
                message, event: Event::from_u8(ev).unwrap(), at_ms, attempts, rcpts }).collect();
            let replies: Vec<Reply> = replies.into_iter().map(|(m, at, rcpts, text)| Reply::new(m, at, rcpts, text)).collect();
            let mut out = Vec::new();
            encode_with(&events, &replies, &mut out);
            prop_assert_eq!(out.len(), encoded_len_with(&events, &replies));
            prop_assert_eq!(decode_with(&out).unwrap(), (events, replies));
        }
    }
}
