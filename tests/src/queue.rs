//! `tern queue list` / `tern queue show ID` run as processes, their output
//! parsed; plus a bulk reader over the same library code for tests that
//! check thousands of messages.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use crate::server::tern_bin;
use crate::smtp::show as escape;

/// One line of `tern queue list`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Queue id (20 hex digits).
    pub id: String,
    /// Stored message size (Received header + content).
    pub size: usize,
    /// `MAIL FROM` ("<>" for the null sender).
    pub from: String,
    /// Recipients.
    pub recipients: Vec<String>,
    /// The lines under it, without their indentation: per pending
    /// recipient `RCPT: STATE, attempts N, next attempt WHEN`, then its
    /// last reply in parentheses when there is one.
    pub details: Vec<String>,
}

fn run(args: &[&str], data_dir: &Path) -> Output {
    Command::new(tern_bin())
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap_or_else(|e| panic!("run tern {args:?}: {e}"))
}

/// `tern queue list --data-dir DIR`, parsed; panics unless it exits 0 and
/// its trailer count matches its lines.
pub fn list(data_dir: &Path) -> Vec<Entry> {
    let out = run(&["queue", "list"], data_dir);
    let stdout = String::from_utf8(out.stdout).expect("queue list output is UTF-8");
    assert!(
        out.status.success(),
        "tern queue list failed: {}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let mut entries: Vec<Entry> = Vec::new();
    let mut trailer = None;
    for line in stdout.lines() {
        if let Some(rest) = line.strip_prefix("-- ") {
            let n = rest
                .strip_suffix(" message(s) queued")
                .and_then(|n| n.parse::<usize>().ok())
                .unwrap_or_else(|| panic!("bad trailer {line:?}"));
            trailer = Some(n);
            continue;
        }
        if let Some(detail) = line.strip_prefix("  ") {
            let last = entries
                .last_mut()
                .unwrap_or_else(|| panic!("detail line before any message: {line:?}"));
            last.details.push(detail.trim_start().to_string());
            continue;
        }
        entries.push(parse_entry(line));
    }
    assert_eq!(
        trailer,
        Some(entries.len()),
        "queue list trailer does not match:\n{stdout}"
    );
    entries
}

fn parse_entry(line: &str) -> Entry {
    let parse = || {
        let (id, rest) = line.split_once(' ')?;
        let (size, rest) = rest.trim_start().split_once(' ')?;
        // The date is RFC 5322 in UTC and ends with "+0000".
        let (_, envelope) = rest.split_once(" +0000 ")?;
        let (from, rcpts) = envelope.split_once(" -> ")?;
        Some(Entry {
            id: id.to_string(),
            size: size.parse().ok()?,
            from: from.to_string(),
            recipients: rcpts.split(", ").map(str::to_string).collect(),
            details: Vec::new(),
        })
    };
    parse().unwrap_or_else(|| panic!("bad queue list line {line:?}"))
}

/// `tern queue show ID`, parsed.
#[derive(Clone, Debug)]
pub struct Shown {
    /// The `key: value` lines before the message, in order.
    pub fields: Vec<(String, String)>,
    /// The stored message: Received header + content.
    pub message: Vec<u8>,
}

impl Shown {
    /// A field's value; panics when absent.
    #[track_caller]
    pub fn field(&self, key: &str) -> &str {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no field {key:?} in {:?}", self.fields))
    }

    /// The Received header the server prepended (with its CRLF).
    pub fn received(&self) -> &[u8] {
        let n = self.message.len() - self.content().len();
        &self.message[..n]
    }

    /// The message after the Received header: what the client sent,
    /// dot-unstuffed.
    pub fn content(&self) -> &[u8] {
        strip_received(&self.message)
    }
}

/// `tern queue show ID --data-dir DIR`; panics unless it exits 0.
pub fn show(data_dir: &Path, id: &str) -> Shown {
    let out = run(&["queue", "show", id], data_dir);
    assert!(
        out.status.success(),
        "tern queue show {id} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    parse_show(&out.stdout)
}

/// `tern queue show ID` for an id that must not be in the queue.
pub fn show_missing(data_dir: &Path, id: &str) {
    let out = run(&["queue", "show", id], data_dir);
    assert!(
        !out.status.success(),
        "tern queue show {id} found a message that should not exist:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

fn parse_show(stdout: &[u8]) -> Shown {
    let split = stdout
        .windows(2)
        .position(|w| w == b"\n\n")
        .unwrap_or_else(|| panic!("no blank line in queue show output {:?}", escape(stdout)));
    let head = std::str::from_utf8(&stdout[..split]).expect("queue show fields are UTF-8");
    let fields: Vec<(String, String)> = head
        .lines()
        .map(|l| {
            let (k, v) = l
                .split_once(": ")
                .unwrap_or_else(|| panic!("bad queue show line {l:?}"));
            (k.to_string(), v.to_string())
        })
        .collect();
    let shown = Shown {
        fields,
        message: stdout[split + 2..].to_vec(),
    };
    let size: usize = shown.field("size").parse().expect("size is a number");
    assert_eq!(shown.message.len(), size, "queue show: size field mismatch");
    shown
}

/// The message after its first header, which must be the server's
/// `Received:` (folded continuation lines start with a tab).
pub fn strip_received(message: &[u8]) -> &[u8] {
    assert!(
        message.starts_with(b"Received: "),
        "stored message does not start with Received: {:?}",
        escape(&message[..message.len().min(200)])
    );
    let mut at = 0;
    loop {
        let lf = message[at..]
            .iter()
            .position(|&b| b == b'\n')
            .expect("Received header ends with CRLF");
        at += lf + 1;
        if message.get(at) != Some(&b'\t') {
            return &message[at..];
        }
    }
}

/// Every queued message by id, read with the same library code `tern
/// queue` uses (one pass instead of one process per message).
pub fn stored(data_dir: &Path) -> BTreeMap<String, Vec<u8>> {
    tern_engine::cli::queue::queued(data_dir)
        .expect("read the queue")
        .into_iter()
        .map(|(id, m)| (id.to_string(), m.message.to_vec()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_list_and_show() {
        let e = parse_entry(
            "3FA9C100000000000001       142 Mon, 23 Nov 2026 12:33:28 +0000 a@b.c -> d@e.f, Postmaster",
        );
        assert_eq!(e.id, "3FA9C100000000000001");
        assert_eq!(e.size, 142);
        assert_eq!(e.from, "a@b.c");
        assert_eq!(e.recipients, vec!["d@e.f", "Postmaster"]);
        let msg = b"Received: from x (127.0.0.1)\r\n\tby h (tern) with ESMTP id 1\r\n\tfor <a@b>; date\r\nSubject: s\r\n\r\nbody\r\n";
        let mut out = format!("id: 1\nfrom: <a@b>\nsize: {}\n\n", msg.len()).into_bytes();
        out.extend_from_slice(msg);
        let s = parse_show(&out);
        assert_eq!(s.field("from"), "<a@b>");
        assert_eq!(s.content(), b"Subject: s\r\n\r\nbody\r\n");
        assert!(s.received().ends_with(b"date\r\n"));
    }
}
