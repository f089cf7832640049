//! The shadow's heartbeat (SPEC 3): at least every
//! `shadow_heartbeat_frequency`, ask each peer (as a primary) with
//! `XQDISCARD` which of its messages were handled, and hand the answer to
//! the cores, which drop those copies from their shadow queues. Runs on
//! core 0; one short connection per peer and round.

use std::rc::Rc;

use tern_smtp::client;

use crate::cluster::Peer;
use crate::core::{Core, Shared};
use crate::delivery::outbound::Conn;
use crate::metrics::CoreMetrics;
use crate::shadow::discard::{parse_answer, Answer, PrimaryState, ASKS_PER_ROUND_MAX};

/// Runs until shutdown.
pub async fn run(core: Rc<Core>) {
    let every = core.config.cluster.shadow_heartbeat_frequency;
    loop {
        let stop = core.shutdown.wait();
        let tick = async {
            glommio::timer::sleep(every).await;
        };
        futures_lite::future::or(stop, tick).await;
        if core.shutdown.is_set() {
            return;
        }
        for peer in &core.config.cluster.peers {
            match ask(&core, peer).await {
                Ok(n) => tracing::debug!(peer = %peer.node_id, discards = n, "heartbeat"),
                Err(e) => tracing::warn!(peer = %peer.node_id, error = %e, "heartbeat failed"),
            }
        }
    }
}

/// Keeps what primary `node` answered to `XQDISCARD` (its database id,
/// watermarks and the ids that may go) for the cores' upkeep; the number
/// of ids. Used by the heartbeat and by the shadow link, which asks on the
/// sessions it has open anyway.
pub fn record_answer(shared: &Shared, node: &str, answer: Answer) -> usize {
    let now = crate::delivery::now_ms();
    let n = answer.ids.len();
    shared
        .primaries
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(
            node.to_owned(),
            PrimaryState {
                database: Some(answer.database.clone()),
                last_ok_ms: now,
                watermarks: answer.watermarks,
            },
        );
    shared
        .discarded
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .add(node, &answer.database, now, answer.ids);
    n
}

/// One round with one peer: the ids it says may go.
async fn ask(core: &Core, peer: &Peer) -> Result<usize, String> {
    let limit = core.config.cluster.shadow_timeout;
    let mut conn = Conn::open(peer.addr, &core.config.hostname, limit, limit, limit)
        .await
        .map_err(|e| e.to_string())?;
    let Some(db) = crate::shadow::link::offered_database(&conn) else {
        conn.quit().await;
        return Err("the peer does not offer XSHADOW to us".into());
    };
    let mut total = 0;
    for _ in 0..ASKS_PER_ROUND_MAX {
        let mut line = Vec::new();
        client::xqdiscard(&mut line, &core.config.cluster.node_id, &db);
        let reply = conn.command(&line).await.map_err(|e| e.to_string())?;
        if reply.code != 250 {
            conn.quit().await;
            return Err(format!("XQDISCARD refused: {}", reply.text()));
        }
        CoreMetrics::inc(&core.metrics.heartbeats);
        let Some(answer) = parse_answer(&reply.lines) else {
            conn.quit().await;
            return Err("malformed XQDISCARD answer".into());
        };
        let n = record_answer(&core.shared, &peer.node_id, answer);
        total += n;
        if n == 0 {
            break;
        }
    }
    conn.quit().await;
    Ok(total)
}
