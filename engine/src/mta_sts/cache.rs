//! The policy cache (RFC 8461 5.1: senders cache policies for their
//! `max_age` and keep using them when a later fetch fails), kept in
//! memory and in `DATA_DIR/mta-sts/policies.toml` so a restart does not
//! forget a domain's `enforce` policy (an attacker who blocks the fetch
//! after a restart would otherwise get clear text).
//!
//! File format (TOML, rewritten whole through a fsynced temporary file
//! after each new policy; a bad file is logged and the cache starts
//! empty: it is a cache, and policies are fetched again):
//!
//! ```text
//! [[policy]]
//! domain = "example.com"        # lower case
//! id = "20160831085700Z"        # the TXT record's id when fetched
//! fetched = 1764700000          # Unix seconds
//! body = "version: STSv1\n..."  # the policy file as served
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::policy::{self, Policy};

/// One cached policy.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The TXT id it was fetched under.
    pub id: String,
    /// When (Unix seconds).
    pub fetched: u64,
    /// The parsed policy.
    pub policy: Arc<Policy>,
    /// The text, as stored.
    body: String,
}

impl Entry {
    /// A freshly fetched policy.
    pub fn new(id: String, fetched: u64, policy: Policy, body: String) -> Entry {
        Entry {
            id,
            fetched,
            policy: Arc::new(policy),
            body,
        }
    }

    /// Still within its `max_age` at `now`.
    pub fn fresh(&self, now: u64) -> bool {
        now < self.fetched.saturating_add(self.policy.max_age)
    }
}

/// Policies by domain.
#[derive(Debug, Default)]
pub struct Cache {
    entries: HashMap<String, Entry>,
    max: usize,
}

#[derive(Serialize, Deserialize)]
struct FileEntry {
    domain: String,
    id: String,
    fetched: u64,
    body: String,
}

#[derive(Serialize, Deserialize, Default)]
struct File {
    #[serde(default)]
    policy: Vec<FileEntry>,
}

/// Where the cache lives in a data directory.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("mta-sts").join("policies.toml")
}

impl Cache {
    /// An empty cache of at most `max` policies.
    pub fn new(max: usize) -> Cache {
        Cache {
            entries: HashMap::new(),
            max,
        }
    }

    /// Reads `path`, keeping the entries fresh at `now`; a missing file is
    /// an empty cache, a bad one is logged and ignored.
    pub fn load(path: &Path, max: usize, now: u64) -> Cache {
        let mut cache = Cache::new(max);
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return cache,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "mta-sts: cannot read the policy cache; starting empty");
                return cache;
            }
        };
        let file: File = match toml::from_str(&text) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "mta-sts: the policy cache is not valid; starting empty");
                return cache;
            }
        };
        for e in file.policy {
            match policy::parse(&e.body) {
                Ok(p) => {
                    let entry = Entry::new(e.id, e.fetched, p, e.body);
                    if entry.fresh(now) {
                        cache.insert(e.domain, entry);
                    }
                }
                Err(err) => {
                    tracing::warn!(domain = %e.domain, error = %err, "mta-sts: cached policy is not valid; dropped");
                }
            }
        }
        cache
    }

    /// The entry of `domain` (fresh or not).
    pub fn get(&self, domain: &str) -> Option<&Entry> {
        self.entries.get(domain)
    }

    /// Stores `entry` for `domain`; beyond `max`, stale entries go, then
    /// the oldest fetched.
    pub fn insert(&mut self, domain: String, entry: Entry) {
        self.entries.insert(domain, entry);
        if self.entries.len() > self.max {
            let now = super::unix_now();
            self.entries.retain(|_, e| e.fresh(now));
        }
        while self.entries.len() > self.max {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.fetched)
                .map(|(d, _)| d.clone());
            match oldest {
                Some(d) => self.entries.remove(&d),
                None => break,
            };
        }
    }

    /// The file text of the cache (domains sorted, so it is stable).
    pub fn encode(&self) -> String {
        let mut policy: Vec<FileEntry> = self
            .entries
            .iter()
            .map(|(domain, e)| FileEntry {
                domain: domain.clone(),
                id: e.id.clone(),
                fetched: e.fetched,
                body: e.body.clone(),
            })
            .collect();
        policy.sort_by(|a, b| a.domain.cmp(&b.domain));
        toml::to_string(&File { policy }).expect("the cache encodes as TOML")
    }

    /// Policies held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// None held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &str = "version: STSv1\nmode: enforce\nmx: mx.a.test\nmax_age: 100\n";

    fn entry(id: &str, fetched: u64) -> Entry {
        Entry::new(
            id.into(),
            fetched,
            policy::parse(BODY).unwrap(),
            BODY.into(),
        )
    }

    #[test]
    fn survives_a_round_trip_and_drops_stale_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = path(dir.path());
        let now = 1_000_000;
        let mut c = Cache::new(10);
        c.insert("a.test".into(), entry("one", now - 10));
        c.insert("old.test".into(), entry("two", now - 200));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, c.encode()).unwrap();
        let back = Cache::load(&path, 10, now);
        assert_eq!(back.len(), 1, "the stale policy is not loaded");
        let e = back.get("a.test").unwrap();
        assert_eq!((e.id.as_str(), e.fetched), ("one", now - 10));
        assert_eq!(e.policy.mx, ["mx.a.test"]);
    }

    #[test]
    fn a_bad_file_is_an_empty_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policies.toml");
        std::fs::write(&path, "[[policy]]\ndomain = 7\n").unwrap();
        assert_eq!(Cache::load(&path, 10, 0).len(), 0);
        assert_eq!(Cache::load(&dir.path().join("missing"), 10, 0).len(), 0);
    }

    #[test]
    fn bounded_oldest_first() {
        let now = super::super::unix_now();
        let mut c = Cache::new(2);
        c.insert("a".into(), entry("1", now - 3));
        c.insert("b".into(), entry("2", now - 2));
        c.insert("c".into(), entry("3", now - 1));
        assert_eq!(c.len(), 2);
        assert!(c.get("a").is_none());
        assert!(c.get("c").is_some());
    }
}
