//! The shadow record: a copy of a message another node (its primary) holds,
//! kept here until the primary says it was handled.
//!
//! # Layout
//!
//! Record kind [`SHADOW`] (3). Integers little endian, strings with a u16
//! length:
//!
//! ```text
//! { u32 magic = "TNH1" | u16 version = 1 | u16 reserved = 0
//! | str primary_node | str primary_database | str primary_queue_id }
//! then a complete message record payload (kind 1 layout, `crate::record::message`):
//! the envelope the primary sent and the message exactly as the primary
//! stored it (its Received header included; the shadow adds none).
//! ```
//!
//! On takeover the embedded message record becomes a message of this
//! node's own queue unchanged.

use bytes::Bytes;
use tern_storage::RecordKind;

use crate::record::message::{self, StoredMessage};

/// Record kind of a shadow copy.
pub const SHADOW: RecordKind = RecordKind(3);

const MAGIC: &[u8; 4] = b"TNH1";
const VERSION: u16 = 1;

/// Who holds the primary copy.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Origin {
    /// The primary's node id.
    pub node: String,
    /// The primary's database id (a wiped store has a new one).
    pub database: String,
    /// The message's queue id on the primary.
    pub queue_id: String,
}

impl Origin {
    /// From the `XSHADOW=<node>,<database>,<queue id>` MAIL parameter
    /// (syntax already checked by `tern_smtp::command::xshadow_value`).
    pub fn from_param(value: &str) -> Option<Origin> {
        let mut parts = value.split(',');
        let (Some(node), Some(database), Some(queue_id), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        Some(Origin {
            node: node.to_owned(),
            database: database.to_owned(),
            queue_id: queue_id.to_owned(),
        })
    }

    /// The `XSHADOW=` parameter value.
    pub fn to_param(&self) -> String {
        format!("{},{},{}", self.node, self.database, self.queue_id)
    }

    /// The record preamble (everything before the message record).
    pub fn preamble(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(8 + 6 + self.node.len() + self.database.len() + self.queue_id.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        for s in [&self.node, &self.database, &self.queue_id] {
            let b = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
            out.extend_from_slice(&(b.len() as u16).to_le_bytes());
            out.extend_from_slice(b);
        }
        out
    }
}

/// Why a payload is not a shadow record.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// The preamble is damaged.
    #[error("malformed shadow record: {0}")]
    Preamble(&'static str),
    /// The embedded message record is damaged.
    #[error("malformed shadow record: {0}")]
    Message(#[from] message::Malformed),
}

/// Splits a shadow record into its origin and the embedded message record
/// payload (zero-copy).
pub fn split(payload: &Bytes) -> Result<(Origin, Bytes), Malformed> {
    if payload.get(..4) != Some(MAGIC) {
        return Err(Malformed::Preamble("bad magic"));
    }
    if payload.get(4..6) != Some(&VERSION.to_le_bytes()[..]) {
        return Err(Malformed::Preamble("unknown version"));
    }
    let mut at = 8;
    let mut field = || -> Result<String, Malformed> {
        let len = payload
            .get(at..at + 2)
            .ok_or(Malformed::Preamble("truncated"))?;
        let n = u16::from_le_bytes([len[0], len[1]]) as usize;
        let b = payload
            .get(at + 2..at + 2 + n)
            .ok_or(Malformed::Preamble("truncated"))?;
        at += 2 + n;
        String::from_utf8(b.to_vec()).map_err(|_| Malformed::Preamble("not UTF-8"))
    };
    let origin = Origin {
        node: field()?,
        database: field()?,
        queue_id: field()?,
    };
    Ok((origin, payload.slice(at..)))
}

/// Decodes a shadow record: origin and message.
pub fn decode(payload: &Bytes) -> Result<(Origin, StoredMessage), Malformed> {
    let (origin, rest) = split(payload)?;
    Ok((origin, message::decode(&rest)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_smtp::address::{ForwardPath, Mailbox, ReversePath};
    use tern_smtp::server::Envelope;

    #[test]
    fn round_trip_and_damage() {
        let origin = Origin::from_param("node-a,0123abcd,01000000000007").unwrap();
        assert_eq!(origin.to_param(), "node-a,0123abcd,01000000000007");
        assert_eq!(Origin::from_param("a,b"), None);
        let env = Envelope {
            helo: "node-a".into(),
            esmtp: true,
            authenticated: None,
            tls: false,
            from: ReversePath::Mailbox(Mailbox {
                local: "s".into(),
                domain: "x.example".into(),
            }),
            params: Default::default(),
            recipients: vec![ForwardPath::Mailbox(Mailbox {
                local: "r".into(),
                domain: "y.example".into(),
            })],
        };
        let content = b"Received: from a\r\n\tby node-a\r\n\r\nbody\r\n";
        let enc = crate::record::message::Encoder::new(
            &env,
            "127.0.0.2:1".parse().unwrap(),
            5,
            None,
            content,
        )
        .with_preamble(origin.preamble());
        let mut out = Vec::new();
        let id = crate::record::message::QueueId {
            store: Default::default(),
            shard: 0,
            sequence: tern_storage::Sequence(9),
        };
        enc.write(id, &mut |b| out.extend_from_slice(b));
        assert_eq!(out.len(), enc.len());
        let payload = Bytes::from(out);
        let (o, m) = decode(&payload).unwrap();
        assert_eq!(o, origin);
        assert_eq!(&m.message[..], content, "stored as the primary sent it");
        assert_eq!(m.recipients, vec!["r@y.example".to_string()]);
        // Cuts before the message bytes are detected here (the content's
        // length is the record's; the log's CRC covers the rest).
        for cut in 0..payload.len() - content.len() {
            assert!(decode(&payload.slice(..cut)).is_err(), "cut at {cut}");
        }
        let mut bad = payload.to_vec();
        bad[0] = b'X';
        assert!(decode(&Bytes::from(bad)).is_err());
    }
}
