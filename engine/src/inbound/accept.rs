//! The accept step: a complete message becomes a durable record (and,
//! with shadow redundancy, a copy on a peer, in parallel), and the one
//! place where a storage or shadow failure becomes the client's reply.
//!
//! 1. duplicate check (only while shadowing, SPEC 2.6);
//! 2. `Received:` header (`crate::received`) and the record size;
//! 3. the log assigns the sequence (the queue id) and the payload goes
//!    straight into the group-commit buffer, while the copy goes to a peer
//!    as soon as the queue id is known;
//! 4. the reply: 250 only after the group commit and the peer's 250.

use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use tern_smtp::server::Envelope;
use tern_smtp::{Reply, Status};
use tern_storage::{Sequence, TimestampMs};

use super::Inbound;
use crate::metrics::CoreMetrics;
use crate::record::message::{Encoder, QueueId, MESSAGE};
use crate::shadow::replica::{CopyError, PendingCopy};
use crate::shard::Announced;

/// The reply to a storage failure (built by `crate::pressure`, with the
/// refusals of back pressure).
pub fn insufficient_storage() -> Reply {
    crate::pressure::insufficient_storage("")
}

/// The sequence the log assigned to a record being appended, for a task
/// that waits for it while the append goes on.
#[derive(Default)]
struct Assigned {
    sequence: Cell<Option<Sequence>>,
    finished: Cell<bool>,
    event: event_listener::Event,
}

impl Assigned {
    fn set(&self, s: Sequence) {
        self.sequence.set(Some(s));
        self.event.notify(usize::MAX);
    }

    fn finish(&self) {
        self.finished.set(true);
        self.event.notify(usize::MAX);
    }

    /// The sequence once assigned; `None` if the append ended without one.
    async fn wait(&self) -> Option<Sequence> {
        loop {
            if let Some(s) = self.sequence.get() {
                return Some(s);
            }
            if self.finished.get() {
                return None;
            }
            let l = self.event.listen();
            if self.sequence.get().is_none() && !self.finished.get() {
                l.await;
            }
        }
    }
}

/// A message record appended (durable) and what became of its copy.
struct Stored {
    sequence: Sequence,
    /// The payload kept for the first delivery attempt, if it fit.
    kept: Option<Vec<u8>>,
    /// `None`: not shadowing; else the peer's node id or the last error.
    shadowed: Option<Result<String, String>>,
}

impl Inbound {
    /// Makes a message durable in this core's log and, with shadow
    /// redundancy, a copy on a peer, in parallel; `Ok` only after the group
    /// commit that covers it and the peer's 250. Any storage error is a
    /// 452, never 250. A copy from a peer's shadow link (`XSHADOW=`) goes
    /// through [`Inbound::accept_copy`] instead.
    pub async fn accept(
        &self,
        env: &Envelope,
        content: &[u8],
        peer: SocketAddr,
        trace: &crate::received::Trace<'_>,
    ) -> Result<QueueId, Reply> {
        debug_assert!(
            env.params.xshadow.is_none(),
            "copies go through accept_copy"
        );
        let settings = self.settings();
        let config = &settings.config;
        let hops = received_headers(content);
        if hops >= config.smtp.hops_max {
            // Ours would be one more: a mail loop (RFC 5321 6.3).
            CoreMetrics::inc(&self.metrics.rejected_protocol);
            tracing::warn!(client = %peer, from = %env.from, hops, "message refused: too many Received headers (a mail loop?)");
            return Err(Reply::new(
                554,
                Status(5, 4, 6),
                format!("Error: too many hops ({hops} Received headers): a mail loop?"),
            ));
        }
        let now = SystemTime::now();
        let ms = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        let digest = match self.primary.resent(peer.ip(), env, content, ms) {
            Ok(d) => d,
            Err(first) => {
                tracing::info!(first = %first, client = %peer, from = %env.from, "resent message: accepted, not queued again");
                return first.parse().map_err(|_| {
                    Reply::new(451, Status(4, 3, 0), "Error: internal (duplicate id)")
                });
            }
        };
        let (prefix, suffix) = crate::received::header(&config.hostname, env, peer, now, trace);
        let encoder = Encoder::new(env, peer, ms, Some((&prefix, &suffix)), content);
        let size = encoder.len();
        let stored = self
            .store(env, &encoder, ms, (&prefix, &suffix), content)
            .await
            .map_err(|(assigned, e)| {
                if let Some(s) = assigned {
                    self.shard.decided(s.0);
                }
                CoreMetrics::inc(&self.metrics.rejected_storage);
                if let tern_storage::Error::Fatal(why) = &e {
                    // New sessions get 421 from now on (the core's
                    // watcher then stops the node).
                    self.pressure.fail(usize::from(self.shard.id), why);
                }
                if matches!(e, tern_storage::Error::NoSpace(_)) {
                    tracing::warn!(error = %e, client = %peer, "no room for the message; answering 452");
                } else {
                    tracing::error!(error = %e, client = %peer, "cannot store message; answering 452");
                }
                insufficient_storage()
            })?;
        let id = self.shard.queue_id(stored.sequence);
        let verdict = self.shadow_verdict(id, stored.shadowed).await;
        self.shard.decided(stored.sequence.0);
        self.shard.notify_appended();
        verdict?;
        if let Some(c) = stored.kept {
            self.shard.keep_payload(stored.sequence.0, c.into());
        }
        CoreMetrics::inc(&self.metrics.messages_accepted);
        self.metrics
            .bytes_accepted
            .fetch_add(size as u64, Ordering::Relaxed);
        let message_id = crate::shadow::dedupe::message_id(content);
        tracing::info!(id = %id, message_id = message_id.as_deref().unwrap_or("-"),
            size = encoder.message_len(), client = %peer, from = %format_args!("<{}>", env.from),
            nrcpt = env.recipients.len(), "accepted");
        self.primary.remember(digest, id, ms);
        Ok(id)
    }

    /// Appends the record and, while shadowing, makes the copy as soon as
    /// the queue id is known. `Err`: the log failed (with the sequence, if
    /// one was assigned).
    async fn store(
        &self,
        env: &Envelope,
        encoder: &Encoder<'_>,
        ms: u64,
        received: (&[u8], &[u8]),
        content: &[u8],
    ) -> Result<Stored, (Option<Sequence>, tern_storage::Error)> {
        let shadowing = self.primary.shadowing();
        let size = encoder.len();
        // A copy for delivery, so it need not read the record back from
        // disk (O_DIRECT writes bypass the page cache) while it is fresh.
        let mut kept = self.shard.has_room(size).then(|| Vec::with_capacity(size));
        let assigned = Assigned::default();
        let what = Announced::Message {
            received_ms: ms,
            rcpts: env.recipients.len() as u32,
        };
        let append = async {
            let r = self
                .shard
                .append(MESSAGE, TimestampMs(ms), size, what, |sequence, w| {
                    if shadowing {
                        // Delivery waits for the shadow outcome.
                        self.shard.hold_back(sequence.0);
                    }
                    assigned.set(sequence);
                    let id = self.shard.queue_id(sequence);
                    encoder.write(id, &mut |b| {
                        w.put(b);
                        if let Some(c) = kept.as_mut() {
                            c.extend_from_slice(b);
                        }
                    })
                })
                .await;
            assigned.finish();
            r
        };
        let shadow = async {
            if !shadowing {
                return None;
            }
            // The queue id names the copy: wait until the log assigned it.
            let sequence = assigned.wait().await?;
            let id = self.shard.queue_id(sequence);
            Some(self.primary.copy_message(env, id, received, content).await)
        };
        let (appended, shadowed) = futures_lite::future::zip(append, shadow).await;
        match appended {
            Ok(sequence) => Ok(Stored {
                sequence,
                kept,
                shadowed,
            }),
            Err(e) => Err((assigned.sequence.get(), e)),
        }
    }

    /// Whether message `id`, durable here, may be acknowledged after its
    /// shadow copy's outcome: without a copy it is refused (and withdrawn)
    /// under `reject_on_shadow_failure`, else accepted non-redundant.
    async fn shadow_verdict(
        &self,
        id: QueueId,
        shadowed: Option<Result<String, String>>,
    ) -> Result<(), Reply> {
        let Some(Err(e)) = shadowed else {
            return Ok(());
        };
        if !self.settings().config.cluster.reject_on_shadow_failure {
            CoreMetrics::inc(&self.metrics.non_redundant_accepts);
            tracing::warn!(id = %id, error = %e, "no shadow copy: accepted without redundancy");
            return Ok(());
        }
        tracing::warn!(id = %id, error = %e, "no shadow copy: refusing the message (reject_on_shadow_failure)");
        match self.primary.withdraw(id).await {
            Ok(_) => Err(Reply::new(
                451,
                Status(4, 4, 0),
                "Message failed to be made redundant",
            )),
            Err(e) => {
                tracing::error!(id = %id, error = %e, "cannot record the withdrawal");
                Err(insufficient_storage())
            }
        }
    }

    /// A peer's shadow copy (`XSHADOW=` on MAIL), queued for the next
    /// group commit: **not durable yet** (see [`Inbound::copies_durable`]).
    /// `Err` is the reply to give instead.
    pub async fn accept_copy(
        &self,
        env: &Envelope,
        content: &[u8],
        peer: SocketAddr,
    ) -> Result<PendingCopy, Reply> {
        match self.replica.queue_copy(env, content, peer).await {
            Ok(p) => Ok(p),
            Err(CopyError::BadOrigin) => Err(Reply::new(
                501,
                Status(5, 5, 4),
                "Bad parameter value: XSHADOW",
            )),
            Err(CopyError::Storage(e)) => {
                CoreMetrics::inc(&self.metrics.rejected_storage);
                tracing::error!(error = %e, client = %peer, "cannot store a shadow copy; answering 452");
                Err(insufficient_storage())
            }
        }
    }

    /// Waits for the commit covering every copy in `pending`; `Err`: none
    /// may be acknowledged.
    pub async fn copies_durable(&self, pending: &[PendingCopy]) -> tern_storage::Result<()> {
        self.replica.copies_durable(pending).await
    }

    /// The answer to a shadow's `XQDISCARD` (`taken`: its `TAKEN=`).
    pub fn discard_answer(&self, node: &str, database: &str, taken: u64) -> Reply {
        self.primary.discard_answer(node, database, taken)
    }
}

/// `Received:` header fields in the header section of `content`.
fn received_headers(content: &[u8]) -> u32 {
    let end = memchr::memmem::find(content, b"\r\n\r\n").map_or(content.len(), |i| i + 2);
    content[..end]
        .split(|&b| b == b'\n')
        .filter(|l| l.len() >= 9 && l[..9].eq_ignore_ascii_case(b"received:"))
        .count() as u32
}

#[cfg(test)]
mod tests {
    #[test]
    fn received_headers_are_counted_in_the_header_section_only() {
        let m = b"Received: a\r\nreceived: b\r\n (folded)\r\nSubject: x\r\n\r\nReceived: body\r\n";
        assert_eq!(super::received_headers(m), 2);
        assert_eq!(super::received_headers(b"Subject: x\r\n\r\n"), 0);
    }
}
