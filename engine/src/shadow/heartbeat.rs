//! The shadow's heartbeat (SPEC 3): at least every
//! `shadow_heartbeat_frequency`, ask each peer (as a primary) with
//! `XQDISCARD` which of its messages were handled, and hand the answer to
//! the cores, which drop those copies from their shadow queues. Runs on
//! core 0; one short connection per peer and round.

use std::rc::Rc;
use std::sync::Arc;

use tern_smtp::client;

use super::discard::{parse_answer, ASKS_PER_ROUND_MAX};
use super::link::offered_database;
use super::ShadowShared;
use crate::cluster::Peer;
use crate::config::Config;
use crate::metrics::CoreMetrics;
use crate::stop::Shutdown;

/// What a heartbeat round needs.
pub struct Heartbeat {
    /// The configuration (`[cluster]`, hostname).
    pub config: Arc<Config>,
    /// Where the answers go.
    pub shared: Arc<ShadowShared>,
    /// Core 0's counters.
    pub metrics: Arc<CoreMetrics>,
    /// Core 0's shutdown.
    pub shutdown: Rc<Shutdown>,
    /// The node's TLS (the link to each peer is pinned TLS).
    pub tls: Arc<crate::tls::Tls>,
}

/// Runs until shutdown.
pub async fn run(hb: Heartbeat) {
    let every = hb.config.cluster.shadow_heartbeat_frequency;
    loop {
        let stop = hb.shutdown.wait();
        let tick = async {
            glommio::timer::sleep(every).await;
        };
        futures_lite::future::or(stop, tick).await;
        if hb.shutdown.is_set() {
            return;
        }
        for peer in &hb.config.cluster.peers {
            match ask(&hb, peer).await {
                Ok(n) => tracing::debug!(peer = %peer.node_id, discards = n, "heartbeat"),
                Err(e) => tracing::warn!(peer = %peer.node_id, error = %e, "heartbeat failed"),
            }
        }
    }
}

/// One round with one peer: the ids it says may go.
async fn ask(hb: &Heartbeat, peer: &Peer) -> Result<usize, String> {
    let cluster = &hb.config.cluster;
    let limit = cluster.shadow_timeout;
    let mut conn = super::link::open_peer(&hb.tls, peer, &hb.config.hostname, limit)
        .await
        .map_err(|e| e.to_string())?;
    let Some(db) = offered_database(&conn) else {
        conn.quit().await;
        return Err("the peer does not offer XSHADOW to us".into());
    };
    let mut total = 0;
    // The first ask of the round tells the primary of the takeovers of
    // its current store it was not told of yet.
    let mut taken = hb.shared.replica.untold_takeovers(&peer.node_id, &db);
    for _ in 0..ASKS_PER_ROUND_MAX {
        let mut line = Vec::new();
        client::xqdiscard(&mut line, &cluster.node_id, &db, taken);
        let reply = conn.command(&line).await.map_err(|e| e.to_string())?;
        if reply.code != 250 {
            conn.quit().await;
            return Err(format!("XQDISCARD refused: {}", reply.text()));
        }
        hb.shared
            .replica
            .told_takeovers(&peer.node_id, &db, std::mem::take(&mut taken));
        CoreMetrics::inc(&hb.metrics.heartbeats);
        let Some(answer) = parse_answer(&reply.lines) else {
            conn.quit().await;
            return Err("malformed XQDISCARD answer".into());
        };
        let n = hb.shared.replica.record_answer(&peer.node_id, answer);
        total += n;
        if n == 0 {
            break;
        }
    }
    conn.quit().await;
    Ok(total)
}
