//! Failed AUTH attempts per client IP: a growing delay, then a lockout.
//! Pure logic: the caller passes the time in and does the waiting.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::config::{AuthConfig, AUTH_DELAY_MAX};

/// Most clients tracked per core. An attacker spreading guesses over many
/// addresses (one IPv6 /48 holds 65 536 /64s) must not grow memory without
/// bound; at about 100 bytes per client this is 1 MiB per core, and 10 000
/// clients failing within one window is far more than mistyping users. At
/// the bound the client whose last failure is oldest is forgotten (a
/// guesser with that many addresses is not slowed by a per-IP limit
/// anyway).
pub const TRACKED_MAX: usize = 10_000;

/// What to do with an AUTH attempt from a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Verify the credentials now.
    Allow,
    /// Wait this long, then verify (the client failed before).
    Delay(Duration),
    /// Do not verify: the client is locked out; answer as a failure.
    Refuse,
}

/// The unit an attacker controls: an IPv4 address, or an IPv6 /64 (a
/// single host is commonly given a whole /64). IPv4-mapped IPv6
/// addresses count as IPv4.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Client {
    V4(u32),
    V6Net64(u64),
}

impl Client {
    fn of(ip: IpAddr) -> Client {
        match ip {
            IpAddr::V4(v4) => Client::V4(v4.into()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Client::V4(v4.into()),
                None => Client::V6Net64((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

/// One client's failures in its current window.
#[derive(Clone, Copy, Debug)]
struct Record {
    /// The first failure of the window.
    window_start: Instant,
    /// The latest failure (eviction order).
    last_failure: Instant,
    /// Failures since `window_start`; at least 1.
    failures: u32,
    /// When `failures` reached `failures_max`.
    locked_at: Option<Instant>,
}

/// Failed AUTH attempts per client over time. One per core (the engine
/// runs one executor per core, so no lock): a plain struct.
///
/// Use: on each AUTH attempt, [`check`](Limiter::check); after a failed
/// verification, [`failed`](Limiter::failed). Failures are counted in a
/// window of `failure_window` from a client's first failure; each attempt
/// after `n` failures waits `n * failure_delay` (at most
/// [`AUTH_DELAY_MAX`]); the `failures_max`-th failure locks the client
/// out for `lockout`, after which it starts afresh. The delay slows a
/// guesser that tries one password after another on a connection; the
/// lockout bounds guesses over parallel connections.
///
/// A successful login does not clear a client's failures (there is no
/// `succeeded`): otherwise a guesser holding one valid account could
/// reset its count between guesses at the others. A user who mistyped
/// keeps the delay until the window ends.
#[derive(Debug)]
pub struct Limiter {
    failures_max: u32,
    failure_window: Duration,
    lockout: Duration,
    failure_delay: Duration,
    clients: HashMap<Client, Record>,
    /// (last failure, client) of every tracked client, oldest first.
    by_age: BTreeSet<(Instant, Client)>,
}

impl Limiter {
    /// An empty limiter with the `[auth]` limits.
    pub fn new(config: &AuthConfig) -> Limiter {
        assert!(config.failures_max >= 1, "auth.failures_max is validated");
        Limiter {
            failures_max: config.failures_max,
            failure_window: config.failure_window,
            lockout: config.lockout,
            failure_delay: config.failure_delay,
            clients: HashMap::new(),
            by_age: BTreeSet::new(),
        }
    }

    /// What to do with an attempt from `ip` at `now`. No allocation.
    pub fn check(&mut self, ip: IpAddr, now: Instant) -> Verdict {
        let client = Client::of(ip);
        let Some(record) = self.clients.get(&client).copied() else {
            return Verdict::Allow;
        };
        if self.is_over(&record, now) {
            self.forget(client, &record);
            return Verdict::Allow;
        }
        if record.locked_at.is_some() {
            return Verdict::Refuse;
        }
        let delay = self
            .failure_delay
            .saturating_mul(record.failures)
            .min(AUTH_DELAY_MAX);
        if delay.is_zero() {
            Verdict::Allow
        } else {
            Verdict::Delay(delay)
        }
    }

    /// Counts a failed verification from `ip` at `now`. (While the client
    /// is locked out nothing changes: the lockout is not extended.)
    pub fn failed(&mut self, ip: IpAddr, now: Instant) {
        let client = Client::of(ip);
        let mut record = match self.clients.get(&client).copied() {
            Some(r) if self.is_over(&r, now) => {
                self.forget(client, &r);
                self.fresh(now)
            }
            Some(r) if r.locked_at.is_some() => return,
            Some(r) => {
                self.by_age.remove(&(r.last_failure, client));
                Record {
                    failures: r.failures.saturating_add(1),
                    last_failure: now.max(r.last_failure),
                    ..r
                }
            }
            None => self.fresh(now),
        };
        if record.failures >= self.failures_max {
            record.locked_at = Some(now);
        }
        self.by_age.insert((record.last_failure, client));
        self.clients.insert(client, record);
        assert_eq!(self.clients.len(), self.by_age.len());
        assert!(self.clients.len() <= TRACKED_MAX);
    }

    /// Clients tracked now (for a gauge).
    pub fn tracked(&self) -> usize {
        self.clients.len()
    }

    /// A record for a first failure, making room for it.
    fn fresh(&mut self, now: Instant) -> Record {
        if self.clients.len() >= TRACKED_MAX {
            if let Some((_, oldest)) = self.by_age.pop_first() {
                self.clients.remove(&oldest);
            }
        }
        Record {
            window_start: now,
            last_failure: now,
            failures: 1,
            locked_at: None,
        }
    }

    /// Whether `record` no longer counts: its lockout or window is over.
    fn is_over(&self, record: &Record, now: Instant) -> bool {
        match record.locked_at {
            Some(at) => now.saturating_duration_since(at) >= self.lockout,
            None => now.saturating_duration_since(record.window_start) >= self.failure_window,
        }
    }

    fn forget(&mut self, client: Client, record: &Record) {
        self.clients.remove(&client);
        self.by_age.remove(&(record.last_failure, client));
    }
}
