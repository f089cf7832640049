//! Append throughput of `tern_storage::Log` (group commit) against one
//! `pwrite` + `fdatasync` per record, and buffered vs `O_DIRECT`.
//!
//! Each benchmark id owns one log on one glommio executor (reused by every
//! sample); `appenders` tasks append `iters` records in total, and an
//! append returns only after the fdatasync covering it. Throughput is in
//! records.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tern_bench::{
    executor, size_label, AppendBench, Budget, FsyncBaseline, APPENDERS, DIRECT_APPENDERS,
    DIRECT_RECORD_SIZE, RECORD_SIZES,
};
use tern_storage::{BufferedEnv, DirectEnv};

fn storage_append(c: &mut Criterion) {
    let ex = executor();
    let mut group = c.benchmark_group("storage_append");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .throughput(Throughput::Elements(1));
    for size in RECORD_SIZES {
        let label = size_label(size);
        let mut baseline = FsyncBaseline::new(size);
        group.bench_function(
            BenchmarkId::new(format!("fsync_per_record/{label}"), 1),
            |b| b.iter_custom(|iters| baseline.run(Budget::Records(iters)).elapsed),
        );
        drop(baseline);
        for appenders in APPENDERS {
            let mut log = AppendBench::new(&ex, BufferedEnv, size, appenders);
            group.bench_function(
                BenchmarkId::new(format!("buffered/{label}"), appenders),
                |b| b.iter_custom(|iters| log.run(Budget::Records(iters)).elapsed),
            );
        }
    }
    let label = size_label(DIRECT_RECORD_SIZE);
    for appenders in DIRECT_APPENDERS {
        let mut log = AppendBench::new(&ex, DirectEnv, DIRECT_RECORD_SIZE, appenders);
        group.bench_function(
            BenchmarkId::new(format!("direct/{label}"), appenders),
            |b| b.iter_custom(|iters| log.run(Budget::Records(iters)).elapsed),
        );
    }
    group.finish();
}

criterion_group!(benches, storage_append);
criterion_main!(benches);
