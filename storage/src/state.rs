//! In-memory state of an open log, shared by appenders, readers and the
//! flusher of one core (single-threaded: `Rc<RefCell<..>>`, never held
//! across an await).

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::rc::Rc;
use std::task::Waker;

use bytes::Bytes;

use crate::cursor::Snapshot;
use crate::index::Index;
use crate::record::{self, HEADER_LEN};
use crate::segment::{SegmentHeader, BLOCK, DATA_START};
use crate::types::{RecordKind, Sequence, TimestampMs};

/// One segment known to the log.
pub(crate) struct Segment {
    pub header: SegmentHeader,
    pub path: PathBuf,
    /// Read-only map of the whole file.
    pub data: Bytes,
    /// Durable records only.
    pub index: Index,
    /// Offset just past the last durable record.
    pub data_end: u64,
    /// Timestamp of the last durable record (creation time when empty).
    pub last_ts: TimestampMs,
    /// Every block below this offset has been written at least once (with
    /// zeros if not with records): writes there are pure overwrites, whose
    /// fdatasync needs no extent conversion.
    pub zeroed_to: u64,
}

impl Segment {
    /// Sequence after the last durable record of this segment.
    pub fn next_seq(&self) -> Sequence {
        Sequence(self.header.first.0 + self.index.len() as u64)
    }
}

/// Append-only view of one record's payload area in the batch buffer,
/// given to [`crate::Log::append_with`] writers. It cannot touch bytes
/// already in the buffer (acknowledged records share its first block) and
/// cannot write past the announced length.
pub struct PayloadWriter<'a> {
    out: &'a mut Vec<u8>,
    end: usize,
    overflowed: bool,
}

impl PayloadWriter<'_> {
    /// Appends `bytes`. Writing past the announced length is recorded and
    /// makes the append fail (nothing is stored).
    pub fn put(&mut self, bytes: &[u8]) {
        if self.overflowed {
            return;
        }
        if self.out.len() + bytes.len() > self.end {
            // One byte past the end guarantees the length check fails and
            // the whole record is cut back out of the buffer.
            self.out.resize(self.end + 1, 0);
            self.overflowed = true;
            return;
        }
        self.out.extend_from_slice(bytes);
    }

    /// Bytes still expected.
    pub fn remaining(&self) -> usize {
        self.end.saturating_sub(self.out.len())
    }
}

/// A record encoded into a chunk, waiting for its index entry.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Entry {
    pub seq: Sequence,
    pub offset: u64,
    pub at: TimestampMs,
}

/// Bytes to be written at one block-aligned position of one segment.
pub(crate) struct Chunk {
    /// Set when the segment must be created before this chunk is written.
    pub new_segment: Option<SegmentHeader>,
    pub salt: u64,
    /// Block-aligned file offset of `buf[0]`.
    pub file_pos: u64,
    /// Starts with the already-written part of the last partial block
    /// (rewritten identically) followed by new records.
    pub buf: Vec<u8>,
    pub records: Vec<Entry>,
}

impl Chunk {
    /// File offset where the next record goes.
    pub fn end(&self) -> u64 {
        self.file_pos + self.buf.len() as u64
    }

    /// The chunk that continues after this one in the same segment: it
    /// starts with a copy of the partial last block. Its buffer is sized
    /// like this chunk's (a high-water mark), so a steady load does not
    /// regrow it record by record.
    pub fn continuation(&self) -> Chunk {
        let end = self.end();
        let pos = end - end % BLOCK;
        let mut buf = Vec::with_capacity(self.buf.len() + BLOCK as usize);
        buf.extend_from_slice(&self.buf[(pos - self.file_pos) as usize..]);
        Chunk {
            new_segment: None,
            salt: self.salt,
            file_pos: pos,
            buf,
            records: Vec::new(),
        }
    }
}

/// Counters of the durability path, for metrics. Plain numbers since the
/// log opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Group commits (one write + one fdatasync each).
    pub batches: u64,
    /// Records made durable.
    pub records: u64,
    /// Bytes written (block-aligned, including rewritten partial blocks).
    pub bytes_written: u64,
    /// Group commit latency histogram (the batch's write(s) and its
    /// fdatasync, one `LogFile::write_all_sync`): bucket `i` counts commits that took less
    /// than `2^i` microseconds (the last bucket: everything slower).
    pub sync_us_buckets: [u64; SYNC_BUCKETS],
    /// Records per batch histogram: bucket `i` counts batches of less than
    /// `2^i` records (the last bucket: everything larger).
    pub batch_records_buckets: [u64; BATCH_BUCKETS],
}

/// Buckets of [`LogStats::sync_us_buckets`] (1 us .. ~1 s).
pub const SYNC_BUCKETS: usize = 21;
/// Buckets of [`LogStats::batch_records_buckets`] (1 .. 4096 records).
pub const BATCH_BUCKETS: usize = 13;

/// Index of the power-of-two bucket holding `v` ("less than 2^i").
pub fn bucket(v: u64, buckets: usize) -> usize {
    ((u64::BITS - v.leading_zeros()) as usize).min(buckets - 1)
}

/// Mutable state of one log.
pub(crate) struct State<F> {
    pub segments: BTreeMap<Sequence, Segment>,
    /// Writable handle of the last segment in `segments`.
    pub active_file: Rc<F>,
    pub cursor_file: Rc<F>,
    /// Header of the segment new records go to (may not exist yet).
    pub open_segment: SegmentHeader,
    /// Encoded records not yet taken by the flusher; never empty: the back
    /// is the open chunk.
    pub pending: VecDeque<Chunk>,
    pub pending_bytes: usize,
    /// Next sequence to assign.
    pub next_seq: Sequence,
    /// Every sequence below this is durable and indexed.
    pub durable_next: Sequence,
    pub last_ts: TimestampMs,
    /// Cursor values as last set.
    pub cursors: BTreeMap<String, Sequence>,
    /// Bumped by every cursor change.
    pub cursor_version: u64,
    /// `cursor_version` of the values on disk.
    pub durable_cursor_version: u64,
    /// Cursor values on disk; its generation counts slot writes, so the
    /// next write always goes to the other slot.
    pub durable_cursors: Snapshot,
    /// Appenders, cursor setters and back-pressured tasks.
    pub waiters: Vec<Waker>,
    pub flusher: Option<Waker>,
    pub stats: LogStats,
    /// Set by the first I/O error on the durability path; permanent.
    pub failed: Option<String>,
    pub closed: bool,
}

impl<F> State<F> {
    pub fn wake_all(&mut self) {
        for w in self.waiters.drain(..) {
            w.wake();
        }
    }

    pub fn wake_flusher(&mut self) {
        if let Some(w) = self.flusher.take() {
            w.wake();
        }
    }

    pub fn has_work(&self) -> bool {
        self.pending.iter().any(|c| !c.records.is_empty())
            || self.cursor_version != self.durable_cursor_version
    }

    /// Encodes one record into the open chunk, rolling to a new segment
    /// when it would not fit or the segment is too old; `write` appends the
    /// payload knowing its sequence. No I/O, no await; the payload is
    /// written once, into the batch buffer. `None` (and nothing queued,
    /// no sequence used) if `write` did not write exactly `payload_len`.
    pub fn enqueue(
        &mut self,
        limits: (u64, u64),
        kind: RecordKind,
        at: TimestampMs,
        payload_len: usize,
        write: impl FnOnce(Sequence, &mut PayloadWriter<'_>),
    ) -> Option<Sequence> {
        let (segment_bytes_max, segment_age_max_ms) = limits;
        let at = at.max(self.last_ts);
        let frame = (HEADER_LEN + payload_len) as u64;
        let end = self.pending.back().expect("open chunk").end();
        let too_old = at.0
            >= self
                .open_segment
                .created
                .0
                .saturating_add(segment_age_max_ms);
        let not_empty = self.next_seq > self.open_segment.first;
        if end + frame > segment_bytes_max || (too_old && not_empty) {
            let header = SegmentHeader {
                first: self.next_seq,
                salt: rand::random(),
                created: at,
            };
            self.open_segment = header;
            self.pending.push_back(Chunk {
                new_segment: Some(header),
                salt: header.salt,
                file_pos: DATA_START,
                buf: Vec::with_capacity(frame as usize),
                records: Vec::new(),
            });
        }
        let seq = self.next_seq;
        let meta = record::Meta {
            kind,
            sequence: seq,
            timestamp: at,
            durable_before: self.durable_next,
        };
        let chunk = self.pending.back_mut().expect("open chunk");
        let offset = chunk.end();
        let written = record::encode_with(&mut chunk.buf, chunk.salt, meta, payload_len, |out| {
            let end = out.len() + payload_len;
            write(
                seq,
                &mut PayloadWriter {
                    out,
                    end,
                    overflowed: false,
                },
            )
        });
        if !written {
            return None;
        }
        chunk.records.push(Entry { seq, offset, at });
        self.last_ts = at;
        self.next_seq = seq.next();
        self.pending_bytes += frame as usize;
        Some(seq)
    }

    /// Hands every chunk with records to the flusher and leaves a fresh
    /// open chunk continuing the last one.
    pub fn take_batch(&mut self) -> Vec<Chunk> {
        let cont = self.pending.back().expect("open chunk").continuation();
        let batch = self
            .pending
            .drain(..)
            .filter(|c| !c.records.is_empty())
            .collect();
        self.pending.push_back(cont);
        self.pending_bytes = 0;
        // Back-pressured appenders may go on.
        self.wake_all();
        batch
    }
}
