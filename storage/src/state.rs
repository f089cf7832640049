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
    /// Sum of the group commit latencies of `sync_us_buckets`, in
    /// microseconds (the histogram's `_sum`).
    pub sync_us_total: u64,
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

/// Which space an append may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// New data (messages, copies): refused with `Error::NoSpace` once
    /// only the reserve is left, so the reserve stays for results.
    New,
    /// Results of work already accepted (delivery statuses, discards,
    /// operator actions): may use the reserve.
    Reserved,
}

/// A preallocated segment file and index file, not yet a segment.
pub(crate) struct SpareFiles<F> {
    pub file: F,
    pub seg: PathBuf,
    pub idx: PathBuf,
}

/// The segment file kept ready ahead of the active one, so a roll to a
/// new segment never allocates space on the commit path.
pub(crate) enum Spare<F> {
    /// Created and preallocated: the next roll takes it.
    Ready(SpareFiles<F>),
    /// Taken (or never made): the flusher makes the next one.
    Needed,
    /// The flusher is making it.
    Creating,
    /// The last attempt failed (no space, mostly); retried by
    /// [`crate::Log::retry_spare`] and after a reclaim freed space.
    Failed(String),
}

/// Why [`State::enqueue`] queued nothing.
pub(crate) enum Refused {
    /// The writer wrote another length than announced.
    Length,
    /// No room for the record (see [`Class`]).
    NoSpace(String),
    /// A roll is needed and the spare is being made: wait and try again.
    WaitSpare,
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
    /// The next segment's file.
    pub spare: Spare<F>,
    /// Spares taken by queued chunks that start a segment, in chunk order.
    pub claimed: VecDeque<SpareFiles<F>>,
    /// Number of the next spare's file names (`spare-N.next`).
    pub spare_number: u64,
    /// An append waits for the spare to roll: later appends wait behind
    /// it (a smaller record must not take the sequence before it).
    pub roll_waiting: bool,
    /// A failure to make the spare was logged (the recovery is logged once).
    pub spare_warned: bool,
    /// The flusher saw the log closed and stopped.
    pub flusher_exited: bool,
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
            || (matches!(self.spare, Spare::Needed) && !self.closed)
    }

    /// Bytes the open chunk's segment can still take.
    fn active_free(&self, segment_bytes_max: u64) -> u64 {
        segment_bytes_max.saturating_sub(self.pending.back().expect("open chunk").end())
    }

    /// Bytes records may still use without allocating: what is left of the
    /// active segment plus the spare (counted while it is being made).
    pub fn headroom(&self, segment_bytes_max: u64) -> u64 {
        let spare = match self.spare {
            Spare::Failed(_) => 0,
            _ => segment_bytes_max - crate::segment::DATA_START,
        };
        self.active_free(segment_bytes_max) + spare
    }

    /// Encoding one record into the open chunk is two steps, so a caller
    /// can wait for room without giving up its payload writer:
    /// [`State::make_room`], then [`State::encode`]. No I/O, no await; the
    /// payload is written once, into the batch buffer.
    ///
    /// Rolls to the spare when the record would not fit or the segment is
    /// too old (and a spare is ready); refuses (nothing queued, no sequence
    /// used) when there is no room for a record of `class` (`reserve`: the
    /// bytes only [`Class::Reserved`] records may use). Returns the
    /// record's timestamp.
    pub fn make_room(
        &mut self,
        limits: (u64, u64, u64),
        class: Class,
        at: TimestampMs,
        payload_len: usize,
    ) -> Result<TimestampMs, Refused> {
        let (segment_bytes_max, segment_age_max_ms, reserve) = limits;
        if self.roll_waiting && matches!(self.spare, Spare::Needed | Spare::Creating) {
            return Err(Refused::WaitSpare);
        }
        self.roll_waiting = false;
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
        let fits = end + frame <= segment_bytes_max;
        let spare_ready = matches!(self.spare, Spare::Ready(_));
        // An old segment rolls only into a ready spare; a full one must.
        if !fits || (too_old && not_empty && spare_ready) {
            let file = match std::mem::replace(&mut self.spare, Spare::Needed) {
                Spare::Ready(file) => file,
                Spare::Failed(why) => {
                    self.spare = Spare::Failed(why.clone());
                    return Err(Refused::NoSpace(format!(
                        "the active segment is full and no next segment could be made: {why}"
                    )));
                }
                other => {
                    self.spare = other;
                    self.roll_waiting = true;
                    return Err(Refused::WaitSpare);
                }
            };
            self.claimed.push_back(file);
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
        } else if class == Class::New && self.headroom(segment_bytes_max) < frame + reserve {
            let why = match &self.spare {
                Spare::Failed(why) => why.clone(),
                _ => "reserve reached".to_owned(),
            };
            return Err(Refused::NoSpace(format!(
                "only the reserve for delivery results is left ({} bytes free in the log): {why}",
                self.headroom(segment_bytes_max)
            )));
        }
        Ok(at)
    }

    /// Encodes the record after [`State::make_room`]; `write` appends the
    /// payload knowing its sequence. Refused (nothing queued, no sequence
    /// used) if `write` did not write exactly `payload_len`.
    pub fn encode(
        &mut self,
        kind: RecordKind,
        at: TimestampMs,
        payload_len: usize,
        write: impl FnOnce(Sequence, &mut PayloadWriter<'_>),
    ) -> Result<Sequence, Refused> {
        let frame = (HEADER_LEN + payload_len) as u64;
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
            return Err(Refused::Length);
        }
        chunk.records.push(Entry { seq, offset, at });
        self.last_ts = at;
        self.next_seq = seq.next();
        self.pending_bytes += frame as usize;
        Ok(seq)
    }

    /// Hands every chunk with records to the flusher and leaves a fresh
    /// open chunk continuing the last one.
    pub fn take_batch(&mut self) -> Vec<Chunk> {
        let back = self.pending.back().expect("open chunk");
        // A segment started but not written to yet stays the open chunk
        // (its continuation would lose the segment start).
        let keep = if back.new_segment.is_some() && back.records.is_empty() {
            self.pending.pop_back()
        } else {
            None
        };
        let next = keep.unwrap_or_else(|| self.pending.back().expect("open chunk").continuation());
        let batch = self
            .pending
            .drain(..)
            .filter(|c| !c.records.is_empty())
            .collect();
        self.pending.push_back(next);
        self.pending_bytes = 0;
        // Back-pressured appenders may go on.
        self.wake_all();
        batch
    }
}
