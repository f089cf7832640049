//! Config reload (SIGHUP, `tern reload`): the config in force, shared by
//! the cores, and what a new config file may change at run time.
//!
//! The node keeps its config in a [`Live`]: a generation counter and the
//! current `Arc<Config>`. A core compares the generation (one atomic
//! load) where it starts something new (a session, a routing decision)
//! and takes the new config only when it changed, so nothing on the
//! per-message path takes a lock. Sessions and transactions under way keep
//! the config they started with: a reload drops no session and no queued
//! message.
//!
//! What a reload applies ([`merge`]): `[smtp]` limits (new sessions),
//! `[relay]` rules (new sessions), `[pools]` and `[routes]` (the next
//! routing decision; run-time `tern route` overrides stay), and
//! `server.log_level`; the TLS certificates are read again too
//! (`tls/reload.rs`). Everything else (the listen addresses, cores,
//! data directory, storage, cluster, ...) is kept as it was and reported:
//! it takes effect at the next start.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::config::Config;

/// The config in force, node-wide.
#[derive(Debug)]
pub struct Live {
    generation: AtomicU64,
    current: Mutex<Arc<Config>>,
    /// Reloads applied / refused (a config with problems).
    pub applied: AtomicU64,
    /// Reloads refused.
    pub failed: AtomicU64,
}

impl Live {
    /// The config at start (generation 0).
    pub fn new(config: Arc<Config>) -> Live {
        Live {
            generation: AtomicU64::new(0),
            current: Mutex::new(config),
            applied: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }

    /// Reloads so far (compare before taking [`Live::get`]).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The config in force.
    pub fn get(&self) -> Arc<Config> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Puts `config` in force.
    pub fn publish(&self, config: Arc<Config>) {
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = config;
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

/// What a reload did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Keys or sections now in force.
    pub applied: Vec<&'static str>,
    /// Changed in the file but kept as they were until the next start.
    pub kept: Vec<&'static str>,
}

/// Takes from `new` what may change at run time and keeps the rest of
/// `old`. Sections are compared by their resolved values.
pub fn merge(old: &Config, new: Config) -> (Config, Changes) {
    let mut changes = Changes::default();
    let mut merged = old.clone();
    macro_rules! live {
        ($field:ident, $name:literal) => {
            if format!("{:?}", old.$field) != format!("{:?}", new.$field) {
                merged.$field = new.$field.clone();
                changes.applied.push($name);
            }
        };
    }
    macro_rules! kept {
        ($field:ident, $name:literal) => {
            if format!("{:?}", old.$field) != format!("{:?}", new.$field) {
                changes.kept.push($name);
            }
        };
    }
    live!(smtp, "smtp");
    live!(relay, "relay");
    live!(pools, "pools");
    live!(routes, "routes");
    live!(log_level, "server.log_level");
    kept!(listen, "server.listen");
    kept!(hostname, "server.hostname");
    kept!(data_dir, "server.data_dir");
    kept!(cores, "server.cores");
    kept!(relay_to, "server.relay_to");
    kept!(admin_listen, "server.admin_listen");
    kept!(admin_token_file, "server.admin_token_file");
    kept!(shutdown_grace, "server.shutdown_grace");
    kept!(incoming_cpu, "server.incoming_cpu");
    kept!(storage, "storage");
    kept!(io, "storage.io");
    kept!(delivery, "delivery");
    kept!(cluster, "cluster");
    kept!(tls, "tls");
    kept!(auth, "auth");
    kept!(mta_sts, "mta_sts");
    kept!(pressure, "pressure");
    // `relay_to` is a pool too: a changed smarthost is kept with it.
    if changes.kept.contains(&"server.relay_to") {
        match old.pools.get(crate::config::SMARTHOST_POOL) {
            Some(p) => {
                merged
                    .pools
                    .insert(crate::config::SMARTHOST_POOL.into(), p.clone());
            }
            None => {
                merged.pools.remove(crate::config::SMARTHOST_POOL);
            }
        }
    }
    (merged, changes)
}
