//! `GET /pressure` (`tern pressure`): the node's level, each resource's,
//! what was measured, and whether the message store failed. (The same
//! facts are gauges of `/metrics`, `metric_table.rs`.)

use std::fmt::Write as _;

use crate::pressure::Pressure;

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
