//! Errors of the storage layer.

use std::io;
use std::path::PathBuf;

use crate::types::{RecordKind, Sequence};

/// Everything the log can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bytes that were acknowledged as durable no longer verify. Never
    /// silently dropped: the operator must look at `segment` at `offset`.
    #[error("corrupt record in segment {segment} at offset {offset}: {reason}")]
    Corruption {
        /// Path of the segment (or index / cursor) file.
        segment: PathBuf,
        /// Byte offset inside that file.
        offset: u64,
        /// What did not verify.
        reason: &'static str,
    },
    /// A previous fdatasync (or write) failed. After that the kernel may have
    /// dropped dirty pages, so nothing written since the last good sync can
    /// be trusted: the log refuses all further appends until reopened.
    #[error("log is failed after an I/O error on the durability path: {0}")]
    Fatal(String),
    /// No room for a new record: the file system could not give the log
    /// its next segment and only the reserve for results of accepted work
    /// is left. Not fatal: nothing was queued, and the log takes new
    /// records again once the next segment could be made.
    #[error("no space for the record: {0}")]
    NoSpace(String),
    /// The record is larger than `record_bytes_max`.
    #[error("record of {len} bytes exceeds the limit of {max} bytes")]
    RecordTooLarge {
        /// Payload length asked for.
        len: usize,
        /// Configured limit.
        max: usize,
    },
    /// An `append_with` writer wrote a different number of bytes than it
    /// announced; nothing was stored.
    #[error("payload writer did not write the announced {0} bytes")]
    PayloadLength(usize),
    /// The kind is 0 or reserved for the storage layer.
    #[error("record kind {0:?} is reserved")]
    ReservedKind(RecordKind),
    /// The sequence was never written, or is already reclaimed.
    #[error("sequence {0} is not in the log")]
    NotFound(Sequence),
    /// A cursor moved beyond the end of the log or behind its start, or has
    /// an invalid name.
    #[error("invalid cursor operation: {0}")]
    InvalidCursor(String),
    /// The log was closed.
    #[error("log is closed")]
    Closed,
    /// Invalid configuration; every problem is listed.
    #[error("invalid log configuration: {}", .0.join("; "))]
    Config(Vec<String>),
    /// Another process holds the log directory.
    #[error("log directory {0} is locked by another process")]
    Locked(PathBuf),
    /// Plain I/O failure outside the durability path (open, list, mmap).
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
}

/// Result alias of the storage layer.
pub type Result<T, E = Error> = std::result::Result<T, E>;
