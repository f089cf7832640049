//! One core of a front end (`server.role = "front-end"`): no log shard,
//! no delivery, no shadow state; its listener and proxied sessions until
//! shutdown, then `shutdown_grace` for the transactions in flight.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use super::core::NodeState;
use crate::config::Config;
use crate::frontend::{self, Frontend};
use crate::metrics::CoreMetrics;
use crate::stop::Shutdown;

/// Runs front-end core `core` (pinned to `cpu`) until shutdown.
pub async fn run(
    core: usize,
    cpu: usize,
    config: Arc<Config>,
    node: NodeState,
    metrics: Arc<CoreMetrics>,
) -> anyhow::Result<()> {
    let shutdown = Rc::new(Shutdown::default());
    let watch = {
        let (stop, shutdown) = (node.stop.clone(), shutdown.clone());
        async move {
            while !stop.is_set() {
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
            shutdown.trigger();
        }
    };
    glommio::spawn_local(watch).detach();
    let batching = crate::logbuf::batch_this_thread();
    glommio::spawn_local(crate::logbuf::flusher()).detach();
    let fe = Rc::new(Frontend::new(frontend::Parts {
        live: node.live.clone(),
        routes: node.routes.clone(),
        tls: node.tls.clone(),
        stats: node.frontend.clone(),
        metrics,
        shutdown,
        core,
    }));
    let implicit = match config.tls.implicit_listen {
        Some(addr) if node.tls.offers_tls() => Some(addr),
        Some(addr) => anyhow::bail!(
            "tls.implicit_listen = {addr} needs a certificate: set tls.certificates or tls.self_signed = true"
        ),
        None => None,
    };
    let incoming_cpu = config.incoming_cpu.then_some(cpu);
    frontend::run_core(
        fe,
        config.listen,
        implicit,
        incoming_cpu,
        config.shutdown_grace,
    )
    .await?;
    drop(batching);
    tracing::info!(core, "core stopped");
    Ok(())
}
