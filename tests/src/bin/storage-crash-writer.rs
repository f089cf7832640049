//! Appends self-checking records to a `tern_storage::Log` until killed.
//!
//! Usage: `storage-crash-writer <dir> <appenders> <max_records>`
//!
//! Prints `ready <next_sequence>` once the log is open, then one line
//! `<sequence> <crc32 of payload> <len>` per record, written and flushed
//! only after `Log::append` returned `Ok` (so the record is durable).
//! Exits after `max_records` appends or 30 s, whichever comes first. Used by
//! `tests/storage_crash.rs`, which SIGKILLs it at a random moment.

use std::cell::Cell;
use std::io::Write;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use tern_storage::{BufferedEnv, Log, RecordKind, TimestampMs};
use tern_tests::crash;

const RUN_MAX: Duration = Duration::from_secs(30);

fn usage() -> ! {
    eprintln!("usage: storage-crash-writer <dir> <appenders> <max_records>");
    std::process::exit(2);
}

fn say(line: std::fmt::Arguments) {
    let mut out = std::io::stdout().lock();
    if out.write_fmt(line).and_then(|()| out.flush()).is_err() {
        // The reader is gone; nothing left to report to.
        std::process::exit(3);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        usage();
    }
    let dir = PathBuf::from(&args[1]);
    let appenders: u16 = args[2].parse().unwrap_or_else(|_| usage());
    let max_records: u64 = args[3].parse().unwrap_or_else(|_| usage());
    if appenders == 0 {
        usage();
    }
    let pid = std::process::id();
    let deadline = Instant::now() + RUN_MAX;
    glommio::LocalExecutorBuilder::default()
        .io_memory(512 << 10)
        .ring_depth(64)
        .make()
        .expect("glommio executor")
        .run(async move {
            let (log, report) =
                Log::open(BufferedEnv, &dir, crash::log_config(), TimestampMs::now())
                    .await
                    .expect("open log");
            say(format_args!("ready {}\n", report.next_sequence));
            let issued = Rc::new(Cell::new(0u64));
            let tasks: Vec<_> = (0..appenders)
                .map(|task| {
                    let log = log.clone();
                    let issued = issued.clone();
                    glommio::spawn_local(async move {
                        let mut counter = 0u32;
                        while issued.get() < max_records && Instant::now() < deadline {
                            issued.set(issued.get() + 1);
                            let payload = crash::payload(crash::id(task, pid, counter));
                            counter += 1;
                            let seq = log
                                .append(RecordKind(1), TimestampMs::now(), &[&payload])
                                .await
                                .expect("append");
                            say(format_args!(
                                "{} {} {}\n",
                                seq,
                                crc32fast::hash(&payload),
                                payload.len()
                            ));
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await;
            }
            log.close().await.expect("close log");
        });
}
