//! `[pools.NAME]` and `[routes]`: named pools of next-hop hosts, the
//! implicit smarthost pool, and static routes from domains to pools.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::resolve_host;

/// Name of the implicit pool made from `server.relay_to`.
pub const SMARTHOST_POOL: &str = "relay_to";

/// `[pools.NAME]` as written (`hosts` must not be empty).
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct PoolSection {
    hosts: Vec<PoolHostSection>,
    failover: Option<String>,
    tls_policy: Option<String>,
    /// A DNS SRV name (`_smtp._tcp.site1.example`) whose targets are the
    /// hosts (front end only).
    srv: Option<String>,
}

/// One entry of `pools.NAME.hosts` (`address` is required).
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PoolHostSection {
    address: String,
    #[serde(default = "default_priority")]
    priority: u16,
    #[serde(default = "default_weight")]
    weight: u32,
}

fn default_priority() -> u16 {
    0
}

fn default_weight() -> u32 {
    1
}

/// One host of a pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolHost {
    /// As written (HOST:PORT).
    pub name: String,
    /// Resolved at start.
    pub addr: SocketAddr,
    /// Lower is tried first (as MX preference / SRV priority).
    pub priority: u16,
    /// Share of connections among hosts of the same priority (as SRV).
    pub weight: u32,
}

/// A named pool of next-hop hosts (`[pools.NAME]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pool {
    /// Its name.
    pub name: String,
    /// Hosts.
    pub hosts: Vec<PoolHost>,
    /// Pool used while every host of this one is down.
    pub failover: Option<String>,
    /// Outbound TLS to this pool's hosts (`None`: `delivery.tls_policy`).
    pub tls_policy: Option<super::tls::TlsPolicy>,
    /// Hosts from this DNS SRV name, looked up at run time (front end
    /// only; `hosts` then lists only fixed extra hosts).
    pub srv: Option<String>,
}

/// Name of the front end's pool made from `--backend` flags.
pub const BACKENDS_POOL: &str = "backends";

/// `--backend HOST:PORT[,PRIO]` flags become the pool `backends` (and the
/// route `*` to it, unless the file routes `*`).
pub(super) fn apply_backends(
    specs: &[String],
    pools: &mut BTreeMap<String, PoolSection>,
    routes: &mut Routes,
    problems: &mut Vec<String>,
) {
    if specs.is_empty() {
        return;
    }
    let mut hosts = Vec::new();
    for spec in specs {
        let (address, priority) = match spec.split_once(',') {
            Some((a, p)) => match p.trim().parse::<u16>() {
                Ok(p) => (a.trim(), p),
                Err(_) => {
                    problems.push(format!(
                        "--backend {spec:?}: the priority after the comma must be a number 0-65535"
                    ));
                    continue;
                }
            },
            None => (spec.trim(), default_priority()),
        };
        hosts.push(PoolHostSection {
            address: address.to_owned(),
            priority,
            weight: default_weight(),
        });
    }
    pools.insert(
        BACKENDS_POOL.into(),
        PoolSection {
            hosts,
            ..PoolSection::default()
        },
    );
    routes
        .entry("*".into())
        .or_insert_with(|| BACKENDS_POOL.into());
}

/// A front end needs a default route (`routes."*"`, implied when there is
/// one pool); `srv` pools are for front ends only.
pub(super) fn check_role(
    role: super::Role,
    pools: &Pools,
    routes: &Routes,
    problems: &mut Vec<String>,
) {
    match role {
        super::Role::FrontEnd => {
            if pools.is_empty() {
                problems.push(
                    "server.role = \"front-end\" needs back ends: [pools.NAME] or --backend HOST:PORT"
                        .into(),
                );
            } else if pools.len() > 1 && !routes.contains_key("*") {
                problems.push(
                    "server.role = \"front-end\" with several pools needs routes.\"*\" (the default back-end pool)"
                        .into(),
                );
            }
        }
        super::Role::Relay => {
            for (name, p) in pools {
                if p.srv.is_some() {
                    problems.push(format!(
                        "pools.{name}.srv: SRV pools are for server.role = \"front-end\" (a relay delivers by MX)"
                    ));
                }
            }
        }
    }
}

/// Pools by name.
pub(super) type Pools = BTreeMap<String, Pool>;
/// Route patterns to pool names.
pub(super) type Routes = BTreeMap<String, String>;

/// The pools (with the smarthost's, when `relay_to` is set) and the
/// routes, each route checked against the pools.
pub(super) fn resolve(
    sections: &BTreeMap<String, PoolSection>,
    routes: &Routes,
    relay_to: Option<&str>,
    problems: &mut Vec<String>,
) -> (Pools, Routes) {
    let mut pools = Pools::new();
    for (name, p) in sections {
        if name == SMARTHOST_POOL {
            problems.push(format!(
                "pools.{name}: the name is reserved for server.relay_to"
            ));
            continue;
        }
        pools.insert(name.clone(), p.resolve(name, problems));
    }
    if let Some(pool) = relay_to.and_then(|r| smarthost_pool(r, problems)) {
        pools.insert(SMARTHOST_POOL.into(), pool);
    }
    for (name, p) in &pools {
        if let Some(f) = &p.failover {
            if !pools.contains_key(f) {
                problems.push(format!("pools.{name}.failover: no pool named {f:?}"));
            }
        }
    }
    let routes = resolve_routes(routes, &pools, problems);
    (pools, routes)
}

impl PoolSection {
    fn resolve(&self, name: &str, problems: &mut Vec<String>) -> Pool {
        if let Some(srv) = &self.srv {
            let dns = srv.trim_end_matches('.');
            let ok = !dns.is_empty()
                && dns.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                });
            if !ok {
                problems.push(format!(
                    "pools.{name}.srv: {srv:?} is not a DNS name like _smtp._tcp.site1.example"
                ));
            }
        }
        if self.hosts.is_empty() && self.srv.is_none() {
            problems.push(format!(
                "pools.{name}.hosts is empty: a pool needs at least one {{ address = \"HOST:PORT\" }}"
            ));
        }
        let mut hosts = Vec::new();
        for (i, h) in self.hosts.iter().enumerate() {
            match resolve_host(&h.address) {
                Ok(addr) => hosts.push(PoolHost {
                    name: h.address.clone(),
                    addr,
                    priority: h.priority,
                    weight: h.weight.max(1),
                }),
                Err(e) => problems.push(format!("pools.{name}.hosts[{i}].address: {e}")),
            }
        }
        Pool {
            name: name.into(),
            hosts,
            failover: self.failover.clone(),
            tls_policy: self
                .tls_policy
                .as_deref()
                .map(|t| super::tls::policy(&format!("pools.{name}.tls_policy"), t, problems)),
            srv: self
                .srv
                .as_ref()
                .map(|s| s.trim_end_matches('.').to_ascii_lowercase()),
        }
    }
}

/// The pool of `server.relay_to`: one host with the default priority and
/// weight. `None` when it does not resolve.
fn smarthost_pool(relay_to: &str, problems: &mut Vec<String>) -> Option<Pool> {
    match resolve_host(relay_to) {
        Ok(addr) => Some(Pool {
            name: SMARTHOST_POOL.into(),
            hosts: vec![PoolHost {
                name: relay_to.to_string(),
                addr,
                priority: default_priority(),
                weight: default_weight(),
            }],
            failover: None,
            tls_policy: None,
            srv: None,
        }),
        Err(e) => {
            // A malformed value was reported with `[server]`; this is a
            // lookup error.
            if !e.contains("is not HOST:PORT") {
                problems.push(format!("server.relay_to: {e}"));
            }
            None
        }
    }
}

/// Patterns in lower case: `DOMAIN`, `*.DOMAIN` or `*`, each to a pool.
fn resolve_routes(routes: &Routes, pools: &Pools, problems: &mut Vec<String>) -> Routes {
    let mut resolved = Routes::new();
    for (written, pool) in routes {
        let pattern = written.to_ascii_lowercase();
        let domain = pattern.strip_prefix("*.").unwrap_or(&pattern);
        if pattern != "*" && !tern_smtp::address::domain_name(domain) {
            problems.push(format!("routes.{written:?}: not DOMAIN, *.DOMAIN or *"));
        }
        if !pools.contains_key(pool) {
            problems.push(format!("routes.{written:?}: no pool named {pool:?}"));
        }
        resolved.insert(pattern, pool.clone());
    }
    resolved
}

impl PoolSection {
    /// The hosts written with `weight = 0` (taken as 1): index and address.
    pub(super) fn zero_weights(&self) -> impl Iterator<Item = (usize, &str)> {
        self.hosts
            .iter()
            .enumerate()
            .filter(|(_, h)| h.weight == 0)
            .map(|(i, h)| (i, h.address.as_str()))
    }
}
