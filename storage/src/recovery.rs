//! Opening a log: lock, find segments, verify, truncate a torn tail,
//! rebuild indexes, load cursors.
//!
//! # Rules
//!
//! * Sealed segments (all but the last) with a sealed index whose checksum
//!   verifies are trusted after checking that the last indexed record's
//!   header verifies: O(1) per segment, no data scan. Without a usable index
//!   the segment is scanned; every record must verify and the segment must
//!   end exactly where the next one begins, else `Error::Corruption`.
//! * The last segment (and any segment whose index was never sealed): index
//!   entries are written only after the fdatasync that covered their
//!   record and each carries its own check, so the verifying entries are
//!   the acknowledged prefix. Only the last indexed record is read and
//!   fully verified; if it fails, acknowledged data is damaged:
//!   `Error::Corruption` naming segment and offset. Records after the
//!   indexed prefix were written but possibly never acknowledged: they are
//!   scanned with full checksums. At the first one that does not verify,
//!   a later verifying record whose `durable_before` is above the bad
//!   sequence proves the bad one had been durable (corruption); otherwise
//!   it is a torn tail and the log is cut there. Work is proportional to
//!   the index files plus that unflushed tail.
//! * The last segment is then truncated to its data end and preallocated
//!   again, so no stale bytes beyond the end can ever be read as records.
//! * A last segment whose header does not verify and that holds no record
//!   bytes was torn while being created (its header is synced before any
//!   record): it is set aside as `*.torn`. With record bytes: corruption.
//! * Cursors: the newest verifying slot; values behind the first retained
//!   record are clamped to it; values beyond the end are corruption.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use crate::config::LogConfig;
use crate::cursor::{self, LoadedCursors, Snapshot, CURSOR_FILE, SLOT_BYTES};
use crate::env::{Env, LogFile};
use crate::error::{Error, Result};
use crate::index::{Index, Loaded};
use crate::log::{create_segment, map_file};
use crate::record::{self, Probe};
use crate::segment::{self, index_path, segment_path, SegmentHeader, Stop, DATA_START};
use crate::state::{Chunk, Segment, State};
use crate::types::{Sequence, TimestampMs};

/// First sequence of a brand-new log.
pub const FIRST_SEQUENCE: Sequence = Sequence(1);

/// What opening the log found and repaired.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segments opened.
    pub segments: usize,
    /// Indexes rebuilt by scanning their segment.
    pub indexes_rebuilt: usize,
    /// Records verified by scanning (tail and rebuilt indexes).
    pub records_scanned: u64,
    /// A torn tail that was cut off: segment, offset, reason.
    pub truncated: Option<(PathBuf, u64, &'static str)>,
    /// A last segment deleted because it was torn while being created.
    pub removed_torn_segment: Option<PathBuf>,
    /// Sequence the next appended record gets.
    pub next_sequence: Sequence,
}

/// Takes an exclusive `flock` on `dir/LOCK` for the life of the log.
pub(crate) fn lock_dir(dir: &Path) -> Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("LOCK"))?;
    // SAFETY: plain syscall on a valid fd.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(Error::Locked(dir.to_owned()));
    }
    Ok(file)
}

fn list_segments(dir: &Path) -> Result<Vec<Sequence>> {
    let mut firsts = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        if let Some(first) = name.to_str().and_then(segment::parse_segment_name) {
            firsts.push(first);
        }
    }
    firsts.sort();
    Ok(firsts)
}

fn corrupt(path: &Path, offset: u64, reason: &'static str) -> Error {
    Error::Corruption {
        segment: path.to_owned(),
        offset,
        reason,
    }
}

/// Recovers the log in `dir` into a ready state (flusher not started).
pub(crate) async fn recover<E: Env>(
    env: &E,
    dir: &Path,
    config: &LogConfig,
    now: TimestampMs,
) -> Result<(State<E::File>, RecoveryReport)> {
    let mut report = RecoveryReport::default();
    // A spare segment holds no records (its header is written only when
    // it becomes a segment, under its segment name): made again.
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry
            .file_name()
            .to_str()
            .is_some_and(crate::commit::is_spare_name)
        {
            std::fs::remove_file(entry.path())?;
        }
    }
    let mut firsts = list_segments(dir)?;
    remove_torn_last_segment(env, dir, &mut firsts, &mut report).await?;
    // The configured limit applies to appends only; what is on disk is read
    // up to the format's limit.
    let payload_max = crate::record::PAYLOAD_FORMAT_MAX;
    let mut segments = BTreeMap::new();
    for (i, &first) in firsts.iter().enumerate() {
        let next_first = firsts.get(i + 1).copied();
        let seg = recover_segment(dir, first, next_first, payload_max, &mut report)?;
        segments.insert(first, seg);
    }
    let (active_file, last_ts) = match segments.iter_mut().next_back() {
        Some((_, last)) => (reopen_last(env, config, last).await?, last.last_ts),
        None => {
            let header = SegmentHeader {
                first: FIRST_SEQUENCE,
                salt: rand::random(),
                created: now,
            };
            let (file, seg) = create_segment(env, dir, config, header).await?;
            segments.insert(header.first, seg);
            (file, now)
        }
    };
    let (_, last) = segments.iter().next_back().expect("a segment");
    let open_segment = last.header;
    let next_seq = last.next_seq();
    let end = last.data_end;
    let carry_from = end - end % segment::BLOCK;
    let open_chunk = Chunk {
        new_segment: None,
        salt: open_segment.salt,
        file_pos: carry_from,
        buf: last.data[carry_from as usize..end as usize].to_vec(),
        records: Vec::new(),
    };
    let first_retained = *segments.keys().next().expect("a segment");
    let (cursor_file, durable, values) =
        load_cursors(env, dir, config, first_retained, next_seq).await?;
    let changed = values != durable.values;
    report.segments = segments.len();
    report.next_sequence = next_seq;
    let state = State {
        segments,
        active_file: Rc::new(active_file),
        cursor_file: Rc::new(cursor_file),
        open_segment,
        pending: VecDeque::from([open_chunk]),
        pending_bytes: 0,
        next_seq,
        durable_next: next_seq,
        last_ts: last_ts.max(open_segment.created),
        cursors: values,
        cursor_version: u64::from(changed),
        durable_cursor_version: 0,
        durable_cursors: durable,
        waiters: Vec::new(),
        stats: Default::default(),
        flusher: None,
        failed: None,
        spare: crate::state::Spare::Needed,
        claimed: VecDeque::new(),
        spare_number: 0,
        roll_waiting: false,
        spare_warned: false,
        flusher_exited: false,
        closed: false,
    };
    Ok((state, report))
}

/// Deletes a last segment torn during creation (see module docs).
async fn remove_torn_last_segment<E: Env>(
    env: &E,
    dir: &Path,
    firsts: &mut Vec<Sequence>,
    report: &mut RecoveryReport,
) -> Result<()> {
    let Some(&first) = firsts.last() else {
        return Ok(());
    };
    let path = segment_path(dir, first);
    let data = map_file(&path)?;
    if SegmentHeader::decode(&data).is_some_and(|h| h.first == first) {
        return Ok(());
    }
    // The header is fdatasynced before any record is written, so a segment
    // torn at creation holds no record bytes at all. Anything else is
    // damage to a segment that may hold acknowledged records.
    if data
        .get(DATA_START as usize..)
        .is_some_and(|rest| rest.iter().any(|&b| b != 0))
    {
        return Err(corrupt(&path, 0, "segment header does not verify"));
    }
    tracing::warn!(segment = %path.display(), "setting aside segment torn at creation");
    let aside = path.with_extension("torn");
    std::fs::rename(&path, &aside)?;
    let idx = index_path(dir, first);
    if idx.exists() {
        env.remove(&idx).await?;
    }
    env.sync_dir(dir).await?;
    firsts.pop();
    report.removed_torn_segment = Some(path);
    Ok(())
}

/// Verifies one segment and returns it with a complete index.
fn recover_segment(
    dir: &Path,
    first: Sequence,
    next_first: Option<Sequence>,
    payload_max: usize,
    report: &mut RecoveryReport,
) -> Result<Segment> {
    let path = segment_path(dir, first);
    let data = map_file(&path)?;
    let header = SegmentHeader::decode(&data)
        .filter(|h| h.first == first)
        .ok_or_else(|| corrupt(&path, 0, "segment header does not verify"))?;
    let idx_path = index_path(dir, first);
    let mut rebuilt = false;
    let (mut index, trusted_end) = match Index::load(&idx_path, first, header.salt)? {
        Loaded::Sealed { index, data_end } => (index, Some(data_end)),
        Loaded::Open(index) => (index, None),
        Loaded::Damaged(index) => {
            rebuilt = true;
            (index, None)
        }
        Loaded::Unusable => {
            rebuilt = true;
            (Index::create(&idx_path, first, header.salt)?, None)
        }
    };
    let is_last = next_first.is_none();
    if let (Some(end), Some(next)) = (trusted_end, next_first) {
        if sealed_index_holds(&data, &header, &index, end, next, payload_max) {
            return Ok(finish(header, path, data, index, end));
        }
        index = Index::create(&idx_path, first, header.salt)?;
        rebuilt = true;
    }
    let start = watermark(&path, &data, &header, &index)?;
    if rebuilt {
        report.indexes_rebuilt += 1;
    }
    let next = Sequence(first.0 + index.len() as u64);
    let mut push_err = None;
    let stop = segment::scan(&data, header.salt, payload_max, start, next, |found| {
        report.records_scanned += 1;
        if let Err(e) = index.push(found.offset, found.header.timestamp) {
            push_err.get_or_insert(e);
        }
    });
    if let Some(e) = push_err {
        return Err(e.into());
    }
    let end = match stop {
        Stop::End { offset } => offset,
        Stop::Invalid { offset, reason } if is_last => {
            let bad_seq = Sequence(first.0 + index.len() as u64);
            if let Some(later) = later_proof(&data, header.salt, offset, bad_seq) {
                tracing::error!(segment = %path.display(), offset, later, "damaged record followed by newer durable records");
                return Err(corrupt(&path, offset, reason.as_str()));
            }
            tracing::warn!(segment = %path.display(), offset, reason = reason.as_str(), "cutting torn tail");
            report.truncated = Some((path.clone(), offset, reason.as_str()));
            offset
        }
        Stop::Invalid { offset, reason } => return Err(corrupt(&path, offset, reason.as_str())),
    };
    if let Some(next) = next_first {
        if Sequence(first.0 + index.len() as u64) != next {
            return Err(corrupt(
                &path,
                end,
                "segment ends before the next segment begins",
            ));
        }
        index.seal(end)?;
    } else {
        index.unseal();
    }
    Ok(finish(header, path, data, index, end))
}

fn finish(
    header: SegmentHeader,
    path: PathBuf,
    data: bytes::Bytes,
    index: Index,
    end: u64,
) -> Segment {
    let last_ts = index
        .len()
        .checked_sub(1)
        .and_then(|i| index.entry(i))
        .map_or(header.created, |(_, ts)| ts);
    Segment {
        header,
        path,
        data,
        index,
        data_end: end,
        last_ts,
        // Beyond the data end the file is truncated and preallocated again
        // at open: unwritten.
        zeroed_to: end.div_ceil(segment::BLOCK) * segment::BLOCK,
    }
}

/// A sealed index is trusted when it reaches exactly the next segment and
/// its last record's header verifies at the recorded place.
fn sealed_index_holds(
    data: &[u8],
    header: &SegmentHeader,
    index: &Index,
    end: u64,
    next: Sequence,
    payload_max: usize,
) -> bool {
    if header.first.0 + index.len() as u64 != next.0 {
        return false;
    }
    let Some(last) = index.len().checked_sub(1) else {
        return end == DATA_START;
    };
    let (offset, _) = index.entry(last).expect("in range");
    let Some(bytes) = data.get(offset as usize..) else {
        return false;
    };
    matches!(record::probe_header(bytes, header.salt, payload_max),
        Probe::Record(h) if h.sequence.0 == next.0 - 1 && offset + h.frame_len() as u64 == end)
}

/// Checks an open index against the segment: every entry carries its own
/// check (see [`crate::index`]), so only the last indexed record is read
/// and verified in full. Entries are written only after the fdatasync that
/// covered their record, so if that record does not verify, acknowledged
/// data is damaged: `Corruption`. Returns where scanning resumes.
fn watermark(path: &Path, data: &[u8], header: &SegmentHeader, index: &Index) -> Result<u64> {
    let Some(last) = index.len().checked_sub(1) else {
        return Ok(DATA_START);
    };
    let (offset, _) = index.entry(last).expect("in range");
    let want = Sequence(header.first.0 + last as u64);
    let probe = data.get(offset as usize..).map_or(Probe::End, |b| {
        record::probe(b, header.salt, record::PAYLOAD_FORMAT_MAX)
    });
    match probe {
        Probe::Record(h) if h.sequence == want => Ok(offset + h.frame_len() as u64),
        Probe::Invalid(why) => Err(corrupt(path, offset, why.as_str())),
        _ => Err(corrupt(path, offset, "indexed record missing")),
    }
}

/// After a record that does not verify at `bad_offset` (expected sequence
/// `bad_seq`), looks for any later record that verifies and says it was
/// queued after `bad_seq` was durable. Finding one proves the bad record
/// had been acknowledged-capable data, not a torn tail. Only runs on the
/// (rare) invalid-record path; a memmem scan for the record magic.
fn later_proof(data: &[u8], salt: u64, bad_offset: u64, bad_seq: Sequence) -> Option<u64> {
    let magic = record::RECORD_MAGIC.to_le_bytes();
    let from = bad_offset as usize + 1;
    let rest = data.get(from..)?;
    memchr::memmem::find_iter(rest, &magic).find_map(|i| {
        let at = from + i;
        match record::probe(&data[at..], salt, record::PAYLOAD_FORMAT_MAX) {
            Probe::Record(h) if h.sequence > bad_seq && h.durable_before > bad_seq => {
                Some(at as u64)
            }
            _ => None,
        }
    })
}

/// Truncates the last segment to its data end (dropping any stale bytes),
/// preallocates it again, syncs, and maps it anew.
async fn reopen_last<E: Env>(env: &E, config: &LogConfig, last: &mut Segment) -> Result<E::File> {
    let file = env.open(&last.path).await?;
    file.truncate(last.data_end).await?;
    file.allocate(config.segment_bytes_max.max(last.data_end))
        .await?;
    file.sync_data().await?;
    last.data = map_file(&last.path)?;
    Ok(file)
}

type LoadedCursorState<F> = (F, Snapshot, BTreeMap<String, Sequence>);

/// Opens or creates the cursor file; returns it, the durable snapshot and
/// the values to use (configured names, clamped to the retained range).
async fn load_cursors<E: Env>(
    env: &E,
    dir: &Path,
    config: &LogConfig,
    first_retained: Sequence,
    next_seq: Sequence,
) -> Result<LoadedCursorState<E::File>> {
    let path = dir.join(CURSOR_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => Some(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e.into()),
    };
    let durable = match cursor::load(bytes.as_deref()) {
        LoadedCursors::Found(s) => s,
        LoadedCursors::Empty => Snapshot::default(),
        LoadedCursors::Corrupt => return Err(corrupt(&path, 0, "no cursor slot verifies")),
    };
    let mut values = BTreeMap::new();
    for name in &config.cursors {
        let stored = durable.values.get(name).copied().unwrap_or(first_retained);
        if stored > next_seq {
            return Err(corrupt(&path, 0, "cursor beyond the end of the log"));
        }
        values.insert(name.clone(), stored.max(first_retained));
    }
    for name in durable.values.keys().filter(|n| !values.contains_key(*n)) {
        tracing::warn!(cursor = %name, "dropping cursor no longer configured");
    }
    let (file, durable) = if bytes.is_some() {
        (env.open(&path).await?, durable)
    } else {
        // A new file starts with a valid generation-0 snapshot in slot 0,
        // so a torn first update (to slot 1) still leaves a good slot.
        let initial = Snapshot {
            generation: 0,
            values: values.clone(),
        };
        let file = env.create(&path).await?;
        let mut both = initial.encode();
        both.resize(2 * SLOT_BYTES, 0);
        file.write_at(both, 0).await?;
        file.sync_data().await?;
        env.sync_dir(dir).await?;
        (file, initial)
    };
    Ok((file, durable, values))
}
