//! Crash test of `tern-storage`: a real writer process is SIGKILLed at a
//! random moment, over and over on the same directory, and after every kill
//! the log must hold every record the writer acknowledged, intact, with
//! dense sequences, and the next writer must continue after them.
//!
//! The writer (`src/bin/storage-crash-writer.rs`) prints a line for a record
//! only after `Log::append` returned, i.e. after the fdatasync covering it.
//! A process kill keeps the page cache, so this tests the log's own logic
//! (group commit, segment rolls, index, recovery) at arbitrary interruption
//! points, not the disk.
//!
//! Seed: `TERN_CRASH_SEED=<u64>` reproduces a run's kill delays.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tern_storage::{BufferedEnv, Log, Sequence, TimestampMs};
use tern_tests::crash;

/// Appenders per crash round: covers 1 and 32, and something between.
const APPENDERS: [u16; 16] = [1, 32, 1, 32, 8, 32, 1, 32, 2, 32, 1, 32, 16, 32, 1, 32];
/// More than any writer can append before it is killed.
const MAX_RECORDS: u64 = 10_000_000;
/// Records of the final, clean (not killed) round.
const CLEAN_RECORDS: u64 = 200;
/// Bound on waiting for the writer's output.
const OUTPUT_WAIT: Duration = Duration::from_secs(20);

/// A writer process; SIGKILLed by PID and reaped when dropped.
struct Writer {
    child: Child,
    status: Option<ExitStatus>,
}

impl Writer {
    fn spawn(dir: &Path, appenders: u16, max_records: u64) -> (Writer, Output) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_storage-crash-writer"))
            .arg(dir)
            .arg(appenders.to_string())
            .arg(max_records.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn storage-crash-writer");
        let stdout = child.stdout.take().expect("piped stdout");
        let writer = Writer {
            child,
            status: None,
        };
        (writer, Output::start(stdout))
    }

    /// `None` while running; the exit status (reaped) once it exited.
    fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("try_wait");
        }
        self.status
    }

    /// SIGKILLs the process unless it was already reaped (its PID may be
    /// reused after that), then reaps it.
    fn kill(&mut self) -> ExitStatus {
        if let Some(status) = self.status {
            return status;
        }
        // SAFETY: plain syscall; the child is not reaped, so the PID is ours.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGKILL) };
        let status = self.child.wait().expect("wait");
        self.status = Some(status);
        status
    }

    /// Waits (bounded) for the process to exit on its own.
    fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Complete lines of the writer's stdout, read by a thread until EOF.
struct Output {
    lines: Receiver<String>,
    reader: Option<JoinHandle<()>>,
}

impl Output {
    fn start(stdout: ChildStdout) -> Output {
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut stdout = BufReader::new(stdout);
            let mut line = Vec::new();
            loop {
                line.clear();
                match stdout.read_until(b'\n', &mut line) {
                    // A final partial line (no newline) was cut by the kill:
                    // its record may or may not be acknowledged; ignore it.
                    Ok(_) if line.last() == Some(&b'\n') => {
                        let text = String::from_utf8(line[..line.len() - 1].to_vec())
                            .expect("writer output is UTF-8");
                        if tx.send(text).is_err() {
                            return;
                        }
                    }
                    _ => return,
                }
            }
        });
        Output {
            lines: rx,
            reader: Some(reader),
        }
    }

    /// The next line, waiting at most `limit`.
    fn next(&self, limit: Duration) -> Option<String> {
        match self.lines.recv_timeout(limit) {
            Ok(line) => Some(line),
            Err(RecvTimeoutError::Timeout) => panic!("no output from the writer in {limit:?}"),
            Err(RecvTimeoutError::Disconnected) => None,
        }
    }

    /// Every remaining line up to EOF (the writer must have exited).
    fn rest(mut self) -> Vec<String> {
        let deadline = Instant::now() + OUTPUT_WAIT;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => out.push(line),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => panic!("writer output did not end"),
            }
        }
        self.reader
            .take()
            .expect("reader")
            .join()
            .expect("reader thread");
        out
    }
}

/// One acknowledged record as the writer printed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Acked {
    crc: u32,
    len: usize,
}

fn parse_ready(line: &str) -> Sequence {
    let n = line
        .strip_prefix("ready ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("expected `ready <sequence>`, got {line:?}"));
    Sequence(n)
}

fn parse_acked(line: &str) -> (u64, Acked) {
    let words: Vec<&str> = line.split(' ').collect();
    let parsed = match words[..] {
        [seq, crc, len] => seq.parse().ok().zip(crc.parse().ok()).zip(len.parse().ok()),
        _ => None,
    };
    let Some(((seq, crc), len)) = parsed else {
        panic!("expected `<sequence> <crc> <len>`, got {line:?}");
    };
    (seq, Acked { crc, len })
}

/// What one verification of the log found.
#[derive(Debug)]
struct Verified {
    durable_end: u64,
    segments: usize,
    /// Offset and reason of a torn tail recovery cut off.
    truncated: Option<(u64, &'static str)>,
    removed_torn_segment: bool,
}

fn run<T>(fut: impl std::future::Future<Output = T>) -> T {
    glommio::LocalExecutorBuilder::default()
        .io_memory(512 << 10)
        .ring_depth(64)
        .make()
        .expect("glommio executor")
        .run(fut)
}

/// Reopens the log and checks it against everything acknowledged so far
/// and everything a previous recovery found durable (`seen`, extended with
/// the records found now).
fn verify(
    dir: &Path,
    acked: &BTreeMap<u64, Acked>,
    seen: &mut BTreeMap<u64, Acked>,
) -> Result<Verified, String> {
    run(async {
        let (log, report) = Log::open(BufferedEnv, dir, crash::log_config(), TimestampMs::now())
            .await
            .map_err(|e| format!("reopen failed: {e}"))?;
        let end = log.durable_end();
        if report.next_sequence != end {
            return Err(format!(
                "report.next_sequence {} != durable_end {end}",
                report.next_sequence
            ));
        }
        if log.first_sequence() != Sequence(1) {
            return Err(format!("first sequence is {}", log.first_sequence()));
        }
        // Dense: every sequence from the first to the durable end reads,
        // in order, with a payload that verifies itself.
        let mut want = Sequence(1);
        for rec in log.iter_from(Sequence(1)).take(end.0 as usize) {
            let rec = rec.map_err(|e| format!("reading {want}: {e}"))?;
            if rec.sequence != want {
                return Err(format!(
                    "iteration gave {} where {want} was due",
                    rec.sequence
                ));
            }
            let found = Acked {
                crc: crc32fast::hash(&rec.payload),
                len: rec.payload.len(),
            };
            match seen.insert(want.0, found) {
                Some(before) if before != found => {
                    return Err(format!("record {want} changed: {before:?} -> {found:?}"))
                }
                Some(_) => {}
                // First time seen: check the payload against itself (later
                // rounds compare against this).
                None => {
                    crash::verify(&rec.payload).map_err(|e| format!("record {want}: {e}"))?;
                }
            }
            want = want.next();
        }
        if want != end {
            return Err(format!("iteration stopped at {want}, durable end is {end}"));
        }
        if let Some((&seq, _)) = seen.range(end.0..).next() {
            return Err(format!(
                "record {seq} was recovered before, now gone (end {end})"
            ));
        }
        // Every acknowledged record, by direct read too.
        for (&seq, &printed) in acked {
            let rec = log
                .read(Sequence(seq))
                .map_err(|e| format!("acknowledged record {seq}: {e}"))?;
            let found = Acked {
                crc: crc32fast::hash(&rec.payload),
                len: rec.payload.len(),
            };
            if found != printed {
                return Err(format!(
                    "acknowledged record {seq}: printed {printed:?}, read {found:?}"
                ));
            }
        }
        let verified = Verified {
            durable_end: end.0,
            segments: log.segments().len(),
            truncated: report.truncated.map(|(_, offset, why)| (offset, why)),
            removed_torn_segment: report.removed_torn_segment.is_some(),
        };
        log.close().await.map_err(|e| format!("close: {e}"))?;
        Ok(verified)
    })
}

/// Takes the writer's record lines, checking each is new and in this
/// round's range, into `acked`. Returns how many there were.
fn take_acked(lines: &[String], ready: Sequence, acked: &mut BTreeMap<u64, Acked>) -> usize {
    let mut this_round = BTreeSet::new();
    for line in lines {
        let (seq, printed) = parse_acked(line);
        assert!(seq >= ready.0, "acknowledged {seq} below ready {ready}");
        assert!(this_round.insert(seq), "sequence {seq} acknowledged twice");
        assert!(
            acked.insert(seq, printed).is_none(),
            "sequence {seq} acknowledged in two rounds"
        );
    }
    lines.len()
}

#[test]
fn sigkilled_writer_loses_no_acknowledged_record() {
    let started = Instant::now();
    let seed = std::env::var("TERN_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos() as u64
        });
    println!("storage_crash: seed {seed} (TERN_CRASH_SEED={seed} reproduces the kill delays)");
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let mut acked = BTreeMap::new();
    let mut seen = BTreeMap::new();
    let mut next = Sequence(1);
    let mut in_flight = 0;
    let mut torn = 0;

    for (round, &appenders) in APPENDERS.iter().enumerate() {
        let (mut writer, output) = Writer::spawn(dir.path(), appenders, MAX_RECORDS);
        let ready = parse_ready(&output.next(OUTPUT_WAIT).expect("writer printed nothing"));
        assert_eq!(
            ready, next,
            "round {round}: writer does not continue the log"
        );
        let delay = rng.gen_range(20..300);
        std::thread::sleep(Duration::from_millis(delay));
        let running = writer.try_wait().is_none();
        let status = writer.kill();
        let lines = output.rest();
        assert!(
            running,
            "round {round}: writer exited before the kill: {status:?}"
        );
        assert_eq!(
            status.signal(),
            Some(libc::SIGKILL),
            "round {round}: {status:?}"
        );
        let count = take_acked(&lines, ready, &mut acked);
        // Appends were under way at the kill: the writer was alive (checked
        // above), had acknowledged records and had not reached its limit.
        let appending = count > 0 && (count as u64) < MAX_RECORDS;
        in_flight += usize::from(appending);
        let max_acked = acked.keys().next_back().copied().unwrap_or(0);
        let check = Instant::now();
        let v = verify(dir.path(), &acked, &mut seen)
            .unwrap_or_else(|e| panic!("round {round} (seed {seed}): {e}"));
        let check_ms = check.elapsed().as_millis();
        torn += usize::from(v.truncated.is_some() || v.removed_torn_segment);
        println!(
            "round {round}: appenders {appenders:2}, killed after {delay:3} ms, \
             acked {count:5} (seq {}..={max_acked}), durable end {}, \
             unacked but durable {}, segments {}, torn tail cut {:?}, torn segment removed {}, \
             appending at kill {appending}, check {check_ms} ms",
            ready.0,
            v.durable_end,
            v.durable_end - 1 - max_acked,
            v.segments,
            v.truncated,
            v.removed_torn_segment,
        );
        next = Sequence(v.durable_end);
    }

    // A last writer that finishes on its own: clean close, then the same
    // checks.
    let (mut writer, output) = Writer::spawn(dir.path(), 8, CLEAN_RECORDS);
    let ready = parse_ready(&output.next(OUTPUT_WAIT).expect("writer printed nothing"));
    assert_eq!(ready, next, "clean round: writer does not continue the log");
    let status = writer
        .wait_exit(OUTPUT_WAIT)
        .expect("clean writer did not exit");
    assert!(status.success(), "clean writer: {status:?}");
    let lines = output.rest();
    let count = take_acked(&lines, ready, &mut acked);
    assert_eq!(count as u64, CLEAN_RECORDS);
    let v = verify(dir.path(), &acked, &mut seen)
        .unwrap_or_else(|e| panic!("clean round (seed {seed}): {e}"));
    assert_eq!(
        v.durable_end,
        ready.0 + CLEAN_RECORDS,
        "clean close left extra records"
    );
    assert_eq!(v.truncated, None, "a clean close left a torn tail");

    println!(
        "storage_crash: {} rounds, {in_flight} killed while appending, {torn} with a torn tail; \
         {} acknowledged records and {} durable records verified, {} segments, {:.1} s",
        APPENDERS.len(),
        acked.len(),
        seen.len(),
        v.segments,
        started.elapsed().as_secs_f64()
    );
    assert!(
        in_flight * 4 >= APPENDERS.len() * 3,
        "only {in_flight} of {} kills landed while appends were under way",
        APPENDERS.len()
    );
}
