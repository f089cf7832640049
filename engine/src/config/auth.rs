//! `[auth]`: SMTP AUTH credentials (the users file) and the limits on
//! failed attempts per client IP.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::HumanDuration;

/// Longest wait imposed on one AUTH attempt, and so the bound of
/// `auth.failure_delay`: the delay holds a connection (the guesser's and
/// one of ours, counted in `smtp.connections_per_ip_max`) and past a few
/// seconds slows a guesser no more than the lockout does, while a client
/// that mistyped a password should get its answer well within its own
/// reply timeout (RFC 5321 4.5.3.2: minutes).
pub const AUTH_DELAY_MAX: Duration = Duration::from_secs(10);

/// Most failures before a lockout: more would make the lockout moot.
const FAILURES_MAX_BOUND: u32 = 1000;

/// `[auth]` as written; its `Default` is the default of every key.
#[derive(Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct AuthSection {
    /// `None`: AUTH is not offered.
    users_file: Option<PathBuf>,
    cleartext_on_loopback: bool,
    failures_max: u32,
    failure_window: HumanDuration,
    lockout: HumanDuration,
    failure_delay: HumanDuration,
}

impl Default for AuthSection {
    fn default() -> Self {
        AuthSection {
            users_file: None,
            cleartext_on_loopback: false,
            failures_max: 5,
            failure_window: HumanDuration::from_secs(600),
            lockout: HumanDuration::from_secs(900),
            failure_delay: HumanDuration::from_secs(1),
        }
    }
}

/// SMTP AUTH settings.
#[derive(Clone, Debug)]
pub struct AuthConfig {
    /// The users file (`name:argon2id-hash` lines, `crate::auth`); a
    /// relative path in a config file is taken relative to that file.
    /// `None`: AUTH is not offered.
    pub users_file: Option<PathBuf>,
    /// Offer AUTH without TLS to clients on 127.0.0.0/8 or ::1 (tests and
    /// local submission); everyone else must STARTTLS first.
    pub cleartext_on_loopback: bool,
    /// Failed attempts from one client IP (IPv6: its /64) within
    /// `failure_window` after which the IP is refused for `lockout`.
    pub failures_max: u32,
    /// The window in which failures are counted, from the first one.
    pub failure_window: Duration,
    /// How long an IP that reached `failures_max` is refused.
    pub lockout: Duration,
    /// Wait before answering an attempt, per failure already counted
    /// (at most [`AUTH_DELAY_MAX`] in all).
    pub failure_delay: Duration,
}

impl AuthSection {
    /// A relative `users_file` is taken relative to `dir` (the config
    /// file's).
    pub(super) fn rebase(&mut self, dir: &Path) {
        if let Some(p) = &mut self.users_file {
            super::rebase(p, dir);
        }
    }

    /// The settings.
    pub(super) fn resolve(&self, problems: &mut Vec<String>) -> AuthConfig {
        let users_file = match &self.users_file {
            Some(p) if p.as_os_str().is_empty() => {
                problems.push("auth.users_file must not be empty (leave it out: no AUTH)".into());
                None
            }
            Some(p) => Some(p.clone()),
            None => None,
        };
        let auth = AuthConfig {
            users_file,
            cleartext_on_loopback: self.cleartext_on_loopback,
            failures_max: self.failures_max,
            failure_window: self.failure_window.0,
            lockout: self.lockout.0,
            failure_delay: self.failure_delay.0,
        };
        check(&auth, problems);
        auth
    }
}

/// Bounds, each with its reason.
fn check(auth: &AuthConfig, problems: &mut Vec<String>) {
    if !(1..=FAILURES_MAX_BOUND).contains(&auth.failures_max) {
        problems.push(format!(
            "auth.failures_max must be 1..={FAILURES_MAX_BOUND}, got {}",
            auth.failures_max
        ));
    }
    // Below a second a window or lockout would not slow a guesser.
    for (key, d) in [
        ("failure_window", auth.failure_window),
        ("lockout", auth.lockout),
    ] {
        if d < Duration::from_secs(1) {
            problems.push(format!(
                "auth.{key} must be at least 1s, got {}",
                HumanDuration(d)
            ));
        }
    }
    if auth.failure_delay > AUTH_DELAY_MAX {
        problems.push(format!(
            "auth.failure_delay must be at most {}, got {}",
            HumanDuration(AUTH_DELAY_MAX),
            HumanDuration(auth.failure_delay)
        ));
    }
}
