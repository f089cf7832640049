//! One-process storage benchmark report: every scenario of the criterion
//! benches `storage_append` and `storage_recovery`, with fixed durations and
//! counts, printed as Markdown tables on stdout (progress on stderr).
//! Targets are reported, never asserted.
//!
//! The disk of the development VMs has bursts of very slow fdatasync, so
//! the append scenarios are measured in interleaved *rounds*: each round
//! runs every scenario once (`TERN_REPORT_SECS`, default 0.4 s, after
//! `sync` + 200 ms of quiet), and a scenario's figure is the median over the
//! rounds (`TERN_REPORT_ROUNDS`, default 7). Ratios are taken per round
//! against the baseline measured moments before, then their median.

use std::time::{Duration, Instant};

use glommio::LocalExecutor;
use tern_bench::{
    executor, kernel_release, machine_load, settle, size_label, AppendBench, Budget, FsyncBaseline,
    Indexes, RecoveryFixture, Run, APPENDERS, DIRECT_APPENDERS, DIRECT_RECORD_SIZE, RECORD_SIZES,
    RECOVERY_RECORD_SIZE, RECOVERY_SEGMENTS,
};
use tern_storage::{BufferedEnv, DirectEnv, LogConfig};

const WARM_UP: Duration = Duration::from_millis(300);
const INTACT_OPENS: usize = 10;
const SCAN_OPENS: usize = 5;
/// 4 KiB records in one default 128 MiB segment (about; 32418 with a
/// 44-byte record header).
const FRESH_RECORDS_PER_SEGMENT: u64 = 32_000;
const KIB4: usize = 4 * 1024;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Baseline,
    Buffered,
    Direct,
    /// Buffered, a new log per round, appending this many records in one
    /// go (ignores the round's duration).
    Fresh(u64),
    /// Buffered with `zero_fill_ahead_bytes = 0` (the storage's zero-fill
    /// ahead switched off).
    NoZeroFill,
}

enum Driver<'ex> {
    Baseline(FsyncBaseline),
    Buffered(AppendBench<'ex, BufferedEnv>),
    Direct(AppendBench<'ex, DirectEnv>),
    Fresh(u64),
}

struct Scenario<'ex> {
    kind: Kind,
    size: usize,
    appenders: usize,
    driver: Driver<'ex>,
    runs: Vec<Run>,
}

impl<'ex> Scenario<'ex> {
    fn new(ex: &'ex LocalExecutor, kind: Kind, size: usize, appenders: usize) -> Self {
        let driver = match kind {
            Kind::Baseline => Driver::Baseline(FsyncBaseline::new(size)),
            Kind::Buffered => Driver::Buffered(AppendBench::new(ex, BufferedEnv, size, appenders)),
            Kind::Direct => Driver::Direct(AppendBench::new(ex, DirectEnv, size, appenders)),
            Kind::Fresh(n) => Driver::Fresh(n),
            Kind::NoZeroFill => {
                let config = LogConfig {
                    zero_fill_ahead_bytes: 0,
                    ..LogConfig::default()
                };
                Driver::Buffered(AppendBench::with_config(
                    ex,
                    BufferedEnv,
                    config,
                    size,
                    appenders,
                ))
            }
        };
        Scenario {
            kind,
            size,
            appenders,
            driver,
            runs: Vec::new(),
        }
    }

    fn name(&self) -> String {
        let (size, n) = (size_label(self.size), self.appenders);
        match self.kind {
            Kind::Baseline => format!("baseline pwrite+fdatasync, {size}"),
            Kind::Buffered => format!("log buffered, {size} x {n}"),
            Kind::Direct => format!("log O_DIRECT, {size} x {n}"),
            Kind::Fresh(r) => format!(
                "log buffered, {size} x {n}, fresh log, {r} records in one go ({} segment rolls)",
                r / FRESH_RECORDS_PER_SEGMENT
            ),
            Kind::NoZeroFill => format!("log buffered, {size} x {n}, zero_fill_ahead_bytes = 0"),
        }
    }

    fn run(&mut self, ex: &LocalExecutor, budget: Budget) -> Run {
        match &mut self.driver {
            Driver::Baseline(b) => b.run(budget),
            Driver::Buffered(b) => b.run(budget),
            Driver::Direct(b) => b.run(budget),
            Driver::Fresh(records) => {
                // `new` settles after creating the log.
                let mut b = AppendBench::new(ex, BufferedEnv, self.size, self.appenders);
                b.run(Budget::Records(*records))
            }
        }
    }

    fn rps(&self) -> Vec<f64> {
        self.runs.iter().map(Run::records_per_sec).collect()
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn min_max(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        })
}

/// Median over rounds of `a[r] / b[r]`.
fn median_ratio(a: &Scenario, b: &Scenario) -> f64 {
    median(a.rps().iter().zip(b.rps()).map(|(x, y)| x / y).collect())
}

fn yes(met: bool) -> &'static str {
    if met {
        "yes"
    } else {
        "**no**"
    }
}

fn env_f64(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let started = Instant::now();
    let secs = Duration::from_secs_f64(env_f64("TERN_REPORT_SECS", 0.4));
    let rounds = env_f64("TERN_REPORT_ROUNDS", 7.0).max(1.0) as usize;
    let load_before = machine_load();
    let ex = executor();

    let mut scenarios = Vec::new();
    for size in RECORD_SIZES {
        scenarios.push(Scenario::new(&ex, Kind::Baseline, size, 1));
        for appenders in APPENDERS {
            scenarios.push(Scenario::new(&ex, Kind::Buffered, size, appenders));
        }
    }
    for appenders in DIRECT_APPENDERS {
        scenarios.push(Scenario::new(
            &ex,
            Kind::Direct,
            DIRECT_RECORD_SIZE,
            appenders,
        ));
    }
    for (size, appenders) in [(KIB4, 1), (KIB4, 64), (64 * 1024, 64)] {
        scenarios.push(Scenario::new(&ex, Kind::NoZeroFill, size, appenders));
    }
    // Fits in the first segment / crosses three segment rolls.
    scenarios.push(Scenario::new(&ex, Kind::Fresh(25_000), KIB4, 64));
    scenarios.push(Scenario::new(&ex, Kind::Fresh(100_000), KIB4, 64));

    for round in 0..rounds {
        eprintln!("round {}/{rounds}", round + 1);
        for s in &mut scenarios {
            if round == 0 && !matches!(s.kind, Kind::Fresh(_)) {
                s.run(&ex, Budget::For(WARM_UP));
            }
            settle();
            let run = s.run(&ex, Budget::For(secs));
            s.runs.push(run);
        }
    }

    eprintln!("building the recovery log");
    let fixture = RecoveryFixture::build(&ex, RECOVERY_SEGMENTS);
    eprintln!("opening it ({INTACT_OPENS} + {SCAN_OPENS} times, after one warm-up each)");
    fixture.open(&ex, Indexes::Intact);
    let intact: Vec<f64> = (0..INTACT_OPENS)
        .map(|_| fixture.open(&ex, Indexes::Intact).elapsed.as_secs_f64() * 1e3)
        .collect();
    fixture.open(&ex, Indexes::Deleted);
    let scan: Vec<f64> = (0..SCAN_OPENS)
        .map(|_| fixture.open(&ex, Indexes::Deleted).elapsed.as_secs_f64() * 1e3)
        .collect();
    let total = started.elapsed();

    let find = |kind: Kind, size: usize, appenders: usize| {
        scenarios
            .iter()
            .find(|s| s.kind == kind && s.size == size && s.appenders == appenders)
            .expect("scenario")
    };

    println!("### Append throughput\n");
    println!(
        "{rounds} interleaved rounds; per round each scenario runs {} s (after `sync` + 200 ms quiet; \
         the first round after a {} ms warm-up on the same log). Medians over the rounds, \
         records/s with (min-max). MB = 10^6 payload bytes. \"x baseline\" = median over rounds of \
         records/s / records/s of the one-fdatasync-per-record baseline of the same record size in \
         the same round. \"records/batch\" = records per group commit (one write + one fdatasync, \
         from `Log::stats`), all rounds. \"written/record\" = bytes handed to pwrite per record \
         (frame header, block padding, rewritten partial block).\n",
        secs.as_secs_f64(),
        WARM_UP.as_millis()
    );
    println!(
        "| scenario | records/s (min-max) | MB/s | x baseline | records/batch | written/record (B) |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for s in &scenarios {
        let rps = s.rps();
        let (lo, hi) = min_max(&rps);
        let med = median(rps);
        let total = s.runs.iter().fold(Run::default(), |a, r| Run {
            records: a.records + r.records,
            elapsed: a.elapsed + r.elapsed,
            batches: a.batches + r.batches,
            bytes_written: a.bytes_written + r.bytes_written,
        });
        let ratio = median_ratio(s, find(Kind::Baseline, s.size, 1));
        println!(
            "| {} | {med:.0} ({lo:.0}-{hi:.0}) | {:.1} | {ratio:.1} | {:.1} | {:.0} |",
            s.name(),
            med * s.size as f64 / 1e6,
            total.records_per_batch(),
            total.written_per_record(),
        );
    }

    println!("\n### Buffered vs O_DIRECT\n");
    println!(
        "| record x appenders | buffered records/s | O_DIRECT records/s | O_DIRECT / buffered |"
    );
    println!("|---|---:|---:|---:|");
    for appenders in DIRECT_APPENDERS {
        let b = find(Kind::Buffered, DIRECT_RECORD_SIZE, appenders);
        let d = find(Kind::Direct, DIRECT_RECORD_SIZE, appenders);
        println!(
            "| {} x {appenders} | {:.0} | {:.0} | {:.2} |",
            size_label(DIRECT_RECORD_SIZE),
            median(b.rps()),
            median(d.rps()),
            median_ratio(d, b)
        );
    }

    let gb = fixture.bytes as f64 / 1e9;
    let (intact_med, (intact_min, intact_max)) = (median(intact.clone()), min_max(&intact));
    let (scan_med, (scan_min, scan_max)) = (median(scan.clone()), min_max(&scan));
    let scan_gbs = gb / (scan_med / 1e3);
    println!("\n### Recovery (`Log::open`)\n");
    println!(
        "Log: {} segments, {} records of {}, {} bytes ({:.3} GiB); the last (active) segment is full, \
         so the intact-index open checks its whole index (entry by entry) and verifies its last record. Built with 64 appenders in {:.1} s \
         ({:.0} records/s, {:.1} records/batch). Page cache warm (the log was just written). Time of \
         `Log::open` only; median (min-max) of {INTACT_OPENS} / {SCAN_OPENS} opens.\n",
        fixture.segments,
        fixture.records,
        size_label(RECOVERY_RECORD_SIZE),
        fixture.bytes,
        fixture.bytes as f64 / (1u64 << 30) as f64,
        fixture.build.elapsed.as_secs_f64(),
        fixture.build.records_per_sec(),
        fixture.build.records_per_batch(),
    );
    println!("| scenario | median ms | min ms | max ms | GB/s scanned |");
    println!("|---|---:|---:|---:|---:|");
    println!("| open, intact indexes | {intact_med:.1} | {intact_min:.1} | {intact_max:.1} | - |");
    println!(
        "| open, every *.idx deleted (full scan) | {scan_med:.1} | {scan_min:.1} | {scan_max:.1} | {scan_gbs:.2} |"
    );

    let ratio64 = median_ratio(
        find(Kind::Buffered, KIB4, 64),
        find(Kind::Baseline, KIB4, 1),
    );
    println!("\n### Targets\n");
    println!("| target | measured | met |");
    println!("|---|---:|---|");
    println!(
        "| 64 appenders x 4KiB >= 30x baseline | {ratio64:.1}x | {} |",
        yes(ratio64 >= 30.0)
    );
    println!(
        "| open 1 GiB, intact indexes < 200 ms | {intact_med:.1} ms | {} |",
        yes(intact_med < 200.0)
    );
    println!(
        "| index-less scan >= 1 GB/s | {scan_gbs:.2} GB/s | {} |",
        yes(scan_gbs >= 1.0)
    );
    println!(
        "\nWhole run: {:.1} s; kernel {}; {} CPUs; before: {load_before}; after: {}.",
        total.as_secs_f64(),
        kernel_release(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        machine_load()
    );
}
