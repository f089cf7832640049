//! The front end (`server.role = "front-end"`, SPEC 7): a stateless SMTP
//! proxy before the relay boxes, as Exchange's Front End Transport
//! service. It inspects nothing and queues nothing: each client session
//! is forwarded to a back end as it arrives (MAIL, RCPT and DATA answered
//! with the back end's replies, the content streamed in pieces), and the
//! end-of-data reply is the back end's, which a tern back end gives only
//! once the message is durable and shadowed. When a back end fails
//! mid-transaction the client gets `451 4.4.0` and the front end keeps
//! nothing; it never answers 250 on its own.
//!
//! # Layout
//!
//! ```text
//! mod.rs      Frontend: what a core's proxied sessions share; the core's accept loop
//! session.rs  one client session: the sans-IO session in proxy mode, its events to the back end
//! backend.rs  one back-end connection: open (failover, XCLIENT), commands, content, reset
//! choose.rs   the route's pool, its candidates (fixed hosts, DNS SRV), failover tiers
//! stats.rs    the counters (sessions, failures by reason, eod latency per pool, route -> pool)
//! ```

mod backend;
mod choose;
mod session;
pub mod stats;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use glommio::net::TcpListener;
use tern_smtp::server::ServerConfig;

use crate::config::{Config, Pool};
use crate::delivery::route::{Health, RouteOverrides, Router, Target};
use crate::dns::Resolver;
use crate::metrics::CoreMetrics;
use crate::reload::Live;
use crate::stop::Shutdown;
use crate::tls::Tls;
use stats::{PoolStats, Stats};

/// The settings a session starts with (kept to its end).
pub struct Settings {
    /// The configuration in force when the session began.
    pub config: Arc<Config>,
    /// The proxy-mode session settings.
    smtp: Rc<ServerConfig>,
    /// Routes (config and overrides).
    router: Router,
    /// The pool of recipients no route names.
    default_pool: String,
    /// Some route names a domain: the pool is chosen at the first RCPT
    /// (MAIL is answered by the front end, forwarded then).
    by_domain: bool,
}

impl Settings {
    fn new(config: Arc<Config>, overrides: &RouteOverrides) -> Settings {
        let routes = overrides.overrides();
        let router = Router::new(&config.routes, &routes, &config.pools);
        let mut patterns = config.routes.keys().chain(routes.keys());
        let by_domain = patterns.any(|p| p != "*");
        let default_pool = match router.route("") {
            Target::Pool(p) => p,
            Target::Mx(_) => config.pools.keys().next().cloned().unwrap_or_default(),
        };
        let smtp = Rc::new(ServerConfig {
            hostname: config.hostname.clone(),
            message_bytes_max: config.smtp.message_size_max,
            recipients_max: config.smtp.recipients_max,
            errors_max: config.smtp.errors_max,
            junk_commands_max: config.smtp.junk_commands_max,
            extra_ehlo: Vec::new(),
            shadow_ehlo: None,
            proxy: true,
        });
        Settings {
            config,
            smtp,
            router,
            default_pool,
            by_domain,
        }
    }

    /// The route pattern that names `pool` (for the metrics: the first
    /// route to it, `*` for the default; the pool's name without one).
    fn pattern_for(&self, pool: &str) -> String {
        if pool == self.default_pool {
            if let Some(p) = self.router.pattern("") {
                return p;
            }
        }
        let mut routes: Vec<(String, String)> = self
            .config
            .routes
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        routes.sort();
        routes
            .into_iter()
            .find(|(k, _)| self.pool_for(k.trim_start_matches("*.")) == pool)
            .map_or_else(|| pool.to_owned(), |(k, _)| k)
    }

    /// The pool for a recipient domain (lower case; "" for the default).
    fn pool_for(&self, domain: &str) -> &str {
        match self.router.route(domain) {
            Target::Pool(p) if self.config.pools.contains_key(&p) => {
                // Borrow the name from the config (the router hands out
                // owned names).
                self.config
                    .pools
                    .get_key_value(&p)
                    .map(|(k, _)| k.as_str())
                    .unwrap_or(&self.default_pool)
            }
            _ => &self.default_pool,
        }
    }
}

/// What one core's proxied sessions share.
pub struct Frontend {
    live: Arc<Live>,
    routes: Arc<RouteOverrides>,
    /// The settings at (config generation, routes generation).
    settings: RefCell<(u64, u64, Rc<Settings>)>,
    tls: Arc<Tls>,
    resolver: Option<Resolver>,
    /// Back-end hosts down, this core's view.
    health: RefCell<Health>,
    srv: RefCell<choose::SrvCache>,
    stats: Arc<Stats>,
    pools: RefCell<HashMap<Rc<str>, Arc<PoolStats>>>,
    metrics: Arc<CoreMetrics>,
    shutdown: Rc<Shutdown>,
    open: Cell<usize>,
    started: std::time::Instant,
    seed: Cell<u64>,
}

/// The pieces a core's front end is made of.
pub struct Parts {
    /// The config in force (reloaded on SIGHUP).
    pub live: Arc<Live>,
    /// Run-time route overrides (`tern route set`).
    pub routes: Arc<RouteOverrides>,
    /// Certificates and TLS configs.
    pub tls: Arc<Tls>,
    /// The front end's counters (node-wide).
    pub stats: Arc<Stats>,
    /// This core's connection counters.
    pub metrics: Arc<CoreMetrics>,
    /// This core's shutdown signal.
    pub shutdown: Rc<Shutdown>,
    /// This core's index (seeds the weight rolls).
    pub core: usize,
}

impl Frontend {
    /// A core's front end.
    pub fn new(p: Parts) -> Frontend {
        let config = p.live.get();
        let needs_dns = config.pools.values().any(|pool: &Pool| pool.srv.is_some());
        let resolver = needs_dns
            .then(|| {
                Resolver::start(&crate::dns::DnsConfig {
                    servers: config.delivery.dns_servers.clone(),
                    timeout: config.delivery.dns_timeout,
                })
                .map_err(|e| tracing::error!(error = %e, "DNS resolver for SRV back-end pools failed to start"))
                .ok()
            })
            .flatten();
        let settings = Rc::new(Settings::new(config.clone(), &p.routes));
        Frontend {
            settings: RefCell::new((p.live.generation(), p.routes.generation(), settings)),
            live: p.live,
            routes: p.routes,
            tls: p.tls,
            resolver,
            health: RefCell::new(Health::new(
                config.delivery.host_down_initial,
                config.delivery.host_down_max,
            )),
            srv: RefCell::default(),
            stats: p.stats,
            pools: RefCell::default(),
            metrics: p.metrics,
            shutdown: p.shutdown,
            open: Cell::new(0),
            started: std::time::Instant::now(),
            seed: Cell::new(0x9E37_79B9_7F4A_7C15 ^ p.core as u64),
        }
    }

    /// The settings for a new session: rebuilt when a reload or a route
    /// change happened (two atomic loads otherwise).
    pub fn settings(&self) -> Rc<Settings> {
        let (g, r) = (self.live.generation(), self.routes.generation());
        let mut cell = self.settings.borrow_mut();
        if cell.0 != g || cell.1 != r {
            *cell = (g, r, Rc::new(Settings::new(self.live.get(), &self.routes)));
        }
        cell.2.clone()
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// A pseudo-random number for the weight choice (xorshift).
    fn roll(&self) -> u64 {
        let mut x = self.seed.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.seed.set(x);
        x
    }

    fn pool_stats(&self, pool: &Rc<str>) -> Arc<PoolStats> {
        if let Some(s) = self.pools.borrow().get(pool) {
            return s.clone();
        }
        let s = self.stats.pool(pool);
        self.pools.borrow_mut().insert(pool.clone(), s.clone());
        s
    }

    /// Sessions open on this core.
    pub fn open_sessions(&self) -> usize {
        self.open.get()
    }
}

/// Accepts connections until shutdown; each gets its own session task
/// (over `smtp.connections_per_core_max`: `421 4.7.0`). `implicit`: an
/// implicit-TLS listener.
pub async fn accept_loop(fe: &Rc<Frontend>, listener: &TcpListener, implicit: bool) {
    let trouble = crate::logbuf::Repeated::default();
    let mut failures = 0u32;
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            fe.shutdown.wait().await;
            None
        })
        .await;
        let stream = match accepted {
            None => return,
            Some(Ok(stream)) => {
                failures = 0;
                stream
            }
            Some(Err(e)) => {
                failures += 1;
                trouble.report("accept failed; backing off", Some(e.to_string()));
                let wait = Duration::from_millis(10 << failures.min(7)).min(Duration::from_secs(1));
                glommio::timer::sleep(wait).await;
                continue;
            }
        };
        let Ok(peer) = stream.peer_addr() else {
            continue;
        };
        let limit = fe.settings().config.smtp.connections_per_core_max;
        if fe.open.get() >= limit {
            CoreMetrics::inc(&fe.metrics.connections_refused);
            glommio::spawn_local(session::refuse(stream)).detach();
            continue;
        }
        fe.open.set(fe.open.get() + 1);
        CoreMetrics::inc(&fe.metrics.connections_total);
        CoreMetrics::inc(&fe.stats.sessions);
        let fe = fe.clone();
        glommio::spawn_local(async move {
            session::run(&fe, stream, peer, implicit).await;
            fe.open.set(fe.open.get() - 1);
            CoreMetrics::inc(&fe.metrics.connections_closed);
        })
        .detach();
    }
}

/// Runs a front-end core: its listeners, until shutdown; then sessions in
/// a transaction get `shutdown_grace` to finish.
pub async fn run_core(
    fe: Rc<Frontend>,
    listen: SocketAddr,
    implicit: Option<SocketAddr>,
    incoming_cpu: Option<usize>,
    grace: Duration,
) -> anyhow::Result<()> {
    let listener = crate::inbound::listener::bind_listener(listen, incoming_cpu)
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    let tls_listener = match implicit {
        Some(addr) => Some(
            crate::inbound::listener::bind_listener(addr, incoming_cpu)
                .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?,
        ),
        None => None,
    };
    tracing::info!(cpu = ?incoming_cpu, role = "front-end", "listener bound");
    match &tls_listener {
        Some(t) => {
            futures_lite::future::zip(
                accept_loop(&fe, &listener, false),
                accept_loop(&fe, t, true),
            )
            .await;
        }
        None => accept_loop(&fe, &listener, false).await,
    }
    drop(listener);
    drop(tls_listener);
    let deadline = std::time::Instant::now() + grace;
    while fe.open_sessions() > 0 && std::time::Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Arc<Config> {
        Arc::new(Config::from_toml(text, &Default::default()).expect("valid"))
    }

    const SITES: &str = r#"
        [server]
        role = "front-end"
        [pools.site1]
        hosts = [{ address = "127.0.0.2:25" }, { address = "127.0.0.3:25", priority = 5 }]
        failover = "site2"
        [pools.site2]
        hosts = [{ address = "127.0.0.4:25" }]
        failover = "site1"
        [routes]
        "*" = "site1"
        "example.org" = "site2"
    "#;

    #[test]
    fn the_pool_of_a_recipient_domain() {
        let overrides = RouteOverrides::default();
        let s = Settings::new(config(SITES), &overrides);
        assert!(s.by_domain, "a domain route: the pool is chosen at RCPT");
        assert_eq!(s.default_pool, "site1");
        assert_eq!(s.pool_for("example.org"), "site2");
        assert_eq!(s.pool_for("other.example"), "site1");
        assert_eq!(s.pool_for(""), "site1");
        overrides.set("*", "site2");
        let s = Settings::new(config(SITES), &overrides);
        assert_eq!(s.pool_for("other.example"), "site2", "tern route set");
        let one = config(
            r#"
            [server]
            role = "front-end"
            [pools.only]
            hosts = [{ address = "127.0.0.2:25" }]
            "#,
        );
        let s = Settings::new(one, &RouteOverrides::default());
        assert!(!s.by_domain, "one pool: MAIL goes at once");
        assert_eq!(s.pool_for("any.example"), "only");
    }

    #[test]
    fn failover_pools_are_later_tiers_without_loops() {
        let c = config(SITES);
        let cache = RefCell::new(choose::SrvCache::default());
        let list = futures_lite::future::block_on(choose::candidates(&cache, None, &c, "site1"));
        let seen: Vec<(String, u32, String)> = list
            .iter()
            .map(|(c, p)| (c.addr.to_string(), c.priority, p.to_string()))
            .collect();
        assert_eq!(
            seen,
            [
                ("127.0.0.2:25".into(), 0, "site1".into()),
                ("127.0.0.3:25".into(), 5, "site1".into()),
                ("127.0.0.4:25".into(), 1 << 16, "site2".into()),
            ]
        );
        let mut h = Health::new(Duration::from_secs(1), Duration::from_secs(4));
        let plain: Vec<_> = list.iter().map(|(c, _)| c.clone()).collect();
        assert_eq!(
            h.pick(&plain, 0, &[], 7).unwrap().addr.to_string(),
            "127.0.0.2:25"
        );
        h.mark_down("127.0.0.2:25".parse().unwrap(), 0, "refused");
        h.mark_down("127.0.0.3:25".parse().unwrap(), 0, "refused");
        assert_eq!(
            h.pick(&plain, 0, &[], 7).unwrap().addr.to_string(),
            "127.0.0.4:25",
            "the whole site down: the failover pool"
        );
        assert_eq!(
            h.pick(&plain, 1000, &[], 7).unwrap().addr.to_string(),
            "127.0.0.2:25",
            "back after the backoff: fail back"
        );
    }

    #[test]
    fn a_front_end_needs_back_ends_and_srv_is_for_front_ends() {
        let e =
            Config::from_toml("[server]\nrole = \"front-end\"\n", &Default::default()).unwrap_err();
        assert!(e.iter().any(|p| p.contains("needs back ends")), "{e:?}");
        let e = Config::from_toml(
            "[pools.a]\nsrv = \"_smtp._tcp.a.example\"\n",
            &Default::default(),
        )
        .unwrap_err();
        assert!(e.iter().any(|p| p.contains("pools.a.srv")), "{e:?}");
        let two = "[server]\nrole = \"front-end\"\n[pools.a]\nhosts = [{ address = \"127.0.0.2:25\" }]\n[pools.b]\nhosts = [{ address = \"127.0.0.3:25\" }]\n";
        let e = Config::from_toml(two, &Default::default()).unwrap_err();
        assert!(e.iter().any(|p| p.contains("routes.\"*\"")), "{e:?}");
        let flags = crate::config::Overrides {
            role: Some("front-end".into()),
            backends: vec!["127.0.0.2:2525".into(), "127.0.0.3:2525,10".into()],
            ..Default::default()
        };
        let c = Config::from_toml("", &flags).expect("--backend flags");
        let pool = &c.pools[crate::config::BACKENDS_POOL];
        assert_eq!(pool.hosts.len(), 2);
        assert_eq!(pool.hosts[1].priority, 10);
        assert_eq!(c.routes["*"], crate::config::BACKENDS_POOL);
        let bad = crate::config::Overrides {
            backends: vec!["127.0.0.2:2525,x".into()],
            ..flags
        };
        let e = Config::from_toml("", &bad).unwrap_err();
        assert!(e.iter().any(|p| p.contains("--backend")), "{e:?}");
    }
}
