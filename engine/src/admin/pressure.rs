//! `GET /pressure` (`tern pressure`) and the back pressure gauges of
//! `/metrics`: the node's level, each resource's, what was measured, and
//! whether the message store failed.

use std::fmt::Write as _;

use crate::pressure::{Level, Pressure};

/// The node's state in one line per fact.
pub(super) fn status(p: &Pressure) -> String {
    let r = p.reading();
    let mut out = String::new();
    match p.failed() {
        Some(e) => {
            let _ = writeln!(
                out,
                "store failed: {e} (new sessions get 421; the node is stopping)"
            );
        }
        None => out.push_str("store ok\n"),
    }
    let _ = writeln!(out, "level {}", p.level().name());
    for (res, level) in p.resource_levels() {
        let _ = writeln!(out, "resource {} {}", res.name(), level.name());
    }
    let _ = writeln!(
        out,
        "disk free {} of {} bytes; memory available {} of {} bytes; logs hold {} bytes",
        r.disk_free, r.disk_total, r.memory_available, r.memory_total, r.queued
    );
    out
}

/// The gauges and counters.
pub(super) fn render(p: &Pressure) -> String {
    let r = p.reading();
    let mut out = String::new();
    let mut one = |name: &str, kind: &str, help: &str, v: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
        );
    };
    one(
        "tern_pressure_level",
        "gauge",
        "Back pressure level of the node: 0 normal, 1 elevated, 2 high",
        p.level() as u64,
    );
    one(
        "tern_store_failed",
        "gauge",
        "1 once a core's log failed for good (the node stops and exits non-zero)",
        u64::from(p.failed().is_some()),
    );
    one(
        "tern_disk_free_bytes",
        "gauge",
        "Free bytes of the data directory's file system",
        r.disk_free,
    );
    one(
        "tern_disk_size_bytes",
        "gauge",
        "Size of the data directory's file system",
        r.disk_total,
    );
    one(
        "tern_memory_available_bytes",
        "gauge",
        "MemAvailable of the machine",
        r.memory_available,
    );
    one(
        "tern_log_held_bytes",
        "gauge",
        "Bytes the node's logs hold on disk (queue, shadow copies, Safety Net)",
        r.queued,
    );
    out.push_str("# HELP tern_pressure_resource_level Back pressure level per resource\n# TYPE tern_pressure_resource_level gauge\n");
    for (res, level) in p.resource_levels() {
        let _ = writeln!(
            out,
            "tern_pressure_resource_level{{resource=\"{}\"}} {}",
            res.name(),
            level as u64
        );
    }
    out.push_str("# HELP tern_pressure_entered_total Times the node entered each back pressure level\n# TYPE tern_pressure_entered_total counter\n");
    for level in [Level::Normal, Level::Elevated, Level::High] {
        let _ = writeln!(
            out,
            "tern_pressure_entered_total{{level=\"{}\"}} {}",
            level.name(),
            p.entered(level)
        );
    }
    out
}
