//! The primary side of the shadow link: sends a copy of each accepted
//! message to a peer (tern's `XSHADOW` extension over SMTP) and waits for
//! the peer's 250, which it gives only after its own group commit.
//!
//! Per core, per peer: a pool of idle connections (reused; one message
//! at a time on each, so concurrent sessions use several). Peers are tried
//! in `ClusterConfig::shadow_order`, each bounded by `shadow_timeout`.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;

use tern_smtp::client::MailOptions;
use tern_smtp::command::Body;
use tern_smtp::transaction::RcptStatus;

use crate::cluster::{ClusterConfig, Peer};
use crate::delivery::outbound::{timed, Conn};

/// What the shadow copy needs of a message.
pub struct Copy<'a> {
    /// Envelope sender ("" = null).
    pub from: &'a str,
    /// Envelope recipients.
    pub rcpts: &'a [String],
    /// 8BITMIME.
    pub eight_bit: bool,
    /// SMTPUTF8.
    pub smtputf8: bool,
    /// The message exactly as stored (Received header included).
    pub message: &'a [u8],
}

/// One core's links to its peers.
pub struct Links {
    idle: RefCell<HashMap<SocketAddr, Vec<Conn>>>,
    next: Cell<usize>,
    hostname: String,
}

impl Links {
    /// No connections yet.
    pub fn new(hostname: &str) -> Links {
        Links {
            idle: RefCell::new(HashMap::new()),
            next: Cell::new(0),
            hostname: hostname.to_owned(),
        }
    }

    /// Makes a shadow copy of `copy` (`xshadow` = the MAIL parameter
    /// value) on one peer; the peer's node id, or the last error.
    pub async fn shadow(
        &self,
        cluster: &ClusterConfig,
        xshadow: &str,
        copy: &Copy<'_>,
    ) -> Result<String, String> {
        let start = self.next.get();
        self.next.set(start.wrapping_add(1));
        let mut last = "no peer to try".to_string();
        for peer in cluster.shadow_order(start) {
            match self.try_peer(cluster, peer, xshadow, copy).await {
                Ok(()) => return Ok(peer.node_id.clone()),
                Err(e) => {
                    tracing::warn!(peer = %peer.node_id, addr = %peer.addr, error = %e, "shadow copy failed; trying the next peer");
                    last = format!("{}: {e}", peer.node_id);
                }
            }
        }
        Err(last)
    }

    async fn try_peer(
        &self,
        cluster: &ClusterConfig,
        peer: &Peer,
        xshadow: &str,
        copy: &Copy<'_>,
    ) -> Result<(), String> {
        let limit = cluster.shadow_timeout;
        let pooled = self
            .idle
            .borrow_mut()
            .get_mut(&peer.addr)
            .and_then(Vec::pop);
        let reused = pooled.is_some();
        let mut conn = match pooled {
            Some(c) => c,
            None => self.open(peer, limit).await?,
        };
        let opts = MailOptions {
            size: Some(copy.message.len() as u64),
            body: if copy.eight_bit {
                Body::EightBitMime
            } else {
                Body::SevenBit
            },
            smtputf8: copy.smtputf8,
            extra: vec![format!("XSHADOW={xshadow}")],
        };
        let sent = timed(limit, async {
            conn.send(copy.from, copy.rcpts, &opts, copy.message)
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))
        })
        .await;
        let outcome = match sent {
            Ok(o) => o,
            Err(e) if reused => {
                // A pooled connection the peer closed while idle: once
                // more on a new one.
                tracing::debug!(peer = %peer.node_id, error = %e, "stale shadow link; reconnecting");
                let mut fresh = self.open(peer, limit).await?;
                let o = timed(limit, async {
                    fresh
                        .send(copy.from, copy.rcpts, &opts, copy.message)
                        .await
                        .map_err(|e| std::io::Error::other(e.to_string()))
                })
                .await
                .map_err(|e| e.to_string())?;
                conn = fresh;
                o
            }
            Err(e) => return Err(e.to_string()),
        };
        let all = outcome
            .recipients
            .iter()
            .all(|r| matches!(r, RcptStatus::Delivered(_)));
        if !conn.broken {
            self.idle
                .borrow_mut()
                .entry(peer.addr)
                .or_default()
                .push(conn);
        }
        if all {
            Ok(())
        } else {
            let why = outcome
                .recipients
                .iter()
                .find_map(|r| match r {
                    RcptStatus::Temporary(r) | RcptStatus::Permanent(r) => Some(r.text()),
                    RcptStatus::Delivered(_) => None,
                })
                .unwrap_or_default();
            Err(format!("refused: {why}"))
        }
    }

    async fn open(&self, peer: &Peer, limit: std::time::Duration) -> Result<Conn, String> {
        let conn = Conn::open(peer.addr, &self.hostname, limit, limit, limit)
            .await
            .map_err(|e| e.to_string())?;
        if !conn.caps.other.iter().any(|(k, _)| k == "XSHADOW") {
            return Err(
                "the peer does not offer XSHADOW (not a tern peer, or it does not list us)".into(),
            );
        }
        Ok(conn)
    }
}
