//! `[storage]`: the log of each shard. Its defaults are those of
//! [`LogConfig::default`] (tern-storage), so they are written once, there.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tern_storage::LogConfig;

use super::{ByteSize, HumanDuration, SmtpLimits};

/// `[storage]` as written; its `Default` is the default of every key.
#[derive(Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct StorageSection {
    segment_size: ByteSize,
    segment_age_max: HumanDuration,
    retention_min: HumanDuration,
    pending_bytes_max: ByteSize,
    zero_fill_ahead: ByteSize,
    reserve: ByteSize,
    /// "auto", "buffered" or "direct".
    io: String,
}

impl Default for StorageSection {
    fn default() -> Self {
        let log = LogConfig::default();
        StorageSection {
            segment_size: ByteSize(log.segment_bytes_max),
            segment_age_max: HumanDuration(Duration::from_millis(log.segment_age_max_ms)),
            retention_min: HumanDuration(Duration::from_millis(log.retention_min_ms)),
            pending_bytes_max: ByteSize(log.pending_bytes_max as u64),
            zero_fill_ahead: ByteSize(log.zero_fill_ahead_bytes),
            reserve: ByteSize(log.reserve_bytes),
            io: io_name(IoMode::default()).into(),
        }
    }
}

/// The config spelling of `mode`.
fn io_name(mode: IoMode) -> &'static str {
    match mode {
        IoMode::Auto => "auto",
        IoMode::Buffered => "buffered",
        IoMode::Direct => "direct",
    }
}

impl StorageSection {
    /// The log settings (its record limit follows from `smtp`) and how
    /// the log writes, checked together.
    pub(super) fn resolve(
        &self,
        smtp: &SmtpLimits,
        problems: &mut Vec<String>,
    ) -> (LogConfig, IoMode) {
        // A record holds the envelope plus the message: every recipient path
        // (RFC 5321 4.5.3.1.3: 256 octets, +2 for its length) and 1 MiB for the
        // rest (sender, HELO name, client, Received header).
        let record_bytes_max = smtp.message_size_max + smtp.recipients_max * 258 + (1 << 20);
        let cfg = LogConfig {
            record_bytes_max,
            segment_bytes_max: self.segment_size.0,
            segment_age_max_ms: self.segment_age_max.0.as_millis() as u64,
            retention_min_ms: self.retention_min.0.as_millis() as u64,
            pending_bytes_max: self.pending_bytes_max.as_usize(),
            zero_fill_ahead_bytes: self.zero_fill_ahead.0,
            reserve_bytes: self.reserve.0,
            cursors: LogConfig::default().cursors,
        };
        if let Err(tern_storage::Error::Config(list)) = cfg.validate() {
            problems.extend(list.into_iter().map(|p| self.as_written(&p)));
        }
        let io = [IoMode::Auto, IoMode::Buffered, IoMode::Direct]
            .into_iter()
            .find(|&m| io_name(m) == self.io)
            .unwrap_or_else(|| {
                problems.push(format!(
                    "storage.io: {:?} is not \"auto\", \"buffered\" or \"direct\"",
                    self.io
                ));
                IoMode::default()
            });
        if io != IoMode::Buffered && cfg.zero_fill_ahead_bytes == 0 {
            // Measured: O_DIRECT writes into preallocated (unwritten) extents
            // run ~8x slower than with zero-fill ahead (BENCHMARKS.md).
            problems.push(format!(
                "storage.zero_fill_ahead = 0 requires storage.io = \"buffered\", got storage.io = {:?}",
                self.io
            ));
        }
        (cfg, io)
    }

    /// A problem of `tern_storage::LogConfig::validate`, which names its
    /// own fields, in the keys of this section, with the value given.
    fn as_written(&self, problem: &str) -> String {
        let keys = [
            (
                "segment_bytes_max",
                "storage.segment_size",
                self.segment_size,
            ),
            (
                "zero_fill_ahead_bytes",
                "storage.zero_fill_ahead",
                self.zero_fill_ahead,
            ),
            (
                "pending_bytes_max",
                "storage.pending_bytes_max",
                self.pending_bytes_max,
            ),
        ];
        for (field, key, value) in keys {
            if let Some(rest) = problem.strip_prefix(field) {
                let rest = rest.split(" (got ").next().unwrap_or(rest);
                return format!("{key}{rest}, got {value}");
            }
        }
        match problem.strip_prefix("record_bytes_max") {
            Some(rest) => format!(
                "the largest record (smtp.message_size_max + 258 * smtp.recipients_max + 1MiB){rest}"
            ),
            None => format!("storage: {problem}"),
        }
    }
}
/// How the log writes: through the page cache or with `O_DIRECT`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IoMode {
    /// `Direct` where the file system supports `O_DIRECT`, else `Buffered`
    /// (decided per shard directory at start).
    #[default]
    Auto,
    /// Page cache + fdatasync.
    Buffered,
    /// `O_DIRECT` from aligned buffers + fdatasync.
    Direct,
}
