//! The files of a log directory as the log makes them: segments (the
//! first one, and the spare turned into the next one), read-only maps, and
//! the durable directory and file helpers the engine uses for its own
//! files.

use std::fs::File;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::config::LogConfig;
use crate::env::{Env, LogFile};
use crate::error::Result;
use crate::index::Index;
use crate::log::Shared;
use crate::segment::{index_path, segment_path, SegmentHeader};
use crate::state::Segment;

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
