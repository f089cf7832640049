//! Operator actions, node-wide: the admin token, the durable operator
//! state (suspensions, resubmission requests), and the channels through
//! which the admin thread asks each core to act on its own queue.
//!
//! # Layout
//!
//! ```text
//! mod.rs      Ops: state, suspensions, requests, one channel per core, counters
//! command.rs  what a core is asked (summary, actions, suspensions, resubmission) and answers
//! state.rs    DATA_DIR/operator/state.json: suspensions and resubmission requests
//! token.rs    the admin token (DATA_DIR/admin-token, or server.admin_token_file)
//! ```
//!
//! The cores own their queues; nothing here touches one. A per-message
//! action (hold, bounce, ...) is a [`command::Command`] to every core,
//! which records it in its own log before it answers. Suspensions are
//! read by the cores through a generation counter (one atomic load per
//! routing decision, the list copied only when it changed).

pub mod command;
pub mod state;
pub mod token;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use command::{Answer, Command, Request};
use state::{State, Suspension};

use crate::config::Config;

/// Requests waiting per core (the admin thread is one thread: a few).
const CHANNEL_DEPTH: usize = 64;

/// What an operator named as a destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// A routing target by its name: `pool:NAME` or `mx:DOMAIN`.
    Target(String),
    /// Recipients of a domain, wherever they are routed.
    Domain(String),
}

impl Destination {
    /// `pool:NAME`, `mx:DOMAIN`, a pool name (`is_pool`), or a domain.
    pub fn parse(s: &str, is_pool: impl Fn(&str) -> bool) -> Result<Destination, String> {
        let s = s.trim();
        if let Some(p) = s.strip_prefix("pool:") {
            if !is_pool(p) {
                return Err(format!("no pool named {p:?}"));
            }
            return Ok(Destination::Target(s.to_owned()));
        }
        if let Some(d) = s.strip_prefix("mx:") {
            if !tern_smtp::address::domain_name(d) {
                return Err(format!("{d:?} is not a domain name"));
            }
            return Ok(Destination::Target(format!(
                "mx:{}",
                d.to_ascii_lowercase()
            )));
        }
        if is_pool(s) {
            return Ok(Destination::Target(format!("pool:{s}")));
        }
        if tern_smtp::address::domain_name(s) || s.starts_with('[') {
            return Ok(Destination::Domain(s.to_ascii_lowercase()));
        }
        Err(format!(
            "{s:?} is not a destination (pool:NAME, mx:DOMAIN, a pool name or a domain)"
        ))
    }

    /// As stored in a suspension (parse it back with [`Destination::from_key`]).
    pub fn key(&self) -> String {
        match self {
            Destination::Target(t) | Destination::Domain(t) => t.clone(),
        }
    }

    /// From [`Destination::key`].
    pub fn from_key(key: &str) -> Destination {
        if key.starts_with("pool:") || key.starts_with("mx:") {
            Destination::Target(key.to_owned())
        } else {
            Destination::Domain(key.to_owned())
        }
    }

    /// Does a recipient of `domain` routed to `target` (its name) belong
    /// to it?
    pub fn matches(&self, target: &str, domain: &str) -> bool {
        match self {
            Destination::Target(t) => t == target,
            Destination::Domain(d) => d.eq_ignore_ascii_case(domain),
        }
    }
}

/// The `action` label of `tern_operator_actions_total`.
pub const ACTIONS: [&str; 12] = [
    "flush",
    "hold",
    "release",
    "bounce",
    "delete",
    "suspend",
    "resume",
    "resubmit",
    "resubmit_disable",
    "resubmit_remove",
    "route_set",
    "route_clear",
];

/// Operator counters.
#[derive(Debug, Default)]
pub struct OpsStats {
    actions: [AtomicU64; ACTIONS.len()],
    /// Admin requests refused for a missing or wrong token.
    pub unauthorized: AtomicU64,
    /// Messages queued again by resubmission requests.
    pub resubmitted: AtomicU64,
}

impl OpsStats {
    /// Counts one `action` (one of [`ACTIONS`]).
    pub fn count(&self, action: &str) {
        if let Some(i) = ACTIONS.iter().position(|a| *a == action) {
            self.actions[i].fetch_add(1, Relaxed);
        }
    }

    /// Every action of [`ACTIONS`] (the `action` label) and its count.
    pub fn actions(&self) -> Vec<(&'static str, u64)> {
        ACTIONS
            .iter()
            .zip(&self.actions)
            .map(|(a, n)| (*a, n.load(Relaxed)))
            .collect()
    }
}

/// Why an operator request cannot be done: an HTTP status and a message.
#[derive(Debug)]
pub struct Refused(pub u16, pub String);

/// The node's operator side.
pub struct Ops {
    data_dir: PathBuf,
    state: Mutex<State>,
    /// Counts changed since the file was written.
    dirty: AtomicBool,
    /// Bumped when the suspensions change.
    generation: AtomicU64,
    senders: Vec<async_channel::Sender<Request>>,
    receivers: Vec<async_channel::Receiver<Request>>,
    pools: Vec<String>,
    /// The admin token.
    pub token: String,
    /// Counters.
    pub stats: OpsStats,
}

impl Ops {
    /// Loads the token (generating it at the first start) and the state.
    pub fn open(config: &Config) -> anyhow::Result<Arc<Ops>> {
        let (token, created) =
            token::load_or_create(&config.data_dir, config.admin_token_file.as_deref())?;
        if created {
            tracing::info!(file = %token::default_path(&config.data_dir).display(),
                "admin token generated (state-changing admin requests need it)");
        }
        let state = state::load(&config.data_dir)?;
        let (senders, receivers) = (0..config.cores)
            .map(|_| async_channel::bounded(CHANNEL_DEPTH))
            .unzip();
        Ok(Arc::new(Ops {
            data_dir: config.data_dir.clone(),
            state: Mutex::new(state),
            dirty: AtomicBool::new(false),
            generation: AtomicU64::new(1),
            senders,
            receivers,
            pools: config.pools.keys().cloned().collect(),
            token,
            stats: OpsStats::default(),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Core `core`'s end of its channel.
    pub fn receiver(&self, core: usize) -> async_channel::Receiver<Request> {
        self.receivers[core].clone()
    }

    /// Cores.
    pub fn cores(&self) -> usize {
        self.senders.len()
    }

    /// Parses a destination against the configured pools.
    pub fn destination(&self, s: &str) -> Result<Destination, String> {
        Destination::parse(s, |p| self.pools.iter().any(|x| x == p))
    }

    /// Sends `command` to `core` without waiting for an answer.
    pub fn tell(&self, core: usize, command: Command) {
        let r = Request {
            command,
            reply: None,
        };
        if self.senders[core].try_send(r).is_err() {
            tracing::warn!(core, "core's operator channel is full; request dropped");
        }
    }

    /// Sends `command` to every core and waits (at most `timeout` in
    /// all) for every answer.
    pub fn ask_all(&self, command: &Command, timeout: Duration) -> Result<Vec<Answer>, String> {
        let deadline = Instant::now() + timeout;
        let mut waiting = Vec::new();
        for (core, s) in self.senders.iter().enumerate() {
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            let r = Request {
                command: command.clone(),
                reply: Some(tx),
            };
            s.try_send(r)
                .map_err(|_| format!("core {core} is not taking operator requests"))?;
            waiting.push((core, rx));
        }
        let mut out = Vec::new();
        for (core, rx) in waiting {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(Answer::Failed(e)) => return Err(format!("core {core}: {e}")),
                Ok(a) => out.push(a),
                Err(_) => return Err(format!("core {core} did not answer within {timeout:?}")),
            }
        }
        Ok(out)
    }

    /// The suspensions' generation (changes when they change).
    pub fn generation(&self) -> u64 {
        self.generation.load(Relaxed)
    }

    /// The suspensions in force at `now_ms`.
    pub fn suspensions(&self, now_ms: u64) -> Vec<Suspension> {
        let st = self.lock();
        st.suspensions
            .iter()
            .filter(|s| s.active(now_ms))
            .cloned()
            .collect()
    }

    /// Writes the state, or (failed) puts `before` back.
    fn commit(&self, st: &mut State, before: State) -> Result<(), Refused> {
        match state::save(&self.data_dir, st) {
            Ok(()) => {
                self.dirty.store(false, Relaxed);
                Ok(())
            }
            Err(e) => {
                *st = before;
                tracing::error!(error = %e, "cannot record an operator action");
                Err(Refused(503, format!("cannot record the change: {e}")))
            }
        }
    }

    /// Suspends `dest` until `until_ms` (or until resumed), durably, then
    /// tells every core.
    pub fn suspend(
        &self,
        dest: &Destination,
        until_ms: Option<u64>,
        now_ms: u64,
        by: &str,
    ) -> Result<Suspension, Refused> {
        let s = Suspension {
            destination: dest.key(),
            since_ms: now_ms,
            until_ms,
            by: by.to_owned(),
        };
        {
            let mut st = self.lock();
            let before = st.clone();
            st.suspensions
                .retain(|x| x.destination != s.destination && x.active(now_ms));
            if st.suspensions.len() >= state::SUSPENSIONS_MAX {
                return Err(Refused(
                    409,
                    format!(
                        "{} destinations are suspended already",
                        state::SUSPENSIONS_MAX
                    ),
                ));
            }
            st.suspensions.push(s.clone());
            self.commit(&mut st, before)?;
        }
        self.generation.fetch_add(1, Relaxed);
        for core in 0..self.cores() {
            self.tell(
                core,
                Command::Suspended {
                    destination: s.destination.clone(),
                },
            );
        }
        Ok(s)
    }

    /// Ends the suspension of `dest`, durably, then tells every core.
    pub fn resume(&self, dest: &Destination, now_ms: u64) -> Result<Suspension, Refused> {
        let key = dest.key();
        let ended = {
            let mut st = self.lock();
            let before = st.clone();
            let Some(i) = st
                .suspensions
                .iter()
                .position(|x| x.destination == key && x.active(now_ms))
            else {
                return Err(Refused(404, format!("{key} is not suspended")));
            };
            let s = st.suspensions.remove(i);
            st.suspensions.retain(|x| x.active(now_ms));
            self.commit(&mut st, before)?;
            s
        };
        self.generation.fetch_add(1, Relaxed);
        for core in 0..self.cores() {
            self.tell(
                core,
                Command::Resumed {
                    destination: key.clone(),
                },
            );
        }
        Ok(ended)
    }

    /// Adds a resubmission request (durably) and starts it on every core.
    pub fn add_request(&self, mut req: state::Request) -> Result<state::Request, Refused> {
        {
            let mut st = self.lock();
            let before = st.clone();
            if st.requests.len() >= state::REQUESTS_MAX {
                return Err(Refused(
                    409,
                    format!(
                        "{} resubmission requests are kept already; remove some",
                        state::REQUESTS_MAX
                    ),
                ));
            }
            req.id = st.next_request;
            req.cores_pending = (0..self.cores() as u16).collect();
            st.next_request += 1;
            st.requests.push(req.clone());
            self.commit(&mut st, before)?;
        }
        for core in 0..self.cores() {
            self.tell(core, Command::Resubmit { id: req.id });
        }
        Ok(req)
    }

    /// Restarts, on the cores that had not finished them, the requests
    /// still running when the node stopped.
    pub fn restart_requests(&self) {
        let running: Vec<(u64, Vec<u16>)> = self
            .lock()
            .requests
            .iter()
            .filter(|r| !r.disabled && !r.cores_pending.is_empty())
            .map(|r| (r.id, r.cores_pending.clone()))
            .collect();
        for (id, cores) in running {
            tracing::info!(request = id, ?cores, "resubmission request resumes");
            for core in cores {
                if (core as usize) < self.cores() {
                    self.tell(core as usize, Command::Resubmit { id });
                }
            }
        }
    }

    /// A copy of request `id`.
    pub fn request(&self, id: u64) -> Option<state::Request> {
        self.lock().requests.iter().find(|r| r.id == id).cloned()
    }

    /// Every request.
    pub fn requests(&self) -> Vec<state::Request> {
        self.lock().requests.clone()
    }

    /// Changes request `id`'s counts (kept in memory; written within a
    /// second by [`Ops::save_if_dirty`]).
    pub fn update(&self, id: u64, f: impl FnOnce(&mut state::Request)) {
        let mut st = self.lock();
        if let Some(r) = st.requests.iter_mut().find(|r| r.id == id) {
            f(r);
            self.dirty.store(true, Relaxed);
        }
    }

    /// Core `core` finished its part of request `id`: written at once.
    pub fn finished(&self, id: u64, core: u16) {
        let mut st = self.lock();
        let before = st.clone();
        if let Some(r) = st.requests.iter_mut().find(|r| r.id == id) {
            r.cores_pending.retain(|c| *c != core);
            let _ = self.commit(&mut st, before);
        }
    }

    /// Disables request `id` (durably); cores stop it between batches.
    pub fn disable(&self, id: u64) -> Result<state::Request, Refused> {
        let mut st = self.lock();
        let before = st.clone();
        let Some(r) = st.requests.iter_mut().find(|r| r.id == id) else {
            return Err(Refused(404, format!("no resubmission request {id}")));
        };
        r.disabled = true;
        let r = r.clone();
        self.commit(&mut st, before)?;
        Ok(r)
    }

    /// Removes request `id` (durably; a running one stops).
    pub fn remove(&self, id: u64) -> Result<(), Refused> {
        let mut st = self.lock();
        let before = st.clone();
        let n = st.requests.len();
        st.requests.retain(|r| r.id != id);
        if st.requests.len() == n {
            return Err(Refused(404, format!("no resubmission request {id}")));
        }
        self.commit(&mut st, before)
    }

    /// Is request `id` still to be carried out?
    pub fn request_active(&self, id: u64) -> bool {
        self.lock()
            .requests
            .iter()
            .any(|r| r.id == id && !r.disabled)
    }

    /// Writes the state if counts changed since the last write.
    pub fn save_if_dirty(&self) {
        if !self.dirty.load(Relaxed) {
            return;
        }
        let st = self.lock();
        match state::save(&self.data_dir, &st) {
            Ok(()) => self.dirty.store(false, Relaxed),
            Err(e) => tracing::warn!(error = %e, "cannot write the operator state"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations() {
        let pools = |p: &str| p == "relay";
        let d = |s| Destination::parse(s, pools);
        assert_eq!(d("relay"), Ok(Destination::Target("pool:relay".into())));
        assert_eq!(
            d("pool:relay"),
            Ok(Destination::Target("pool:relay".into()))
        );
        assert!(d("pool:nope").is_err());
        assert_eq!(
            d("mx:Example.COM"),
            Ok(Destination::Target("mx:example.com".into()))
        );
        assert_eq!(
            d("Example.com"),
            Ok(Destination::Domain("example.com".into()))
        );
        assert!(d("not a domain").is_err());
        let dom = d("example.com").unwrap();
        assert!(dom.matches("pool:relay", "EXAMPLE.com"));
        assert!(!dom.matches("mx:example.com", "other.org"));
        let t = d("relay").unwrap();
        assert!(t.matches("pool:relay", "x.org"));
        assert!(!t.matches("mx:x.org", "x.org"));
        assert_eq!(Destination::from_key(&t.key()), t);
        assert_eq!(Destination::from_key(&dom.key()), dom);
    }
}
