//! Group commit: one flusher task per log turns everything appenders queued
//! into one write and one fdatasync.
//!
//! The flusher never waits on a timer. It sleeps until there is work, takes
//! *everything* queued (the batch), writes it, fdatasyncs, publishes the new
//! durable point and wakes the appenders it covers, then immediately looks
//! again: whatever queued while the device was busy is the next batch.
//!
//! # Write path, in order (per batch)
//!
//! 1. Appenders encode records into the open chunk (memory only) and wait.
//! 2. The flusher takes all chunks. For a chunk that starts a new segment:
//!    seal the previous segment's index (`msync(MS_ASYNC)`, not a barrier),
//!    take the spare (`spare-N.next`, created and `fallocate`d ahead, with
//!    its index file `spare-N.next-idx`), write the segment header block into it,
//!    **fdatasync(segment)**, rename both to the segment's names,
//!    **fsync(directory)**, write the index header.
//! 3. Write the chunk (block aligned, the partial last block rewritten from
//!    memory; zeros ahead where nothing was written yet) and
//! 4. **fdatasync(segment)**, both in one `LogFile::write_all_sync`
//!    (io_uring for buffered files, the core's blocking thread for
//!    `O_DIRECT`). Only now are the chunk's records durable.
//! 5. Push index entries (memory stores into the mapped index), advance the
//!    durable point, wake the appenders: their `append` returns.
//! 6. If cursors changed: write the next cursor slot, **fdatasync(cursors)**,
//!    wake the cursor setters. `Log::set_cursor(to)` waits until every
//!    record below `to` is durable before changing the value, so a cursor
//!    never reaches the disk before the records it passes.
//!
//! Any error in steps 2-6 fails the log for good (`Error::Fatal`): after a
//! failed fdatasync the kernel may have dropped the dirty pages, so retrying
//! could acknowledge data that is not on disk.
//!
//! # The spare segment
//!
//! Between batches, when the spare was taken, the flusher makes the next
//! one (create, `fallocate` to `segment_bytes_max`, and the index file):
//! the only allocation of the write path, done before any record needs
//! it. If that fails (a full file system), nothing is lost: the log goes
//! on in the active segment, new records are refused with
//! `Error::NoSpace` once only `reserve_bytes` are left (results of
//! accepted work may use those), and the spare is tried again by
//! [`crate::Log::retry_spare`] and after every reclaim that freed space.

use std::future::poll_fn;
use std::rc::{Rc, Weak};
use std::task::Poll;

use std::path::PathBuf;

use crate::env::{Env, LogFile};
use crate::error::Result;
use crate::index::Index;
use crate::log::Shared;
use crate::segment::BLOCK;
use crate::state::{bucket, Chunk, Spare, SpareFiles, BATCH_BUCKETS, SYNC_BUCKETS};

/// Body of the flusher task spawned by [`crate::Log::open`]. Holds only a
/// weak reference while idle, so dropping every `Log` handle ends it.
pub(crate) async fn run_flusher<E: Env>(weak: Weak<Shared<E>>) {
    loop {
        let Some(shared) = wait_for_work(&weak).await else {
            return;
        };
        make_spare(&shared).await;
        if let Err(e) = flush_once(&shared).await {
            let mut st = shared.st.borrow_mut();
            tracing::error!(dir = %shared.dir.display(), error = %e, "log failed; no further appends");
            st.failed = Some(e.to_string());
            st.wake_all();
            return;
        }
    }
}

/// Resolves to the log when there is work; `None` when the log was dropped
/// or closed with nothing left to do.
async fn wait_for_work<E: Env>(weak: &Weak<Shared<E>>) -> Option<Rc<Shared<E>>> {
    poll_fn(|cx| {
        let Some(shared) = weak.upgrade() else {
            return Poll::Ready(None);
        };
        let mut st = shared.st.borrow_mut();
        if st.failed.is_some() {
            return Poll::Ready(None);
        }
        if st.has_work() {
            drop(st);
            return Poll::Ready(Some(shared));
        }
        if st.closed {
            // `Log::close` returns once this is seen, and the strong
            // reference taken above is dropped as this poll returns.
            st.flusher_exited = true;
            st.wake_all();
            return Poll::Ready(None);
        }
        st.flusher = Some(cx.waker().clone());
        Poll::Pending
    })
    .await
}

/// Makes the spare segment when it is needed (see the module docs). A
/// failure is not fatal: no record depends on it yet.
async fn make_spare<E: Env>(shared: &Rc<Shared<E>>) {
    {
        let mut st = shared.st.borrow_mut();
        if !matches!(st.spare, Spare::Needed) || st.closed {
            return;
        }
        st.spare = Spare::Creating;
    }
    let number = {
        let mut st = shared.st.borrow_mut();
        st.spare_number += 1;
        st.spare_number
    };
    let made = create_spare(shared, number).await;
    let mut st = shared.st.borrow_mut();
    st.spare = match made {
        Ok(file) => {
            if st.spare_warned {
                tracing::info!(dir = %shared.dir.display(), "next segment made again: new records accepted");
                st.spare_warned = false;
            }
            Spare::Ready(file)
        }
        Err(e) => {
            if !st.spare_warned {
                tracing::warn!(dir = %shared.dir.display(), error = %e,
                    "could not make the next segment; new records are refused once the reserve is reached");
                st.spare_warned = true;
            }
            Spare::Failed(e.to_string())
        }
    };
    st.wake_all();
}

async fn create_spare<E: Env>(
    shared: &Shared<E>,
    number: u64,
) -> std::io::Result<SpareFiles<E::File>> {
    let (seg, idx) = spare_paths(&shared.dir, number);
    let made = async {
        let file = shared.env.create(&seg).await?;
        file.allocate(shared.config.segment_bytes_max).await?;
        Index::preallocate(&idx)?;
        Ok(file)
    }
    .await;
    match made {
        Ok(file) => Ok(SpareFiles { file, seg, idx }),
        Err(e) => {
            let _ = std::fs::remove_file(&seg);
            let _ = std::fs::remove_file(&idx);
            Err(e)
        }
    }
}

/// The files of spare number `n`: `spare-N.next` and `spare-N.next-idx`
/// (never taken for segments or indexes; recovery deletes them).
pub(crate) fn spare_paths(dir: &std::path::Path, n: u64) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("spare-{n}.next")),
        dir.join(format!("spare-{n}.next-idx")),
    )
}

/// Is `name` a spare's file name?
pub(crate) fn is_spare_name(name: &str) -> bool {
    name.strip_prefix("spare-")
        .and_then(|r| {
            r.strip_suffix(".next")
                .or_else(|| r.strip_suffix(".next-idx"))
        })
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

async fn flush_once<E: Env>(shared: &Rc<Shared<E>>) -> Result<()> {
    // Let tasks woken by the previous batch (or by anything else) run first
    // and queue their next records: without this, appenders released
    // early (the first chunk of a batch that spans a segment roll) stay
    // half a cycle out of phase and the group commit splits in two.
    futures_lite::future::yield_now().await;
    let batch = shared.st.borrow_mut().take_batch();
    for chunk in batch {
        write_chunk(shared, chunk).await?;
    }
    write_cursors(shared).await
}

async fn write_chunk<E: Env>(shared: &Rc<Shared<E>>, mut chunk: Chunk) -> Result<()> {
    if let Some(header) = chunk.new_segment {
        shared.seal_active()?;
        let spare = shared
            .st
            .borrow_mut()
            .claimed
            .pop_front()
            .expect("a chunk that starts a segment claimed a spare");
        let (file, segment) = shared.start_segment(spare, header).await?;
        let mut st = shared.st.borrow_mut();
        st.active_file = Rc::new(file);
        st.segments.insert(header.first, segment);
    }
    let (file, zeroed_to) = {
        let st = shared.st.borrow();
        let (_, segment) = st.segments.iter().next_back().expect("active segment");
        (st.active_file.clone(), segment.zeroed_to)
    };
    let data_end = chunk.end();
    let padded = chunk.buf.len().div_ceil(BLOCK as usize) * BLOCK as usize;
    chunk.buf.resize(padded, 0);
    let padded_end = chunk.file_pos + padded as u64;
    // The chunk, then zeros only where nothing was ever written, then the
    // fdatasync: one call.
    let mut writes = vec![(std::mem::take(&mut chunk.buf), chunk.file_pos)];
    let zeros = zero_fill_range(&shared.config, padded_end, zeroed_to);
    if let Some((from, to)) = zeros {
        writes.push((vec![0; (to - from) as usize], from));
    }
    let write_len = padded as u64 + zeros.map_or(0, |(from, to)| to - from);
    let started = std::time::Instant::now();
    file.write_all_sync(writes).await?;
    let commit_us = started.elapsed().as_micros() as u64;
    let mut st = shared.st.borrow_mut();
    let stats = &mut st.stats;
    stats.batches += 1;
    stats.records += chunk.records.len() as u64;
    stats.bytes_written += write_len;
    stats.sync_us_buckets[bucket(commit_us, SYNC_BUCKETS)] += 1;
    stats.sync_us_total += commit_us;
    stats.batch_records_buckets[bucket(chunk.records.len() as u64, BATCH_BUCKETS)] += 1;
    let last = *chunk.records.last().expect("chunk has records");
    let (_, segment) = st.segments.iter_mut().next_back().expect("active segment");
    for entry in &chunk.records {
        debug_assert_eq!(entry.seq, segment.next_seq());
        segment.index.push(entry.offset, entry.at)?;
    }
    segment.data_end = data_end;
    segment.zeroed_to = segment
        .zeroed_to
        .max(padded_end)
        .max(zeros.map_or(0, |(_, to)| to));
    segment.last_ts = last.at;
    st.durable_next = last.seq.next();
    st.wake_all();
    Ok(())
}

/// The range to fill with zeros after a chunk ending at `end`, if the
/// zeroed region (written at least once) ends less than half a window
/// ahead. Writing into preallocated (unwritten) extents makes every
/// fdatasync convert extents and write the inode; zeros written ahead once
/// per window make the following batches plain overwrites. Only blocks
/// never written are zeroed (each block is written at most once as zeros).
fn zero_fill_range(config: &crate::LogConfig, end: u64, zeroed_to: u64) -> Option<(u64, u64)> {
    let ahead = config.zero_fill_ahead_bytes;
    if ahead == 0 || end + ahead / 2 <= zeroed_to {
        return None;
    }
    let from = zeroed_to.max(end);
    let to = (end + ahead).min(config.segment_bytes_max);
    (to > from).then_some((from, to))
}

async fn write_cursors<E: Env>(shared: &Rc<Shared<E>>) -> Result<()> {
    let (snapshot, version, file) = {
        let st = shared.st.borrow();
        if st.cursor_version == st.durable_cursor_version {
            return Ok(());
        }
        let snapshot = crate::cursor::Snapshot {
            generation: st.durable_cursors.generation + 1,
            values: st.cursors.clone(),
        };
        (snapshot, st.cursor_version, st.cursor_file.clone())
    };
    file.write_all_sync(vec![(
        snapshot.encode(),
        snapshot.slot() * crate::cursor::SLOT_BYTES as u64,
    )])
    .await?;
    let mut st = shared.st.borrow_mut();
    st.durable_cursors = snapshot;
    st.durable_cursor_version = version;
    st.wake_all();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::zero_fill_range;
    use crate::LogConfig;

    #[test]
    fn zero_fill_window() {
        let mib = 1 << 20;
        let cfg = LogConfig {
            segment_bytes_max: 64 * mib,
            zero_fill_ahead_bytes: 4 * mib,
            ..LogConfig::default()
        };
        // Far inside the zeroed region: nothing.
        assert_eq!(zero_fill_range(&cfg, 12288, 8 * mib), None);
        // Within half a window of the frontier: only the never-written part.
        assert_eq!(
            zero_fill_range(&cfg, 12288, mib),
            Some((mib, 12288 + 4 * mib))
        );
        // Data already past the frontier: from the data end.
        assert_eq!(
            zero_fill_range(&cfg, 2 * mib, mib),
            Some((2 * mib, 6 * mib))
        );
        // Never past the segment.
        assert_eq!(
            zero_fill_range(&cfg, 64 * mib - 4096, 0),
            Some((64 * mib - 4096, 64 * mib))
        );
        assert_eq!(zero_fill_range(&cfg, 64 * mib, 0), None);
        // Disabled.
        let off = LogConfig {
            zero_fill_ahead_bytes: 0,
            ..cfg
        };
        assert_eq!(zero_fill_range(&off, 4096, 0), None);
    }
}
