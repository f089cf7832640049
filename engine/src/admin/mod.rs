//! The admin listener (default 127.0.0.1:8025). Runs on its own thread,
//! off the data path.
//!
//! # Layout
//!
//! ```text
//! mod.rs     the HTTP listener and its dispatch
//! routes.rs  GET /routes, PUT and DELETE /routes/PATTERN
//! shadow.rs  GET /shadow and the shadow gauges of /metrics
//! ```
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

mod render;
mod routes;
mod shadow;

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::config::Config;
use crate::delivery::route::RouteOverrides;
use crate::metrics::CoreMetrics;
use crate::shadow::ShadowShared;
use crate::stop::StopFlag;

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
}

/// Starts the admin thread; it stops when `admin.stop` is set.
pub fn spawn(admin: Admin) -> anyhow::Result<JoinHandle<()>> {
    let addr = admin.addr;
    let server =
        tiny_http::Server::http(addr).map_err(|e| anyhow::anyhow!("admin listener {addr}: {e}"))?;
    let handle = std::thread::Builder::new()
        .name("tern-admin".into())
        .spawn(move || {
            while !admin.stop.is_set() {
                let Ok(Some(request)) = server.recv_timeout(Duration::from_millis(200)) else {
                    continue;
                };
                admin.serve(request);
            }
        })?;
    Ok(handle)
}

impl Admin {
    fn serve(&self, mut request: tiny_http::Request) {
        let url = request.url().to_owned();
        if let Some(pattern) = url.strip_prefix("/routes/") {
            let mut body = String::new();
            let _ = std::io::Read::read_to_string(
                &mut std::io::Read::take(request.as_reader(), 1024),
                &mut body,
            );
            let (code, text) = routes::change(self, request.method(), pattern, body.trim());
            let _ = request.respond(tiny_http::Response::from_string(text).with_status_code(code));
            return;
        }
        let response = match (request.method(), url.as_str()) {
            (tiny_http::Method::Get, "/routes") => {
                tiny_http::Response::from_string(routes::list(self))
            }
            (tiny_http::Method::Get, "/metrics") => {
                let refs: Vec<&CoreMetrics> = self.cores.iter().map(|c| c.as_ref()).collect();
                let header =
                    tiny_http::Header::from_bytes("Content-Type", "text/plain; version=0.0.4")
                        .expect("static header");
                let mut text = render::render(&refs);
                text.push_str(&shadow::gauges(self));
                text.push_str(&render::render_tls(&self.tls));
                let reported = self
                    .tls
                    .verify_reported
                    .load(std::sync::atomic::Ordering::Relaxed);
                text.push_str(&self.mta_sts.stats.render(reported));
                tiny_http::Response::from_string(text).with_header(header)
            }
            (tiny_http::Method::Get, "/shadow") => {
                tiny_http::Response::from_string(shadow::status(self))
            }
            _ => tiny_http::Response::from_string("not found\n").with_status_code(404),
        };
        let _ = request.respond(response);
    }
}
