//! Segment files: naming, the segment header, and walking records.
//!
//! # Layout
//!
//! A segment is one preallocated file named `{first_sequence:020}.seg`.
//! Its first block is the segment header; records (see [`crate::record`])
//! follow back to back from [`DATA_START`]:
//!
//! ```text
//! offset 0:    { u32 magic = "TNS1" | u16 version = 1 | u16 reserved = 0
//!              | u64 first_sequence | u64 salt | u64 created_ms
//!              | u32 header_crc = crc32(bytes 0..32) } zero padding
//! offset 4096: record, record, ..., then zeros up to the preallocated end
//! ```
//!
//! `salt` is random per segment file and is mixed into every record
//! checksum in it. The header is written and fdatasynced, and the directory
//! fsynced, before any record is written to the segment.

use std::path::{Path, PathBuf};

use crate::record::{self, Header, Invalid, Probe};
use crate::types::{Sequence, TimestampMs};

/// Segment header magic ("TNS1").
pub const SEGMENT_MAGIC: u32 = 0x3153_4E54;
/// Segment format version.
pub const SEGMENT_VERSION: u16 = 1;
/// Block size used for alignment: the header occupies one block and every
/// write starts on a block boundary (required by O_DIRECT).
pub const BLOCK: u64 = 4096;
/// Offset of the first record.
pub const DATA_START: u64 = BLOCK;
const HEADER_BYTES: usize = 36;

/// Decoded segment header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Sequence of the first record stored in the segment.
    pub first: Sequence,
    /// Random salt mixed into the checksums of this segment's records.
    pub salt: u64,
    /// When the segment was created.
    pub created: TimestampMs,
}

impl SegmentHeader {
    /// Encodes the header into one zero-padded block.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(BLOCK as usize);
        out.extend_from_slice(&SEGMENT_MAGIC.to_le_bytes());
        out.extend_from_slice(&SEGMENT_VERSION.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&self.first.0.to_le_bytes());
        out.extend_from_slice(&self.salt.to_le_bytes());
        out.extend_from_slice(&self.created.0.to_le_bytes());
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        debug_assert_eq!(out.len(), HEADER_BYTES);
        out.resize(BLOCK as usize, 0);
        out
    }

    /// Decodes and verifies a header; `None` if it does not verify.
    pub fn decode(buf: &[u8]) -> Option<SegmentHeader> {
        let head = buf.get(..HEADER_BYTES)?;
        let word = |at: usize| u64::from_le_bytes(head[at..at + 8].try_into().expect("8"));
        let magic = u32::from_le_bytes(head[0..4].try_into().expect("4"));
        let version = u16::from_le_bytes([head[4], head[5]]);
        let crc = u32::from_le_bytes(head[32..36].try_into().expect("4"));
        if magic != SEGMENT_MAGIC
            || version != SEGMENT_VERSION
            || crc32fast::hash(&head[..32]) != crc
        {
            return None;
        }
        Some(SegmentHeader {
            first: Sequence(word(8)),
            salt: word(16),
            created: TimestampMs(word(24)),
        })
    }
}

/// File name of the segment starting at `first`.
pub fn segment_path(dir: &Path, first: Sequence) -> PathBuf {
    dir.join(format!("{:020}.seg", first.0))
}

/// File name of the index of the segment starting at `first`.
pub fn index_path(dir: &Path, first: Sequence) -> PathBuf {
    dir.join(format!("{:020}.idx", first.0))
}

/// Parses `{first:020}.seg`.
pub fn parse_segment_name(name: &str) -> Option<Sequence> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().map(Sequence)
}

/// One record found by [`scan`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Found {
    /// File offset of the record header.
    pub offset: u64,
    /// The verified header.
    pub header: Header,
}

/// Why a scan stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// Zeros (or the end of the file): the clean end of written data.
    End {
        /// Offset just past the last record.
        offset: u64,
    },
    /// Bytes that are not the expected next record.
    Invalid {
        /// Offset where the bad record starts.
        offset: u64,
        /// What did not verify.
        reason: Invalid,
    },
}

/// Walks fully verified records in `data` (a whole segment file) from
/// `offset`, expecting sequence `next` first. Calls `on_record` for each
/// and returns why it stopped. A record whose sequence is not the expected
/// one stops the scan as `BadHeaderCrc`-like garbage: it can only be stale.
pub fn scan(
    data: &[u8],
    salt: u64,
    payload_max: usize,
    mut offset: u64,
    mut next: Sequence,
    mut on_record: impl FnMut(Found),
) -> Stop {
    loop {
        let Some(rest) = data.get(offset as usize..) else {
            return Stop::End { offset };
        };
        match record::probe(rest, salt, payload_max) {
            Probe::End => return Stop::End { offset },
            Probe::Invalid(reason) => return Stop::Invalid { offset, reason },
            Probe::Record(header) if header.sequence != next => {
                return Stop::Invalid {
                    offset,
                    reason: Invalid::BadHeaderCrc,
                }
            }
            Probe::Record(header) => {
                on_record(Found { offset, header });
                offset += header.frame_len() as u64;
                next = next.next();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::RecordKind;

    #[test]
    fn header_round_trip_and_flips() {
        let h = SegmentHeader {
            first: Sequence(12345),
            salt: 0xdead_beef_cafe,
            created: TimestampMs(99),
        };
        let buf = h.encode();
        assert_eq!(buf.len(), BLOCK as usize);
        assert_eq!(&buf[0..4], b"TNS1");
        assert_eq!(SegmentHeader::decode(&buf), Some(h));
        for bit in 0..HEADER_BYTES * 8 {
            let mut b = buf.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(SegmentHeader::decode(&b), None, "bit {bit}");
        }
    }

    #[test]
    fn names() {
        let dir = Path::new("/x");
        let p = segment_path(dir, Sequence(42));
        assert_eq!(p, Path::new("/x/00000000000000000042.seg"));
        assert_eq!(
            parse_segment_name("00000000000000000042.seg"),
            Some(Sequence(42))
        );
        assert_eq!(parse_segment_name("42.seg"), None);
        assert_eq!(parse_segment_name("00000000000000000042.idx"), None);
        assert_eq!(parse_segment_name("0000000000000000004x.seg"), None);
    }

    #[test]
    fn scan_stops_at_end_and_at_garbage() {
        let mut data = vec![0u8; DATA_START as usize];
        for i in 0..3 {
            let meta = record::Meta {
                kind: RecordKind(1),
                sequence: Sequence(10 + i),
                timestamp: TimestampMs(0),
                durable_before: Sequence(10),
            };
            record::encode(&mut data, 1, meta, &[b"abc"]);
        }
        let end = data.len() as u64;
        data.resize(data.len() + 100, 0);
        let mut seen = vec![];
        let stop = scan(&data, 1, 1024, DATA_START, Sequence(10), |f| {
            seen.push(f.header.sequence)
        });
        assert_eq!(stop, Stop::End { offset: end });
        assert_eq!(seen, vec![Sequence(10), Sequence(11), Sequence(12)]);
        // Wrong expected sequence: the first record is treated as stale.
        let stop = scan(&data, 1, 1024, DATA_START, Sequence(9), |_| {});
        assert!(matches!(stop, Stop::Invalid { offset, .. } if offset == DATA_START));
        data[end as usize] = 1;
        let stop = scan(&data, 1, 1024, DATA_START, Sequence(10), |_| {});
        assert!(matches!(stop, Stop::Invalid { offset, .. } if offset == end));
    }
}
