//! Read-only view of a log directory for operator tools (`tern queue
//! list`): no lock, no repair, safe while the owning process runs. It sees
//! what is written at the moment it looks: records are verified one by one
//! and the view ends at the first record that does not verify (a write in
//! progress, or a torn tail the owner will cut when it next opens).
//!
//! Only sealed segments (all but the last) are memory-mapped: the owner
//! never truncates them. The last one may be cut by a restarting owner
//! (recovery truncates its torn tail and preallocates it again) while the
//! view is in use, and touching a mapped page past a truncation is a
//! SIGBUS; so the last segment is copied into memory with one read, and
//! the view over it can never fault.

use std::path::Path;

use bytes::Bytes;

use crate::cursor::{self, LoadedCursors, CURSOR_FILE};
use crate::error::Result;
use crate::log::{map_file, Record, COPY_OVERHEAD};
use crate::record::{HEADER_LEN, PAYLOAD_FORMAT_MAX};
use crate::segment::{self, segment_path, SegmentHeader, DATA_START};
use crate::types::{RecordKind, Sequence};

/// A snapshot of a log directory.
pub struct Inspection {
    records: Vec<(Sequence, Bytes, u64, crate::record::Header)>,
    cursors: std::collections::BTreeMap<String, Sequence>,
}

/// Reads `dir` as it is now.
pub fn inspect(dir: &Path) -> Result<Inspection> {
    let mut firsts = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        if let Some(first) = entry?
            .file_name()
            .to_str()
            .and_then(segment::parse_segment_name)
        {
            firsts.push(first);
        }
    }
    firsts.sort();
    let last = firsts.last().copied();
    let mut records = Vec::new();
    for first in firsts {
        let path = segment_path(dir, first);
        let data = match if Some(first) == last {
            std::fs::read(&path).map(Bytes::from)
        } else {
            map_file(&path)
        } {
            Ok(data) => data,
            // Reclaimed since the listing: its records are gone.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e.into()),
        };
        let Some(header) = SegmentHeader::decode(&data).filter(|h| h.first == first) else {
            continue;
        };
        segment::scan(
            &data,
            header.salt,
            PAYLOAD_FORMAT_MAX,
            DATA_START,
            first,
            |found| {
                records.push((
                    found.header.sequence,
                    data.clone(),
                    found.offset,
                    found.header,
                ));
            },
        );
    }
    let cursors = match std::fs::read(dir.join(CURSOR_FILE)) {
        Ok(bytes) => match cursor::load(Some(&bytes)) {
            LoadedCursors::Found(s) => s.values,
            _ => Default::default(),
        },
        Err(_) => Default::default(),
    };
    Ok(Inspection { records, cursors })
}

impl Inspection {
    /// A cursor's durable value, if recorded.
    pub fn cursor(&self, name: &str) -> Option<Sequence> {
        self.cursors.get(name).copied()
    }

    /// Records with sequence at or after `from`, in order.
    pub fn records_from(&self, from: Sequence) -> impl Iterator<Item = Record> + '_ {
        self.records
            .iter()
            .filter(move |(seq, ..)| *seq >= from)
            .map(|(seq, data, offset, h)| {
                let start = *offset as usize + HEADER_LEN;
                let mut payload = data.slice(start..start + h.payload_len as usize);
                let (mut kind, mut origin) = (h.kind, None);
                if h.kind == RecordKind::FORWARDED && payload.len() >= COPY_OVERHEAD {
                    origin = Some(Sequence(u64::from_le_bytes(
                        payload[..8].try_into().expect("8"),
                    )));
                    kind = RecordKind(payload[8]);
                    payload = payload.slice(COPY_OVERHEAD..);
                }
                Record {
                    sequence: *seq,
                    kind,
                    timestamp: h.timestamp,
                    origin,
                    payload,
                }
            })
    }
}
