//! `tern queue list` / `tern queue show ID`: read the data directory with
//! the read-only inspector (safe while the server runs; no lock taken).

use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime};

use tern_storage::inspect::inspect;
use tern_storage::Sequence;

use crate::delivery::ingest::{replay, Replayed};
use crate::delivery::queue::{Entry, Queue};
use crate::record::message::{decode, QueueId, StoredMessage, MESSAGE};
use crate::record::shadow::{self as shadow_record, Origin, SHADOW};
use crate::record::status::{self, STATUS};

fn shards(data_dir: &Path) -> anyhow::Result<Vec<(u16, std::path::PathBuf)>> {
    Ok(crate::layout::shard_dirs(data_dir)?)
}

/// Queued messages of every shard with their delivery state, rebuilt the
/// way the server rebuilds its queue: replay from the `queue` cursor
/// (message records, then status records).
pub fn queued_with_state(data_dir: &Path) -> anyhow::Result<Vec<(QueueId, StoredMessage, Entry)>> {
    let mut out = Vec::new();
    for (shard, dir) in shards(data_dir)? {
        let view = inspect(&dir)?;
        let from = view.cursor("queue").unwrap_or(Sequence(0));
        let mut q = Queue::new();
        let mut payloads = std::collections::HashMap::new();
        for rec in view.records_from(from) {
            match replay(&mut q, &rec) {
                Ok(Replayed::Message(key)) => {
                    payloads.insert(key, rec.payload);
                }
                Ok(_) => {}
                Err(e) => eprintln!("record {}: {}", rec.sequence, e.error),
            }
        }
        for (key, entry) in q.iter() {
            let id = QueueId {
                shard,
                sequence: Sequence(*key),
            };
            match decode(&payloads[key]) {
                Ok(m) => out.push((id, m, entry.clone())),
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
        .map(|(id, m, _)| (id, m))
        .collect())
}

/// Handled messages still in the Safety Net: every message record from
/// the `safety-net` cursor on whose recipients are all final, with when it
/// was handled (the time of its `done` event).
pub fn safety_net(data_dir: &Path) -> anyhow::Result<Vec<(QueueId, StoredMessage, u64)>> {
    let mut out = Vec::new();
    for (shard, dir) in shards(data_dir)? {
        let view = inspect(&dir)?;
        let from = view.cursor("safety-net").unwrap_or(Sequence(0));
        let mut payloads = std::collections::BTreeMap::new();
        let mut done = std::collections::HashMap::new();
        for rec in view.records_from(from) {
            if rec.kind == MESSAGE {
                payloads.insert(rec.origin.unwrap_or(rec.sequence).0, rec.payload);
            } else if rec.kind == STATUS {
                for e in status::decode(&rec.payload).unwrap_or_default() {
                    if e.event == status::Event::Done {
                        done.insert(e.message, e.at_ms);
                    }
                }
            }
        }
        for (key, payload) in payloads {
            let Some(&at) = done.get(&key) else { continue };
            let id = QueueId {
                shard,
                sequence: Sequence(key),
            };
            match decode(&payload) {
                Ok(m) => out.push((id, m, at)),
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
    for (shard, dir) in shards(data_dir)? {
        let view = inspect(&dir)?;
        let from = view.cursor("shadow").unwrap_or(Sequence(0));
        for rec in view.records_from(from) {
            if rec.kind != SHADOW {
                continue;
            }
            let id = QueueId {
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
    let all = safety_net(data_dir)?;
    for (id, m, at) in &all {
        line(out, *id, m, &format!("handled {}", when(*at)))?;
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

/// Prints one line per queued message.
pub fn list(data_dir: &Path, out: &mut impl Write) -> anyhow::Result<()> {
    let all = queued(data_dir)?;
    for (id, m) in &all {
        line(out, *id, m, &when(m.received_ms))?;
    }
    writeln!(out, "-- {} message(s) queued", all.len())?;
    Ok(())
}

/// Prints the envelope and the message of `id`.
pub fn show(data_dir: &Path, id: &str, out: &mut impl Write) -> anyhow::Result<()> {
    let id: QueueId = id.parse().map_err(anyhow::Error::msg)?;
    let Some((_, m, state)) = queued_with_state(data_dir)?
        .into_iter()
        .find(|(i, _, _)| *i == id)
    else {
        anyhow::bail!("{id}: not in the queue");
    };
    writeln!(
        out,
        "id: {id}\nreceived: {}\nclient: {}\nhelo: {}",
        when(m.received_ms),
        m.client,
        m.helo
    )?;
    writeln!(
        out,
        "from: <{}>\nto: {}\npending: {}\nattempts: {}\nnext attempt: {}\nsize: {}\n",
        m.mail_from,
        m.recipients.join(", "),
        state
            .pending()
            .iter()
            .map(|&i| m.recipients[i as usize].as_str())
            .collect::<Vec<_>>()
            .join(", "),
        state.attempts,
        if state.next_ms == 0 {
            "now".to_string()
        } else {
            when(state.next_ms)
        },
        m.message.len()
    )?;
    out.write_all(&m.message)?;
    Ok(())
}
