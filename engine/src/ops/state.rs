//! The node-wide operator state that belongs to no message: destination
//! suspensions and Safety Net resubmission requests.
//!
//! # File
//!
//! `DATA_DIR/operator/state.json`, rewritten whole for every change
//! (temporary file, fsync, rename, directory fsync:
//! `tern_storage::log::replace_file_durably`) before the admin API
//! answers, and read once at start:
//!
//! ```text
//! { "version": 1,
//!   "next_request": u64,
//!   "suspensions": [ { "destination": str, "since_ms": u64,
//!                      "until_ms": u64 | null, "by": str } ],
//!   "requests": [ { "id": u64, "created_ms": u64, "by": str,
//!                   "start_ms": u64, "end_ms": u64,
//!                   "recipient" | "sender" | "recipient_domain" | "next_hop"
//!                   | "message_id" | "unresponsive_primary": str | null,
//!                   "disabled": bool, "cores_pending": [u16],
//!                   "matched": u64, "resubmitted": u64, "delivered": u64 } ] }
//! ```
//!
//! Why a file and not the log: a record in a shard's log is reclaimed
//! with its segment once every cursor passed it, and a suspension or a
//! request pins no message that would keep it; it would have to be
//! copied forward for as long as it lasts. Per-message actions (hold,
//! release, bounce, delete) are status events in the message's own log
//! instead, kept exactly as long as the message.
//!
//! Limits: at most [`SUSPENSIONS_MAX`] suspensions and
//! [`REQUESTS_MAX`] requests (the file stays small).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Most suspended destinations.
pub const SUSPENSIONS_MAX: usize = 10_000;
/// Most resubmission requests kept.
pub const REQUESTS_MAX: usize = 1_000;

const VERSION: u32 = 1;

/// A suspended destination.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Suspension {
    /// `pool:NAME`, `mx:DOMAIN` or a bare recipient domain.
    pub destination: String,
    /// Since when (unix ms).
    pub since_ms: u64,
    /// Until when (unix ms); `None`: until resumed.
    pub until_ms: Option<u64>,
    /// Who suspended it.
    pub by: String,
}

impl Suspension {
    /// In force at `now_ms`?
    pub fn active(&self, now_ms: u64) -> bool {
        self.until_ms.is_none_or(|u| u > now_ms)
    }
}

/// A Safety Net resubmission request.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Request {
    /// Its id (1, 2, ...; never reused).
    pub id: u64,
    /// When it was made (unix ms).
    pub created_ms: u64,
    /// Who made it.
    pub by: String,
    /// Window start: messages that arrived at or after it (unix ms).
    pub start_ms: u64,
    /// Window end: ... and at or before it.
    pub end_ms: u64,
    /// Only this recipient.
    pub recipient: Option<String>,
    /// Only this sender.
    pub sender: Option<String>,
    /// Only recipients of this domain.
    pub recipient_domain: Option<String>,
    /// Only recipients the routing in force sends to this pool.
    pub next_hop: Option<String>,
    /// Only the message with this Message-ID.
    pub message_id: Option<String>,
    /// Resubmit this node's shadow copies of that primary's handled
    /// messages instead of our own.
    pub unresponsive_primary: Option<String>,
    /// Stopped by the operator.
    pub disabled: bool,
    /// Cores that have not finished their part.
    pub cores_pending: Vec<u16>,
    /// Safety Net messages that matched.
    pub matched: u64,
    /// Of them, queued again.
    pub resubmitted: u64,
    /// Of those, delivered (to at least one recipient).
    pub delivered: u64,
}

impl Request {
    /// `running`, `done` or `disabled`.
    pub fn state(&self) -> &'static str {
        if self.disabled {
            "disabled"
        } else if self.cores_pending.is_empty() {
            "done"
        } else {
            "running"
        }
    }
}

/// The whole file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct State {
    version: u32,
    /// The next request id.
    pub next_request: u64,
    /// Suspended destinations.
    pub suspensions: Vec<Suspension>,
    /// Resubmission requests.
    pub requests: Vec<Request>,
}

impl Default for State {
    fn default() -> State {
        State {
            version: VERSION,
            next_request: 1,
            suspensions: Vec::new(),
            requests: Vec::new(),
        }
    }
}

/// Why the state cannot be read or kept.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading or writing the file.
    #[error("operator state {0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// The file is not what tern writes.
    #[error("operator state {0} is damaged ({1}); move it away to start without suspensions and resubmission requests")]
    Malformed(PathBuf, String),
}

/// The file in `data_dir`.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("operator").join("state.json")
}

/// Reads the state (none yet: the empty state).
pub fn load(data_dir: &Path) -> Result<State, StateError> {
    let p = path(data_dir);
    let text = match std::fs::read(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(State::default()),
        Err(e) => return Err(StateError::Io(p, e)),
    };
    let state: State = serde_json::from_slice(&text)
        .map_err(|e| StateError::Malformed(p.clone(), e.to_string()))?;
    if state.version != VERSION {
        return Err(StateError::Malformed(
            p,
            format!("version {}", state.version),
        ));
    }
    Ok(state)
}

/// Writes the state durably.
pub fn save(data_dir: &Path, state: &State) -> Result<(), StateError> {
    let p = path(data_dir);
    let dir = p.parent().expect("operator directory");
    tern_storage::log::create_dir_durably(dir).map_err(|e| StateError::Io(dir.into(), e))?;
    let mut text = serde_json::to_vec_pretty(state).expect("state serializes");
    text.push(b'\n');
    tern_storage::log::replace_file_durably(&p, &text, 0o600).map_err(|e| StateError::Io(p, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), State::default());
        let mut s = State::default();
        s.suspensions.push(Suspension {
            destination: "pool:p".into(),
            since_ms: 5,
            until_ms: None,
            by: "op".into(),
        });
        s.requests.push(Request {
            id: 1,
            start_ms: 1,
            end_ms: 2,
            cores_pending: vec![0, 1],
            ..Request::default()
        });
        s.next_request = 2;
        save(dir.path(), &s).unwrap();
        assert_eq!(load(dir.path()).unwrap(), s);
        assert_eq!(s.requests[0].state(), "running");
        std::fs::write(path(dir.path()), b"{ nope").unwrap();
        let e = load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("damaged"), "{e}");
    }
}
