//! The record format: one CRC-protected frame per appended payload.
//!
//! # Layout
//!
//! All integers little endian. A record is a 44-byte header followed by the
//! payload, with no padding between records:
//!
//! ```text
//! { u32 magic = 0x3152_4E54 ("TNR1")
//! | u8  version = 1
//! | u8  kind            (0 invalid, 0x01..=0xEF engine kinds, 0xF0.. storage)
//! | u16 flags = 0       (reserved; must be 0 in version 1)
//! | u32 payload_len     (<= record_bytes_max when appended)
//! | u64 sequence        (previous + 1 inside one log)
//! | u64 timestamp_ms    (never smaller than the previous record's)
//! | u64 durable_before  (every sequence below this was durable when this
//! |                      record was queued: a durable watermark on disk)
//! | u32 payload_crc     = crc32(segment_salt ++ payload)
//! | u32 header_crc      = crc32(segment_salt ++ header[0..40])
//! } payload[payload_len]
//! ```
//!
//! `durable_before` lets recovery tell a torn tail from damage to
//! acknowledged data without trusting any index: if a record that does not
//! verify is followed by one that does and whose `durable_before` is above
//! the bad record's sequence, the bad record had been durable (and so
//! possibly acknowledged) before the later one was even queued.
//!
//! `segment_salt` is the 8-byte random salt of the segment the record is
//! written in (see [`crate::segment`]). Mixing it into both checksums means
//! bytes left over from another segment file, or from an earlier life of the
//! same file, never verify where they now lie.
//!
//! A header of 44 zero bytes marks the clean end of written data (segments
//! are preallocated, so unwritten space reads as zeros). Anything else that
//! fails to verify is a torn or corrupt record: see [`crate::recovery`].

use crate::types::{RecordKind, Sequence, TimestampMs};

/// Record magic, "TNR1" read as little endian bytes `54 4E 52 31`.
pub const RECORD_MAGIC: u32 = 0x3152_4E54;
/// Current record format version.
pub const RECORD_VERSION: u8 = 1;
/// Bytes of a record header.
pub const HEADER_LEN: usize = 44;
/// Largest payload the format can describe. Reads and recovery accept any
/// record up to this; the configured `record_bytes_max` limits appends only
/// (so lowering it never makes existing records unreadable).
pub const PAYLOAD_FORMAT_MAX: usize = u32::MAX as usize - HEADER_LEN;

/// A decoded, verified record header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// What the payload holds.
    pub kind: RecordKind,
    /// Payload bytes following the header.
    pub payload_len: u32,
    /// Position in the log.
    pub sequence: Sequence,
    /// When it was appended (monotonic inside a log).
    pub timestamp: TimestampMs,
    /// Every sequence below this was durable when the record was queued.
    pub durable_before: Sequence,
    /// Checksum of the payload, salted.
    pub payload_crc: u32,
}

impl Header {
    /// Header plus payload.
    pub fn frame_len(&self) -> usize {
        HEADER_LEN + self.payload_len as usize
    }
}

/// Why bytes at some offset are not a valid record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Invalid {
    /// Fewer bytes than a header or than the announced payload.
    Short,
    /// Magic does not match.
    BadMagic,
    /// Header checksum does not match (torn header, bit flip, stale bytes).
    BadHeaderCrc,
    /// Unknown version or non-zero reserved flags.
    BadVersion,
    /// Length above the configured maximum.
    TooLarge,
    /// Payload checksum does not match.
    BadPayloadCrc,
}

impl Invalid {
    /// Short human description for error messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Invalid::Short => "record extends past the end of the file",
            Invalid::BadMagic => "bad record magic",
            Invalid::BadHeaderCrc => "header checksum mismatch",
            Invalid::BadVersion => "unknown record version or flags",
            Invalid::TooLarge => "record length above the limit",
            Invalid::BadPayloadCrc => "payload checksum mismatch",
        }
    }
}

/// Result of looking at the bytes where a record may start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// A full, verified record.
    Record(Header),
    /// All-zero header: the clean end of written data.
    End,
    /// Something that is not a valid record.
    Invalid(Invalid),
}

fn salted(salt: u64) -> crc32fast::Hasher {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&salt.to_le_bytes());
    hasher
}

/// Salted CRC of a payload.
pub fn payload_crc(salt: u64, payload: &[u8]) -> u32 {
    let mut hasher = salted(salt);
    hasher.update(payload);
    hasher.finalize()
}

/// Header fields chosen by the writer.
#[derive(Clone, Copy, Debug)]
pub struct Meta {
    /// Record kind.
    pub kind: RecordKind,
    /// Its sequence.
    pub sequence: Sequence,
    /// Its timestamp.
    pub timestamp: TimestampMs,
    /// The log's durable point when it was queued.
    pub durable_before: Sequence,
}

/// Appends header and payload to `out`. Asserts (our own invariant) that
/// the frame verifies before it leaves this function.
pub fn encode(out: &mut Vec<u8>, salt: u64, meta: Meta, payload: &[&[u8]]) {
    let payload_len: usize = payload.iter().map(|p| p.len()).sum();
    let ok = encode_with(out, salt, meta, payload_len, |out| {
        for part in payload {
            out.extend_from_slice(part);
        }
    });
    assert!(ok, "parts add up to their own length");
}

/// Like [`encode`], but the payload is written by `write`, which should
/// append exactly `payload_len` bytes. If it appends any other number,
/// `out` is cut back to where it was and `false` is returned: nothing of a
/// bad record is ever left in the batch buffer.
pub fn encode_with(
    out: &mut Vec<u8>,
    salt: u64,
    meta: Meta,
    payload_len: usize,
    write: impl FnOnce(&mut Vec<u8>),
) -> bool {
    let start = out.len();
    out.reserve(HEADER_LEN + payload_len);
    out.extend_from_slice(&RECORD_MAGIC.to_le_bytes());
    out.push(RECORD_VERSION);
    out.push(meta.kind.0);
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&(payload_len as u32).to_le_bytes());
    out.extend_from_slice(&meta.sequence.0.to_le_bytes());
    out.extend_from_slice(&meta.timestamp.0.to_le_bytes());
    out.extend_from_slice(&meta.durable_before.0.to_le_bytes());
    out.extend_from_slice(&[0; 8]); // both checksums, patched below
    write(out);
    if out.len() != start + HEADER_LEN + payload_len {
        out.truncate(start);
        return false;
    }
    let crc = payload_crc(salt, &out[start + HEADER_LEN..]);
    out[start + 36..start + 40].copy_from_slice(&crc.to_le_bytes());
    let mut header_crc = salted(salt);
    header_crc.update(&out[start..start + 40]);
    out[start + 40..start + 44].copy_from_slice(&header_crc.finalize().to_le_bytes());
    debug_assert!(matches!(
        probe(&out[start..], salt, PAYLOAD_FORMAT_MAX),
        Probe::Record(_)
    ));
    true
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(buf: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(buf[at..at + 8].try_into().expect("8 bytes"))
}

/// Decodes and verifies the header at the start of `buf` without looking at
/// the payload. Used to walk the log cheaply; [`probe`] also checks the
/// payload.
pub fn probe_header(buf: &[u8], salt: u64, payload_max: usize) -> Probe {
    if buf.len() < HEADER_LEN {
        return if buf.iter().all(|&b| b == 0) {
            Probe::End
        } else {
            Probe::Invalid(Invalid::Short)
        };
    }
    let head = &buf[..HEADER_LEN];
    if u32_at(head, 0) != RECORD_MAGIC {
        return if head.iter().all(|&b| b == 0) {
            Probe::End
        } else {
            Probe::Invalid(Invalid::BadMagic)
        };
    }
    let mut crc = salted(salt);
    crc.update(&head[..40]);
    if crc.finalize() != u32_at(head, 40) {
        return Probe::Invalid(Invalid::BadHeaderCrc);
    }
    if head[4] != RECORD_VERSION || u16::from_le_bytes([head[6], head[7]]) != 0 {
        return Probe::Invalid(Invalid::BadVersion);
    }
    let header = Header {
        kind: RecordKind(head[5]),
        payload_len: u32_at(head, 8),
        sequence: Sequence(u64_at(head, 12)),
        timestamp: TimestampMs(u64_at(head, 20)),
        durable_before: Sequence(u64_at(head, 28)),
        payload_crc: u32_at(head, 36),
    };
    if header.payload_len as usize > payload_max {
        return Probe::Invalid(Invalid::TooLarge);
    }
    Probe::Record(header)
}

/// Decodes and fully verifies (header and payload) the record at the start
/// of `buf`.
pub fn probe(buf: &[u8], salt: u64, payload_max: usize) -> Probe {
    match probe_header(buf, salt, payload_max) {
        Probe::Record(header) => {
            let Some(payload) = buf.get(HEADER_LEN..header.frame_len()) else {
                return Probe::Invalid(Invalid::Short);
            };
            if payload_crc(salt, payload) != header.payload_crc {
                return Probe::Invalid(Invalid::BadPayloadCrc);
            }
            Probe::Record(header)
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> Meta {
        Meta {
            kind: RecordKind(7),
            sequence: Sequence(42),
            timestamp: TimestampMs(1_700_000_000_123),
            durable_before: Sequence(40),
        }
    }

    fn one(salt: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode(&mut out, salt, meta(), &[payload]);
        out
    }

    #[test]
    fn round_trip() {
        for payload in [&b""[..], b"x", &[0u8; 1000], b"hello world"] {
            let buf = one(9, payload);
            assert_eq!(buf.len(), HEADER_LEN + payload.len());
            let Probe::Record(h) = probe(&buf, 9, 1 << 20) else {
                panic!("does not verify")
            };
            assert_eq!(h.kind, RecordKind(7));
            assert_eq!(h.sequence, Sequence(42));
            assert_eq!(h.timestamp, TimestampMs(1_700_000_000_123));
            assert_eq!(&buf[HEADER_LEN..], payload);
        }
    }

    #[test]
    fn layout_is_as_documented() {
        let buf = one(1, b"ab");
        assert_eq!(&buf[0..4], b"TNR1");
        assert_eq!(buf[4], RECORD_VERSION);
        assert_eq!(buf[5], 7);
        assert_eq!(&buf[6..8], &[0, 0]);
        assert_eq!(&buf[8..12], &2u32.to_le_bytes());
        assert_eq!(&buf[12..20], &42u64.to_le_bytes());
        assert_eq!(&buf[20..28], &1_700_000_000_123u64.to_le_bytes());
        assert_eq!(&buf[28..36], &40u64.to_le_bytes());
        assert_eq!(&buf[36..40], &payload_crc(1, b"ab").to_le_bytes());
        assert_eq!(&buf[44..], b"ab");
    }

    #[test]
    fn table_of_invalid_inputs() {
        let good = one(5, b"payload");
        let mut bad_magic = good.clone();
        bad_magic[0] ^= 1;
        let mut bad_version = good.clone();
        bad_version[4] = 2;
        let mut bad_len = good.clone();
        bad_len[8] ^= 0x40;
        let mut bad_payload = good.clone();
        *bad_payload.last_mut().unwrap() ^= 0x80;
        let cases: Vec<(&str, Vec<u8>, u64, Probe)> = vec![
            ("empty", vec![], 5, Probe::End),
            ("zeros", vec![0; 64], 5, Probe::End),
            (
                "short header",
                good[..20].to_vec(),
                5,
                Probe::Invalid(Invalid::Short),
            ),
            (
                "short payload",
                good[..good.len() - 1].to_vec(),
                5,
                Probe::Invalid(Invalid::Short),
            ),
            ("magic", bad_magic, 5, Probe::Invalid(Invalid::BadMagic)),
            // Version is under the header checksum: a flip is a crc error.
            (
                "version",
                bad_version,
                5,
                Probe::Invalid(Invalid::BadHeaderCrc),
            ),
            ("length", bad_len, 5, Probe::Invalid(Invalid::BadHeaderCrc)),
            (
                "payload",
                bad_payload,
                5,
                Probe::Invalid(Invalid::BadPayloadCrc),
            ),
            (
                "other segment salt",
                good.clone(),
                6,
                Probe::Invalid(Invalid::BadHeaderCrc),
            ),
        ];
        for (name, buf, salt, want) in cases {
            assert_eq!(probe(&buf, salt, 1 << 20), want, "case {name}");
        }
        assert_eq!(probe(&good, 5, 3), Probe::Invalid(Invalid::TooLarge));
    }

    #[test]
    fn encode_with_refuses_a_wrong_length_and_leaves_nothing() {
        let mut out = b"prefix".to_vec();
        assert!(!encode_with(&mut out, 1, meta(), 4, |o| o.extend_from_slice(b"abc")));
        assert!(!encode_with(&mut out, 1, meta(), 4, |o| o.extend_from_slice(b"abcde")));
        assert_eq!(out, b"prefix");
        assert!(encode_with(&mut out, 1, meta(), 4, |o| o.extend_from_slice(b"abcd")));
        assert!(matches!(probe(&out[6..], 1, 4), Probe::Record(_)));
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let good = one(77, b"some payload bytes");
        for bit in 0..good.len() * 8 {
            let mut buf = good.clone();
            buf[bit / 8] ^= 1 << (bit % 8);
            assert!(
                !matches!(probe(&buf, 77, 1 << 20), Probe::Record(_)),
                "flip of bit {bit} not detected"
            );
        }
    }
}
