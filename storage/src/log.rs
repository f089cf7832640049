//! The public log handle: append, read, cursors, reclamation.

use std::cell::RefCell;
use std::fs::File;
use std::future::poll_fn;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::task::Poll;

use bytes::Bytes;

use crate::config::LogConfig;
use crate::env::{BufferedEnv, Env, LogFile};
use crate::error::{Error, Result};
use crate::index::Index;
use crate::record::{self, Probe, HEADER_LEN};
use crate::recovery::{self, RecoveryReport};
use crate::segment::{index_path, segment_path, SegmentHeader};
use crate::state::{Class, LogStats, PayloadWriter, Refused, Segment, Spare, State};
use crate::types::{RecordKind, Sequence, TimestampMs};

/// Extra payload bytes of a copied-forward record:
/// `{ u64 origin_sequence | u8 original_kind }` before the original payload.
pub(crate) const COPY_OVERHEAD: usize = 9;

/// A record read back from the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Where it is in the log.
    pub sequence: Sequence,
    /// The kind given at append (for a copied-forward record: the original's).
    pub kind: RecordKind,
    /// When it was appended (for a copy: when the copy was made).
    pub timestamp: TimestampMs,
    /// For a record made by [`Log::copy_forward`]: the sequence of the
    /// original (following copies of copies back to the first one).
    pub origin: Option<Sequence>,
    /// The payload; zero-copy over the segment's memory map.
    pub payload: Bytes,
}

/// Facts about one segment, for operators and for the engine's
/// copy-forward decisions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentInfo {
    /// First sequence.
    pub first: Sequence,
    /// Sequence after its last durable record.
    pub next: Sequence,
    /// Bytes used (header block and records).
    pub bytes: u64,
    /// When it was created.
    pub created: TimestampMs,
    /// Timestamp of its last record.
    pub last_timestamp: TimestampMs,
    /// Its file.
    pub path: PathBuf,
}

/// What [`Log::reclaim`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReclaimReport {
    /// First sequences of the deleted segments.
    pub deleted: Vec<Sequence>,
    /// Bytes freed.
    pub bytes: u64,
}

pub(crate) struct Shared<E: Env> {
    pub env: E,
    pub dir: PathBuf,
    pub config: LogConfig,
    pub st: RefCell<State<E::File>>,
    /// Holds the directory's `flock` for the life of the log.
    _lock: File,
}

impl<E: Env> Drop for Shared<E> {
    fn drop(&mut self) {
        self.st.get_mut().wake_flusher();
    }
}

/// One append-only log (one per core). Cheap to clone: clones share the
/// log. Not `Send`: it lives on the executor that opened it.
pub struct Log<E: Env = BufferedEnv> {
    shared: Rc<Shared<E>>,
}

impl<E: Env> Clone for Log<E> {
    fn clone(&self) -> Self {
        Log {
            shared: self.shared.clone(),
        }
    }
}

/// Maps a whole file read-only; the returned `Bytes` keeps the map alive.
pub(crate) fn map_file(path: &Path) -> std::io::Result<Bytes> {
    let file = File::open(path)?;
    if file.metadata()?.len() == 0 {
        return Ok(Bytes::new());
    }
    // SAFETY: segment files are only ever appended to in place or truncated
    // by this log while it holds the directory lock; bytes a reader can see
    // (durable records) are never rewritten with different content.
    let map = unsafe { memmap2::Mmap::map(&file)? };
    Ok(Bytes::from_owner(map))
}

impl<E: Env> Log<E> {
    /// Opens (creating if needed) the log in `dir`, recovering it, and
    /// starts its flusher on the current executor. `now` is the injected
    /// clock, used for a first segment's creation time.
    pub async fn open(
        env: E,
        dir: &Path,
        config: LogConfig,
        now: TimestampMs,
    ) -> Result<(Log<E>, RecoveryReport)> {
        config.validate()?;
        // Absolute from here on: glommio opens directories (for fsync) with
        // openat on a null dirfd, which fails for relative paths (EBADF).
        let dir = &std::path::absolute(dir)?;
        create_dir_durably(dir)?;
        let lock = recovery::lock_dir(dir)?;
        let (state, report) = recovery::recover(&env, dir, &config, now).await?;
        let shared = Rc::new(Shared {
            env: env.clone(),
            dir: dir.to_owned(),
            config,
            st: RefCell::new(state),
            _lock: lock,
        });
        env.spawn(crate::commit::run_flusher(Rc::downgrade(&shared)));
        Ok((Log { shared }, report))
    }

    /// Appends one record whose payload is the concatenation of `parts` and
    /// returns its sequence once it is durable (after the group commit that
    /// covers it). One copy of the payload, into the batch buffer.
    pub async fn append(
        &self,
        kind: RecordKind,
        at: TimestampMs,
        parts: &[&[u8]],
    ) -> Result<Sequence> {
        if !kind.is_user() {
            return Err(Error::ReservedKind(kind));
        }
        self.append_raw(kind, at, parts).await
    }

    async fn append_raw(
        &self,
        kind: RecordKind,
        at: TimestampMs,
        parts: &[&[u8]],
    ) -> Result<Sequence> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        self.append_inner((kind, Class::New), at, len, |_, out| {
            for part in parts {
                out.put(part);
            }
        })
        .await
    }

    /// Appends one record of exactly `payload_len` bytes written by `write`,
    /// which is told the record's sequence first (so a payload can name its
    /// own queue id) and writes straight into the batch buffer (one copy).
    /// Returns once durable, like [`Log::append`]. `write` runs
    /// synchronously inside this call and must not call into the log; if it
    /// writes any other length the append fails with
    /// `Error::PayloadLength` and nothing is stored.
    pub async fn append_with(
        &self,
        kind: RecordKind,
        at: TimestampMs,
        payload_len: usize,
        write: impl FnOnce(Sequence, &mut PayloadWriter<'_>),
    ) -> Result<Sequence> {
        let seq = self.enqueue_with(kind, at, payload_len, write).await?;
        self.durable(seq).await?;
        Ok(seq)
    }

    /// Like [`Log::append_with`] but returns as soon as the record is
    /// queued for the next group commit, *before* it is durable: the caller
    /// must not acknowledge it until [`Log::durable`] for its sequence
    /// returns `Ok`. Lets one task queue several records (a pipelined
    /// shadow link) and wait for them with one commit. A record queued here
    /// is never readable before it is durable.
    pub async fn enqueue_with(
        &self,
        kind: RecordKind,
        at: TimestampMs,
        payload_len: usize,
        write: impl FnOnce(Sequence, &mut PayloadWriter<'_>),
    ) -> Result<Sequence> {
        self.enqueue_class(Class::New, kind, at, payload_len, write)
            .await
    }

    /// [`Log::enqueue_with`] for a record of `class`: a
    /// [`Class::Reserved`] record (the result of work already accepted)
    /// may use the last `reserve_bytes` that new records may not.
    pub async fn enqueue_class(
        &self,
        class: Class,
        kind: RecordKind,
        at: TimestampMs,
        payload_len: usize,
        write: impl FnOnce(Sequence, &mut PayloadWriter<'_>),
    ) -> Result<Sequence> {
        if !kind.is_user() {
            return Err(Error::ReservedKind(kind));
        }
        self.enqueue_inner((kind, class), at, payload_len, write)
            .await
    }

    /// Bytes records can still take without allocating space: the rest
    /// of the active segment plus the spare segment, if there is one.
    /// New records are refused when this falls to `reserve_bytes`.
    pub fn headroom(&self) -> u64 {
        self.shared
            .st
            .borrow()
            .headroom(self.shared.config.segment_bytes_max)
    }

    /// Why the spare segment could not be made (`None`: it is there or
    /// being made).
    pub fn spare_failure(&self) -> Option<String> {
        match &self.shared.st.borrow().spare {
            Spare::Failed(why) => Some(why.clone()),
            _ => None,
        }
    }

    /// Tries to make the spare segment again after a failure (space may
    /// have been freed). Cheap when there is nothing to do.
    pub fn retry_spare(&self) {
        let mut st = self.shared.st.borrow_mut();
        if matches!(st.spare, Spare::Failed(_)) {
            st.spare = Spare::Needed;
            st.wake_flusher();
        }
    }

    /// The error that failed the log for good, if it has failed.
    pub fn failure(&self) -> Option<String> {
        self.shared.st.borrow().failed.clone()
    }

    /// Waits until record `seq` (and so every record before it) is
    /// durable; `Err` if the log failed first (then no record at or after
    /// the first one not yet committed ever will be).
    pub async fn durable(&self, seq: Sequence) -> Result<()> {
        self.wait(|st| st.durable_next > seq).await
    }

    async fn append_inner(
        &self,
        kind: (RecordKind, Class),
        at: TimestampMs,
        len: usize,
        write: impl FnOnce(Sequence, &mut PayloadWriter<'_>),
    ) -> Result<Sequence> {
        let seq = self.enqueue_inner(kind, at, len, write).await?;
        self.durable(seq).await?;
        Ok(seq)
    }

    async fn enqueue_inner(
        &self,
        (kind, class): (RecordKind, Class),
        at: TimestampMs,
        len: usize,
        write: impl FnOnce(Sequence, &mut PayloadWriter<'_>),
    ) -> Result<Sequence> {
        let mut max = self.shared.config.record_bytes_max;
        if kind == RecordKind::FORWARDED {
            max += COPY_OVERHEAD;
        }
        if len > max {
            return Err(Error::RecordTooLarge { len, max });
        }
        let frame = HEADER_LEN + len;
        let pending_max = self.shared.config.pending_bytes_max;
        let config = &self.shared.config;
        let limits = (
            config.segment_bytes_max,
            config.segment_age_max_ms,
            config.reserve(),
        );
        let mut write = Some(write);
        // Back-pressure: wait for the flusher to take the queue when full,
        // and for the spare segment when a roll needs it.
        poll_fn(|cx| {
            let mut st = self.shared.st.borrow_mut();
            if let Some(e) = check_usable(&st) {
                return Poll::Ready(Err(e));
            }
            if st.pending_bytes != 0 && st.pending_bytes + frame > pending_max {
                st.waiters.push(cx.waker().clone());
                return Poll::Pending;
            }
            let outcome = st.make_room(limits, class, at, len).and_then(|at| {
                let w = write.take().expect("polled after completion");
                st.encode(kind, at, len, w)
            });
            match outcome {
                Ok(seq) => {
                    st.wake_flusher();
                    Poll::Ready(Ok(seq))
                }
                Err(Refused::Length) => Poll::Ready(Err(Error::PayloadLength(len))),
                Err(Refused::NoSpace(why)) => Poll::Ready(Err(Error::NoSpace(why))),
                Err(Refused::WaitSpare) => {
                    // Refused before the writer ran: it is tried again
                    // once the flusher made the spare.
                    st.waiters.push(cx.waker().clone());
                    st.wake_flusher();
                    Poll::Pending
                }
            }
        })
        .await
    }

    /// Waits until `done` holds, failing if the log fails first.
    async fn wait(&self, done: impl Fn(&State<E::File>) -> bool) -> Result<()> {
        poll_fn(|cx| {
            let mut st = self.shared.st.borrow_mut();
            if done(&st) {
                return Poll::Ready(Ok(()));
            }
            if let Some(failed) = &st.failed {
                return Poll::Ready(Err(Error::Fatal(failed.clone())));
            }
            st.waiters.push(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Reads the durable record `seq`, verifying its checksums.
    pub fn read(&self, seq: Sequence) -> Result<Record> {
        let st = self.shared.st.borrow();
        if seq >= st.durable_next {
            return Err(Error::NotFound(seq));
        }
        let (_, segment) = st
            .segments
            .range(..=seq)
            .next_back()
            .ok_or(Error::NotFound(seq))?;
        let offset = segment.index.offset_of(seq).ok_or(Error::NotFound(seq))?;
        read_at(segment, offset, seq)
    }

    /// Iterates durable records from `from` (or the first retained one, if
    /// `from` was reclaimed) up to the durable end as of each step.
    pub fn iter_from(&self, from: Sequence) -> Iter<E> {
        Iter {
            log: self.clone(),
            next: from.max(self.first_sequence()),
        }
    }

    /// First durable sequence whose timestamp is at or after `at`.
    pub fn first_at_or_after(&self, at: TimestampMs) -> Option<Sequence> {
        let st = self.shared.st.borrow();
        st.segments
            .values()
            .find(|s| !s.index.is_empty() && s.last_ts >= at)
            .map(|s| Sequence(s.header.first.0 + s.index.first_at_or_after(at) as u64))
    }

    /// Oldest retained sequence.
    pub fn first_sequence(&self) -> Sequence {
        let st = self.shared.st.borrow();
        st.segments
            .keys()
            .next()
            .copied()
            .unwrap_or(st.durable_next)
    }

    /// Sequence the next durable record will have: every sequence below it
    /// is durable.
    pub fn durable_end(&self) -> Sequence {
        self.shared.st.borrow().durable_next
    }

    /// The segments, oldest first.
    pub fn segments(&self) -> Vec<SegmentInfo> {
        let st = self.shared.st.borrow();
        st.segments
            .values()
            .map(|s| SegmentInfo {
                first: s.header.first,
                next: s.next_seq(),
                bytes: s.data_end,
                created: s.header.created,
                last_timestamp: s.last_ts,
                path: s.path.clone(),
            })
            .collect()
    }

    /// Current value of a cursor (as last set; see [`Log::set_cursor`]).
    pub fn cursor(&self, name: &str) -> Option<Sequence> {
        self.shared.st.borrow().cursors.get(name).copied()
    }

    /// Moves cursor `name` to `to` ("every record before `to` is passed")
    /// and returns once that is durable. `to` may not pass the last
    /// appended record nor fall behind the first retained one.
    pub async fn set_cursor(&self, name: &str, to: Sequence) -> Result<()> {
        // A cursor must never reach the disk before the records it passes:
        // wait until they are durable (they may still be queued).
        if to <= self.shared.st.borrow().next_seq {
            self.wait(|st| st.durable_next >= to).await?;
        }
        let version = {
            let mut st = self.shared.st.borrow_mut();
            if let Some(e) = check_usable(&st) {
                return Err(e);
            }
            let first = st
                .segments
                .keys()
                .next()
                .copied()
                .unwrap_or(st.durable_next);
            if to > st.next_seq || to < first {
                return Err(Error::InvalidCursor(format!(
                    "{name} -> {to} outside the log [{first}, {}]",
                    st.next_seq
                )));
            }
            let Some(value) = st.cursors.get_mut(name) else {
                return Err(Error::InvalidCursor(format!("unknown cursor {name:?}")));
            };
            if *value == to {
                st.cursor_version
            } else {
                *value = to;
                st.cursor_version += 1;
                st.wake_flusher();
                st.cursor_version
            }
        };
        self.wait(|st| st.durable_cursor_version >= version).await
    }

    /// Copies the live record `seq` to the head of the log so the segment
    /// holding it can be reclaimed, and returns the new sequence (durable).
    /// The copy reads back with the original kind and payload and
    /// `origin = Some(first original sequence)`. The caller then treats the
    /// old sequence as passed.
    pub async fn copy_forward(&self, seq: Sequence, at: TimestampMs) -> Result<Sequence> {
        let rec = self.read(seq)?;
        let origin = rec.origin.unwrap_or(rec.sequence).0.to_le_bytes();
        self.append_raw(
            RecordKind::FORWARDED,
            at,
            &[&origin, &[rec.kind.0], &rec.payload],
        )
        .await
    }

    /// Deletes the oldest segments that every durable cursor has passed and
    /// whose last record is older than `retention_min_ms`. Never deletes the
    /// active (last) segment. Directory fsynced after deleting.
    pub async fn reclaim(&self, now: TimestampMs) -> Result<ReclaimReport> {
        let doomed = {
            let mut st = self.shared.st.borrow_mut();
            let floor = st.segments.keys().next().copied().unwrap_or_default();
            let passed = self
                .shared
                .config
                .cursors
                .iter()
                .map(|n| st.durable_cursors.values.get(n).copied().unwrap_or(floor))
                .min()
                .unwrap_or(st.durable_next);
            let retention = self.shared.config.retention_min_ms;
            let mut doomed = Vec::new();
            while st.segments.len() > 1 {
                let (first, seg) = st.segments.iter().next().expect("non-empty");
                if seg.next_seq() > passed || seg.last_ts.add_ms(retention) > now {
                    break;
                }
                let first = *first;
                doomed.push(st.segments.remove(&first).expect("present"));
            }
            doomed
        };
        let mut report = ReclaimReport::default();
        if doomed.is_empty() {
            return Ok(report);
        }
        // Space comes back: the next segment may be made now.
        self.retry_spare();
        for seg in doomed {
            self.shared.env.remove(&seg.path).await?;
            let idx = seg.index.path().to_owned();
            drop(seg.index);
            if let Err(e) = self.shared.env.remove(&idx).await {
                tracing::warn!(path = %idx.display(), error = %e, "could not delete index");
            }
            tracing::info!(segment = %seg.path.display(), bytes = seg.data_end, "segment reclaimed");
            report.deleted.push(seg.header.first);
            report.bytes += seg.data_end;
        }
        self.shared.env.sync_dir(&self.shared.dir).await?;
        Ok(report)
    }

    /// Waits until everything appended so far is durable, then stops the
    /// flusher. Other clones become unusable (`Error::Closed`).
    pub async fn close(self) -> Result<()> {
        let target = {
            let mut st = self.shared.st.borrow_mut();
            st.closed = true;
            st.wake_flusher();
            (st.next_seq, st.cursor_version)
        };
        // Done when everything is durable and the flusher stopped (it may
        // hold the log, and so its directory lock, while making a spare).
        self.wait(|st| {
            st.durable_next >= target.0
                && st.durable_cursor_version >= target.1
                && st.flusher_exited
        })
        .await
    }

    /// Durability-path counters (batches, fdatasync latency...).
    pub fn stats(&self) -> LogStats {
        self.shared.st.borrow().stats
    }

    /// The directory of this log.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }
}

/// Creates `dir` (and missing parents) and fsyncs each new directory's
/// parent, so the directory entries survive a power loss. Callers that
/// create a log's directory themselves must use this, not `create_dir_all`.
pub fn create_dir_durably(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir_durably(parent)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e),
    }
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(parent)?.sync_all()
}

/// Replaces `path` with `bytes` so that a crash leaves the old file or
/// the new one whole: writes `path.tmp` (created with `mode`), fsyncs
/// it, renames it over `path`, fsyncs the directory.
pub fn replace_file_durably(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(dir)?.sync_all()
}

fn check_usable<F>(st: &State<F>) -> Option<Error> {
    if let Some(failed) = &st.failed {
        return Some(Error::Fatal(failed.clone()));
    }
    st.closed.then_some(Error::Closed)
}

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

impl<E: Env> Shared<E> {
    /// Seals the index of the current last segment (it stops receiving).
    pub(crate) fn seal_active(&self) -> Result<()> {
        let mut st = self.st.borrow_mut();
        if let Some((_, seg)) = st.segments.iter_mut().next_back() {
            let end = seg.data_end;
            seg.index.seal(end)?;
        }
        Ok(())
    }

    /// Makes the spare segment file the segment `header`: header block,
    /// fdatasync, rename (segment and index), directory fsync, index
    /// header. No allocation: the spare was preallocated.
    pub(crate) async fn start_segment(
        &self,
        spare: crate::state::SpareFiles<E::File>,
        header: SegmentHeader,
    ) -> Result<(E::File, Segment)> {
        let (spare_seg, spare_idx) = (spare.seg, spare.idx);
        spare.file.write_at(header.encode(), 0).await?;
        spare.file.sync_data().await?;
        drop(spare.file);
        let path = segment_path(&self.dir, header.first);
        let idx = index_path(&self.dir, header.first);
        self.env.rename(&spare_seg, &path).await?;
        self.env.rename(&spare_idx, &idx).await?;
        self.env.sync_dir(&self.dir).await?;
        let file = self.env.open(&path).await?;
        let index = Index::adopt(&idx, header.first, header.salt)?;
        let data = map_file(&path)?;
        tracing::debug!(segment = %path.display(), "segment started");
        Ok((file, new_segment(header, path, data, index)))
    }
}

fn new_segment(header: SegmentHeader, path: PathBuf, data: Bytes, index: Index) -> Segment {
    Segment {
        header,
        path,
        data,
        index,
        data_end: crate::segment::DATA_START,
        last_ts: header.created,
        zeroed_to: crate::segment::DATA_START,
    }
}

/// See [`Shared::create_segment`]; also used by recovery for a new log.
pub(crate) async fn create_segment<E: Env>(
    env: &E,
    dir: &Path,
    config: &LogConfig,
    header: SegmentHeader,
) -> Result<(E::File, Segment)> {
    let path = segment_path(dir, header.first);
    let file = env.create(&path).await?;
    file.allocate(config.segment_bytes_max).await?;
    file.write_at(header.encode(), 0).await?;
    file.sync_data().await?;
    env.sync_dir(dir).await?;
    let index = Index::create(&index_path(dir, header.first), header.first, header.salt)?;
    let data = map_file(&path)?;
    tracing::debug!(segment = %path.display(), "segment created");
    Ok((file, new_segment(header, path, data, index)))
}
