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
