//! The public log handle: append, read, cursors, reclamation.

use std::cell::RefCell;
use std::fs::File;
use std::future::poll_fn;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::task::Poll;

use bytes::Bytes;

use crate::config::LogConfig;
use crate::env::{BufferedEnv, Env};
use crate::error::{Error, Result};
use crate::record::HEADER_LEN;
use crate::recovery::{self, RecoveryReport};
use crate::state::{Class, LogStats, PayloadWriter, Refused, Spare, State};

pub use crate::files::{create_dir_durably, replace_file_durably};
pub(crate) use crate::files::{create_segment, map_file};
use crate::read::read_at;
pub use crate::read::Iter;
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
        Iter::new(self.clone(), from.max(self.first_sequence()))
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

fn check_usable<F>(st: &State<F>) -> Option<Error> {
    if let Some(failed) = &st.failed {
        return Some(Error::Fatal(failed.clone()));
    }
    st.closed.then_some(Error::Closed)
}
