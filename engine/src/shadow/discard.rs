//! Discard notifications (SPEC 3): the primary remembers which of its
//! messages were fully handled; a shadow asks with `XQDISCARD` (at least
//! every `shadow_heartbeat_frequency`) and drops the copies named in the
//! answer from its shadow queue (they stay on disk in its Safety Net).
//!
//! # The answer to `XQDISCARD <shadow node> <database id>`
//!
//! ```text
//! 250-<primary database id>          first line: who answers
//! 250-W=<shard>:<seq>[,<shard>:<seq>...]  zero or more: discard watermarks
//! 250-<queue id>                     zero or more: copies that may go
//! 250 <n> discard(s)                 last line: how many ids were listed
//! ```
//!
//! The whole answer stays within the SMTP reply limits tern's own client
//! enforces (`tern_smtp::limits`: [`REPLY_LINES_MAX`] lines of at most
//! 512 octets): watermark lines hold at most [`MARK_LINE_MAX`] characters
//! each, and the ids fill the lines left. The shadow asks again while an
//! answer lists any id. If the asked database id is not the primary's,
//! the answer lists nothing: the shadow sees the new id on the first line
//! (the primary lost its store: takeover). Each asking node gets every
//! handled id once (the primary keeps a read position per node); ids
//! nobody fetched expire after `shadow_message_auto_discard_interval`.
//!
//! The ids are kept in memory only; what survives a primary restart is
//! the **watermark**: per shard, the lowest queue sequence that may still
//! be queued (`Queue::watermark`, rebuilt from the log at start). Every
//! message below it was handled, so the shadow drops its copies below the
//! mark too: discards of messages handled before a restart (their ids lost
//! with the memory) still arrive, a little later (once older queued
//! messages are handled or copied forward).

use std::collections::{HashMap, HashSet, VecDeque};

use tern_smtp::limits::REPLY_LINES_MAX;

/// Longest watermark line (`W=` and its pairs): well under the 512-octet
/// reply line limit, with room for the `250-` and CRLF.
pub const MARK_LINE_MAX: usize = 400;

/// Most `XQDISCARD` answers a shadow asks for in one round (each lists at
/// most [`REPLY_LINES_MAX`] ids): bounds a round even if ids keep coming.
pub const ASKS_PER_ROUND_MAX: usize = 10_000;

/// Most handled ids the primary keeps for its shadows; the
/// oldest go first, and the watermarks still cover them.
pub const DISCARD_IDS_MAX: usize = 1_000_000;

/// How long a shadow keeps an id it was told but holds no copy for (the
/// copy is on another shadow, or another core has not looked yet); at
/// least ten maintenance intervals.
pub const TOLD_IDS_KEEP_MS: u64 = 60_000;

/// The primary's handled messages, for its shadows. Shared by all cores
/// (one lock per status batch and per query, not per message).
#[derive(Debug, Default)]
pub struct DiscardLog {
    /// (serial, handled at ms, queue id), oldest first.
    entries: VecDeque<(u64, u64, String)>,
    next_serial: u64,
    /// Next serial each asking node has not seen.
    read: HashMap<String, u64>,
}

impl DiscardLog {
    /// Records handled messages.
    pub fn push(&mut self, now_ms: u64, ids: impl IntoIterator<Item = String>) {
        for id in ids {
            self.entries.push_back((self.next_serial, now_ms, id));
            self.next_serial += 1;
        }
    }

    /// Forgets the entries every node in `peers` has been told, those
    /// older than `keep_ms`, and the oldest beyond [`DISCARD_IDS_MAX`] (a
    /// shadow that did not ask in time still learns from the watermarks).
    pub fn expire(&mut self, now_ms: u64, keep_ms: u64, peers: &[&str]) {
        let told = peers
            .iter()
            .map(|p| self.read.get(*p).copied().unwrap_or(0))
            .min()
            .unwrap_or(0);
        while let Some((serial, at, _)) = self.entries.front() {
            if *serial < told
                || at.saturating_add(keep_ms) <= now_ms
                || self.entries.len() > DISCARD_IDS_MAX
            {
                self.entries.pop_front();
            } else {
                break;
            }
        }
    }

    /// Ids held now (for tests and status).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Nothing held?
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The next ids for `node` (at most `max`), advancing its read
    /// position.
    pub fn take_for(&mut self, node: &str, max: usize) -> Vec<String> {
        let from = self.read.get(node).copied().unwrap_or(0);
        // Serials are consecutive: start at `from` without scanning.
        let first = self.entries.front().map_or(0, |(serial, _, _)| *serial);
        let skip = (from.saturating_sub(first) as usize).min(self.entries.len());
        let ids: Vec<(u64, String)> = self
            .entries
            .range(skip..)
            .take(max)
            .map(|(serial, _, id)| (*serial, id.clone()))
            .collect();
        let next = ids.last().map_or(from, |(s, _)| s + 1);
        self.read.insert(node.to_owned(), next.max(from));
        ids.into_iter().map(|(_, id)| id).collect()
    }
}

/// The shadow side: ids its primaries said may go, per primary node,
/// until a core finds and drops the copy (or they expire).
#[derive(Debug, Default)]
pub struct Discarded {
    /// (primary node, its database id, primary queue id) -> when learned.
    ids: HashMap<(String, String, String), u64>,
}

impl Discarded {
    /// Adds what `node` (whose store has database id `db`) said may go.
    /// The database id is part of the key: a primary with a wiped store
    /// starts its queue ids again, and its new ids must never name the
    /// old store's copies.
    pub fn add(
        &mut self,
        node: &str,
        db: &str,
        now_ms: u64,
        ids: impl IntoIterator<Item = String>,
    ) {
        for id in ids {
            self.ids
                .insert((node.to_owned(), db.to_owned(), id), now_ms);
        }
    }

    /// Removes and reports whether the copy (node, db, id) may go.
    pub fn take(&mut self, node: &str, db: &str, id: &str) -> bool {
        self.ids
            .remove(&(node.to_owned(), db.to_owned(), id.to_owned()))
            .is_some()
    }

    /// Nothing pending?
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Forgets ids older than `keep_ms` (copies no core holds).
    pub fn expire(&mut self, now_ms: u64, keep_ms: u64) {
        self.ids.retain(|_, at| at.saturating_add(keep_ms) > now_ms);
    }
}

/// What a shadow knows of one primary (from its heartbeats).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PrimaryState {
    /// The database id it last answered with.
    pub database: Option<String>,
    /// When it last answered (unix ms).
    pub last_ok_ms: u64,
    /// Its discard watermarks (shard -> sequence) for that database: a
    /// copy whose queue id is below its shard's mark was handled.
    pub watermarks: Watermarks,
}

/// Discard watermarks, shard -> sequence.
pub type Watermarks = std::collections::BTreeMap<u16, u64>;

/// A parsed `XQDISCARD` answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Answer {
    /// The primary's database id.
    pub database: String,
    /// Its watermarks (empty when it sent none).
    pub watermarks: Watermarks,
    /// Queue ids that may go.
    pub ids: Vec<String>,
}

impl PrimaryState {
    /// Was the copy with primary queue id `qid` of database `db` handled,
    /// as far as the watermarks say?
    pub fn below_watermark(&self, db: &str, qid: &str) -> bool {
        if self.database.as_deref() != Some(db) {
            return false;
        }
        // Either form (ids of copies made before ids named their store are
        // shorter); the database is the one compared above.
        let any = crate::record::message::StoreTag::default();
        let Ok(id) = crate::record::message::QueueId::parse(qid, any) else {
            return false;
        };
        self.watermarks
            .get(&id.shard)
            .is_some_and(|w| id.sequence.0 < *w)
    }
}

/// The lines of the answer to `XQDISCARD` (format above): `ours` (this
/// node's database id), `marks` (empty when the shadow named another
/// database), and the ids `take(room)` returns for the lines left.
pub fn answer_lines(
    ours: &str,
    marks: &Watermarks,
    take: impl FnOnce(usize) -> Vec<String>,
) -> Vec<String> {
    let mut lines = vec![ours.to_owned()];
    let mut line = String::new();
    for (shard, seq) in marks {
        let pair = format!("{shard}:{seq}");
        if !line.is_empty() && 2 + line.len() + 1 + pair.len() > MARK_LINE_MAX {
            lines.push(format!("W={line}"));
            line.clear();
        }
        if !line.is_empty() {
            line.push(',');
        }
        line.push_str(&pair);
    }
    if !line.is_empty() {
        lines.push(format!("W={line}"));
    }
    let room = REPLY_LINES_MAX.saturating_sub(lines.len() + 1);
    let ids = take(room);
    let n = ids.len();
    lines.extend(ids);
    lines.push(format!("{n} discard(s)"));
    lines
}

/// Parses an `XQDISCARD` answer (format above); `None` if malformed.
pub fn parse_answer(lines: &[std::borrow::Cow<'_, str>]) -> Option<Answer> {
    let (first, rest) = lines.split_first()?;
    let database = first.split(' ').next()?.to_owned();
    let body = &rest[..rest.len().saturating_sub(1)];
    let mut watermarks = Watermarks::new();
    let mut ids = HashSet::new();
    for line in body {
        if let Some(marks) = line.strip_prefix("W=") {
            for pair in marks.split(',') {
                let (shard, seq) = pair.split_once(':')?;
                watermarks.insert(shard.parse().ok()?, seq.parse().ok()?);
            }
        } else {
            ids.insert(line.to_string());
        }
    }
    Some(Answer {
        database,
        watermarks,
        ids: ids.into_iter().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_node_gets_each_id_once_and_old_ones_expire() {
        let mut log = DiscardLog::default();
        log.push(100, ["A".to_string(), "B".to_string()]);
        assert_eq!(log.take_for("s1", 98), vec!["A", "B"]);
        assert!(log.take_for("s1", 98).is_empty());
        log.push(200, ["C".to_string()]);
        assert_eq!(log.take_for("s1", 98), vec!["C"]);
        assert_eq!(log.take_for("s2", 98), vec!["A", "B", "C"]);
        log.expire(1_000, 850, &[]);
        assert_eq!(log.take_for("s3", 98), vec!["C"]);
        let many: Vec<String> = (0..250).map(|i| i.to_string()).collect();
        log.push(300, many);
        assert_eq!(log.take_for("s4", 98).len(), 98);
        assert_eq!(log.take_for("s4", 98).len(), 98);
        assert_eq!(log.take_for("s4", 98).len(), 55);
        assert!(log.take_for("s4", 98).is_empty());
    }

    #[test]
    fn ids_every_peer_was_told_are_dropped_and_the_log_is_bounded() {
        let mut log = DiscardLog::default();
        log.push(1, (0..10).map(|i| i.to_string()));
        assert_eq!(log.take_for("b", 4).len(), 4);
        log.expire(2, 1_000, &["b", "c"]);
        assert_eq!(log.len(), 10, "c was told nothing yet");
        assert_eq!(log.take_for("c", 6).len(), 6);
        log.expire(2, 1_000, &["b", "c"]);
        assert_eq!(log.len(), 6, "both told 0..3");
        assert_eq!(
            log.take_for("b", 98),
            (4..10).map(|i| i.to_string()).collect::<Vec<_>>()
        );
        assert_eq!(
            log.take_for("c", 98),
            (6..10).map(|i| i.to_string()).collect::<Vec<_>>()
        );
        log.expire(2, 1_000, &["b", "c"]);
        assert!(log.is_empty());
        // A new peer that never asked starts where the log now starts.
        log.push(3, ["x".to_string()]);
        assert_eq!(log.take_for("d", 98), vec!["x"]);
        // Bounded whatever the peers do.
        log.push(4, (0..DISCARD_IDS_MAX + 5).map(|i| i.to_string()));
        log.expire(4, u64::MAX / 2, &["nobody"]);
        assert_eq!(log.len(), DISCARD_IDS_MAX);
    }

    #[test]
    fn shadow_side_and_answer_parsing() {
        let mut d = Discarded::default();
        d.add("a", "db1", 10, ["X".to_string()]);
        assert!(!d.take("b", "db1", "X"));
        assert!(!d.take("a", "db2", "X"), "another store's id");
        assert!(d.take("a", "db1", "X"));
        assert!(d.is_empty());
        d.add("a", "db1", 10, ["Y".to_string()]);
        d.expire(100, 50);
        assert!(d.is_empty());
        let lines: Vec<std::borrow::Cow<str>> = vec![
            "0123".into(),
            "Q1".into(),
            "Q2".into(),
            "2 discard(s)".into(),
        ];
        let mut a = parse_answer(&lines).unwrap();
        a.ids.sort();
        assert_eq!(
            (a.database.as_str(), a.ids),
            ("0123", vec!["Q1".to_string(), "Q2".to_string()])
        );
        assert!(a.watermarks.is_empty());
        let none: Vec<std::borrow::Cow<str>> = vec!["0123 0 discard(s)".into()];
        assert_eq!(parse_answer(&none).unwrap().ids.len(), 0);
        let marked: Vec<std::borrow::Cow<str>> =
            vec!["0123".into(), "W=0:17,1:5".into(), "0 discard(s)".into()];
        let a = parse_answer(&marked).unwrap();
        assert_eq!(a.watermarks, Watermarks::from([(0, 17), (1, 5)]));
        let bad: Vec<std::borrow::Cow<str>> =
            vec!["0123".into(), "W=0:x".into(), "0 discard(s)".into()];
        assert!(parse_answer(&bad).is_none());
    }

    /// The largest answers (256 shards with 14-digit sequences, a full
    /// page of ids) go through tern's own reply encoder and parser intact:
    /// within the line count and line length limits.
    #[test]
    fn a_full_answer_round_trips_through_the_reply_parser() {
        use tern_smtp::reply::{Reply, ReplyParser};
        let marks: Watermarks = (0..256u16)
            .map(|s| (s, 99_999_999_999_999 - u64::from(s)))
            .collect();
        let mut log = DiscardLog::default();
        log.push(1, (0..5000).map(|i| format!("{i:014X}")));
        let mut got_ids = Vec::new();
        let mut rounds = 0;
        loop {
            let lines = answer_lines("f00d", &marks, |room| log.take_for("s", room));
            let reply = Reply::plain(250, lines.into_iter().map(Into::into).collect());
            let mut wire = Vec::new();
            reply.encode(&mut wire);
            let mut p = ReplyParser::new();
            p.feed(&wire);
            let parsed = p.next_reply().expect("parses").expect("complete");
            let a = parse_answer(&parsed.lines).expect("well formed");
            assert_eq!(a.database, "f00d");
            assert_eq!(a.watermarks, marks, "every mark intact");
            rounds += 1;
            if a.ids.is_empty() {
                break;
            }
            got_ids.extend(a.ids);
            assert!(rounds < 1000);
        }
        got_ids.sort();
        got_ids.dedup();
        assert_eq!(got_ids.len(), 5000, "every id, once, in {rounds} answers");
        // With no marks, a page holds REPLY_LINES_MAX - 2 ids.
        let lines = answer_lines("f00d", &Watermarks::new(), |room| {
            (0..room).map(|i| i.to_string()).collect()
        });
        assert_eq!(lines.len(), REPLY_LINES_MAX);
    }

    #[test]
    fn watermarks_name_handled_copies_of_the_same_store_only() {
        use crate::record::message::QueueId;
        use tern_storage::Sequence;
        let id = |shard, seq| {
            QueueId {
                store: Default::default(),
                shard,
                sequence: Sequence(seq),
            }
            .to_string()
        };
        let state = PrimaryState {
            database: Some("db1".into()),
            last_ok_ms: 1,
            watermarks: Watermarks::from([(0, 100), (1, 7)]),
        };
        assert!(state.below_watermark("db1", &id(0, 99)));
        assert!(
            !state.below_watermark("db1", &id(0, 100)),
            "the mark itself may be queued"
        );
        assert!(state.below_watermark("db1", &id(1, 6)));
        assert!(!state.below_watermark("db1", &id(1, 7)));
        assert!(
            !state.below_watermark("db1", &id(2, 1)),
            "a shard without a mark"
        );
        assert!(!state.below_watermark("db2", &id(0, 1)), "another store");
        assert!(!state.below_watermark("db1", "not-an-id"));
    }
}
