//! The admin listener (default 127.0.0.1:8025): `GET /metrics` in the
//! Prometheus text format. Runs on its own thread, off the data path.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::core::Shared;
use crate::metrics::{self, CoreMetrics};

/// Starts the admin thread; it stops when `shared.stop` is set.
pub fn spawn(
    addr: SocketAddr,
    shared: Arc<Shared>,
    cores: Vec<Arc<CoreMetrics>>,
) -> anyhow::Result<JoinHandle<()>> {
    let server =
        tiny_http::Server::http(addr).map_err(|e| anyhow::anyhow!("admin listener {addr}: {e}"))?;
    let handle = std::thread::Builder::new()
        .name("tern-admin".into())
        .spawn(move || {
            while !shared.stop.load(Ordering::SeqCst) {
                let Ok(Some(request)) = server.recv_timeout(Duration::from_millis(200)) else {
                    continue;
                };
                let response = match (request.method(), request.url()) {
                    (tiny_http::Method::Get, "/metrics") => {
                        let refs: Vec<&CoreMetrics> = cores.iter().map(|c| c.as_ref()).collect();
                        let header = tiny_http::Header::from_bytes(
                            "Content-Type",
                            "text/plain; version=0.0.4",
                        )
                        .expect("static header");
                        tiny_http::Response::from_string(metrics::render(&refs)).with_header(header)
                    }
                    _ => tiny_http::Response::from_string("not found\n").with_status_code(404),
                };
                let _ = request.respond(response);
            }
        })?;
    Ok(handle)
}
