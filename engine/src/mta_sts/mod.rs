//! SMTP MTA Strict Transport Security (RFC 8461) for MX delivery.
//!
//! ```text
//! delivery (a core, MX destination)        MtaSts (node-wide)
//!  1. lookup(domain, resolver) ------->  2. TXT _mta-sts.<domain> (the core's resolver)
//!                                        3. cached policy with that id, fresh: use it
//!                                        4. else fetch on a `tern-mta-sts` thread
//!                                           (HTTPS, fetch.rs), cache it, write the
//!                                           cache file; a failed fetch keeps a fresh
//!                                           cached policy (RFC 8461 5.1)
//!  6. enforce: keep matching MX hosts,  <-- 5. the policy (mode enforce / testing),
//!     each with tls_policy = verify;        or none (no policy, mode none)
//!     none match: defer 4.7.5.
//!     testing: deliver as usual, verify
//!     and report (log + metrics)
//! ```
//!
//! No TXT record (or a temporary DNS failure) with a fresh cached policy
//! keeps that policy: an attacker who can drop the TXT answer must not
//! turn an `enforce` domain into clear text. The cache survives restarts
//! (`cache.rs`). Lookups happen once per MX resolution, which the cores
//! cache briefly, so the mutex here is off the per-message path.

pub mod cache;
pub mod fetch;
pub mod policy;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use rustls::ClientConfig;

pub use policy::{Mode, Policy};

use crate::config::{Config, MtaStsConfig};
use crate::dns::Resolver;
use cache::{Cache, Entry};

/// Policy fetches running at once, node-wide (each holds a thread for up
/// to `mta_sts.fetch_timeout`); a lookup beyond it goes on with the
/// cached policy or none, and the next lookup tries again.
const FETCHES_MAX: usize = 16;

/// What a lookup or a delivery came to, for metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The domain has an `enforce` policy.
    Enforce,
    /// The domain has a `testing` policy.
    Testing,
    /// The domain's policy says `mode: none`.
    NoneMode,
    /// No policy (no TXT record, or none could be fetched or cached).
    Absent,
    /// A policy was fetched over HTTPS.
    Fetched,
    /// A fetch failed (the cached policy, if any, was used).
    FetchFailed,
    /// An MX host left out by an `enforce` policy.
    EnforceMxMismatch,
    /// No MX host matches an `enforce` policy: delivery deferred.
    EnforceNoMx,
    /// An MX host a `testing` policy would leave out (used anyway).
    TestingMxMismatch,
    /// A `testing` domain's MX host was reached without TLS.
    TestingNoTls,
}

const OUTCOMES: [Outcome; 10] = [
    Outcome::Enforce,
    Outcome::Testing,
    Outcome::NoneMode,
    Outcome::Absent,
    Outcome::Fetched,
    Outcome::FetchFailed,
    Outcome::EnforceMxMismatch,
    Outcome::EnforceNoMx,
    Outcome::TestingMxMismatch,
    Outcome::TestingNoTls,
];

impl Outcome {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Enforce => "enforce",
            Outcome::Testing => "testing",
            Outcome::NoneMode => "none",
            Outcome::Absent => "absent",
            Outcome::Fetched => "fetched",
            Outcome::FetchFailed => "fetch_failed",
            Outcome::EnforceMxMismatch => "enforce_mx_mismatch",
            Outcome::EnforceNoMx => "enforce_no_mx",
            Outcome::TestingMxMismatch => "testing_mx_mismatch",
            Outcome::TestingNoTls => "testing_no_tls",
        }
    }
}

/// Counters by [`Outcome`].
#[derive(Default)]
pub struct StsStats {
    counts: [AtomicU64; OUTCOMES.len()],
}

impl StsStats {
    /// Counts one `o`.
    pub fn count(&self, o: Outcome) {
        let i = OUTCOMES.iter().position(|x| *x == o).expect("listed");
        self.counts[i].fetch_add(1, Relaxed);
    }

    /// How many `o` so far.
    pub fn get(&self, o: Outcome) -> u64 {
        let i = OUTCOMES.iter().position(|x| *x == o).expect("listed");
        self.counts[i].load(Relaxed)
    }

    /// Every outcome's name (the `outcome` label) and count, in order.
    pub fn counts(&self) -> Vec<(&'static str, u64)> {
        OUTCOMES
            .iter()
            .map(|&o| (o.as_str(), self.get(o)))
            .collect()
    }
}

/// The node's MTA-STS state.
pub struct MtaSts {
    config: MtaStsConfig,
    cache_path: PathBuf,
    cache: Mutex<Cache>,
    /// Serialises writes of the cache file.
    persist: Mutex<()>,
    tls: Arc<ClientConfig>,
    fetching: AtomicUsize,
    /// Counters.
    pub stats: StsStats,
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl MtaSts {
    /// Loads the cache of `DATA_DIR/mta-sts`; `tls` verifies policy hosts.
    pub fn start(config: &Config, tls: Arc<ClientConfig>) -> Arc<MtaSts> {
        let c = &config.mta_sts;
        let cache_path = cache::path(&config.data_dir);
        let cache = match c.enabled {
            true => Cache::load(&cache_path, c.cache_max, unix_now()),
            false => Cache::new(c.cache_max),
        };
        if !cache.is_empty() {
            tracing::info!(policies = cache.len(), path = %cache_path.display(), "mta-sts: cached policies loaded");
        }
        Arc::new(MtaSts {
            config: c.clone(),
            cache_path,
            cache: Mutex::new(cache),
            persist: Mutex::new(()),
            tls,
            fetching: AtomicUsize::new(0),
            stats: StsStats::default(),
        })
    }

    /// The policy that applies to MX delivery for `domain` (`enforce` or
    /// `testing`); `None` when MTA-STS is off, the domain has no policy or
    /// its policy is `mode: none`.
    pub async fn lookup(
        self: &Arc<Self>,
        domain: &str,
        resolver: &Resolver,
    ) -> Option<Arc<Policy>> {
        if !self.config.enabled {
            return None;
        }
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let policy = self.resolve(&domain, resolver).await;
        let outcome = match policy.as_ref().map(|p| p.mode) {
            Some(Mode::Enforce) => Outcome::Enforce,
            Some(Mode::Testing) => Outcome::Testing,
            Some(Mode::None) => Outcome::NoneMode,
            None => Outcome::Absent,
        };
        self.stats.count(outcome);
        tracing::debug!(%domain, outcome = outcome.as_str(), "mta-sts: lookup");
        policy.filter(|p| p.mode != Mode::None)
    }

    /// Steps 2 to 5 of the module doc.
    async fn resolve(self: &Arc<Self>, domain: &str, resolver: &Resolver) -> Option<Arc<Policy>> {
        let now = unix_now();
        let cached = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(domain)
            .filter(|e| e.fresh(now))
            .cloned();
        let id = match resolver.txt(&format!("_mta-sts.{domain}")).await {
            Ok(records) => match policy::record_id(&records) {
                Ok(id) => id,
                Err(e) => {
                    tracing::info!(%domain, error = %e, "mta-sts: no usable TXT record");
                    None
                }
            },
            Err(e) => {
                tracing::info!(%domain, error = %e, "mta-sts: TXT lookup failed");
                None
            }
        };
        let id = match (id, &cached) {
            (None, _) => return cached.map(|e| e.policy),
            (Some(id), Some(e)) if e.id == id => return cached.map(|e| e.policy),
            (Some(id), _) => id,
        };
        match self.fetch(domain, id, resolver).await {
            Ok(entry) => Some(entry.policy),
            Err(why) => {
                self.stats.count(Outcome::FetchFailed);
                let using = if cached.is_some() {
                    "the cached policy"
                } else {
                    "no policy"
                };
                tracing::warn!(%domain, error = %why, using, "mta-sts: policy fetch failed");
                cached.map(|e| e.policy)
            }
        }
    }

    /// Fetches on a thread of its own; on success the policy is cached
    /// (and the cache file rewritten) before the answer comes back.
    async fn fetch(
        self: &Arc<Self>,
        domain: &str,
        id: String,
        resolver: &Resolver,
    ) -> Result<Entry, String> {
        if self.fetching.fetch_add(1, Relaxed) >= FETCHES_MAX {
            self.fetching.fetch_sub(1, Relaxed);
            return Err(format!("{FETCHES_MAX} policy fetches already running"));
        }
        let (tx, rx) = async_channel::bounded(1);
        let (me, domain, resolver) = (self.clone(), domain.to_owned(), resolver.clone());
        let spawned = std::thread::Builder::new()
            .name("tern-mta-sts".into())
            .spawn(move || {
                let r = me.fetch_blocking(&domain, id, resolver);
                me.fetching.fetch_sub(1, Relaxed);
                let _ = tx.send_blocking(r);
            });
        if let Err(e) = spawned {
            self.fetching.fetch_sub(1, Relaxed);
            return Err(format!("cannot start a fetch thread: {e}"));
        }
        rx.recv()
            .await
            .unwrap_or_else(|_| Err("the fetch thread died".into()))
    }

    fn fetch_blocking(
        &self,
        domain: &str,
        id: String,
        resolver: Resolver,
    ) -> Result<Entry, String> {
        let c = &self.config;
        let (policy, body) =
            fetch::fetch(domain, c.port, c.fetch_timeout, resolver, self.tls.clone())?;
        self.stats.count(Outcome::Fetched);
        tracing::info!(%domain, %id, mode = policy.mode.as_str(), mx = ?policy.mx, max_age = policy.max_age, "mta-sts: policy fetched");
        let entry = Entry::new(id, unix_now(), policy, body);
        let text = {
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            cache.insert(domain.to_owned(), entry.clone());
            cache.encode()
        };
        self.write_cache(&text);
        Ok(entry)
    }

    /// Rewrites the cache file; a failure is logged (the policy is still
    /// used from memory).
    fn write_cache(&self, text: &str) {
        let _one = self.persist.lock().unwrap_or_else(|e| e.into_inner());
        let dir = self
            .cache_path
            .parent()
            .expect("the cache file has a directory");
        let r = tern_storage::log::create_dir_durably(dir).and_then(|()| {
            tern_storage::log::replace_file_durably(&self.cache_path, text.as_bytes(), 0o644)
        });
        if let Err(e) = r {
            tracing::warn!(path = %self.cache_path.display(), error = %e, "mta-sts: cannot write the policy cache; a restart will fetch again");
        }
    }
}
