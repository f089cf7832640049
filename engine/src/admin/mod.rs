//! The admin listener (default 127.0.0.1:8025). Runs on its own thread,
//! off the data path.
//!
//! # Layout
//!
//! ```text
//! mod.rs       the admin thread and the dispatch of requests
//! listener.rs  HTTP/1.1 connections: a fixed pool of workers, bounded reads, accept back-off
//! http.rs      limits (request line 2 KiB, body 64 KiB), the token check, JSON answers
//! render.rs    the Prometheus text exposition of /metrics, walking ...
//! metric_table.rs  ... the table of every metric (name, type, help, how it is read)
//! queue.rs     GET /queue/summary, POST /queue/ACTION, /destinations (merged over the cores)
//! resubmit.rs  /resubmit: Safety Net resubmission requests
//! routes.rs    GET /routes, PUT and DELETE /routes/PATTERN
//! shadow.rs    GET /shadow
//! pressure.rs  GET /pressure: the back pressure levels, the failed store
//! control.rs   GET/PUT /log-level, POST /reload
//! ```
//!
//! Every state-changing request (POST, PUT, DELETE) needs
//! `Authorization: Bearer TOKEN` (`crate::ops::token`); every request
//! does when the listener is not on a loopback address. The queue,
//! destination and resubmission endpoints answer JSON (errors
//! `{"error": ...}`); README has the table.
//!
//!
//! - `GET /metrics`: Prometheus text format.
//! - `GET /routes`: the static routes and run-time overrides, one
//!   `PATTERN POOL (config|override)` per line.
//! - `PUT /routes/PATTERN` with the pool name as body: re-points a route
//!   (domain, `*.domain` or `*`) to a configured pool, on every core, at
//!   once; 404 for an unknown pool, 400 for a bad pattern. Overrides last
//!   until restart (`tern route set`).
//! - `DELETE /routes/PATTERN`: drops the override (`tern route clear`).
//! - `GET /shadow`: this node, its peers with their database ids, last
//!   heartbeat and the shadow copies held for each (`tern shadow status`).

mod control;
mod http;
mod listener;
mod metric_table;
mod pressure;
mod queue;
mod render;
mod resubmit;
mod routes;
mod shadow;

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::config::Config;
use crate::delivery::route::RouteOverrides;
use crate::metrics::CoreMetrics;
use crate::shadow::ShadowShared;
use crate::stop::StopFlag;
use http::{Answer, Req};

/// What the admin thread serves.
pub struct Admin {
    /// Listen address.
    pub addr: SocketAddr,
    /// The thread stops when this is set.
    pub stop: Arc<StopFlag>,
    /// Run-time route overrides (`tern route`).
    pub routes: Arc<RouteOverrides>,
    /// Shadow redundancy state (`tern shadow status`).
    pub shadow: Arc<ShadowShared>,
    /// Every core's counters.
    pub cores: Vec<Arc<CoreMetrics>>,
    /// The configuration.
    pub config: Arc<Config>,
    /// TLS counters.
    pub tls: Arc<crate::tls::TlsStats>,
    /// MTA-STS counters.
    pub mta_sts: Arc<crate::mta_sts::MtaSts>,
    /// Operator actions (queue, destinations, resubmission).
    pub ops: Arc<crate::ops::Ops>,
    /// Back pressure and the failed state.
    pub pressure: Arc<crate::pressure::Pressure>,
    /// The config in force (reload).
    pub live: Arc<crate::reload::Live>,
    /// The front end's counters (`server.role = "front-end"`).
    pub frontend: Arc<crate::frontend::stats::Stats>,
    /// Reloads the config file (`POST /reload`, `tern reload`): what the
    /// server's reload answers, or its problems.
    pub reload: Reload,
}

/// The server's reload, called by `POST /reload`.
pub type Reload = Box<dyn Fn(&str) -> Result<String, String> + Send + Sync>;

/// Starts the admin thread (and its workers, `listener::WORKERS` in
/// all); it stops when `admin.stop` is set.
pub fn spawn(admin: Admin) -> anyhow::Result<JoinHandle<()>> {
    let addr = admin.addr;
    let listener = std::net::TcpListener::bind(addr).map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => anyhow::anyhow!(
            "{addr} is already in use by another process (another tern?); stop it or choose another server.admin_listen (\"off\" disables it)"
        ),
        _ => anyhow::anyhow!("admin listener {addr}: {e} (server.admin_listen; \"off\" disables it)"),
    })?;
    listener.set_nonblocking(true)?;
    let handle = std::thread::Builder::new()
        .name("tern-admin".into())
        .spawn(move || {
            let admin = &admin;
            let listener = &listener;
            let stopped = || admin.stop.is_set();
            let serve = |stream: &mut std::net::TcpStream, peer| admin.serve(stream, peer);
            std::thread::scope(|s| {
                for i in 1..listener::WORKERS {
                    let _ = std::thread::Builder::new()
                        .name(format!("tern-admin-{i}"))
                        .spawn_scoped(s, move || {
                            listener::work(listener, &stopped, &|| {}, &serve)
                        });
                }
                // Resubmission counts reach the state file within 200 ms.
                listener::work(listener, &stopped, &|| admin.ops.save_if_dirty(), &serve);
            });
        })?;
    Ok(handle)
}

impl Admin {
    fn serve(&self, stream: &mut std::net::TcpStream, peer: SocketAddr) {
        let (answer, head_only, url) = match listener::read_request(stream, peer) {
            Ok(request) => {
                let head_only = request.method == listener::Method::Head;
                let url = request.url.clone();
                let answer = match self.admit(request) {
                    Ok(req) => self.route(&req),
                    Err(a) => a,
                };
                (answer, head_only, url)
            }
            Err(a) => (a, false, String::new()),
        };
        let kind = if answer.json {
            "application/json"
        } else if answer.code == 200 && url.starts_with("/metrics") {
            "text/plain; version=0.0.4"
        } else {
            "text/plain; charset=utf-8"
        };
        listener::write_answer(stream, &answer, kind, head_only);
    }

    fn route(&self, req: &Req) -> Answer {
        use listener::Method::{Delete, Get, Post, Put};
        let path = req.path.as_str();
        if let Some(pattern) = path.strip_prefix("/routes/") {
            let (code, text) =
                routes::change(self, &req.method, pattern, req.body.trim(), &req.who);
            return match code {
                200 => Answer::text(code, text),
                _ => Answer::error(code, text.trim()),
            };
        }
        if let Some(action) = path.strip_prefix("/queue/") {
            return match (&req.method, action) {
                (Get, "summary") => queue::summary(self, req),
                (Post, _) => queue::act(self, req, action),
                _ => Answer::error(405, "use GET /queue/summary or POST /queue/ACTION"),
            };
        }
        if let Some(what) = path.strip_prefix("/destinations/") {
            return match req.method {
                Post => queue::suspend_or_resume(self, req, what),
                _ => Answer::error(405, "use POST"),
            };
        }
        if let Some(rest) = path.strip_prefix("/resubmit/") {
            return resubmit::one(self, req, rest);
        }
        match (&req.method, path) {
            (Get, "/routes") => Answer::text(200, routes::list(self)),
            (Get, "/metrics") => Answer::text(200, self.metrics()),
            (Get, "/shadow") => Answer::text(
                200,
                shadow::status(self) + &pressure::status(&self.pressure),
            ),
            (Get, "/pressure") => Answer::text(200, pressure::status(&self.pressure)),
            (Get, "/log-level") => control::log_level(),
            (Put, "/log-level") => control::set_log_level(req),
            (Post, "/reload") => control::reload(self, req),
            (Get, "/destinations") => queue::destinations(self),
            (Get, "/resubmit") => resubmit::list(self),
            (Post, "/resubmit") => resubmit::add(self, req),
            (Put | Delete | Post, "/routes" | "/metrics" | "/shadow" | "/pressure") => {
                Answer::error(405, "read-only")
            }
            _ => Answer::error(404, format!("no such endpoint: {path}")),
        }
    }

    fn metrics(&self) -> String {
        let held = self.shadow.replica.held_per_primary();
        // Every configured peer has a sample (0 when nothing is held for
        // it), and so does a former peer copies are still held for.
        let mut shadow_held: std::collections::BTreeMap<String, u64> = (self.config.cluster.peers)
            .iter()
            .map(|p| (p.node_id.clone(), 0))
            .collect();
        shadow_held.extend(held);
        render::render(&render::Sources {
            cores: self.cores.iter().map(|c| c.as_ref()).collect(),
            tls: &self.tls,
            mta_sts: &self.mta_sts.stats,
            ops: &self.ops.stats,
            pressure: &self.pressure,
            live: &self.live,
            shadow_held,
            // A front end has no queue to ask its cores about.
            queue: match self.live.get().role {
                crate::config::Role::FrontEnd => None,
                crate::config::Role::Relay => queue::gauges(self),
            },
            frontend: &self.frontend,
        })
    }
}
