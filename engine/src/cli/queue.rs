//! `tern queue list` / `tern queue show ID`: read the data directory with
//! the read-only inspector (safe while the server runs; no lock taken).

use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime};

use tern_storage::inspect::inspect;
use tern_storage::Sequence;

use super::history::{self, Histories};
use crate::delivery::ingest::{replay, Replayed};
use crate::delivery::queue::{Entry, Queue};
use crate::record::message::{decode, QueueId, StoreTag, StoredMessage, MESSAGE};
use crate::record::shadow::{self as shadow_record, Origin, SHADOW};
use crate::record::status::{self, STATUS};

fn shards(data_dir: &Path) -> anyhow::Result<Vec<(u16, std::path::PathBuf)>> {
    crate::layout::check_readable(data_dir)?;
    Ok(crate::layout::shard_dirs(data_dir)?)
}

/// The store tag of the data directory's queue ids (the default tag when
/// it has no database id yet: then it has no messages either).
pub fn store_tag(data_dir: &Path) -> anyhow::Result<StoreTag> {
    Ok(crate::cluster::load(data_dir)?
        .map(|id| StoreTag::of_database(id.as_bytes()))
        .unwrap_or_default())
}

/// A queued message: its delivery state, and what the log says of each
/// recipient (last reply; final ones: how and when).
pub struct Queued {
    /// Its id.
    pub id: QueueId,
    /// The stored message.
    pub message: StoredMessage,
    /// Its state in the queue (attempts, next attempt, held, final
    /// recipients).
    pub entry: Entry,
    /// Per recipient history.
    pub history: history::Message,
}

/// Queued messages of every shard with their delivery state, rebuilt the
/// way the server rebuilds its queue: replay from the `queue` cursor
/// (message records, then status records).
pub fn queued_with_state(data_dir: &Path) -> anyhow::Result<Vec<Queued>> {
    let mut out = Vec::new();
    let store = store_tag(data_dir)?;
    for (shard, dir) in shards(data_dir)? {
        let view = inspect(&dir)?;
        let from = view.cursor("queue").unwrap_or(Sequence(0));
        let mut q = Queue::new();
        let mut payloads = std::collections::HashMap::new();
        let mut histories = Histories::default();
        for rec in view.records_from(from) {
            match replay(&mut q, &rec) {
                Ok(Replayed::Message(key)) => {
                    payloads.insert(key, rec.payload);
                }
                Ok(Replayed::Status(events)) => {
                    // Only messages still queued are followed.
                    for e in events.iter().filter(|e| e.event == status::Event::Done) {
                        histories.forget(e.message);
                    }
                    let replies = status::decode_with(&rec.payload).map_or(Vec::new(), |(_, r)| r);
                    histories.note(&events, &replies, |key| q.get(key).is_some());
                }
                Ok(_) => {}
                Err(e) => eprintln!("record {}: {}", rec.sequence, e.error),
            }
        }
        for (key, entry) in q.iter() {
            let id = QueueId {
                store,
                shard,
                sequence: Sequence(*key),
            };
            match decode(&payloads[key]) {
                Ok(message) => out.push(Queued {
                    id,
                    message,
                    entry: entry.clone(),
                    history: histories.take(*key),
                }),
                Err(e) => eprintln!("{id}: {e}"),
            }
        }
    }
    Ok(out)
}

/// Queued messages of every shard (see [`queued_with_state`]).
pub fn queued(data_dir: &Path) -> anyhow::Result<Vec<(QueueId, StoredMessage)>> {
    Ok(queued_with_state(data_dir)?
        .into_iter()
        .map(|q| (q.id, q.message))
        .collect())
}

/// A handled message in the Safety Net.
pub struct Handled {
    /// Its id.
    pub id: QueueId,
    /// The stored message.
    pub message: StoredMessage,
    /// When every recipient was final.
    pub handled_ms: u64,
    /// How each recipient became final, and its last reply.
    pub history: history::Message,
}

/// Handled messages still in the Safety Net: every message record from
/// the `safety-net` cursor on whose recipients are all final, with when it
/// was handled (the time of its `done` event) and each recipient's
/// outcome. `only`: just that message.
pub fn safety_net(data_dir: &Path, only: Option<QueueId>) -> anyhow::Result<Vec<Handled>> {
    let mut out = Vec::new();
    let store = store_tag(data_dir)?;
    for (shard, dir) in shards(data_dir)? {
        if only.is_some_and(|id| (id.store, id.shard) != (store, shard)) {
            continue;
        }
        let view = inspect(&dir)?;
        let from = view.cursor("safety-net").unwrap_or(Sequence(0));
        let wanted = |key: u64| only.is_none_or(|id| id.sequence.0 == key);
        let mut payloads = std::collections::BTreeMap::new();
        let mut histories = Histories::default();
        for rec in view.records_from(from) {
            if rec.kind == MESSAGE {
                let key = rec.origin.unwrap_or(rec.sequence).0;
                if wanted(key) {
                    payloads.insert(key, rec.payload);
                }
            } else if rec.kind == STATUS {
                let (events, replies) = status::decode_with(&rec.payload).unwrap_or_default();
                histories.note(&events, &replies, wanted);
            }
        }
        for (key, payload) in payloads {
            let history = histories.take(key);
            let Some(handled_ms) = history.done_ms else {
                continue;
            };
            let id = QueueId {
                store,
                shard,
                sequence: Sequence(key),
            };
            match decode(&payload) {
                Ok(message) => out.push(Handled {
                    id,
                    message,
                    handled_ms,
                    history,
                }),
                Err(e) => eprintln!("{id}: {e}"),
            }
        }
    }
    Ok(out)
}

/// Shadow copies this node holds for peers: every shadow record from the
/// `shadow` cursor on (local id, origin, message).
pub fn shadow_copies(data_dir: &Path) -> anyhow::Result<Vec<(QueueId, Origin, StoredMessage)>> {
    let mut out = Vec::new();
    let store = store_tag(data_dir)?;
    for (shard, dir) in shards(data_dir)? {
        let view = inspect(&dir)?;
        let from = view.cursor("shadow").unwrap_or(Sequence(0));
        for rec in view.records_from(from) {
            if rec.kind != SHADOW {
                continue;
            }
            let id = QueueId {
                store,
                shard,
                sequence: rec.sequence,
            };
            match shadow_record::decode(&rec.payload) {
                Ok((origin, m)) => out.push((id, origin, m)),
                Err(e) => eprintln!("{id}: {e}"),
            }
        }
    }
    Ok(out)
}

/// Prints one line per shadow copy held for a peer.
pub fn list_shadow(data_dir: &Path, out: &mut impl Write) -> anyhow::Result<()> {
    let all = shadow_copies(data_dir)?;
    for (id, origin, m) in &all {
        line(
            out,
            *id,
            m,
            &format!("for {} as {}", origin.node, origin.queue_id),
        )?;
    }
    writeln!(out, "-- {} shadow copie(s) held", all.len())?;
    Ok(())
}

/// Prints one line per message in the Safety Net.
pub fn list_safety_net(data_dir: &Path, out: &mut impl Write) -> anyhow::Result<()> {
    let all = safety_net(data_dir, None)?;
    for h in &all {
        line(
            out,
            h.id,
            &h.message,
            &format!("handled {}", when(h.handled_ms)),
        )?;
    }
    writeln!(out, "-- {} message(s) in the Safety Net", all.len())?;
    Ok(())
}

/// `ID SIZE WHEN FROM -> RCPTS`.
fn line(out: &mut impl Write, id: QueueId, m: &StoredMessage, at: &str) -> std::io::Result<()> {
    let from = if m.mail_from.is_empty() {
        "<>"
    } else {
        &m.mail_from
    };
    writeln!(
        out,
        "{id} {:>9} {at} {from} -> {}",
        m.message.len(),
        m.recipients.join(", ")
    )
}

fn when(ms: u64) -> String {
    crate::received::rfc5322_date(SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
}

/// Prints each queued message (`ID SIZE ARRIVAL FROM -> RCPTS`) and
/// under it each pending recipient: its state, the attempts, the next
/// attempt and the last reply (as `mailq` does).
pub fn list(data_dir: &Path, out: &mut impl Write) -> anyhow::Result<()> {
    let all = queued_with_state(data_dir)?;
    for q in &all {
        line(out, q.id, &q.message, &when(q.message.received_ms))?;
        let state = state(&q.entry);
        let next = next_attempt(&q.entry);
        for i in q.entry.pending() {
            let rcpt = q
                .message
                .recipients
                .get(i as usize)
                .map_or("?", |r| r.as_str());
            let attempts = q.entry.attempts;
            writeln!(
                out,
                "  {rcpt}: {state}, attempts {attempts}, next attempt {next}"
            )?;
            if let Some((_, reply)) = q.history.recipient(i).reply {
                writeln!(out, "    ({reply})")?;
            }
        }
    }
    writeln!(out, "-- {} message(s) queued", all.len())?;
    Ok(())
}

/// A queued message's state: held, deferred (tried before) or queued
/// (not tried yet).
fn state(e: &Entry) -> &'static str {
    if e.held {
        "held"
    } else if e.attempts > 0 {
        "deferred"
    } else {
        "queued"
    }
}

fn next_attempt(e: &Entry) -> String {
    if e.held {
        "when released".to_string()
    } else if e.next_ms == 0 {
        "now".to_string()
    } else {
        when(e.next_ms)
    }
}

/// Prints the envelope, the delivery state (each recipient's outcome or
/// state and its last reply) and the message of `id`: a queued message,
/// else a handled one in the Safety Net.
pub fn show(data_dir: &Path, id: &str, out: &mut impl Write) -> anyhow::Result<()> {
    let id = QueueId::parse(id, store_tag(data_dir)?).map_err(anyhow::Error::msg)?;
    let queued = queued_with_state(data_dir)?
        .into_iter()
        .find(|q| q.id == id);
    if let Some(q) = queued {
        envelope(out, id, &q.message)?;
        let m = &q.message;
        writeln!(
            out,
            "pending: {}\nstate: {}\nattempts: {}\nnext attempt: {}",
            q.entry
                .pending()
                .iter()
                .map(|&i| m.recipients[i as usize].as_str())
                .collect::<Vec<_>>()
                .join(", "),
            state(&q.entry),
            q.entry.attempts,
            next_attempt(&q.entry),
        )?;
        let pending = state(&q.entry);
        recipients(out, m, &q.history, pending)?;
        return content(out, m);
    }
    let Some(h) = safety_net(data_dir, Some(id))?.pop() else {
        anyhow::bail!("{id}: neither in the queue nor in the Safety Net");
    };
    envelope(out, id, &h.message)?;
    writeln!(
        out,
        "state: handled (in the Safety Net)\nhandled: {}",
        when(h.handled_ms)
    )?;
    recipients(out, &h.message, &h.history, "not final")?;
    content(out, &h.message)
}

fn envelope(out: &mut impl Write, id: QueueId, m: &StoredMessage) -> std::io::Result<()> {
    writeln!(
        out,
        "id: {id}\nreceived: {}\nclient: {}\nhelo: {}\nfrom: <{}>\nto: {}",
        when(m.received_ms),
        m.client,
        m.helo,
        m.mail_from,
        m.recipients.join(", "),
    )
}

/// `recipient ADDR: delivered at DATE (HOST said: 250 ...)`; a recipient
/// not final is `pending` (its state).
fn recipients(
    out: &mut impl Write,
    m: &StoredMessage,
    h: &history::Message,
    pending: &str,
) -> std::io::Result<()> {
    for (i, rcpt) in m.recipients.iter().enumerate() {
        let r = h.recipient(i as u32);
        let what = match r.outcome {
            Some((f, at)) => format!("{} at {}", f.as_str(), when(at)),
            None => pending.to_string(),
        };
        match &r.reply {
            Some((at, reply)) if r.outcome.is_none() => writeln!(
                out,
                "recipient {rcpt}: {what}, last reply {} ({reply})",
                when(*at)
            )?,
            Some((_, reply)) => writeln!(out, "recipient {rcpt}: {what} ({reply})")?,
            None => writeln!(out, "recipient {rcpt}: {what}")?,
        }
    }
    Ok(())
}

/// `size: N`, a blank line, the stored message.
fn content(out: &mut impl Write, m: &StoredMessage) -> anyhow::Result<()> {
    writeln!(out, "size: {}\n", m.message.len())?;
    out.write_all(&m.message)?;
    Ok(())
}
