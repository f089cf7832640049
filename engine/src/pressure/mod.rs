//! Back pressure, node-wide: the free space of the data file system,
//! available memory, the bytes the logs hold, and whether a core's log
//! can take new records, each giving a level; the node's level is the
//! worst of them. And the failed state: a core whose log failed for good.
//!
//! | level | new sessions | MAIL | shadow copies from peers | delivery, statuses |
//! |---|---|---|---|---|
//! | normal | greeted at once | accepted | accepted | go on |
//! | elevated | greeted after `pressure.greeting_delay` | `452 4.3.1` when `SIZE=` is above `pressure.elevated_size_max` | accepted | go on |
//! | high | greeted after the delay | `452 4.3.1` | `452 4.3.1` (the primary tries its next peer) | go on |
//! | failed | `421 4.3.0` at the greeting | - | - | the node stops and exits non-zero |
//!
//! The resources are looked at lazily: the first core that asks for the
//! level after `pressure.check_interval` (at least 100 ms) did the
//! `statvfs` and read `/proc/meminfo`; every other ask is two atomic
//! loads. A level is left only once the resource is clear of its
//! threshold by [`HYSTERESIS_PERCENT`] (so the level does not flap
//! around a threshold). Every change is logged and counted.
//!
//! # Layout
//!
//! ```text
//! mod.rs    Pressure: levels, thresholds, the failed state, the MAIL verdict
//! probe.rs  statvfs and /proc/meminfo
//! ```

pub mod probe;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use tern_smtp::{Reply, Status};

use crate::config::PressureConfig;

/// How far past a threshold a resource must be before its level drops:
/// this percentage of the threshold ...
pub const HYSTERESIS_PERCENT: u64 = 10;
/// ... but at most this many bytes (a percentage of a large disk would
/// otherwise keep the level long after the space came back).
pub const HYSTERESIS_BYTES_MAX: u64 = 1 << 30;

fn margin(threshold: u64) -> u64 {
    (threshold / 100 * HYSTERESIS_PERCENT).min(HYSTERESIS_BYTES_MAX)
}

/// A node's back pressure level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Level {
    /// Everything is accepted.
    Normal = 0,
    /// New sessions wait; large messages are refused.
    Elevated = 1,
    /// No new messages; delivery and status records go on.
    High = 2,
}

impl Level {
    fn from_u8(v: u8) -> Level {
        match v {
            0 => Level::Normal,
            1 => Level::Elevated,
            _ => Level::High,
        }
    }

    /// The name in logs and the admin API.
    pub fn name(self) -> &'static str {
        match self {
            Level::Normal => "normal",
            Level::Elevated => "elevated",
            Level::High => "high",
        }
    }
}

/// What is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resource {
    /// Free space of the data directory's file system.
    Disk = 0,
    /// `MemAvailable`.
    Memory = 1,
    /// Bytes the node's logs hold.
    Queued = 2,
    /// A core's log cannot make its next segment (only its reserve is left).
    Log = 3,
}

const RESOURCES: [Resource; 4] = [
    Resource::Disk,
    Resource::Memory,
    Resource::Queued,
    Resource::Log,
];

impl Resource {
    /// The name in logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Resource::Disk => "disk",
            Resource::Memory => "memory",
            Resource::Queued => "queued",
            Resource::Log => "log",
        }
    }
}

/// The last measurement, for metrics and the admin API.
#[derive(Clone, Copy, Debug, Default)]
pub struct Reading {
    /// Free bytes of the data file system (as an unprivileged writer).
    pub disk_free: u64,
    /// Its size.
    pub disk_total: u64,
    /// `MemAvailable`.
    pub memory_available: u64,
    /// `MemTotal`.
    pub memory_total: u64,
    /// Bytes the node's logs hold.
    pub queued: u64,
}

/// Back pressure and failure state of the node (shared by every core and
/// the admin thread).
pub struct Pressure {
    cfg: PressureConfig,
    data_dir: PathBuf,
    started: Instant,
    /// Milliseconds since `started` of the last look (0: never).
    checked_ms: AtomicU64,
    level: AtomicU8,
    levels: [AtomicU8; 4],
    disk_free: AtomicU64,
    disk_total: AtomicU64,
    memory_available: AtomicU64,
    memory_total: AtomicU64,
    /// Per core: the bytes its log holds.
    queued: Vec<AtomicU64>,
    /// Per core: its log has only the reserve left.
    log_full: Vec<AtomicBool>,
    /// Times the node entered each level.
    entered: [AtomicU64; 3],
    failed: OnceLock<String>,
}

impl Pressure {
    /// Normal until the first look; `cores` slots for the per-core values.
    pub fn new(cfg: PressureConfig, data_dir: PathBuf, cores: usize) -> Pressure {
        Pressure {
            cfg,
            data_dir,
            started: Instant::now(),
            checked_ms: AtomicU64::new(0),
            level: AtomicU8::new(0),
            levels: Default::default(),
            disk_free: AtomicU64::new(0),
            disk_total: AtomicU64::new(0),
            memory_available: AtomicU64::new(0),
            memory_total: AtomicU64::new(0),
            queued: (0..cores).map(|_| AtomicU64::new(0)).collect(),
            log_full: (0..cores).map(|_| AtomicBool::new(false)).collect(),
            entered: Default::default(),
            failed: OnceLock::new(),
        }
    }

    /// The node's level, looking at the resources again if the last look
    /// is `check_interval` old (one caller does; the others read).
    pub fn level(&self) -> Level {
        let now = self.started.elapsed().as_millis() as u64 + 1;
        let last = self.checked_ms.load(Ordering::Relaxed);
        let due =
            last == 0 || now.saturating_sub(last) >= self.cfg.check_interval.as_millis() as u64;
        if due
            && self
                .checked_ms
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            self.refresh();
        }
        Level::from_u8(self.level.load(Ordering::Relaxed))
    }

    /// Core `core`'s log holds `bytes` and has (or not) only its reserve
    /// left. Called by each core's maintenance.
    pub fn set_log(&self, core: usize, bytes: u64, full: bool) {
        if let Some(q) = self.queued.get(core) {
            q.store(bytes, Ordering::Relaxed);
        }
        if let Some(f) = self.log_full.get(core) {
            if f.swap(full, Ordering::Relaxed) != full {
                // Act on it now, not at the next look.
                self.checked_ms.store(0, Ordering::Relaxed);
            }
        }
    }

    /// The last measurement.
    pub fn reading(&self) -> Reading {
        Reading {
            disk_free: self.disk_free.load(Ordering::Relaxed),
            disk_total: self.disk_total.load(Ordering::Relaxed),
            memory_available: self.memory_available.load(Ordering::Relaxed),
            memory_total: self.memory_total.load(Ordering::Relaxed),
            queued: self.queued.iter().map(|q| q.load(Ordering::Relaxed)).sum(),
        }
    }

    /// The level of each resource.
    pub fn resource_levels(&self) -> Vec<(Resource, Level)> {
        RESOURCES
            .iter()
            .map(|&r| {
                (
                    r,
                    Level::from_u8(self.levels[r as usize].load(Ordering::Relaxed)),
                )
            })
            .collect()
    }

    /// Times the node entered `level`.
    pub fn entered(&self, level: Level) -> u64 {
        self.entered[level as usize].load(Ordering::Relaxed)
    }

    /// Looks at every resource and sets the levels.
    fn refresh(&self) {
        let c = &self.cfg;
        let mut worst = Level::Normal;
        let mut why = Vec::new();
        let mut set = |r: Resource, level: Level, detail: String| {
            let before = self.levels[r as usize].swap(level as u8, Ordering::Relaxed);
            if level > Level::Normal {
                why.push(format!("{} {detail}", r.name()));
            }
            if before != level as u8 {
                tracing::info!(
                    resource = r.name(),
                    level = level.name(),
                    detail,
                    "back pressure: resource level changed"
                );
            }
            worst = worst.max(level);
        };
        match probe::disk(&self.data_dir) {
            Ok((free, total)) => {
                self.disk_free.store(free, Ordering::Relaxed);
                self.disk_total.store(total, Ordering::Relaxed);
                let prev = self.resource_level(Resource::Disk);
                let level = below(
                    prev,
                    free,
                    c.disk_free_elevated.of(total),
                    c.disk_free_high.of(total),
                );
                set(
                    Resource::Disk,
                    level,
                    format!("{free} bytes free of {total}"),
                );
            }
            Err(e) => {
                tracing::warn!(dir = %self.data_dir.display(), error = %e, "statvfs of the data directory failed")
            }
        }
        if let Ok((avail, total)) = probe::memory() {
            self.memory_available.store(avail, Ordering::Relaxed);
            self.memory_total.store(total, Ordering::Relaxed);
            let prev = self.resource_level(Resource::Memory);
            let level = below(
                prev,
                avail,
                c.memory_available_elevated.of(total),
                c.memory_available_high.of(total),
            );
            set(
                Resource::Memory,
                level,
                format!("{avail} bytes available of {total}"),
            );
        }
        let queued: u64 = self.queued.iter().map(|q| q.load(Ordering::Relaxed)).sum();
        let prev = self.resource_level(Resource::Queued);
        let level = above(
            prev,
            queued,
            c.queued_bytes_elevated.unwrap_or(u64::MAX),
            c.queued_bytes_high.unwrap_or(u64::MAX),
        );
        set(
            Resource::Queued,
            level,
            format!("{queued} bytes in the logs"),
        );
        let full = self
            .log_full
            .iter()
            .filter(|f| f.load(Ordering::Relaxed))
            .count();
        let level = if full > 0 { Level::High } else { Level::Normal };
        set(
            Resource::Log,
            level,
            format!("{full} core(s) cannot make a next segment"),
        );
        let before = Level::from_u8(self.level.swap(worst as u8, Ordering::Relaxed));
        if before != worst {
            self.entered[worst as usize].fetch_add(1, Ordering::Relaxed);
            let why = why.join(", ");
            if worst > before {
                tracing::warn!(
                    from = before.name(),
                    to = worst.name(),
                    why,
                    "back pressure: node level rose"
                );
            } else {
                tracing::info!(
                    from = before.name(),
                    to = worst.name(),
                    why,
                    "back pressure: node level fell"
                );
            }
        }
    }

    fn resource_level(&self, r: Resource) -> Level {
        Level::from_u8(self.levels[r as usize].load(Ordering::Relaxed))
    }

    /// The MAIL verdict: `Some(reply)` to refuse a new transaction of
    /// `size` bytes (the `SIZE=` hint), or a peer's shadow copy (`copy`).
    pub fn refuse_mail(&self, size: Option<u64>, copy: bool) -> Option<Reply> {
        if self.failed().is_some() {
            return Some(store_failed(None));
        }
        match self.level() {
            Level::High => Some(insufficient_storage(", try again later")),
            Level::Elevated if !copy && size.is_some_and(|s| s > self.cfg.elevated_size_max) => {
                Some(insufficient_storage(&format!(
                    " for this size now; up to {} bytes accepted, try again later",
                    self.cfg.elevated_size_max
                )))
            }
            _ => None,
        }
    }

    /// How long a new session waits before its greeting.
    pub fn greeting_delay(&self) -> Option<std::time::Duration> {
        (self.level() > Level::Normal).then_some(self.cfg.greeting_delay)
    }

    /// Core `core`'s log failed for good (a failed fdatasync or write):
    /// the node refuses new sessions with 421 and stops. The first
    /// failure is kept; true the first time.
    pub fn fail(&self, core: usize, error: &str) -> bool {
        let first = self.failed.set(format!("shard {core}: {error}")).is_ok();
        if first {
            tracing::error!(shard = core, error, "the message store failed: new sessions get 421, the node stops and exits non-zero for its supervisor to restart it (everything answered 250 is durable)");
        }
        first
    }

    /// The failure, once a log failed.
    pub fn failed(&self) -> Option<&str> {
        self.failed.get().map(String::as_str)
    }
}

/// `452 4.3.1 Insufficient system storage` + `detail`: the one place the
/// reply to a lack of storage is built (back pressure at MAIL, and a
/// store that could not take the message, STYLE rule 8).
pub fn insufficient_storage(detail: &str) -> Reply {
    Reply::new(
        452,
        Status(4, 3, 1),
        format!("Insufficient system storage{detail}"),
    )
}

/// `421 4.3.0` of a node whose store failed (`host` first, at the
/// greeting).
pub fn store_failed(host: Option<&str>) -> Reply {
    let text = "Service not available: the message store failed, try again later";
    Reply::new(
        421,
        Status(4, 3, 0),
        match host {
            Some(h) => format!("{h} {text}"),
            None => text.to_owned(),
        },
    )
}

/// The level of a resource where less is worse (free space): high below
/// `high`, elevated below `elevated`; a level is left only once `v` is
/// clear of its threshold by [`HYSTERESIS_PERCENT`].
fn below(prev: Level, v: u64, elevated: u64, high: u64) -> Level {
    let margin = |t: u64| t.saturating_add(margin(t));
    if v < high || (prev == Level::High && v < margin(high)) {
        Level::High
    } else if v < elevated || (prev >= Level::Elevated && v < margin(elevated)) {
        Level::Elevated
    } else {
        Level::Normal
    }
}

/// The level of a resource where more is worse (bytes held).
fn above(prev: Level, v: u64, elevated: u64, high: u64) -> Level {
    let margin = |t: u64| t.saturating_sub(margin(t));
    if v > high || (prev == Level::High && v > margin(high)) {
        Level::High
    } else if v > elevated || (prev >= Level::Elevated && v > margin(elevated)) {
        Level::Elevated
    } else {
        Level::Normal
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_rise_at_thresholds_and_fall_past_the_hysteresis() {
        use Level::*;
        // Free space: elevated below 1000, high below 500.
        assert_eq!(below(Normal, 2000, 1000, 500), Normal);
        assert_eq!(below(Normal, 999, 1000, 500), Elevated);
        assert_eq!(below(Elevated, 499, 1000, 500), High);
        // Back above the high threshold but within 10%: still high.
        assert_eq!(below(High, 520, 1000, 500), High);
        assert_eq!(below(High, 560, 1000, 500), Elevated);
        assert_eq!(below(Elevated, 1050, 1000, 500), Elevated);
        assert_eq!(below(Elevated, 1100, 1000, 500), Normal);
        // Held bytes: elevated above 1000, high above 2000.
        assert_eq!(above(Normal, 1000, 1000, 2000), Normal);
        assert_eq!(above(Normal, 1001, 1000, 2000), Elevated);
        assert_eq!(above(Elevated, 2001, 1000, 2000), High);
        assert_eq!(above(High, 1900, 1000, 2000), High);
        assert_eq!(above(High, 1700, 1000, 2000), Elevated);
        assert_eq!(above(Elevated, 850, 1000, 2000), Normal);
        // No threshold.
        assert_eq!(above(Normal, u64::MAX - 1, u64::MAX, u64::MAX), Normal);
        // A large threshold: the margin is at most 1 GiB.
        let t = 50u64 << 30;
        assert_eq!(below(Elevated, t + (1 << 30), t, t / 2), Normal);
        assert_eq!(below(Elevated, t + (1 << 29), t, t / 2), Elevated);
    }

    fn config() -> PressureConfig {
        crate::config::Config::from_toml("", &Default::default())
            .unwrap()
            .pressure
    }

    #[test]
    fn a_full_log_makes_the_node_high_and_mail_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = Pressure::new(config(), dir.path().to_owned(), 2);
        // This machine's disk and memory are above the defaults in CI and
        // here; the log is what this test drives.
        let base = p.level();
        assert!(p.refuse_mail(Some(10), false).is_none() || base > Level::Normal);
        p.set_log(1, 4096, true);
        assert_eq!(p.level(), Level::High);
        let r = p.refuse_mail(None, false).expect("refused");
        assert_eq!((r.code, r.status), (452, Some(Status(4, 3, 1))));
        assert!(p.refuse_mail(None, true).is_some(), "copies too");
        assert_eq!(p.reading().queued, 4096);
        p.set_log(1, 4096, false);
        assert_eq!(p.level(), base);
        assert!(p.entered(Level::High) >= 1);
        // A failed log: 421 from then on.
        assert!(p.fail(0, "fdatasync: EIO"));
        assert!(!p.fail(1, "again"));
        assert_eq!(p.refuse_mail(None, false).unwrap().code, 421);
        assert_eq!(p.failed(), Some("shard 0: fdatasync: EIO"));
    }
}
