//! Targets with priorities (like DNS SRV / MX preferences), their health,
//! and the pure selection rule:
//!
//! * the group with the lowest priority value that has a target up wins;
//! * within it, connections are spread round-robin over the targets up;
//! * a target whose connect fails is down for a backoff (100 ms doubling
//!   up to 5 s), after which it is tried again; one success clears it.
//!
//! So when every target of a group fails, traffic fails over to the next
//! group, and comes back once a target of the better group answers again.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// One `--target HOST:PORT[,PRIORITY]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// `HOST:PORT` as given.
    pub addr: String,
    /// Lower is preferred; default 0.
    pub priority: u32,
}

impl std::str::FromStr for Target {
    type Err = String;
    fn from_str(s: &str) -> Result<Target, String> {
        let (addr, priority) = match s.rsplit_once(',') {
            Some((a, p)) => (
                a.trim(),
                p.trim()
                    .parse()
                    .map_err(|_| format!("invalid priority in {s:?}"))?,
            ),
            None => (s.trim(), 0),
        };
        if addr
            .rsplit_once(':')
            .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
        {
            return Err(format!("target {addr:?} is not HOST:PORT"));
        }
        Ok(Target {
            addr: addr.to_owned(),
            priority,
        })
    }
}

impl Target {
    /// The host part of `addr` (brackets of an IPv6 address kept).
    pub fn host(&self) -> &str {
        self.addr.rsplit_once(':').map_or(&self.addr, |(h, _)| h)
    }

    /// Resolves `addr` (first address).
    pub fn resolve(&self) -> anyhow::Result<SocketAddr> {
        self.addr
            .to_socket_addrs()
            .map_err(|e| anyhow::anyhow!("cannot resolve {}: {e}", self.addr))?
            .next()
            .ok_or_else(|| anyhow::anyhow!("{} resolves to no address", self.addr))
    }
}

/// Shared (all cores) health of one target. Times are microseconds since
/// the start of the run.
#[derive(Debug, Default)]
pub struct Health {
    down_until_us: AtomicU64,
    failures: AtomicU32,
}

/// Backoff after `failures` consecutive connect failures (>= 1).
pub fn backoff(failures: u32) -> Duration {
    let ms = 100u64 << failures.saturating_sub(1).min(6);
    Duration::from_millis(ms.min(5_000))
}

impl Health {
    /// True if the target may be tried at `now_us`.
    pub fn is_up(&self, now_us: u64) -> bool {
        self.down_until_us.load(Ordering::Relaxed) <= now_us
    }

    /// When a down target may be tried again.
    pub fn retry_at_us(&self) -> u64 {
        self.down_until_us.load(Ordering::Relaxed)
    }

    /// Records a failed connect at `now_us`.
    pub fn failed(&self, now_us: u64) {
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        let until = now_us + backoff(n).as_micros() as u64;
        self.down_until_us.fetch_max(until, Ordering::Relaxed);
    }

    /// Records a successful connect.
    pub fn succeeded(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
            self.down_until_us.store(0, Ordering::Relaxed);
        }
    }
}

/// Picks a target: the best (lowest) priority group with a target up, and
/// in it the `spread`-th up target (round robin). `None` if all are down.
pub fn choose(priorities: &[u32], up: &[bool], spread: usize) -> Option<usize> {
    let best = priorities
        .iter()
        .zip(up)
        .filter(|(_, &u)| u)
        .map(|(&p, _)| p)
        .min()?;
    let n = priorities
        .iter()
        .zip(up)
        .filter(|(&p, &u)| u && p == best)
        .count();
    let k = spread % n;
    priorities
        .iter()
        .zip(up)
        .enumerate()
        .filter(|(_, (&p, &u))| u && p == best)
        .nth(k)
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_targets() {
        let t: Target = "127.0.0.1:25,10".parse().unwrap();
        assert_eq!((t.addr.as_str(), t.priority), ("127.0.0.1:25", 10));
        let t: Target = "mx.example:2525".parse().unwrap();
        assert_eq!((t.addr.as_str(), t.priority), ("mx.example:2525", 0));
        let t: Target = "[::1]:25,5".parse().unwrap();
        assert_eq!((t.addr.as_str(), t.priority), ("[::1]:25", 5));
        assert!("nohost".parse::<Target>().is_err());
        assert!("h:notaport".parse::<Target>().is_err());
        assert!("h:25,x".parse::<Target>().is_err());
    }

    /// (priorities, up, spread, expected)
    type Case = (&'static [u32], &'static [bool], usize, Option<usize>);

    #[test]
    fn selection_table() {
        let cases: &[Case] = &[
            (&[0], &[true], 7, Some(0)),
            (&[0], &[false], 0, None),
            // Best group spreads round robin.
            (&[10, 10, 20], &[true, true, true], 0, Some(0)),
            (&[10, 10, 20], &[true, true, true], 1, Some(1)),
            (&[10, 10, 20], &[true, true, true], 2, Some(0)),
            // One of the best group down: the other takes everything.
            (&[10, 10, 20], &[false, true, true], 0, Some(1)),
            (&[10, 10, 20], &[false, true, true], 1, Some(1)),
            // Whole best group down: fail over to the next group.
            (&[10, 10, 20], &[false, false, true], 3, Some(2)),
            // Order of arguments does not matter, only priority values.
            (&[30, 20, 10], &[true, true, false], 0, Some(1)),
            (&[30, 20, 10], &[true, false, false], 5, Some(0)),
            // Everything down.
            (&[1, 2], &[false, false], 0, None),
            // Best group back up: preferred again.
            (&[10, 20, 20], &[true, true, true], 1, Some(0)),
        ];
        for &(p, u, s, want) in cases {
            assert_eq!(choose(p, u, s), want, "{p:?} {u:?} {s}");
        }
    }

    #[test]
    fn health_backoff() {
        let h = Health::default();
        assert!(h.is_up(0));
        h.failed(1_000);
        assert!(!h.is_up(1_000));
        assert!(h.is_up(1_000 + 100_000));
        h.failed(200_000);
        assert_eq!(h.retry_at_us(), 200_000 + 200_000);
        h.succeeded();
        assert!(h.is_up(0));
        assert_eq!(backoff(1), Duration::from_millis(100));
        assert_eq!(backoff(100), Duration::from_secs(5));
    }
}
