//! tern-storage: the append-only, segmented, CRC-protected message log that
//! every tern core writes to.
//!
//! One [`Log`] per core (one directory per shard). Appenders on the same
//! core are group-committed: one write and one fdatasync cover everything
//! queued while the previous flush ran, and `append` returns only after the
//! fdatasync that covers its record. The delivery queue, shadow queue and
//! Safety Net are *cursors* over the log, not copies; segments are deleted
//! once every cursor passed them.
//!
//! # Layout
//!
//! ```text
//! <dir>/LOCK                        flock held while the log is open
//! <dir>/cursors                     two checksummed cursor slots (cursor.rs)
//! <dir>/{first:020}.seg             segment: header block + records (segment.rs, record.rs)
//! <dir>/{first:020}.idx             its memory-mapped index, a rebuildable cache (index.rs)
//! <dir>/spare-N.next, .next-idx     the next segment's files, preallocated (commit.rs)
//! ```
//!
//! Modules, in data-path order: [`record`] (frame format), [`segment`]
//! (segment header, scanning), [`index`], [`cursor`], [`env`] (the I/O
//! boundary), `state` + `commit` (group commit), [`log`] (the API, with
//! `files` for the segment files and `read` for reading records),
//! [`recovery`] (open), [`fault`] (fault-injecting environment for tests).
//!
//! # Example
//!
//! ```no_run
//! use tern_storage::{BufferedEnv, Log, LogConfig, RecordKind, TimestampMs};
//! glommio::LocalExecutorBuilder::default()
//!     .io_memory(1 << 20)
//!     .make()
//!     .unwrap()
//!     .run(async {
//!         let dir = std::path::Path::new("/tmp/tern-log");
//!         let (log, _report) = Log::open(BufferedEnv, dir, LogConfig::default(), TimestampMs::now())
//!             .await
//!             .unwrap();
//!         let seq = log.append(RecordKind(1), TimestampMs::now(), &[b"hello"]).await.unwrap();
//!         assert_eq!(&log.read(seq).unwrap().payload[..], b"hello");
//!         log.close().await.unwrap();
//!     });
//! ```

#![warn(missing_docs)]

mod commit;
pub mod config;
pub mod cursor;
pub mod env;
mod error;
pub mod fault;
mod files;
pub mod index;
pub mod inspect;
pub mod log;
mod read;
pub mod record;
pub mod recovery;
pub mod segment;
mod state;
mod types;

pub use config::LogConfig;
pub use env::{BufferedEnv, DirectEnv, Env, LogFile};
pub use error::{Error, Result};
pub use log::{Iter, Log, ReclaimReport, Record, SegmentInfo};
pub use recovery::RecoveryReport;
pub use state::{Class, LogStats, PayloadWriter, BATCH_BUCKETS, SYNC_BUCKETS};
pub use types::{RecordKind, SegmentId, Sequence, TimestampMs};
