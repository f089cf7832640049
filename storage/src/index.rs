//! Per-segment index: a memory-mapped cache mapping sequence to file offset
//! and timestamp. Never trusted over the log: recovery checks it against
//! the segment and rebuilds it by scanning when it is missing or
//! inconsistent.
//!
//! # Layout
//!
//! File `{first_sequence:020}.idx`, all integers little endian:
//!
//! ```text
//! offset 0:  { u32 magic = "TNI1" | u16 version = 1 | u16 flags (bit 0: sealed)
//!            | u64 first_sequence | u64 segment_salt
//!            | u64 entry_count    (sealed only, else 0)
//!            | u64 data_end       (sealed only: offset after the last record)
//!            | u32 entries_crc    (sealed only: crc32 of all entries)
//!            | zero padding to byte 60
//!            | u32 header_crc = crc32(bytes 0..60) }
//! offset 64: entry[i] for sequence first_sequence + i:
//!            { u48 record_offset | u16 check | u64 timestamp_ms }
//!            check = low 16 bits of crc32(segment_salt ++ sequence ++ offset ++ timestamp)
//! ```
//!
//! One dense entry per record serves both lookups: by sequence (entry `i`)
//! and by time (timestamps never decrease inside a log, so a binary search
//! finds the first record at or after a time). An open index ends at the
//! first entry that is zero (records start at 4096), whose check does not
//! match, or that does not increase: so a partly written or stale index
//! page after a power loss is recognised entry by entry without reading
//! the segment. Entries are
//! written only after the fdatasync that made their record durable, so an
//! entry is evidence that its record was acknowledged. The index itself is
//! not fsynced on the append path; at seal its header is completed and
//! flushed asynchronously (`msync(MS_ASYNC)`).
//!
//! The file's blocks are allocated (`fallocate`), never left sparse: a
//! store through the map into a hole on a full file system is a SIGBUS.
//! When the file cannot grow (no space), further entries are kept in
//! memory (`spill`) and moved into the file when it can grow again; an
//! index with spilled entries is not sealed (recovery scans the rest).

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use memmap2::MmapMut;

use crate::types::{Sequence, TimestampMs};

const INDEX_MAGIC: u32 = 0x3149_4E54; // "TNI1"
const INDEX_VERSION: u16 = 1;
const HEADER_LEN: usize = 64;
const ENTRY_LEN: usize = 16;
const FLAG_SEALED: u16 = 1;
/// Low 48 bits of an entry's first word: the record offset.
const OFFSET_MASK: u64 = (1 << 48) - 1;
/// Entries the file is created with; it doubles when full.
const INITIAL_ENTRIES: usize = 1024;

/// An open, memory-mapped index.
pub struct Index {
    path: PathBuf,
    file: File,
    map: MmapMut,
    first: Sequence,
    salt: u64,
    /// Entries in the map.
    len: usize,
    /// Entries after those in the map, while the file could not grow.
    spill: Vec<(u64, u64)>,
}

/// What [`Index::load`] found.
pub enum Loaded {
    /// A sealed index whose header and entry checksum verify.
    Sealed {
        /// The index.
        index: Index,
        /// Offset after the last record of the segment.
        data_end: u64,
    },
    /// An index still being appended to (or never sealed); entries are only
    /// a hint until checked against the segment.
    Open(Index),
    /// An open index whose entries stop verifying part way: the verified
    /// prefix is kept (and the rest cleared); the segment is scanned from
    /// there.
    Damaged(Index),
    /// Missing, or not the index of this segment: rebuild it.
    Unusable,
}

fn entries_capacity(map: &MmapMut) -> usize {
    map.len().saturating_sub(HEADER_LEN) / ENTRY_LEN
}

/// Allocates the blocks of `file` up to `len` bytes (`fallocate`, mode 0:
/// the size grows too).
fn allocate(file: &File, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: plain syscall on an open descriptor.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len as libc::off_t) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Bytes of an index file with room for `entries`.
fn file_len(entries: usize) -> u64 {
    (HEADER_LEN + entries * ENTRY_LEN) as u64
}

impl Index {
    /// Creates (or replaces) an empty index for the segment.
    pub fn create(path: &Path, first: Sequence, salt: u64) -> io::Result<Index> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        allocate(&file, file_len(INITIAL_ENTRIES))?;
        Index::start(path, file, first, salt)
    }

    /// Creates a file for a future index (a spare segment's): allocated,
    /// no header yet. [`Index::adopt`] turns it into an index.
    pub fn preallocate(path: &Path) -> io::Result<()> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        allocate(&file, file_len(INITIAL_ENTRIES))
    }

    /// Makes the file at `path` (made by [`Index::preallocate`], then
    /// renamed) the empty index of segment `(first, salt)`. No allocation
    /// when the file is already large enough.
    pub fn adopt(path: &Path, first: Sequence, salt: u64) -> io::Result<Index> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        if file.metadata()?.len() < file_len(INITIAL_ENTRIES) {
            allocate(&file, file_len(INITIAL_ENTRIES))?;
        }
        Index::start(path, file, first, salt)
    }

    fn start(path: &Path, file: File, first: Sequence, salt: u64) -> io::Result<Index> {
        // SAFETY: the file is private to this log (the directory is locked)
        // and never truncated while mapped except through `self`.
        let map = unsafe { MmapMut::map_mut(&file)? };
        let mut index = Index {
            path: path.to_owned(),
            file,
            map,
            first,
            salt,
            len: 0,
            spill: Vec::new(),
        };
        // A reused file may hold old entries: clear them.
        index.map[HEADER_LEN..].fill(0);
        index.write_header(None);
        Ok(index)
    }

    /// Opens an existing index if it belongs to the segment `(first, salt)`.
    pub fn load(path: &Path, first: Sequence, salt: u64) -> io::Result<Loaded> {
        let file = match OpenOptions::new().read(true).write(true).open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Loaded::Unusable),
            Err(e) => return Err(e),
        };
        if file.metadata()?.len() < (HEADER_LEN + ENTRY_LEN) as u64 {
            return Ok(Loaded::Unusable);
        }
        // SAFETY: as in `create`.
        let map = unsafe { MmapMut::map_mut(&file)? };
        let Some(header) = parse_header(&map) else {
            return Ok(Loaded::Unusable);
        };
        if header.first != first || header.salt != salt {
            return Ok(Loaded::Unusable);
        }
        let mut index = Index {
            path: path.to_owned(),
            file,
            map,
            first,
            salt,
            len: 0,
            spill: Vec::new(),
        };
        if let Some((count, data_end, crc)) = header.sealed {
            let count = count as usize;
            if count <= entries_capacity(&index.map)
                && crc32fast::hash(&index.map[HEADER_LEN..HEADER_LEN + count * ENTRY_LEN]) == crc
            {
                index.len = count;
                return Ok(Loaded::Sealed { index, data_end });
            }
            return Ok(Loaded::Unusable);
        }
        index.len = index.count_open_entries();
        if index.len < entries_capacity(&index.map) && index.raw_words(index.len) != (0, 0) {
            // A non-zero entry that does not verify: stale or torn index
            // page. Clear the rest so it cannot be mistaken again.
            let (start, end) = (HEADER_LEN + index.len * ENTRY_LEN, index.map.len());
            index.map[start..end].fill(0);
            return Ok(Loaded::Damaged(index));
        }
        Ok(Loaded::Open(index))
    }

    /// Counts leading entries that verify: matching check, offsets and
    /// timestamps that increase. Anything after the first bad entry is
    /// ignored (recovery scans the segment from there).
    fn count_open_entries(&self) -> usize {
        let mut prev = (0u64, 0u64);
        for i in 0..entries_capacity(&self.map) {
            let (word, ts) = self.raw_words(i);
            let offset = word & OFFSET_MASK;
            let seq = self.first.0 + i as u64;
            if word == 0
                || word != self.entry_word(seq, offset, ts)
                || offset <= prev.0
                || ts < prev.1
            {
                return i;
            }
            prev = (offset, ts);
        }
        entries_capacity(&self.map)
    }

    fn entry_word(&self, seq: u64, offset: u64, ts: u64) -> u64 {
        let mut h = crc32fast::Hasher::new();
        h.update(&self.salt.to_le_bytes());
        h.update(&seq.to_le_bytes());
        h.update(&offset.to_le_bytes());
        h.update(&ts.to_le_bytes());
        (u64::from(h.finalize() & 0xFFFF) << 48) | offset
    }

    fn raw_words(&self, i: usize) -> (u64, u64) {
        let at = HEADER_LEN + i * ENTRY_LEN;
        let e = &self.map[at..at + ENTRY_LEN];
        (
            u64::from_le_bytes(e[0..8].try_into().expect("8")),
            u64::from_le_bytes(e[8..16].try_into().expect("8")),
        )
    }

    fn raw_entry(&self, i: usize) -> (u64, u64) {
        if i >= self.len {
            return self.spill[i - self.len];
        }
        let (word, ts) = self.raw_words(i);
        (word & OFFSET_MASK, ts)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.len + self.spill.len()
    }

    /// True when there are no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries kept in memory because the file could not grow.
    pub fn spilled(&self) -> usize {
        self.spill.len()
    }

    /// Path of the index file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Offset and timestamp of the record with sequence `first + i`.
    pub fn entry(&self, i: usize) -> Option<(u64, TimestampMs)> {
        (i < self.len()).then(|| {
            let (offset, ts) = self.raw_entry(i);
            (offset, TimestampMs(ts))
        })
    }

    /// Offset of record `seq`, if indexed.
    pub fn offset_of(&self, seq: Sequence) -> Option<u64> {
        let i = seq.0.checked_sub(self.first.0)?;
        self.entry(usize::try_from(i).ok()?)
            .map(|(offset, _)| offset)
    }

    /// Index of the first entry with a timestamp at or after `at`
    /// (`len()` when none). Binary search: timestamps never decrease.
    pub fn first_at_or_after(&self, at: TimestampMs) -> usize {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.raw_entry(mid).1 < at.0 {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// Appends the entry of the next sequence. Memory stores only, except a
    /// `fallocate` + remap each time the capacity doubles. Never fails for
    /// want of space: an entry the file has no room for is kept in memory
    /// (and moved into the file at the next successful growth).
    pub fn push(&mut self, offset: u64, at: TimestampMs) -> io::Result<()> {
        assert!(offset <= OFFSET_MASK, "segment offsets fit 48 bits");
        if self.len == entries_capacity(&self.map) || !self.spill.is_empty() {
            // While spilling, try again every INITIAL_ENTRIES entries.
            if self.spill.len().is_multiple_of(INITIAL_ENTRIES) && !self.grow()? {
                self.spill.push((offset, at.0));
                return Ok(());
            }
            if !self.spill.is_empty() {
                self.spill.push((offset, at.0));
                return Ok(());
            }
        }
        self.store(offset, at.0);
        Ok(())
    }

    fn store(&mut self, offset: u64, at: u64) {
        let word = self.entry_word(self.first.0 + self.len as u64, offset, at);
        let at_byte = HEADER_LEN + self.len * ENTRY_LEN;
        self.map[at_byte..at_byte + 8].copy_from_slice(&word.to_le_bytes());
        self.map[at_byte + 8..at_byte + 16].copy_from_slice(&at.to_le_bytes());
        self.len += 1;
    }

    /// Doubles the file (at least to hold the spilled entries) and moves
    /// the spilled entries into it. `Ok(false)` when the file system has
    /// no space; other errors are returned.
    fn grow(&mut self) -> io::Result<bool> {
        let want = self.len() + 1;
        let mut entries = (self.len * 2).max(INITIAL_ENTRIES);
        while entries < want {
            entries *= 2;
        }
        match allocate(&self.file, file_len(entries)) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => return Ok(false),
            Err(e) => return Err(e),
        }
        // SAFETY: as in `start`; the old mapping is dropped on assignment.
        self.map = unsafe { MmapMut::map_mut(&self.file)? };
        for (offset, at) in std::mem::take(&mut self.spill) {
            self.store(offset, at);
        }
        Ok(true)
    }

    /// Forgets entries from `len` on (recovery found them inconsistent).
    pub fn truncate(&mut self, len: usize) {
        if len >= self.len {
            self.spill.truncate(len - self.len);
            return;
        }
        self.spill.clear();
        let start = HEADER_LEN + len * ENTRY_LEN;
        let end = HEADER_LEN + self.len * ENTRY_LEN;
        self.map[start..end].fill(0);
        self.len = len;
    }

    /// Marks the index complete for a segment whose data ends at
    /// `data_end` and schedules write-back.
    pub fn seal(&mut self, data_end: u64) -> io::Result<()> {
        if !self.spill.is_empty() && !self.grow()? {
            // Left open: recovery scans the entries the file lacks.
            return self.map.flush_async();
        }
        let crc = crc32fast::hash(&self.map[HEADER_LEN..HEADER_LEN + self.len * ENTRY_LEN]);
        self.write_header(Some((self.len as u64, data_end, crc)));
        self.map.flush_async()
    }

    /// Turns a sealed index back into an open one (its segment is the last
    /// one again after a restart and will receive more records).
    pub fn unseal(&mut self) {
        self.write_header(None);
    }

    fn write_header(&mut self, sealed: Option<(u64, u64, u32)>) {
        let (count, data_end, crc) = sealed.unwrap_or((0, 0, 0));
        let flags = if sealed.is_some() { FLAG_SEALED } else { 0 };
        let mut h = [0u8; HEADER_LEN];
        h[0..4].copy_from_slice(&INDEX_MAGIC.to_le_bytes());
        h[4..6].copy_from_slice(&INDEX_VERSION.to_le_bytes());
        h[6..8].copy_from_slice(&flags.to_le_bytes());
        h[8..16].copy_from_slice(&self.first.0.to_le_bytes());
        h[16..24].copy_from_slice(&self.salt.to_le_bytes());
        h[24..32].copy_from_slice(&count.to_le_bytes());
        h[32..40].copy_from_slice(&data_end.to_le_bytes());
        h[40..44].copy_from_slice(&crc.to_le_bytes());
        let header_crc = crc32fast::hash(&h[..60]);
        h[60..64].copy_from_slice(&header_crc.to_le_bytes());
        self.map[..HEADER_LEN].copy_from_slice(&h);
    }
}

struct ParsedHeader {
    first: Sequence,
    salt: u64,
    sealed: Option<(u64, u64, u32)>,
}

fn parse_header(map: &[u8]) -> Option<ParsedHeader> {
    let h = map.get(..HEADER_LEN)?;
    let u64_at = |at: usize| u64::from_le_bytes(h[at..at + 8].try_into().expect("8"));
    let u32_at = |at: usize| u32::from_le_bytes(h[at..at + 4].try_into().expect("4"));
    if u32_at(0) != INDEX_MAGIC
        || u16::from_le_bytes([h[4], h[5]]) != INDEX_VERSION
        || crc32fast::hash(&h[..60]) != u32_at(60)
    {
        return None;
    }
    let sealed = (u16::from_le_bytes([h[6], h[7]]) & FLAG_SEALED != 0)
        .then(|| (u64_at(24), u64_at(32), u32_at(40)));
    Some(ParsedHeader {
        first: Sequence(u64_at(8)),
        salt: u64_at(16),
        sealed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_grow_seal_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.idx");
        let mut idx = Index::create(&path, Sequence(100), 7).unwrap();
        for i in 0..3000u64 {
            idx.push(4096 + i * 50, TimestampMs(1000 + i / 10)).unwrap();
        }
        assert_eq!(idx.offset_of(Sequence(100)), Some(4096));
        assert_eq!(idx.offset_of(Sequence(3099)), Some(4096 + 2999 * 50));
        assert_eq!(idx.offset_of(Sequence(3100)), None);
        assert_eq!(idx.offset_of(Sequence(99)), None);
        assert_eq!(idx.first_at_or_after(TimestampMs(1005)), 50);
        assert_eq!(idx.first_at_or_after(TimestampMs(0)), 0);
        assert_eq!(idx.first_at_or_after(TimestampMs(99999)), 3000);
        drop(idx);
        // Open (unsealed): entries are counted.
        match Index::load(&path, Sequence(100), 7).unwrap() {
            Loaded::Open(i) => assert_eq!(i.len(), 3000),
            _ => panic!("expected open index"),
        }
        // Wrong segment identity: unusable.
        assert!(matches!(
            Index::load(&path, Sequence(100), 8).unwrap(),
            Loaded::Unusable
        ));
        let Loaded::Open(mut idx) = Index::load(&path, Sequence(100), 7).unwrap() else {
            panic!()
        };
        idx.seal(999_999).unwrap();
        drop(idx);
        match Index::load(&path, Sequence(100), 7).unwrap() {
            Loaded::Sealed { index, data_end } => {
                assert_eq!(index.len(), 3000);
                assert_eq!(data_end, 999_999);
            }
            _ => panic!("expected sealed index"),
        }
        // A flipped entry byte breaks the sealed checksum.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[HEADER_LEN + 5] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            Index::load(&path, Sequence(100), 7).unwrap(),
            Loaded::Unusable
        ));
        assert!(matches!(
            Index::load(&dir.path().join("missing.idx"), Sequence(1), 1).unwrap(),
            Loaded::Unusable
        ));
    }

    #[test]
    fn open_index_stops_at_non_monotonic_entry() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("y.idx");
        let mut idx = Index::create(&path, Sequence(0), 1).unwrap();
        idx.push(4096, TimestampMs(5)).unwrap();
        idx.push(5000, TimestampMs(6)).unwrap();
        idx.push(4500, TimestampMs(7)).unwrap(); // offset goes backwards: garbage
        idx.push(6000, TimestampMs(8)).unwrap();
        drop(idx);
        let Loaded::Damaged(idx) = Index::load(&path, Sequence(0), 1).unwrap() else {
            panic!()
        };
        assert_eq!(idx.len(), 2);
        // A flipped bit in an entry fails its check: the index ends there.
        let mut idx = Index::create(&path, Sequence(0), 1).unwrap();
        for i in 0..10 {
            idx.push(4096 + i * 100, TimestampMs(5)).unwrap();
        }
        drop(idx);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[HEADER_LEN + 4 * ENTRY_LEN + 1] ^= 0x04;
        std::fs::write(&path, bytes).unwrap();
        let Loaded::Damaged(idx) = Index::load(&path, Sequence(0), 1).unwrap() else {
            panic!()
        };
        assert_eq!(idx.len(), 4);
    }
}
