//! Shared drivers for the tern benchmarks.
//!
//! The criterion benches (`benches/storage_append.rs`,
//! `benches/storage_recovery.rs`) and the one-shot report binary
//! (`src/bin/storage-report.rs`) all measure through the types here, so
//! they run exactly the same workloads:
//!
//! * [`AppendBench`]: one [`Log`] on one glommio executor, `appenders`
//!   tasks (`spawn_local`) each appending fixed-size records in a loop; an
//!   append returns only after the fdatasync that covers it.
//! * [`FsyncBaseline`]: the naive design, one `pwrite` + `fdatasync` per
//!   record through `std::fs`, into a preallocated file (like a segment).
//! * [`RecoveryFixture`]: a ~1 GiB log of 4 KiB records, reopened with its
//!   indexes intact or with every `*.idx` deleted.
//!
//! Batch sizes come from the log's own counters ([`Log::stats`]).

use std::cell::Cell;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::{LocalExecutor, LocalExecutorBuilder};
use tempfile::TempDir;
use tern_storage::record::HEADER_LEN;
use tern_storage::segment::DATA_START;
use tern_storage::{Env, Log, LogConfig, LogStats, RecordKind, RecoveryReport, TimestampMs};

/// KiB.
pub const KIB: usize = 1024;
/// Record payload sizes of the append benchmarks.
pub const RECORD_SIZES: [usize; 3] = [KIB, 4 * KIB, 64 * KIB];
/// Concurrent appender tasks of the buffered append benchmarks.
pub const APPENDERS: [usize; 3] = [1, 8, 64];
/// Record size of the buffered-vs-direct comparison.
pub const DIRECT_RECORD_SIZE: usize = 4 * KIB;
/// Appender counts of the buffered-vs-direct comparison.
pub const DIRECT_APPENDERS: [usize; 2] = [1, 64];
/// Record kind the benchmarks append.
pub const KIND: RecordKind = RecordKind(1);

/// A glommio executor sized for RLIMIT_MEMLOCK = 8 MiB (1 MiB of
/// registered I/O memory, rings 128 deep). `run` may be called on it
/// repeatedly from the same thread; the log's flusher task stays parked in
/// it between runs.
pub fn executor() -> LocalExecutor {
    LocalExecutorBuilder::default()
        .io_memory(1 << 20)
        .ring_depth(128)
        .make()
        .expect("glommio executor (check RLIMIT_MEMLOCK)")
}

/// Where benchmark files go: `$TERN_BENCH_DIR`, else the workspace's
/// `target/` (the real disk, not a tmpfs `/tmp`).
pub fn scratch_root() -> PathBuf {
    match std::env::var_os("TERN_BENCH_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
    }
}

/// A fresh temporary directory under [`scratch_root`], deleted on drop.
pub fn scratch_dir(prefix: &str) -> TempDir {
    let root = scratch_root();
    std::fs::create_dir_all(&root).expect("create scratch root");
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(root)
        .expect("create scratch dir")
}

/// Lets the disk go quiet before a measurement: `sync(2)` (writeback of
/// earlier scenarios, discards of their deleted files) and a short pause.
pub fn settle() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    std::thread::sleep(Duration::from_millis(200));
}

/// `1KiB`, `4KiB`, `64KiB`, ...
pub fn size_label(bytes: usize) -> String {
    if bytes.is_multiple_of(KIB) {
        format!("{}KiB", bytes / KIB)
    } else {
        format!("{bytes}B")
    }
}

/// A payload of `size` non-zero bytes.
pub fn payload(size: usize) -> Rc<[u8]> {
    (0..size).map(|i| (i % 251) as u8 + 1).collect()
}

/// How much work one measurement does.
#[derive(Clone, Copy, Debug)]
pub enum Budget {
    /// Exactly this many records in total (criterion's `iters`).
    Records(u64),
    /// Keep appending until this much time has passed.
    For(Duration),
}

/// Shared between the appender tasks of one measurement.
enum Left {
    Records(Cell<u64>),
    Until(Instant),
}

impl Left {
    fn new(budget: Budget, start: Instant) -> Left {
        match budget {
            Budget::Records(n) => Left::Records(Cell::new(n)),
            Budget::For(d) => Left::Until(start + d),
        }
    }

    /// Claims one more record, if the budget allows.
    fn take(&self) -> bool {
        match self {
            Left::Records(n) => {
                let left = n.get();
                n.set(left.saturating_sub(1));
                left > 0
            }
            Left::Until(deadline) => Instant::now() < *deadline,
        }
    }
}

/// Result of one measurement.
#[derive(Clone, Copy, Debug, Default)]
pub struct Run {
    /// Records made durable.
    pub records: u64,
    /// Wall time from the first append to the last acknowledgement.
    pub elapsed: Duration,
    /// Group commits (one write + one fdatasync each) during the run; for
    /// the baseline, one per record.
    pub batches: u64,
    /// Bytes handed to `pwrite` for records during the run (block padding
    /// and rewritten partial blocks included).
    pub bytes_written: u64,
}

impl Run {
    /// Records per second.
    pub fn records_per_sec(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64()
    }

    /// Payload megabytes (10^6 bytes) per second for `record_size` records.
    pub fn mb_per_sec(&self, record_size: usize) -> f64 {
        self.records_per_sec() * record_size as f64 / 1e6
    }

    /// Records covered by one group commit, on average.
    pub fn records_per_batch(&self) -> f64 {
        self.records as f64 / self.batches.max(1) as f64
    }

    /// Bytes written per record, on average.
    pub fn written_per_record(&self) -> f64 {
        self.bytes_written as f64 / self.records.max(1) as f64
    }
}

/// One log on one executor, driven by `appenders` concurrent tasks. Reused
/// across measurements (criterion calls [`AppendBench::run`] once per
/// sample); the log keeps growing, rolling segments as it would in
/// production. Closed and deleted on drop.
pub struct AppendBench<'ex, E: Env> {
    ex: &'ex LocalExecutor,
    log: Option<Log<E>>,
    payload: Rc<[u8]>,
    appenders: usize,
    dir: Option<TempDir>,
}

impl<'ex, E: Env> AppendBench<'ex, E> {
    /// Opens a new log with the default [`LogConfig`] in a scratch dir.
    pub fn new(
        ex: &'ex LocalExecutor,
        env: E,
        record_size: usize,
        appenders: usize,
    ) -> AppendBench<'ex, E> {
        Self::with_config(ex, env, LogConfig::default(), record_size, appenders)
    }

    /// Opens a new log with `config` in a scratch dir.
    pub fn with_config(
        ex: &'ex LocalExecutor,
        env: E,
        config: LogConfig,
        record_size: usize,
        appenders: usize,
    ) -> AppendBench<'ex, E> {
        assert!(appenders > 0);
        let dir = scratch_dir("tern-append-");
        let path = dir.path().to_owned();
        let log = ex.run(async move {
            let (log, _) = Log::open(env, &path, config, TimestampMs::now())
                .await
                .expect("open log");
            log
        });
        settle();
        AppendBench {
            ex,
            log: Some(log),
            payload: payload(record_size),
            appenders,
            dir: Some(dir),
        }
    }

    /// Appends until `budget` is spent; returns once every record is
    /// durable.
    pub fn run(&mut self, budget: Budget) -> Run {
        let log = self.log.clone().expect("open");
        let payload = self.payload.clone();
        let appenders = self.appenders;
        let before = self.stats();
        let (records, elapsed) = self.ex.run(async move {
            let start = Instant::now();
            let left = Rc::new(Left::new(budget, start));
            let tasks: Vec<_> = (0..appenders)
                .map(|_| glommio::spawn_local(appender(log.clone(), payload.clone(), left.clone())))
                .collect();
            let mut records = 0;
            for task in tasks {
                records += task.await;
            }
            (records, start.elapsed())
        });
        let after = self.stats();
        assert_eq!(after.records - before.records, records);
        Run {
            records,
            elapsed,
            batches: after.batches - before.batches,
            bytes_written: after.bytes_written - before.bytes_written,
        }
    }

    /// The log's durability-path counters.
    pub fn stats(&self) -> LogStats {
        self.log.as_ref().expect("open").stats()
    }

    /// Bytes of all segments (header blocks and records).
    pub fn log_bytes(&self) -> u64 {
        let log = self.log.as_ref().expect("open");
        log.segments().iter().map(|s| s.bytes).sum()
    }

    /// Number of segments.
    pub fn segments(&self) -> usize {
        self.log.as_ref().expect("open").segments().len()
    }

    fn close(&mut self) {
        if let Some(log) = self.log.take() {
            self.ex.run(log.close()).expect("close log");
        }
    }

    /// Closes the log and hands its directory over.
    pub fn into_dir(mut self) -> TempDir {
        self.close();
        self.dir.take().expect("dir")
    }
}

impl<E: Env> Drop for AppendBench<'_, E> {
    fn drop(&mut self) {
        self.close();
    }
}

async fn appender<E: Env>(log: Log<E>, payload: Rc<[u8]>, left: Rc<Left>) -> u64 {
    let mut done = 0;
    while left.take() {
        log.append(KIND, TimestampMs::now(), &[&payload])
            .await
            .expect("append");
        done += 1;
    }
    done
}

/// The naive design to beat: one `pwrite` + one `fdatasync` per record,
/// sequentially, through `std::fs`, into a file preallocated with
/// `fallocate` to the default segment size (like a segment), moving to a
/// fresh file when it is full.
pub struct FsyncBaseline {
    dir: TempDir,
    file: File,
    files: u64,
    pos: u64,
    payload: Rc<[u8]>,
}

/// Size of each baseline file (the default segment size).
const BASELINE_FILE_BYTES: u64 = 128 << 20;

fn preallocated(path: &Path) -> File {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .expect("create baseline file");
    // SAFETY: plain syscall on a valid fd.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, BASELINE_FILE_BYTES as i64) };
    assert_eq!(rc, 0, "fallocate: {}", io::Error::last_os_error());
    file.sync_all().expect("sync baseline file");
    file
}

impl FsyncBaseline {
    /// A fresh baseline writer of `record_size` records.
    pub fn new(record_size: usize) -> FsyncBaseline {
        let dir = scratch_dir("tern-baseline-");
        let file = preallocated(&dir.path().join("0.dat"));
        settle();
        FsyncBaseline {
            dir,
            file,
            files: 1,
            pos: 0,
            payload: payload(record_size),
        }
    }

    /// Writes and syncs records one at a time until `budget` is spent.
    pub fn run(&mut self, budget: Budget) -> Run {
        let start = Instant::now();
        let left = Left::new(budget, start);
        let len = self.payload.len() as u64;
        let mut records = 0;
        while left.take() {
            if self.pos + len > BASELINE_FILE_BYTES {
                let old = self.dir.path().join(format!("{}.dat", self.files - 1));
                self.file = preallocated(&self.dir.path().join(format!("{}.dat", self.files)));
                std::fs::remove_file(old).expect("remove old baseline file");
                self.files += 1;
                self.pos = 0;
            }
            self.file
                .write_all_at(&self.payload, self.pos)
                .expect("pwrite");
            self.file.sync_data().expect("fdatasync");
            self.pos += len;
            records += 1;
        }
        Run {
            records,
            elapsed: start.elapsed(),
            batches: records,
            bytes_written: records * len,
        }
    }
}

/// Which indexes a recovery measurement starts from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Indexes {
    /// As the log left them at close.
    Intact,
    /// Every `*.idx` deleted before the open: every segment is scanned with
    /// full checksums and its index rebuilt.
    Deleted,
}

/// A closed log of full segments of 4 KiB records for the recovery
/// benchmarks. Its files stay in the page cache (they were just written).
pub struct RecoveryFixture {
    dir: TempDir,
    /// Records in the log.
    pub records: u64,
    /// Bytes of all segments (header blocks and records): what an
    /// index-less open scans.
    pub bytes: u64,
    /// Segment files.
    pub segments: usize,
    /// How long building it took (64 appenders).
    pub build: Run,
}

/// Result of one timed `Log::open`.
#[derive(Clone, Debug)]
pub struct Opened {
    /// Time of `Log::open` alone (not the close after it).
    pub elapsed: Duration,
    /// What recovery reported.
    pub report: RecoveryReport,
}

/// Payload size of the recovery fixture's records.
pub const RECOVERY_RECORD_SIZE: usize = 4 * KIB;
/// Full segments in the recovery fixture: 8 x 128 MiB = 1 GiB.
pub const RECOVERY_SEGMENTS: u64 = 8;

impl RecoveryFixture {
    /// Appends 4 KiB records (64 appenders, default config) until exactly
    /// `segments` default-size segments are full. The last one is the
    /// active segment, full: the worst case for an open with intact
    /// indexes, which checks every entry of the active segment's index.
    pub fn build(ex: &LocalExecutor, segments: u64) -> RecoveryFixture {
        let config = LogConfig::default();
        let frame = (HEADER_LEN + RECOVERY_RECORD_SIZE) as u64;
        let per_segment = (config.segment_bytes_max - DATA_START) / frame;
        let records = per_segment * segments;
        let mut bench = AppendBench::new(ex, tern_storage::BufferedEnv, RECOVERY_RECORD_SIZE, 64);
        let build = bench.run(Budget::Records(records));
        assert_eq!(build.records, records);
        let bytes = bench.log_bytes();
        let segments = bench.segments();
        let dir = bench.into_dir();
        RecoveryFixture {
            dir,
            records,
            bytes,
            segments,
            build,
        }
    }

    /// Directory of the log.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Deletes every `*.idx` file of the log; returns how many.
    pub fn delete_indexes(&self) -> usize {
        let mut n = 0;
        for entry in std::fs::read_dir(self.path()).expect("read log dir") {
            let path = entry.expect("dir entry").path();
            if path.extension().is_some_and(|e| e == "idx") {
                std::fs::remove_file(&path).expect("remove index");
                n += 1;
            }
        }
        n
    }

    /// Opens the log (timed), checks that recovery did what `indexes`
    /// implies (not a timing check), then closes it (untimed).
    pub fn open(&self, ex: &LocalExecutor, indexes: Indexes) -> Opened {
        if indexes == Indexes::Deleted {
            let deleted = self.delete_indexes();
            assert_eq!(deleted, self.segments, "one index per segment");
        }
        let path = self.path().to_owned();
        let opened = ex.run(async move {
            let start = Instant::now();
            let (log, report) = Log::open(
                tern_storage::BufferedEnv,
                &path,
                LogConfig::default(),
                TimestampMs::now(),
            )
            .await
            .expect("open log");
            let elapsed = start.elapsed();
            log.close().await.expect("close log");
            Opened { elapsed, report }
        });
        let r = &opened.report;
        assert_eq!(r.segments, self.segments);
        assert_eq!(r.next_sequence.0, 1 + self.records);
        assert!(r.truncated.is_none(), "{r:?}");
        match indexes {
            Indexes::Intact => assert_eq!(r.indexes_rebuilt, 0, "{r:?}"),
            Indexes::Deleted => {
                assert_eq!(r.indexes_rebuilt, self.segments, "{r:?}");
                assert_eq!(r.records_scanned, self.records, "{r:?}");
            }
        }
        opened
    }
}

/// Load average and I/O pressure (`/proc/loadavg`, `/proc/pressure/io`
/// "some avg60"), to tell a quiet machine from a busy one.
pub fn machine_load() -> String {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    let io = std::fs::read_to_string("/proc/pressure/io").unwrap_or_default();
    let io_some60 = io
        .lines()
        .find(|l| l.starts_with("some"))
        .and_then(|l| l.split_whitespace().find(|f| f.starts_with("avg60=")))
        .unwrap_or("avg60=?");
    format!("loadavg {}, io pressure some {io_some60}%", load.join(" "))
}

/// The kernel release (`uname -r`).
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}
