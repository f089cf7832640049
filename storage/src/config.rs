//! Log configuration: every limit named, with its default and why.

use crate::error::{Error, Result};
use crate::record::HEADER_LEN;
use crate::segment::DATA_START;

/// MiB.
const MIB: u64 = 1024 * 1024;

/// How a log behaves. Construct with `LogConfig::default()` and override
/// fields; [`LogConfig::validate`] reports every problem at once.
#[derive(Clone, Debug)]
pub struct LogConfig {
    /// Largest payload one record may carry. Default 65 MiB: a 64 MiB
    /// message (above any sane SMTP SIZE limit) plus up to 1 MiB of envelope.
    pub record_bytes_max: usize,
    /// Segment size at which the log rolls to a new segment; also the
    /// preallocated size of each segment file. Default 128 MiB. Must hold at
    /// least one maximal record.
    pub segment_bytes_max: u64,
    /// Roll to a new segment once the active one is this old (and not
    /// empty), so time-based reclamation can free space. Default 1 h.
    pub segment_age_max_ms: u64,
    /// A segment is deleted only when every cursor passed it and its last
    /// record is at least this old. Default 10 min.
    pub retention_min_ms: u64,
    /// Encoded bytes waiting for the next group commit beyond which
    /// appenders wait (back-pressure) instead of queueing more. Default
    /// 32 MiB; one record is always admitted.
    pub pending_bytes_max: usize,
    /// Zeros written ahead of the data end, so batch writes land on blocks
    /// already written once (no extent conversion in their fdatasync).
    /// Default 4 MiB; 0 disables (plain fallocate preallocation only).
    /// Multiple of 4096.
    pub zero_fill_ahead_bytes: u64,
    /// Bytes at the end of the log that only results of accepted work
    /// (delivery statuses, discards, operator actions) may use, once the
    /// next segment cannot be made: new records are refused before them.
    /// Default 4 MiB (some 20 000 status records); a quarter of
    /// `segment_bytes_max` when that is less (see [`LogConfig::reserve`]).
    pub reserve_bytes: u64,
    /// Named cursors kept by this log. Reclamation waits for all of them.
    /// Default `queue`, `shadow`, `safety-net`.
    pub cursors: Vec<String>,
}

/// Cursor names: at most this many (they share one 4 KiB cursor slot).
pub const CURSORS_MAX: usize = 32;
/// Cursor names: at most this many bytes each.
pub const CURSOR_NAME_BYTES_MAX: usize = 64;

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            record_bytes_max: 65 * MIB as usize,
            segment_bytes_max: 128 * MIB,
            segment_age_max_ms: 60 * 60 * 1000,
            retention_min_ms: 10 * 60 * 1000,
            pending_bytes_max: 32 * MIB as usize,
            zero_fill_ahead_bytes: 4 * MIB,
            reserve_bytes: 4 * MIB,
            cursors: ["queue", "shadow", "safety-net"]
                .into_iter()
                .map(String::from)
                .collect(),
        }
    }
}

impl LogConfig {
    /// The reserve in effect: `reserve_bytes`, at most a quarter of a
    /// segment.
    pub fn reserve(&self) -> u64 {
        self.reserve_bytes.min(self.segment_bytes_max / 4)
    }

    /// Checks every bound and reports all violations together.
    pub fn validate(&self) -> Result<()> {
        let mut problems = Vec::new();
        if self.record_bytes_max == 0 || self.record_bytes_max > u32::MAX as usize - HEADER_LEN {
            problems.push(format!(
                "record_bytes_max must be in 1..={} (got {})",
                u32::MAX as usize - HEADER_LEN,
                self.record_bytes_max
            ));
        }
        let need =
            DATA_START + (HEADER_LEN + self.record_bytes_max + crate::log::COPY_OVERHEAD) as u64;
        if self.segment_bytes_max < need || self.segment_bytes_max > (u32::MAX as u64) * 4 {
            problems.push(format!(
                "segment_bytes_max must hold one maximal record ({need} bytes) and be at most 16 GiB (got {})",
                self.segment_bytes_max
            ));
        }
        if !self.segment_bytes_max.is_multiple_of(DATA_START) {
            problems.push("segment_bytes_max must be a multiple of 4096".into());
        }
        if !self.zero_fill_ahead_bytes.is_multiple_of(DATA_START) {
            problems.push("zero_fill_ahead_bytes must be a multiple of 4096".into());
        }
        if self.pending_bytes_max == 0 {
            problems.push("pending_bytes_max must be positive".into());
        }
        if self.cursors.len() > CURSORS_MAX {
            problems.push(format!("at most {CURSORS_MAX} cursors"));
        }
        for name in &self.cursors {
            if name.is_empty() || name.len() > CURSOR_NAME_BYTES_MAX || !name.is_ascii() {
                problems.push(format!(
                    "cursor name {name:?} must be 1..={CURSOR_NAME_BYTES_MAX} ASCII bytes"
                ));
            }
        }
        let mut sorted = self.cursors.clone();
        sorted.sort();
        sorted.dedup();
        if sorted.len() != self.cursors.len() {
            problems.push("cursor names must be unique".into());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Config(problems))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        LogConfig::default().validate().unwrap();
    }

    #[test]
    fn reports_all_problems() {
        let cfg = LogConfig {
            record_bytes_max: 1 << 20,
            segment_bytes_max: 4096 * 3,
            pending_bytes_max: 0,
            cursors: vec!["a".into(), "a".into(), String::new()],
            ..LogConfig::default()
        };
        let Err(Error::Config(problems)) = cfg.validate() else {
            panic!("expected config error")
        };
        assert_eq!(problems.len(), 4, "{problems:?}");
    }
}
