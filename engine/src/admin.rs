//! The admin listener (default 127.0.0.1:8025). Runs on its own thread,
//! off the data path.
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

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::config::Config;
use crate::core::Shared;
use crate::metrics::{self, CoreMetrics};

/// Starts the admin thread; it stops when `shared.stop` is set.
pub fn spawn(
    addr: SocketAddr,
    shared: Arc<Shared>,
    cores: Vec<Arc<CoreMetrics>>,
    config: Arc<Config>,
) -> anyhow::Result<JoinHandle<()>> {
    let server =
        tiny_http::Server::http(addr).map_err(|e| anyhow::anyhow!("admin listener {addr}: {e}"))?;
    let handle = std::thread::Builder::new()
        .name("tern-admin".into())
        .spawn(move || {
            while !shared.stop.load(Ordering::SeqCst) {
                let Ok(Some(mut request)) = server.recv_timeout(Duration::from_millis(200)) else {
                    continue;
                };
                let url = request.url().to_owned();
                if let Some(pattern) = url.strip_prefix("/routes/") {
                    let mut body = String::new();
                    let _ = std::io::Read::read_to_string(
                        &mut std::io::Read::take(request.as_reader(), 1024),
                        &mut body,
                    );
                    let (code, text) =
                        route_change(&shared, &config, request.method(), pattern, body.trim());
                    let _ = request
                        .respond(tiny_http::Response::from_string(text).with_status_code(code));
                    continue;
                }
                let response = match (request.method(), url.as_str()) {
                    (tiny_http::Method::Get, "/routes") => {
                        tiny_http::Response::from_string(list_routes(&shared, &config))
                    }
                    (tiny_http::Method::Get, "/metrics") => {
                        let refs: Vec<&CoreMetrics> = cores.iter().map(|c| c.as_ref()).collect();
                        let header = tiny_http::Header::from_bytes(
                            "Content-Type",
                            "text/plain; version=0.0.4",
                        )
                        .expect("static header");
                        let mut text = metrics::render(&refs);
                        text.push_str(&shadow_gauges(&shared));
                        tiny_http::Response::from_string(text).with_header(header)
                    }
                    (tiny_http::Method::Get, "/shadow") => {
                        tiny_http::Response::from_string(shadow_status(&shared, &config, &cores))
                    }
                    _ => tiny_http::Response::from_string("not found\n").with_status_code(404),
                };
                let _ = request.respond(response);
            }
        })?;
    Ok(handle)
}

fn list_routes(shared: &Shared, config: &Config) -> String {
    let mut out = String::new();
    let overrides = shared.routes.overrides();
    for (pattern, pool) in &config.routes {
        if !overrides.contains_key(pattern) {
            out.push_str(&format!("{pattern} {pool} config\n"));
        }
    }
    for (pattern, pool) in &overrides {
        out.push_str(&format!("{pattern} {pool} override\n"));
    }
    out
}

fn route_change(
    shared: &Shared,
    config: &Config,
    method: &tiny_http::Method,
    pattern: &str,
    pool: &str,
) -> (u16, String) {
    let pattern = pattern.to_ascii_lowercase();
    let domain = pattern.strip_prefix("*.").unwrap_or(&pattern);
    if pattern != "*" && !tern_smtp::address::domain_name(domain) {
        return (400, format!("{pattern:?} is not DOMAIN, *.DOMAIN or *\n"));
    }
    match method {
        tiny_http::Method::Put => {
            if !config.pools.contains_key(pool) {
                let known: Vec<&str> = config.pools.keys().map(String::as_str).collect();
                return (
                    404,
                    format!("no pool named {pool:?} (pools: {})\n", known.join(", ")),
                );
            }
            shared.routes.set(&pattern, pool);
            tracing::info!(route = %pattern, pool, "route re-pointed at run time");
            (200, format!("{pattern} -> {pool}\n"))
        }
        tiny_http::Method::Delete => {
            if shared.routes.clear(&pattern) {
                tracing::info!(route = %pattern, "run-time route override removed");
                (200, format!("{pattern}: override removed\n"))
            } else {
                (404, format!("{pattern}: no override\n"))
            }
        }
        _ => (405, "use PUT or DELETE\n".into()),
    }
}

/// Copies held here per primary node, summed over cores.
fn held_per_primary(shared: &Shared) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    for ((_, node), n) in shared
        .shadow_depth
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
    {
        *out.entry(node.clone()).or_insert(0) += n;
    }
    out
}

fn shadow_gauges(shared: &Shared) -> String {
    let mut out = String::from(
        "# HELP tern_shadow_queue_messages Shadow copies held here per primary\n# TYPE tern_shadow_queue_messages gauge\n",
    );
    for (node, n) in held_per_primary(shared) {
        out.push_str(&format!(
            "tern_shadow_queue_messages{{primary=\"{node}\"}} {n}\n"
        ));
    }
    out
}

fn shadow_status(shared: &Shared, config: &Config, cores: &[Arc<CoreMetrics>]) -> String {
    use std::sync::atomic::Ordering::Relaxed;
    let c = &config.cluster;
    let db = shared
        .database_id
        .get()
        .map_or("unknown".to_string(), |d| d.to_string());
    let sum = |f: fn(&CoreMetrics) -> u64| cores.iter().map(|m| f(m)).sum::<u64>();
    let mut out = format!(
        "node {} site {} database {db} shadow_redundancy {} preference {}\n",
        c.node_id,
        c.site,
        c.shadow_redundancy,
        c.shadow_preference.as_str()
    );
    out.push_str(&format!(
        "our messages: {} shadowed, {} without a shadow, {} shadow failures\n",
        sum(|m| m.shadow_copies_made.load(Relaxed)),
        sum(|m| m.non_redundant_accepts.load(Relaxed)),
        sum(|m| m.shadow_copies_failed.load(Relaxed)),
    ));
    let held = held_per_primary(shared);
    let primaries = shared
        .primaries
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    for p in &c.peers {
        let state = primaries.get(&p.node_id);
        let seen = state.map_or("never".to_string(), |s| {
            crate::received::rfc5322_date(
                std::time::SystemTime::UNIX_EPOCH + Duration::from_millis(s.last_ok_ms),
            )
        });
        out.push_str(&format!(
            "peer {} {} site {} database {} last-heartbeat {seen} held-for-it {}\n",
            p.node_id,
            p.addr,
            p.site,
            state
                .and_then(|s| s.database.clone())
                .unwrap_or_else(|| "unknown".into()),
            held.get(&p.node_id).copied().unwrap_or(0)
        ));
    }
    out.push_str(&format!(
        "takeovers {} discards {} duplicates {}\n",
        sum(|m| m.takeovers.load(Relaxed)),
        sum(|m| m.shadow_discards.load(Relaxed)),
        sum(|m| m.duplicates.load(Relaxed)),
    ));
    out
}
