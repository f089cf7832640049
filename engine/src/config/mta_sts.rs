//! `[mta_sts]`: SMTP MTA Strict Transport Security (RFC 8461) for MX
//! delivery: whether policies are looked up, where they are fetched and
//! how long a fetch may take.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::HumanDuration;

/// Longest policy fetch allowed: RFC 8461 3.3 suggests senders wait about
/// a minute at most; a delivery waits for the fetch.
const FETCH_TIMEOUT_MAX: Duration = Duration::from_secs(60);

/// Most policies in the cache (one per recipient domain that has one).
const CACHE_MAX_BOUND: usize = 1_000_000;

/// `[mta_sts]` as written; its `Default` is the default of every key.
#[derive(Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct MtaStsSection {
    enabled: bool,
    port: u16,
    fetch_timeout: HumanDuration,
    cache_max: usize,
}

impl Default for MtaStsSection {
    fn default() -> Self {
        MtaStsSection {
            enabled: true,
            port: 443,
            fetch_timeout: HumanDuration::from_secs(10),
            cache_max: 10_000,
        }
    }
}

/// MTA-STS settings.
#[derive(Clone, Debug)]
pub struct MtaStsConfig {
    /// Look up `_mta-sts` TXT records and apply policies to MX delivery.
    pub enabled: bool,
    /// HTTPS port of `mta-sts.<domain>` (443 by RFC 8461 3.3; another
    /// port only for tests).
    pub port: u16,
    /// Longest policy fetch (connect, TLS, request, body).
    pub fetch_timeout: Duration,
    /// Most cached policies; the oldest fetched go first beyond it.
    pub cache_max: usize,
}

impl MtaStsSection {
    /// The settings.
    pub(super) fn resolve(&self, problems: &mut Vec<String>) -> MtaStsConfig {
        let c = MtaStsConfig {
            enabled: self.enabled,
            port: self.port,
            fetch_timeout: self.fetch_timeout.0,
            cache_max: self.cache_max,
        };
        if c.port == 0 {
            problems.push("mta_sts.port must be 1..=65535, got 0".into());
        }
        if c.fetch_timeout < Duration::from_millis(100) || c.fetch_timeout > FETCH_TIMEOUT_MAX {
            problems.push(format!(
                "mta_sts.fetch_timeout must be 100ms..={}, got {}",
                HumanDuration(FETCH_TIMEOUT_MAX),
                HumanDuration(c.fetch_timeout)
            ));
        }
        if !(1..=CACHE_MAX_BOUND).contains(&c.cache_max) {
            problems.push(format!(
                "mta_sts.cache_max must be 1..={CACHE_MAX_BOUND}, got {}",
                c.cache_max
            ));
        }
        c
    }
}
