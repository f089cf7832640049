//! The engine's rooms and which may import which (ARCHITECTURE.md, "Rooms
//! and imports"). Reads every file under `engine/src`, finds the rooms it
//! names through `crate::` paths, and fails on an edge the table does not
//! allow. The table itself must be acyclic, so no import cycle between
//! rooms can come back. A new room must be added to the table.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each room, top to bottom, with the rooms it may import.
const ALLOWED: &[(&str, &[&str])] = &[
    ("main", &["cli", "logging"]),
    (
        "cli",
        &[
            "config", "server", "delivery", "record", "layout", "received", "auth", "tls", "ops",
            "logging", "cluster",
        ],
    ),
    (
        "admin",
        &[
            "config", "delivery", "metrics", "shadow", "stop", "received", "tls", "mta_sts", "ops",
            "pressure", "logging", "reload", "frontend",
        ],
    ),
    (
        "server",
        &[
            "admin", "config", "delivery", "inbound", "shadow", "shard", "metrics", "logbuf",
            "stop", "cluster", "layout", "auth", "tls", "mta_sts", "ops", "pressure", "reload",
            "logging", "frontend",
        ],
    ),
    (
        "frontend",
        &[
            "config", "delivery", "inbound", "outbound", "dns", "metrics", "reload", "stop", "tls",
            "logbuf",
        ],
    ),
    (
        "inbound",
        &[
            "config", "shadow", "shard", "record", "metrics", "stop", "received", "auth", "tls",
            "pressure", "logbuf", "reload",
        ],
    ),
    (
        "delivery",
        &[
            "config", "shadow", "shard", "record", "outbound", "dns", "dsn", "metrics", "tls",
            "mta_sts", "ops", "pressure", "logbuf", "reload",
        ],
    ),
    (
        "shadow",
        &[
            "config", "shard", "record", "outbound", "cluster", "metrics", "stop", "tls",
        ],
    ),
    ("outbound", &["tls", "config"]),
    ("tls", &["config"]),
    ("mta_sts", &["config", "dns"]),
    ("ops", &["config"]),
    ("pressure", &["config"]),
    ("reload", &["config"]),
    ("shard", &["record", "layout", "config"]),
    ("record", &[]),
    ("dsn", &["received"]),
    ("dns", &[]),
    ("received", &[]),
    ("metrics", &[]),
    ("stop", &[]),
    ("cluster", &["config"]),
    ("auth", &["config"]),
    ("config", &["layout", "logging"]),
    ("layout", &[]),
    ("logging", &["logbuf"]),
    ("logbuf", &[]),
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The room a file belongs to: its first path component under `src`.
fn room(file: &Path) -> String {
    let rel = file.strip_prefix(src()).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_str()
        .unwrap();
    first.trim_end_matches(".rs").to_owned()
}

/// The rooms a file names: `crate::ROOM` and `crate::{ROOM, ..}`; in
/// `main.rs`, `tern_engine::ROOM`.
fn imports(text: &str, prefix: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find(prefix) {
            let after = &rest[at + prefix.len()..];
            if let Some(group) = after.strip_prefix('{') {
                let inner = group.split('}').next().unwrap_or("");
                for item in inner.split(',') {
                    let name = ident(item);
                    if !name.is_empty() && name != "self" {
                        out.insert(name);
                    }
                }
            } else {
                let name = ident(after);
                if !name.is_empty() {
                    out.insert(name);
                }
            }
            rest = after;
        }
    }
    out
}

#[test]
fn rooms_import_only_downwards() {
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut all = Vec::new();
    files(&src(), &mut all);
    let mut wrong = Vec::new();
    for file in &all {
        let r = room(file);
        if r == "lib" {
            continue;
        }
        let Some(may) = allowed.get(r.as_str()) else {
            wrong.push(format!(
                "{}: room {r:?} is not in the table",
                file.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        let prefix = if r == "main" {
            "tern_engine::"
        } else {
            "crate::"
        };
        for to in imports(&text, prefix) {
            if to != r && !may.contains(&to.as_str()) {
                wrong.push(format!("{}: {r} -> {to} is not allowed", file.display()));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the table:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_table_has_no_cycle() {
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    // Depth-first search; a room met again on the current path is a cycle.
    fn visit<'a>(
        r: &'a str,
        allowed: &BTreeMap<&'a str, &'a [&'a str]>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) {
        if done.contains(r) {
            return;
        }
        assert!(!path.contains(&r), "cycle: {} -> {r}", path.join(" -> "));
        path.push(r);
        for to in allowed.get(r).copied().unwrap_or(&[]) {
            assert!(allowed.contains_key(to), "{r} -> {to}: {to} is not a room");
            visit(to, allowed, path, done);
        }
        path.pop();
        done.insert(r);
    }
    let mut done = BTreeSet::new();
    for r in allowed.keys() {
        visit(r, &allowed, &mut Vec::new(), &mut done);
    }
}

#[test]
fn the_import_scanner_sees_grouped_and_inline_paths() {
    let text = "use crate::{config::Config, shard::Shard};\nlet x = crate::record::message::MESSAGE; // crate::stop\n";
    let found: Vec<String> = imports(text, "crate::").into_iter().collect();
    assert_eq!(found, ["config", "record", "shard"]);
}
