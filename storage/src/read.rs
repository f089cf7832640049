//! Reading durable records: one by sequence (checksums verified) and the
//! iterator over the log.

use crate::env::Env;
use crate::error::{Error, Result};
use crate::log::{Log, Record, COPY_OVERHEAD};
use crate::record::{self, Probe, HEADER_LEN};
use crate::state::Segment;
use crate::types::{RecordKind, Sequence};

/// Decodes and verifies the record `seq` at `offset` of `segment`.
pub(crate) fn read_at(segment: &Segment, offset: u64, seq: Sequence) -> Result<Record> {
    let corrupt = |reason: &'static str| Error::Corruption {
        segment: segment.path.clone(),
        offset,
        reason,
    };
    let bytes = segment
        .data
        .get(offset as usize..)
        .ok_or(corrupt("offset past the end"))?;
    let header = match record::probe(bytes, segment.header.salt, record::PAYLOAD_FORMAT_MAX) {
        Probe::Record(h) if h.sequence == seq => h,
        Probe::Record(_) => return Err(corrupt("index points at another sequence")),
        Probe::End => return Err(corrupt("index points at unwritten space")),
        Probe::Invalid(why) => return Err(corrupt(why.as_str())),
    };
    let start = offset as usize + HEADER_LEN;
    let payload = segment
        .data
        .slice(start..start + header.payload_len as usize);
    let mut rec = Record {
        sequence: seq,
        kind: header.kind,
        timestamp: header.timestamp,
        origin: None,
        payload,
    };
    if header.kind == RecordKind::FORWARDED {
        if rec.payload.len() < COPY_OVERHEAD {
            return Err(corrupt("copied record too short"));
        }
        let origin = u64::from_le_bytes(rec.payload[..8].try_into().expect("8"));
        rec.kind = RecordKind(rec.payload[8]);
        rec.origin = Some(Sequence(origin));
        rec.payload = rec.payload.slice(COPY_OVERHEAD..);
    }
    Ok(rec)
}

/// Iterator over durable records; see [`Log::iter_from`].
pub struct Iter<E: Env> {
    log: Log<E>,
    next: Sequence,
}

impl<E: Env> Iter<E> {
    pub(crate) fn new(log: Log<E>, next: Sequence) -> Iter<E> {
        Iter { log, next }
    }
}

impl<E: Env> Iterator for Iter<E> {
    type Item = Result<Record>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.log.durable_end() {
            return None;
        }
        // Records reclaimed since the iterator was made are skipped.
        self.next = self.next.max(self.log.first_sequence());
        let seq = self.next;
        self.next = seq.next();
        Some(self.log.read(seq))
    }
}
