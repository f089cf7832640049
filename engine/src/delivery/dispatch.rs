//! One attempt: the message is taken from the fresh-payload cache or read
//! from the log (zero-copy over the segment map) and decoded; its pending
//! recipients are grouped by destination (`route.rs`; pools become
//! candidate lists, MX answers candidates by preference, cached per core
//! for [`MX_CACHE_MS`]) and each group becomes jobs in its destination's
//! queue (`connection.rs`).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;

use tern_smtp::{Reply, Status};
use tern_storage::{Sequence, TimestampMs};

use super::connection::Dest;
use super::queue::Entry;
use super::route::{self, Candidate, Candidates, Router, Target};
use super::{Attempt, Delivery, Job, Outcome, Parts};
use crate::config::{Config, DeliveryConfig, TlsPolicy};
use crate::dns::{DnsConfig, DnsError, MxAnswer, Resolver};
use crate::metrics::CoreMetrics;
use crate::mta_sts::{self as sts, Mode, Policy};
use crate::record::message::{self, QueueId, StoredMessage};
use crate::record::status::{Event, StatusEvent};

/// Recipients grouped by routing target.
type Groups = Vec<(Target, Vec<u32>)>;

/// How long a core reuses an MX answer (the resolver itself caches by TTL).
const MX_CACHE_MS: u64 = 10_000;

/// An MX answer (or permanent failure) and until when it is reused.
type MxCached = (u64, Result<Candidates, Outcome>);

/// The routing table, built from the config in force and the run-time
/// overrides.
pub(super) struct Routing {
    /// The override generation it was built from.
    overrides: u64,
    /// The config generation it was built from (reload).
    config_generation: u64,
    /// The config whose `[routes]` and `[pools]` it holds.
    pub(super) config: Arc<Config>,
    pub(super) router: Router,
}

/// Routing state of one core.
pub(super) struct Dispatcher {
    /// The routing table in force.
    router: RefCell<Routing>,
    resolver: Option<Resolver>,
    /// MX answers (and permanent failures) per domain, briefly, so busy
    /// domains do not cross to the DNS thread for every message.
    mx_cache: RefCell<HashMap<String, MxCached>>,
    /// Destinations with work or connections.
    dests: RefCell<HashMap<String, Rc<Dest>>>,
}

impl Dispatcher {
    pub(super) fn new(parts: &Parts, cfg: &DeliveryConfig) -> Dispatcher {
        let resolver = Resolver::start(&DnsConfig {
            servers: cfg.dns_servers.clone(),
            timeout: cfg.dns_timeout,
        })
        .map_err(|e| tracing::warn!(error = %e, "no DNS resolver: MX delivery will be deferred"))
        .ok();
        let overrides = parts.routes.generation();
        let config_generation = parts.live.generation();
        let config = parts.live.get();
        let router = Router::new(&config.routes, &parts.routes.overrides(), &config.pools);
        Dispatcher {
            router: RefCell::new(Routing {
                overrides,
                config_generation,
                config,
                router,
            }),
            resolver,
            mx_cache: RefCell::new(HashMap::new()),
            dests: RefCell::new(HashMap::new()),
        }
    }

    /// Every destination now known.
    pub(super) fn destinations(&self) -> Vec<Rc<Dest>> {
        self.dests.borrow().values().cloned().collect()
    }

    /// Forgets idle destinations (per-domain ones would pile up) and old
    /// MX answers.
    pub(super) fn forget_idle(&self, now: u64) {
        self.dests.borrow_mut().retain(|_, d| !d.is_idle());
        self.mx_cache
            .borrow_mut()
            .retain(|_, (until, _)| *until > now);
    }
}

impl Delivery {
    /// The routing table, rebuilt when the run-time overrides or the
    /// config (a reload) changed (two atomic loads per routing decision).
    /// After a reload, the pools' destinations get the new hosts.
    pub(super) fn router(&self) -> std::cell::Ref<'_, Routing> {
        let routes = &self.parts.routes;
        let live = &self.parts.live;
        let cell = &self.dispatch.router;
        let (overrides, generation) = (routes.generation(), live.generation());
        let stale = {
            let r = cell.borrow();
            (r.overrides, r.config_generation) != (overrides, generation)
        };
        if stale {
            let reloaded = cell.borrow().config_generation != generation;
            let config = live.get();
            let router = Router::new(&config.routes, &routes.overrides(), &config.pools);
            if reloaded {
                self.repoint_pools(&config);
            }
            *cell.borrow_mut() = Routing {
                overrides,
                config_generation: generation,
                config,
                router,
            };
        }
        cell.borrow()
    }

    /// A reload changed the pools: each pool destination takes its new
    /// hosts (jobs queued there stay; a pool that is gone keeps its old
    /// hosts until its queue drains, and new mail no longer routes to it).
    fn repoint_pools(&self, config: &Config) {
        for (name, dest) in self.dispatch.dests.borrow().iter() {
            let Some(pool) = name.strip_prefix("pool:") else {
                continue;
            };
            let c = route::pool_candidates(&config.pools, pool, self.cfg.tls_policy);
            if !c.is_empty() {
                dest.set_candidates(Rc::new(c));
            }
        }
    }

    /// One attempt: read, route, hand out jobs.
    pub(super) async fn dispatch(self: Rc<Self>, key: u64) {
        let Some(entry) = self.queue.borrow().get(key).cloned() else {
            self.open_attempts.set(self.open_attempts.get() - 1);
            return;
        };
        let id = self.shard().queue_id(Sequence(key));
        let msg = match self.read_message(&entry, true) {
            Ok(m) => m,
            Err(e) => {
                self.unreadable(key, id, &entry, &e).await;
                self.open_attempts.set(self.open_attempts.get() - 1);
                return;
            }
        };
        if entry.meta.is_none() {
            let meta = self.meta_for(&msg);
            self.queue.borrow_mut().set_meta(key, meta);
        }
        let pending = entry.pending();
        let attempt = Rc::new(Attempt {
            key,
            id,
            msg,
            attempts: entry.attempts + 1,
            started_ms: TimestampMs::now().0,
            due_ms: entry.next_ms,
            branches: Cell::new(1),
            results: RefCell::new(Vec::with_capacity(pending.len())),
            rcpts: pending.clone(),
            closed: Cell::new(false),
            operator: None,
        });
        self.live.borrow_mut().insert(key, attempt.clone());
        // An expired message still gets this attempt: if it fails
        // temporarily, it bounces with that reply (see `writer.rs`).
        let (groups, suspended) = self.group_by_target(&attempt, &pending);
        if !suspended.is_empty() {
            attempt.branches.set(attempt.branches.get() + 1);
            self.branch_done(&attempt, suspended);
        }
        for (target, rcpts) in groups {
            self.hand_out(&attempt, &target, rcpts).await;
        }
        self.branch_done(&attempt, Vec::new());
    }

    /// The queued message: the fresh payload kept at accept (taken, or
    /// left in place for an operator's look), else the log.
    pub(super) fn read_message(&self, entry: &Entry, take: bool) -> Result<StoredMessage, String> {
        let fresh = match take {
            true => self.shard().take_payload(entry.location),
            false => self.shard().peek_payload(entry.location),
        };
        let payload = match fresh {
            Some(p) => p,
            None => {
                let rec = self.shard().log.read(Sequence(entry.location));
                rec.map_err(|e| e.to_string())?.payload
            }
        };
        message::decode(&payload).map_err(|e| e.to_string())
    }

    /// A queued message that cannot be read: retried later; after its
    /// expiry it is removed (it can be neither delivered nor bounced: the
    /// sender is in the damaged record), so it stops pinning the log.
    async fn unreadable(&self, key: u64, id: QueueId, entry: &Entry, error: &str) {
        CoreMetrics::inc(&self.metrics().unreadable);
        let now = TimestampMs::now().0;
        let later = now + self.cfg.retry_max.as_millis() as u64;
        let expires = entry.received_ms + self.cfg.message_expiration_timeout.as_millis() as u64;
        if now < expires {
            tracing::error!(id = %id, error = %error, "cannot read queued message; retrying later");
            self.queue.borrow_mut().release(key, later);
            return;
        }
        tracing::error!(id = %id, error = %error, "queued message unreadable until expiry; removed from the queue (LOST)");
        self.tail.unreadable(key);
        let done = StatusEvent {
            message: key,
            event: Event::Done,
            at_ms: now,
            attempts: entry.attempts,
            rcpts: Vec::new(),
        };
        match self
            .shard()
            .append_status(std::slice::from_ref(&done))
            .await
        {
            Ok(_) => self.queue.borrow_mut().apply(&done),
            Err(_) => self.queue.borrow_mut().release(key, later),
        }
    }

    /// The attempt's pending recipients grouped by routing target, and
    /// those whose destination an operator suspended (their outcome).
    fn group_by_target(&self, attempt: &Attempt, pending: &[u32]) -> (Groups, Vec<(u32, Outcome)>) {
        let mut groups: Groups = Vec::new();
        let mut suspended = Vec::new();
        let router = self.router();
        let now = TimestampMs::now().0;
        for &i in pending {
            let rcpt = &attempt.msg.recipients[i as usize];
            let domain = domain_of(rcpt, &self.parts.config.hostname);
            let target = router.router.route(&domain);
            if let Some(until) = self.suspended(&target.name(), &domain, now) {
                suspended.push((i, Outcome::Suspended(until)));
                continue;
            }
            match groups.iter_mut().find(|(t, _)| *t == target) {
                Some((_, v)) => v.push(i),
                None => groups.push((target, vec![i])),
            }
        }
        (groups, suspended)
    }

    /// The next-hop addresses of destination `name` as far as they are
    /// known: a pool's from the config, an MX target's from its live
    /// destination or the MX cache.
    pub(super) fn hosts_of(&self, name: &str) -> Vec<SocketAddr> {
        if let Some(p) = name.strip_prefix("pool:") {
            let config = self.router().config.clone();
            let c = route::pool_candidates(&config.pools, p, self.cfg.tls_policy);
            return c.iter().map(|c| c.addr).collect();
        }
        let mut out: Vec<SocketAddr> = Vec::new();
        if let Some(d) = self.dispatch.dests.borrow().get(name) {
            out.extend(d.candidates().iter().map(|c| c.addr));
        }
        if let Some(domain) = name.strip_prefix("mx:") {
            if let Some((_, Ok(c))) = self.dispatch.mx_cache.borrow().get(domain) {
                out.extend(c.iter().map(|c| c.addr));
            }
        }
        out
    }

    /// The destination of a recipient of `domain` (`pool:NAME` or
    /// `mx:DOMAIN`), by the routing in force.
    pub(super) fn target_name(&self, domain: &str) -> String {
        self.router().router.route(domain).name()
    }

    /// Hands the recipients for `target` to its destination as jobs of at
    /// most `recipients_per_transaction_max`, or reports their outcome
    /// when there is no destination (or delivery is stopping).
    async fn hand_out(self: &Rc<Self>, attempt: &Rc<Attempt>, target: &Target, rcpts: Vec<u32>) {
        let dest = if self.is_stopping() {
            Err(Outcome::NotTried)
        } else {
            self.destination(target).await
        };
        match dest {
            Ok(dest) => {
                for part in rcpts.chunks(self.cfg.recipients_per_transaction_max) {
                    attempt.branches.set(attempt.branches.get() + 1);
                    let job = Job {
                        attempt: attempt.clone(),
                        rcpts: part.to_vec(),
                        dest: dest.clone(),
                    };
                    self.push(&dest, job);
                }
            }
            Err(outcome) => {
                let results = rcpts.iter().map(|&i| (i, outcome.clone())).collect();
                attempt.branches.set(attempt.branches.get() + 1);
                self.branch_done(attempt, results);
            }
        }
    }

    /// The destination for `target`, with fresh candidates (MX: resolved
    /// now, or from the core's short cache). `Err`: the recipients' outcome.
    async fn destination(&self, target: &Target) -> Result<Rc<Dest>, Outcome> {
        let name = target.name();
        let candidates: Option<Candidates> = match target {
            Target::Pool(_) if self.dispatch.dests.borrow().contains_key(&name) => None,
            Target::Pool(p) => {
                let config = self.router().config.clone();
                let c = route::pool_candidates(&config.pools, p, self.cfg.tls_policy);
                if c.is_empty() {
                    let why = format!("no hosts in pool {p:?}");
                    return Err(temporary(Status(4, 3, 5), why));
                }
                Some(Rc::new(c))
            }
            Target::Mx(domain) => Some(self.mx_cached(domain).await?),
        };
        let dest = self
            .dispatch
            .dests
            .borrow_mut()
            .entry(name.clone())
            .or_insert_with(|| Rc::new(Dest::new(name)))
            .clone();
        if let Some(c) = candidates {
            dest.set_candidates(c);
        }
        Ok(dest)
    }

    /// [`Delivery::mx`] through the core's cache (temporary failures are
    /// not cached).
    async fn mx_cached(&self, domain: &str) -> Result<Candidates, Outcome> {
        let now = TimestampMs::now().0;
        let cached = self
            .dispatch
            .mx_cache
            .borrow()
            .get(domain)
            .filter(|(until, _)| *until > now)
            .map(|(_, r)| r.clone());
        if let Some(r) = cached {
            return r;
        }
        let r = self.mx(domain).await.map(Rc::new);
        if !matches!(r, Err(Outcome::Temporary(..))) {
            let until = now + MX_CACHE_MS;
            let mut cache = self.dispatch.mx_cache.borrow_mut();
            cache.insert(domain.to_owned(), (until, r.clone()));
        }
        r
    }

    /// The MX candidates of `domain` (a domain literal is its own host).
    /// Null MX bounces 5.1.10, no such domain 5.1.2, DNS trouble defers.
    async fn mx(&self, domain: &str) -> Result<Vec<Candidate>, Outcome> {
        let port = self.cfg.mx_port;
        if let Some(ip) = domain_literal(domain) {
            return Ok(vec![Candidate {
                addr: SocketAddr::new(ip, port),
                name: domain.to_owned(),
                priority: 0,
                weight: 1,
                tls_policy: self.cfg.tls_policy,
                mta_sts_testing: false,
            }]);
        }
        let Some(resolver) = &self.dispatch.resolver else {
            return Err(temporary(
                Status(4, 4, 3),
                "no DNS resolver available".into(),
            ));
        };
        let answer = match resolver.mx(domain).await {
            Ok(answer) => answer,
            Err(DnsError::Temporary(e)) | Err(DnsError::Unavailable(e)) => {
                let why = format!("DNS lookup of {domain} failed: {e}");
                return Err(temporary(Status(4, 4, 3), why));
            }
        };
        match route::mx_verdict(&answer) {
            Ok(hosts) => {
                let policy = self.parts.mta_sts.lookup(domain, resolver).await;
                let c = route::mx_candidates(hosts, port, self.cfg.tls_policy);
                let c = match policy {
                    Some(p) => self.apply_mta_sts(domain, &p, c)?,
                    None => c,
                };
                if c.is_empty() {
                    let why = format!("no address for the MX hosts of {domain}");
                    return Err(temporary(Status(4, 4, 4), why));
                }
                Ok(c)
            }
            Err(why) => {
                let (code, status) = if matches!(answer, MxAnswer::NullMx) {
                    (556, Status(5, 1, 10))
                } else {
                    (550, Status(5, 1, 2))
                };
                let reply = Reply::new(code, status, format!("{domain}: {why}"));
                Err(Outcome::Permanent(reply, None))
            }
        }
    }
}

impl Delivery {
    /// MX candidates under `domain`'s MTA-STS policy (RFC 8461 4, 5):
    /// `enforce` keeps the hosts the policy names, each with `verify`
    /// (none left: a temporary failure, 4.7.5, so the mail waits for the
    /// policy or the MX records to be fixed); `testing` keeps them all and
    /// reports the ones `enforce` would refuse.
    fn apply_mta_sts(
        &self,
        domain: &str,
        policy: &Policy,
        candidates: Vec<Candidate>,
    ) -> Result<Vec<Candidate>, Outcome> {
        let stats = &self.parts.mta_sts.stats;
        let mut kept = Vec::with_capacity(candidates.len());
        for mut c in candidates {
            let allowed = policy.allows(&c.name);
            match (policy.mode, allowed) {
                (Mode::Enforce, true) => {
                    c.tls_policy = TlsPolicy::Verify;
                    kept.push(c);
                }
                (Mode::Enforce, false) => {
                    stats.count(sts::Outcome::EnforceMxMismatch);
                    tracing::warn!(%domain, host = %c.name, addr = %c.addr, patterns = ?policy.mx,
                        "MTA-STS enforce: MX host not in the policy; not used");
                }
                (_, allowed) => {
                    if !allowed {
                        stats.count(sts::Outcome::TestingMxMismatch);
                        tracing::warn!(%domain, host = %c.name, patterns = ?policy.mx,
                            "MTA-STS testing: MX host not in the policy, which enforce would refuse; used anyway");
                    }
                    c.mta_sts_testing = c.tls_policy != TlsPolicy::Verify;
                    kept.push(c);
                }
            }
        }
        if kept.is_empty() {
            stats.count(sts::Outcome::EnforceNoMx);
            let why = format!(
                "no MX host of {domain} matches its MTA-STS policy (mx: {}); RFC 8461 forbids delivery to the others",
                policy.mx.join(", ")
            );
            return Err(temporary(Status(4, 7, 5), why));
        }
        Ok(kept)
    }
}

/// A temporary failure found before any next hop was asked.
fn temporary(status: Status, why: String) -> Outcome {
    Outcome::Temporary(Reply::new(451, status, why), None)
}

/// The lower-case domain of a stored recipient (`Postmaster` alone goes
/// to this host's own domain).
pub(super) fn domain_of(rcpt: &str, hostname: &str) -> String {
    match rcpt.rsplit_once('@') {
        Some((_, d)) => tern_smtp::address::fold_domain(d),
        None => hostname.to_ascii_lowercase(),
    }
}

/// `[192.0.2.1]` or `[IPv6:2001:db8::1]`.
fn domain_literal(domain: &str) -> Option<IpAddr> {
    let inner = domain.strip_prefix('[')?.strip_suffix(']')?;
    let inner = inner
        .strip_prefix("ipv6:")
        .or_else(|| inner.strip_prefix("IPv6:"))
        .unwrap_or(inner);
    inner.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains() {
        assert_eq!(domain_of("a@Example.COM", "h"), "example.com");
        assert_eq!(domain_of("Postmaster", "Mx.Host"), "mx.host");
        // Folded as the relay check folds it (`tern_smtp::address::fold_domain`).
        assert_eq!(domain_of("a@o\u{212A}.example", "h"), "ok.example");
        assert_eq!(
            domain_literal("[127.0.0.2]"),
            Some("127.0.0.2".parse().unwrap())
        );
        assert_eq!(domain_literal("[ipv6:::1]"), Some("::1".parse().unwrap()));
        assert_eq!(domain_literal("example.com"), None);
    }
}
