//! Routing: which next hops serve a recipient domain, and which host of
//! them to use now.
//!
//! Order: a static route (`[routes]`, with run-time overrides from
//! `tern route set`): exact domain, then `*.parent` from the most specific
//! parent up, then `*`; else the smarthost (`server.relay_to`); else MX
//! resolution. A route names a pool; a pool's hosts are tried by priority
//! (lowest first) and spread by weight within a priority, like DNS SRV. A
//! host that fails is marked down with doubling backoff. When every host
//! of a pool is down its `failover` pool is used (and so on, without
//! loops), and the original pool again as soon as one of its hosts is up.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use crate::config::{Pool, TlsPolicy, SMARTHOST_POOL};
use crate::dns::{MxAnswer, MxHost};

/// Where a recipient domain's mail goes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// A configured pool (or the smarthost, pool `relay_to`).
    Pool(String),
    /// The domain's MX hosts.
    Mx(String),
}

impl Target {
    /// Name of the destination (per-destination queues and limits).
    pub fn name(&self) -> String {
        match self {
            Target::Pool(p) => format!("pool:{p}"),
            Target::Mx(d) => format!("mx:{d}"),
        }
    }
}

/// The routing table of one core: config routes plus run-time overrides.
#[derive(Clone, Debug, Default)]
pub struct Router {
    routes: BTreeMap<String, String>,
    smarthost: bool,
}

impl Router {
    /// Routes from config and overrides (an override replaces a route of
    /// the same pattern).
    pub fn new(
        config: &BTreeMap<String, String>,
        overrides: &BTreeMap<String, String>,
        pools: &BTreeMap<String, Pool>,
    ) -> Router {
        let mut routes = config.clone();
        routes.extend(overrides.iter().map(|(k, v)| (k.clone(), v.clone())));
        Router {
            routes,
            smarthost: pools.contains_key(SMARTHOST_POOL),
        }
    }

    /// The route pattern that decides for `domain` (`None`: no route).
    pub fn pattern(&self, domain: &str) -> Option<String> {
        if self.routes.contains_key(domain) {
            return Some(domain.to_owned());
        }
        let mut rest = domain;
        while let Some((_, parent)) = rest.split_once('.') {
            let p = format!("*.{parent}");
            if self.routes.contains_key(&p) {
                return Some(p);
            }
            rest = parent;
        }
        self.routes.contains_key("*").then(|| "*".to_owned())
    }

    /// The target for `domain` (already lower case).
    pub fn route(&self, domain: &str) -> Target {
        if let Some(p) = self.routes.get(domain) {
            return Target::Pool(p.clone());
        }
        let mut rest = domain;
        while let Some((_, parent)) = rest.split_once('.') {
            if let Some(p) = self.routes.get(&format!("*.{parent}")) {
                return Target::Pool(p.clone());
            }
            rest = parent;
        }
        if let Some(p) = self.routes.get("*") {
            return Target::Pool(p.clone());
        }
        if self.smarthost {
            return Target::Pool(SMARTHOST_POOL.into());
        }
        Target::Mx(domain.to_owned())
    }
}

/// Run-time route overrides (`tern route set`), shared by all cores. Cores
/// compare the generation (one atomic load) and copy the table only when
/// it changed, so the per-message path takes no lock.
#[derive(Debug, Default)]
pub struct RouteOverrides {
    generation: std::sync::atomic::AtomicU64,
    map: std::sync::Mutex<BTreeMap<String, String>>,
}

impl RouteOverrides {
    /// Changes so far.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The current overrides.
    pub fn overrides(&self) -> BTreeMap<String, String> {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Routes `pattern` (domain, `*.domain` or `*`) to `pool`.
    pub fn set(&self, pattern: &str, pool: &str) {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(pattern.to_ascii_lowercase(), pool.to_owned());
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// Removes the override of `pattern`; false if there was none.
    pub fn clear(&self, pattern: &str) -> bool {
        let removed = self
            .map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&pattern.to_ascii_lowercase())
            .is_some();
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        removed
    }
}

/// One host a connection may go to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// Where.
    pub addr: SocketAddr,
    /// Name for logs and DSNs (pool host as written, or MX exchange).
    pub name: String,
    /// Lower first. Failover pools get higher tiers (tier << 16).
    pub priority: u32,
    /// Share within a priority.
    pub weight: u32,
    /// Outbound TLS to it (its pool's, else `delivery.tls_policy`; MX
    /// hosts under an MTA-STS `enforce` policy: `verify`).
    pub tls_policy: TlsPolicy,
    /// An MX host of a domain with an MTA-STS `testing` policy: the
    /// certificate is verified and a failure (or no TLS) only reported.
    pub mta_sts_testing: bool,
}

/// Candidates of a pool and, in later tiers, its failover chain.
pub fn pool_candidates(
    pools: &BTreeMap<String, Pool>,
    name: &str,
    default_tls: TlsPolicy,
) -> Vec<Candidate> {
    let mut out = Vec::new();
    let mut seen = Vec::new();
    let mut next = Some(name.to_owned());
    let mut tier = 0u32;
    while let Some(n) = next.take() {
        if seen.contains(&n) {
            break;
        }
        let Some(pool) = pools.get(&n) else { break };
        out.extend(pool.hosts.iter().map(|h| Candidate {
            addr: h.addr,
            name: h.name.clone(),
            priority: (tier << 16) | u32::from(h.priority),
            weight: h.weight,
            tls_policy: pool.tls_policy.unwrap_or(default_tls),
            mta_sts_testing: false,
        }));
        seen.push(n);
        next = pool.failover.clone();
        tier += 1;
    }
    out
}

/// Candidates from an MX answer: preference is priority; port `port`.
pub fn mx_candidates(hosts: &[MxHost], port: u16, tls_policy: TlsPolicy) -> Vec<Candidate> {
    hosts
        .iter()
        .flat_map(|h| {
            h.addrs.iter().map(move |ip| Candidate {
                addr: SocketAddr::new(*ip, port),
                name: h.name.clone(),
                priority: u32::from(h.preference),
                weight: 1,
                tls_policy,
                mta_sts_testing: false,
            })
        })
        .collect()
}

/// What an MX answer means for delivery.
pub fn mx_verdict(answer: &MxAnswer) -> Result<&[MxHost], &'static str> {
    match answer {
        MxAnswer::Hosts(h) => Ok(h),
        MxAnswer::NullMx => Err("the domain accepts no mail (null MX, RFC 7505)"),
        MxAnswer::NoSuchDomain => Err("the domain has no MX and no address"),
    }
}

#[derive(Clone, Debug)]
struct Down {
    until_ms: u64,
    backoff_ms: u64,
    /// Why it was marked down (for deferral and bounce texts).
    error: String,
}

/// Which hosts are down, per core.
#[derive(Debug)]
pub struct Health {
    down: HashMap<SocketAddr, Down>,
    initial_ms: u64,
    max_ms: u64,
}

impl Health {
    /// Backoff starting at `initial`, doubling up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Health {
        Health {
            down: HashMap::new(),
            initial_ms: initial.as_millis() as u64,
            max_ms: max.as_millis() as u64,
        }
    }

    /// Is `addr` usable at `now_ms`?
    pub fn is_up(&self, addr: &SocketAddr, now_ms: u64) -> bool {
        self.down.get(addr).is_none_or(|d| d.until_ms <= now_ms)
    }

    /// `addr` failed with `error`: skip it for the next backoff (doubling
    /// each time it fails again).
    pub fn mark_down(&mut self, addr: SocketAddr, now_ms: u64, error: &str) {
        let backoff = match self.down.get(&addr) {
            Some(d) => (d.backoff_ms * 2).min(self.max_ms),
            None => self.initial_ms,
        };
        self.down.insert(
            addr,
            Down {
                until_ms: now_ms + backoff,
                backoff_ms: backoff,
                error: error.to_owned(),
            },
        );
    }

    /// Forgets hosts whose skip ended more than `host_down_max` ago.
    pub fn prune(&mut self, now_ms: u64) {
        let keep = self.max_ms;
        self.down.retain(|_, d| d.until_ms + keep > now_ms);
    }

    /// Forgets every failure (the operator's retry now).
    pub fn clear(&mut self) {
        self.down.clear();
    }

    /// `addr` worked: forget its failures.
    pub fn mark_up(&mut self, addr: &SocketAddr) {
        self.down.remove(addr);
    }

    /// The error of the candidate marked down most recently.
    pub fn last_error(&self, candidates: &[Candidate]) -> Option<&str> {
        candidates
            .iter()
            .filter_map(|c| self.down.get(&c.addr))
            .max_by_key(|d| d.until_ms)
            .map(|d| d.error.as_str())
    }

    /// Lowest priority with a host up, if any.
    pub fn best_priority(&self, candidates: &[Candidate], now_ms: u64) -> Option<u32> {
        candidates
            .iter()
            .filter(|c| self.is_up(&c.addr, now_ms))
            .map(|c| c.priority)
            .min()
    }

    /// Picks a host: the lowest priority with a host up, then by weight
    /// among its up hosts, skipping `exclude`. `roll` is a uniform random
    /// number (injected, for tests).
    pub fn pick<'a>(
        &self,
        candidates: &'a [Candidate],
        now_ms: u64,
        exclude: &[SocketAddr],
        roll: u64,
    ) -> Option<&'a Candidate> {
        let up = |c: &&Candidate| self.is_up(&c.addr, now_ms) && !exclude.contains(&c.addr);
        let best = candidates.iter().filter(up).map(|c| c.priority).min()?;
        let level: Vec<&Candidate> = candidates
            .iter()
            .filter(up)
            .filter(|c| c.priority == best)
            .collect();
        let total: u64 = level.iter().map(|c| u64::from(c.weight.max(1))).sum();
        let mut at = roll % total;
        for c in &level {
            let w = u64::from(c.weight.max(1));
            if at < w {
                return Some(c);
            }
            at -= w;
        }
        level.last().copied()
    }
}

/// Shared, immutable candidate list of a destination.
pub type Candidates = Rc<Vec<Candidate>>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PoolHost;

    fn pool(name: &str, hosts: &[(&str, u16, u32)], failover: Option<&str>) -> (String, Pool) {
        (
            name.into(),
            Pool {
                name: name.into(),
                hosts: hosts
                    .iter()
                    .map(|(a, p, w)| PoolHost {
                        name: a.to_string(),
                        addr: a.parse().unwrap(),
                        priority: *p,
                        weight: *w,
                    })
                    .collect(),
                failover: failover.map(String::from),
                tls_policy: None,
                srv: None,
            },
        )
    }

    #[test]
    fn route_order() {
        let pools: BTreeMap<String, Pool> = [
            pool("a", &[("127.0.0.2:25", 0, 1)], None),
            pool("b", &[("127.0.0.3:25", 0, 1)], None),
        ]
        .into();
        let routes: BTreeMap<String, String> = [
            ("example.com".into(), "a".into()),
            ("*.example.com".into(), "b".into()),
            ("*.deep.example.com".into(), "a".into()),
        ]
        .into();
        let r = Router::new(&routes, &BTreeMap::new(), &pools);
        assert_eq!(r.route("example.com"), Target::Pool("a".into()));
        assert_eq!(r.route("x.example.com"), Target::Pool("b".into()));
        assert_eq!(r.route("y.deep.example.com"), Target::Pool("a".into()));
        assert_eq!(r.route("other.net"), Target::Mx("other.net".into()));
        let over: BTreeMap<String, String> = [("example.com".into(), "b".into())].into();
        let r = Router::new(&routes, &over, &pools);
        assert_eq!(r.route("example.com"), Target::Pool("b".into()));
        let mut with_smarthost = pools.clone();
        with_smarthost.extend([pool(SMARTHOST_POOL, &[("127.0.0.9:25", 0, 1)], None)]);
        let r = Router::new(&routes, &BTreeMap::new(), &with_smarthost);
        assert_eq!(r.route("other.net"), Target::Pool(SMARTHOST_POOL.into()));
        let star: BTreeMap<String, String> = [("*".into(), "b".into())].into();
        let r = Router::new(&star, &BTreeMap::new(), &with_smarthost);
        assert_eq!(r.route("other.net"), Target::Pool("b".into()));
    }

    #[test]
    fn priority_weight_and_failover() {
        let pools: BTreeMap<String, Pool> = [
            pool(
                "main",
                &[
                    ("127.0.0.2:25", 10, 3),
                    ("127.0.0.3:25", 10, 1),
                    ("127.0.0.4:25", 20, 1),
                ],
                Some("backup"),
            ),
            pool("backup", &[("127.0.0.5:25", 0, 1)], Some("main")),
        ]
        .into();
        let c = pool_candidates(&pools, "main", TlsPolicy::May);
        assert_eq!(c.len(), 4, "failover chain without the loop back");
        let mut h = Health::new(Duration::from_secs(1), Duration::from_secs(4));
        // Weight 3:1 over rolls 0..4.
        let picks: Vec<String> = (0..4)
            .map(|r| h.pick(&c, 0, &[], r).unwrap().addr.to_string())
            .collect();
        assert_eq!(picks.iter().filter(|p| *p == "127.0.0.2:25").count(), 3);
        h.mark_down("127.0.0.2:25".parse().unwrap(), 0, "refused");
        h.mark_down("127.0.0.3:25".parse().unwrap(), 0, "refused");
        assert_eq!(
            h.pick(&c, 0, &[], 0).unwrap().addr.to_string(),
            "127.0.0.4:25"
        );
        h.mark_down("127.0.0.4:25".parse().unwrap(), 0, "refused");
        assert_eq!(
            h.pick(&c, 0, &[], 0).unwrap().addr.to_string(),
            "127.0.0.5:25"
        );
        assert_eq!(h.best_priority(&c, 0), Some(1 << 16));
        // Back after the backoff: the main pool is preferred again.
        assert_eq!(h.pick(&c, 1000, &[], 0).unwrap().priority, 10);
        // Doubling backoff, capped.
        let a: SocketAddr = "127.0.0.2:25".parse().unwrap();
        h.mark_down(a, 1000, "refused");
        assert!(!h.is_up(&a, 2999));
        assert!(h.is_up(&a, 3000));
        h.mark_down(a, 3000, "refused");
        h.mark_down(a, 3000, "refused");
        assert!(h.is_up(&a, 7000));
        assert_eq!(h.last_error(&c), Some("refused"));
        h.mark_up(&a);
        assert!(h.is_up(&a, 0));
        let all: Vec<SocketAddr> = c.iter().map(|c| c.addr).collect();
        assert!(h.pick(&c, 0, &all, 0).is_none());
    }

    #[test]
    fn mx() {
        let hosts = vec![
            MxHost {
                preference: 10,
                name: "mx1".into(),
                addrs: vec!["127.0.0.2".parse().unwrap()],
            },
            MxHost {
                preference: 20,
                name: "mx2".into(),
                addrs: vec!["127.0.0.3".parse().unwrap(), "::1".parse().unwrap()],
            },
        ];
        let c = mx_candidates(&hosts, 2525, TlsPolicy::May);
        assert_eq!(c.len(), 3);
        assert_eq!(c[2].addr.to_string(), "[::1]:2525");
        assert!(mx_verdict(&MxAnswer::NullMx).is_err());
    }
}
