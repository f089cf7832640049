//! `GET /routes`, `PUT /routes/PATTERN` (body: the pool), `DELETE
//! /routes/PATTERN`: the run-time route overrides (`tern route`).

use super::Admin;

/// `PATTERN POOL (config|override)` per line.
pub(super) fn list(a: &Admin) -> String {
    let config = a.live.get();
    let mut out = String::new();
    let overrides = a.routes.overrides();
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

pub(super) fn change(
    a: &Admin,
    method: &super::listener::Method,
    pattern: &str,
    pool: &str,
    who: &str,
) -> (u16, String) {
    let pattern = pattern.to_ascii_lowercase();
    let domain = pattern.strip_prefix("*.").unwrap_or(&pattern);
    if pattern != "*" && !tern_smtp::address::domain_name(domain) {
        return (400, format!("{pattern:?} is not DOMAIN, *.DOMAIN or *\n"));
    }
    match method {
        super::listener::Method::Put => {
            let config = a.live.get();
            if !config.pools.contains_key(pool) {
                let known: Vec<&str> = config.pools.keys().map(String::as_str).collect();
                return (
                    404,
                    format!("no pool named {pool:?} (pools: {})\n", known.join(", ")),
                );
            }
            a.routes.set(&pattern, pool);
            a.ops.stats.count("route_set");
            tracing::info!(route = %pattern, pool, %who, "route re-pointed at run time");
            (200, format!("{pattern} -> {pool}\n"))
        }
        super::listener::Method::Delete => {
            if a.routes.clear(&pattern) {
                a.ops.stats.count("route_clear");
                tracing::info!(route = %pattern, %who, "run-time route override removed");
                (200, format!("{pattern}: override removed\n"))
            } else {
                (404, format!("{pattern}: no override\n"))
            }
        }
        _ => (405, "use PUT or DELETE\n".into()),
    }
}
