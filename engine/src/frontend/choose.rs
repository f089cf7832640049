//! Which back end a transaction goes to: the route of the first
//! recipient's domain (`[routes]` with `tern route set` overrides; `*` the
//! default) names a pool; its hosts (fixed ones and those of its DNS SRV
//! name) and, in later tiers, its failover chain's are the candidates; a
//! host is picked by priority then weight among those up
//! (`delivery::route::Health`, the pools' backoff).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use crate::config::{Config, Pool};
use crate::delivery::route::Candidate;
use crate::dns::Resolver;

/// SRV answers per name, looked up again after `frontend.srv_refresh`.
#[derive(Default)]
pub(super) struct SrvCache {
    answers: HashMap<String, (Instant, Rc<Vec<Candidate>>)>,
}

impl SrvCache {
    /// The hosts of `name` (cached; a failed lookup keeps the last answer,
    /// none at all: no hosts).
    pub(super) async fn hosts(
        cache: &std::cell::RefCell<SrvCache>,
        resolver: Option<&Resolver>,
        config: &Config,
        pool: &Pool,
        name: &str,
    ) -> Rc<Vec<Candidate>> {
        let fresh =
            cache.borrow().answers.get(name).and_then(|(at, c)| {
                (at.elapsed() < config.frontend.srv_refresh).then(|| c.clone())
            });
        if let Some(c) = fresh {
            return c;
        }
        let Some(resolver) = resolver else {
            return Rc::default();
        };
        let tls = pool.tls_policy.unwrap_or(config.delivery.tls_policy);
        let found = match resolver.srv(name).await {
            Ok(hosts) => Rc::new(
                hosts
                    .iter()
                    .flat_map(|h| {
                        h.addrs.iter().map(move |ip| Candidate {
                            addr: SocketAddr::new(*ip, h.port),
                            name: h.target.clone(),
                            priority: u32::from(h.priority),
                            weight: u32::from(h.weight),
                            tls_policy: tls,
                            mta_sts_testing: false,
                        })
                    })
                    .collect::<Vec<_>>(),
            ),
            Err(e) => {
                tracing::warn!(srv = name, pool = %pool.name, error = %e, "SRV lookup of a back-end pool failed; keeping the last answer");
                let last = cache.borrow().answers.get(name).map(|(_, c)| c.clone());
                last.unwrap_or_default()
            }
        };
        cache
            .borrow_mut()
            .answers
            .insert(name.to_owned(), (Instant::now(), found.clone()));
        found
    }
}

/// The candidates of pool `first` and its failover chain, each pool a
/// tier of its own (tier << 16 | priority), with the pool each belongs to.
pub(super) async fn candidates(
    cache: &std::cell::RefCell<SrvCache>,
    resolver: Option<&Resolver>,
    config: &Config,
    first: &str,
) -> Vec<(Candidate, Rc<str>)> {
    let pools: &BTreeMap<String, Pool> = &config.pools;
    let mut out = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    let mut next = Some(first.to_owned());
    let mut tier = 0u32;
    while let Some(name) = next.take() {
        if seen.contains(&name) {
            break;
        }
        let Some(pool) = pools.get(&name) else { break };
        let label: Rc<str> = Rc::from(name.as_str());
        let tls = pool.tls_policy.unwrap_or(config.delivery.tls_policy);
        for h in &pool.hosts {
            out.push((
                Candidate {
                    addr: h.addr,
                    name: h.name.clone(),
                    priority: (tier << 16) | u32::from(h.priority),
                    weight: h.weight,
                    tls_policy: tls,
                    mta_sts_testing: false,
                },
                label.clone(),
            ));
        }
        if let Some(srv) = &pool.srv {
            for c in SrvCache::hosts(cache, resolver, config, pool, srv)
                .await
                .iter()
            {
                let mut c = c.clone();
                c.priority |= tier << 16;
                out.push((c, label.clone()));
            }
        }
        seen.push(name);
        next = pool.failover.clone();
        tier += 1;
    }
    out
}
