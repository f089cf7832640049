//! Helpers shared by the storage integration tests.
#![allow(dead_code)]

use std::future::Future;
use std::path::Path;

use tern_storage::{Env, Log, LogConfig, RecordKind, TimestampMs};

/// Runs `fut` on a fresh glommio executor sized for an 8 MiB memlock limit.
pub fn run<T>(fut: impl Future<Output = T>) -> T {
    glommio::LocalExecutorBuilder::default()
        .io_memory(512 << 10)
        .ring_depth(64)
        .make()
        .expect("glommio executor")
        .run(fut)
}

/// Small segments so tests roll often; no retention delay.
pub fn small_config() -> LogConfig {
    LogConfig {
        record_bytes_max: 64 << 10,
        segment_bytes_max: 256 << 10,
        retention_min_ms: 0,
        ..LogConfig::default()
    }
}

pub const KIND: RecordKind = RecordKind(1);

pub async fn open<E: Env>(env: E, dir: &Path, cfg: &LogConfig) -> Log<E> {
    Log::open(env, dir, cfg.clone(), TimestampMs(1_000))
        .await
        .expect("open")
        .0
}

/// Deterministic payload for record number `i`.
pub fn payload(i: u64, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i as usize * 31 + j * 7) as u8).collect()
}

/// A temporary directory on tmpfs when available: the exhaustive recovery
/// tests reopen the log thousands of times and test logic, not the disk.
pub fn fast_tempdir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(dir) = tempfile::tempdir_in(shm) {
            return dir;
        }
    }
    tempfile::tempdir().expect("tempdir")
}

/// Copies every regular file of `from` into `to` (which must exist).
pub fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// Path of the only/last segment file and its index in `dir`.
pub fn last_segment(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let mut segs: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segs.sort();
    let seg = segs.pop().expect("a segment");
    let idx = seg.with_extension("idx");
    (seg, idx)
}
