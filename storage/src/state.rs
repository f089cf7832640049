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
}

impl Segment {
    /// Sequence after the last durable record of this segment.
    pub fn next_seq(&self) -> Sequence {
        Sequence(self.header.first.0 + self.index.len() as u64)
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
    /// starts with a copy of the partial last block.
    pub fn continuation(&self) -> Chunk {
        let end = self.end();
        let pos = end - end % BLOCK;
        Chunk {
            new_segment: None,
            salt: self.salt,
            file_pos: pos,
            buf: self.buf[(pos - self.file_pos) as usize..].to_vec(),
            records: Vec::new(),
        }
    }
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
    /// payload (exactly `payload_len` bytes) knowing its sequence. No I/O,
    /// no await; the payload is written once, into the batch buffer.
    pub fn enqueue(
        &mut self,
        limits: (u64, u64),
        kind: RecordKind,
        at: TimestampMs,
        payload_len: usize,
        write: impl FnOnce(Sequence, &mut Vec<u8>),
    ) -> Sequence {
        let (segment_bytes_max, segment_age_max_ms) = limits;
        let at = at.max(self.last_ts);
        self.last_ts = at;
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
                buf: Vec::new(),
                records: Vec::new(),
            });
        }
        let seq = self.next_seq;
        let chunk = self.pending.back_mut().expect("open chunk");
        let offset = chunk.end();
        record::encode_with(
            &mut chunk.buf,
            chunk.salt,
            kind,
            seq,
            at,
            payload_len,
            |out| write(seq, out),
        );
        chunk.records.push(Entry { seq, offset, at });
        self.next_seq = seq.next();
        self.pending_bytes += frame as usize;
        seq
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
