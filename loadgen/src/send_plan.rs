//! The run plan every core shares: targets and their health, the ticket
//! counter that hands out sequence numbers (and, in the open loop, due
//! times), the bounds of the run, and the all-targets-down abort.
//!
//! Read-only but for the atomics: taking a ticket is one `fetch_add`,
//! marking every target down one `compare_exchange`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::send_stats::Live;
use super::send_target::Health;
use crate::size::Sizes;

/// Everything the cores share, read-only but for the atomics.
pub struct Plan {
    /// Run id.
    pub run: u64,
    /// Resolved target addresses.
    pub addrs: Vec<SocketAddr>,
    /// Their priorities.
    pub priorities: Vec<u32>,
    /// Their health.
    pub health: Vec<Health>,
    /// Next sequence number (= ticket).
    pub next: AtomicU64,
    /// `--messages`.
    pub messages: Option<u64>,
    /// `--duration`.
    pub duration: Option<Duration>,
    /// `--rate`.
    pub rate: Option<f64>,
    /// Start of the run.
    pub start: Instant,
    /// `--per-conn` (0 = unlimited).
    pub per_conn: u64,
    /// Pipeline when offered.
    pub pipelining: bool,
    /// BDAT when offered.
    pub bdat: bool,
    /// Per read/write/connect.
    pub timeout: Duration,
    /// EHLO name.
    pub helo: String,
    /// Keep the sequence numbers of accepted messages (`--acked`).
    pub record_acked: bool,
    /// MAIL FROM address.
    pub from: String,
    /// RCPT TO addresses.
    pub rcpts: Vec<String>,
    /// Size distribution.
    pub sizes: Sizes,
    /// Per-core live counters.
    pub live: Vec<Live>,
    /// Since when (µs since the start) every target has been down without
    /// a successful connect since; [`NOT_DOWN`] if not.
    pub down_since_us: AtomicU64,
    /// Every target was down for longer than `timeout`: the run stops.
    pub aborted: AtomicBool,
    /// `--starttls` / `--tls` settings; `None` for plain SMTP.
    pub tls: Option<super::send_tls::TlsPlan>,
    /// `--auth`.
    pub auth: Option<super::send_auth::Credentials>,
}

/// [`Plan::down_since_us`] when some target is reachable.
pub const NOT_DOWN: u64 = u64::MAX;

/// When message `k` of an open loop at `rate`/s is due, after the start;
/// `None` if it falls outside the bounds (`messages`, `duration`).
pub fn open_loop_due(
    k: u64,
    rate: f64,
    messages: Option<u64>,
    duration: Option<Duration>,
) -> Option<Duration> {
    if messages.is_some_and(|n| k >= n) {
        return None;
    }
    let due = Duration::from_secs_f64(k as f64 / rate);
    if duration.is_some_and(|d| due >= d) {
        return None;
    }
    Some(due)
}

impl Plan {
    pub(super) fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    /// The next message: its sequence number and, in the open loop, when
    /// it is due. `None` when the run is over.
    pub(super) fn ticket(&self) -> Option<(u64, Option<Instant>)> {
        if self.aborted.load(Ordering::Relaxed) {
            return None;
        }
        if let Some(rate) = self.rate {
            let k = self.next.fetch_add(1, Ordering::Relaxed);
            let due = open_loop_due(k, rate, self.messages, self.duration)?;
            return Some((k, Some(self.start + due)));
        }
        if self.duration.is_some_and(|d| self.start.elapsed() >= d) {
            return None;
        }
        let k = self.next.fetch_add(1, Ordering::Relaxed);
        if self.messages.is_some_and(|n| k >= n) {
            return None;
        }
        Some((k, None))
    }

    /// After an aborted run: the messages of the run that were never
    /// taken (no ticket). Known when `--messages` or an open-loop
    /// schedule bounds the run; 0 otherwise.
    pub fn untaken(&self) -> u64 {
        let scheduled = match (self.rate, self.duration) {
            (Some(r), Some(d)) => Some((d.as_secs_f64() * r).ceil() as u64),
            _ => None,
        };
        let total = match (self.messages, scheduled) {
            (Some(n), Some(s)) => n.min(s),
            (Some(n), None) => n,
            (None, Some(s)) => s,
            (None, None) => return 0,
        };
        total.saturating_sub(self.next.load(Ordering::Relaxed).min(total))
    }

    /// Records that every target is down (from `now_us` unless already).
    /// Returns true, and aborts the run, once that has lasted longer than
    /// the timeout.
    pub(super) fn all_down(&self, now_us: u64) -> bool {
        let _ = self.down_since_us.compare_exchange(
            NOT_DOWN,
            now_us,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        let since = self.down_since_us.load(Ordering::Relaxed);
        if since != NOT_DOWN && now_us.saturating_sub(since) > self.timeout.as_micros() as u64 {
            self.aborted.store(true, Ordering::Relaxed);
        }
        self.aborted.load(Ordering::Relaxed)
    }

    /// True when a priority group better than `target`'s has a target up
    /// (may be tried).
    pub(super) fn better_group_up(&self, target: usize) -> bool {
        let now_us = self.now_us();
        let mine = self.priorities[target];
        self.priorities
            .iter()
            .zip(&self.health)
            .any(|(&p, h)| p < mine && h.is_up(now_us))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_loop_schedule() {
        // 1000/s: message k is due at k ms.
        assert_eq!(open_loop_due(0, 1000.0, None, None), Some(Duration::ZERO));
        assert_eq!(
            open_loop_due(250, 1000.0, None, None),
            Some(Duration::from_millis(250))
        );
        // Fractional rates.
        assert_eq!(
            open_loop_due(3, 0.5, None, None),
            Some(Duration::from_secs(6))
        );
        // Bounded by messages.
        assert_eq!(
            open_loop_due(9, 10.0, Some(10), None),
            Some(Duration::from_millis(900))
        );
        assert_eq!(open_loop_due(10, 10.0, Some(10), None), None);
        // Bounded by duration: 2 s at 10/s is messages 0..20.
        let d = Some(Duration::from_secs(2));
        assert!(open_loop_due(19, 10.0, None, d).is_some());
        assert_eq!(open_loop_due(20, 10.0, None, d), None);
        // The schedule is fixed: it does not depend on when earlier
        // messages finished (no coordinated omission).
        let due: Vec<_> = (0..5)
            .map(|k| open_loop_due(k, 4.0, None, None).unwrap())
            .collect();
        assert_eq!(due[4] - due[0], Duration::from_secs(1));
    }
}
