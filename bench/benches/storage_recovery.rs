//! Time of `Log::open` on a 1 GiB log (8 full 128 MiB segments of 4 KiB
//! records): (a) with intact indexes, (b) with every `*.idx` deleted before
//! each open, so every record is scanned with full checksums (throughput in
//! bytes scanned). The log is built once, just before; its files are in the
//! page cache (warm), so this measures CPU work, not the disk.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use tern_bench::{executor, Indexes, RecoveryFixture, RECOVERY_SEGMENTS};

fn storage_recovery(c: &mut Criterion) {
    let ex = executor();
    let fixture = RecoveryFixture::build(&ex, RECOVERY_SEGMENTS);
    let mut group = c.benchmark_group("storage_recovery");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1));
    let time_opens = |indexes: Indexes, iters: u64| {
        (0..iters)
            .map(|_| fixture.open(&ex, indexes).elapsed)
            .sum::<Duration>()
    };
    group.measurement_time(Duration::from_secs(2));
    group.bench_function("open_1GiB/intact_indexes", |b| {
        b.iter_custom(|iters| time_opens(Indexes::Intact, iters))
    });
    group
        .measurement_time(Duration::from_secs(8))
        .throughput(Throughput::BytesDecimal(fixture.bytes));
    group.bench_function("open_1GiB/indexes_deleted", |b| {
        b.iter_custom(|iters| time_opens(Indexes::Deleted, iters))
    });
    group.finish();
}

criterion_group!(benches, storage_recovery);
criterion_main!(benches);
