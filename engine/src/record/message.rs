//! The message record: what one accepted message looks like in the log.
//!
//! # Layout
//!
//! Record kind [`MESSAGE`] (1). Payload, integers little endian, strings
//! UTF-8 with a u16 length:
//!
//! ```text
//! { u32 magic = "TNM1" | u16 version = 1 | u16 flags (bit 0: SMTPUTF8, bit 1: 8BITMIME, bit 2: ESMTP,
//!                                                      bit 3: RESUBMITTED)
//! | u32 envelope_len                (bytes from here to the message)
//! | u64 received_ms
//! | u64 size_param                  (MAIL SIZE=, u64::MAX when absent)
//! | str client_addr | str helo | str mail_from ("" = null sender)
//! | u32 rcpt_count | rcpt_count * str rcpt
//! | RESUBMITTED only: u64 request | str original_queue_id
//! } message bytes: Received header + content as received (CRLF lines)
//! ```
//!
//! Limits: every string is at most 65535 bytes (paths are at most 256 by
//! RFC 5321, HELO names at most 512), at most 100 000 recipients.
//! The queue id names store, shard and sequence: [`QueueId`]. A resubmitted
//! message (Safety Net resubmission) names the request that queued it and
//! the message it is a copy of; no DSN is ever sent for it.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use tern_smtp::address::ReversePath;
use tern_smtp::command::Body;
use tern_smtp::server::Envelope;
use tern_storage::{RecordKind, Sequence};

/// Record kind of an accepted message.
pub const MESSAGE: RecordKind = RecordKind(1);

const MAGIC: &[u8; 4] = b"TNM1";
const VERSION: u16 = 1;
const FLAG_SMTPUTF8: u16 = 1;
const FLAG_8BITMIME: u16 = 2;
const FLAG_ESMTP: u16 = 4;
const FLAG_RESUBMITTED: u16 = 8;
/// Bytes before `envelope_len` counts.
const FIXED: usize = 12;

/// The store a queue id belongs to: the first 24 bits of the data
/// directory's transport database id (`crate::cluster`), which is random
/// and new with every new store. Two nodes, or one node before and after
/// a wipe of its data directory, give different ids to their messages
/// (unless their database ids share the first 24 bits: a chance of 1 in
/// 16.7 million per pair).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StoreTag(u32);

impl StoreTag {
    /// The tag of the store whose database id is `database_id`.
    pub fn of_database(database_id: &[u8; 16]) -> StoreTag {
        let [a, b, c, ..] = *database_id;
        StoreTag(u32::from_be_bytes([0, a, b, c]))
    }
}

/// Unique id of a queued message: store, shard and sequence. Sequences
/// never repeat within a shard's log, so the id is unique across
/// restarts; the store tag sets apart nodes and wiped stores (a shadow's
/// copy has its own id, from the shadow's store).
///
/// Written as 6 hex digits of store tag (the database id's first six,
/// upper case), 2 of shard and 12 of sequence: `3FA9C1` `01`
/// `00000000002A`. Ids written before they named their store are the last
/// 14 digits alone; [`QueueId::parse`] takes those as this store's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueId {
    /// The store (data directory) the message is queued in.
    pub store: StoreTag,
    /// Core / shard number.
    pub shard: u16,
    /// Sequence in that shard's log.
    pub sequence: Sequence,
}

/// Length of a formatted [`QueueId`] (fixed, so record sizes are known
/// before the sequence is).
pub const QUEUE_ID_LEN: usize = 20;

/// Length of an id written before ids named their store (shard and
/// sequence only).
pub const LEGACY_QUEUE_ID_LEN: usize = 14;

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:06X}{:02X}{:012X}",
            self.store.0 & 0xFF_FFFF,
            self.shard & 0xFF,
            self.sequence.0 & 0xFFFF_FFFF_FFFF
        )
    }
}

impl QueueId {
    /// Parses an id an operator or a peer wrote: 20 hex digits (any
    /// store: compare [`QueueId::store`]), or the 14 of an id from before
    /// ids named their store, taken as `this_store`'s.
    pub fn parse(s: &str, this_store: StoreTag) -> Result<QueueId, String> {
        let hex = s.bytes().all(|b| b.is_ascii_hexdigit());
        let (store, rest) = match s.len() {
            QUEUE_ID_LEN if hex => (
                StoreTag(u32::from_str_radix(&s[..6], 16).map_err(|e| e.to_string())?),
                &s[6..],
            ),
            LEGACY_QUEUE_ID_LEN if hex => (this_store, s),
            _ => {
                return Err(format!(
                    "{s:?} is not a queue id ({QUEUE_ID_LEN} hex digits, or {LEGACY_QUEUE_ID_LEN} for ids from before they named their store)"
                ))
            }
        };
        let shard = u16::from_str_radix(&rest[..2], 16).map_err(|e| e.to_string())?;
        let seq = u64::from_str_radix(&rest[2..], 16).map_err(|e| e.to_string())?;
        Ok(QueueId {
            store,
            shard,
            sequence: Sequence(seq),
        })
    }
}

impl FromStr for QueueId {
    type Err = String;
    /// The full form only (what [`QueueId`]'s `Display` writes); see
    /// [`QueueId::parse`] for the old one.
    fn from_str(s: &str) -> Result<Self, String> {
        if s.len() != QUEUE_ID_LEN {
            return Err(format!(
                "{s:?} is not a queue id ({QUEUE_ID_LEN} hex digits)"
            ));
        }
        QueueId::parse(s, StoreTag::default())
    }
}

/// A decoded message record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredMessage {
    /// When it was accepted.
    pub received_ms: u64,
    /// Client socket address.
    pub client: String,
    /// HELO/EHLO name.
    pub helo: String,
    /// EHLO (true) or HELO.
    pub esmtp: bool,
    /// Envelope sender, "" for the null sender.
    pub mail_from: String,
    /// MAIL SIZE= if given.
    pub size_param: Option<u64>,
    /// BODY=8BITMIME.
    pub eight_bit: bool,
    /// SMTPUTF8.
    pub smtputf8: bool,
    /// Envelope recipients.
    pub recipients: Vec<String>,
    /// Received header + content.
    pub message: bytes::Bytes,
    /// Queued again by a Safety Net resubmission request.
    pub resubmitted: Option<Resubmitted>,
}

/// Where a resubmitted message comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resubmitted {
    /// The resubmission request.
    pub request: u64,
    /// The queue id of the message it copies (the first original, for a
    /// copy of a copy), or a peer's `NODE:ID` for a shadow copy.
    pub original: String,
}

/// Everything needed to write one record, with its exact size known
/// before the sequence is.
pub struct Encoder<'a> {
    /// Written before the message record (a shadow record's origin).
    preamble: Vec<u8>,
    head: Vec<u8>,
    /// The Received header around the queue id; `None` for messages tern
    /// makes itself (delivery status notifications).
    received: Option<(&'a [u8], &'a [u8])>,
    content: &'a [u8],
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let b = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    out.extend_from_slice(&(b.len() as u16).to_le_bytes());
    out.extend_from_slice(b);
}

/// The fixed part of an envelope: magic, version, `flags`, a zero
/// `envelope_len` ([`finish_head`] patches it), `received_ms`, `size`.
fn start_head(flags: u16, received_ms: u64, size: u64, capacity: usize) -> Vec<u8> {
    let mut head = Vec::with_capacity(FIXED + capacity);
    head.extend_from_slice(MAGIC);
    head.extend_from_slice(&VERSION.to_le_bytes());
    head.extend_from_slice(&flags.to_le_bytes());
    head.extend_from_slice(&[0; 4]);
    head.extend_from_slice(&received_ms.to_le_bytes());
    head.extend_from_slice(&size.to_le_bytes());
    head
}

/// Writes `envelope_len` now that the envelope is complete.
fn finish_head(head: &mut [u8]) {
    let env_len = (head.len() - FIXED) as u32;
    head[8..FIXED].copy_from_slice(&env_len.to_le_bytes());
}

impl<'a> Encoder<'a> {
    /// Prepares the envelope. The Received header is written as
    /// `received_prefix` + queue id + `received_suffix` (see
    /// [`crate::received`]).
    pub fn new(
        envelope: &Envelope,
        client: SocketAddr,
        received_ms: u64,
        received: Option<(&'a [u8], &'a [u8])>,
        content: &'a [u8],
    ) -> Encoder<'a> {
        let mut flags = 0;
        if envelope.params.smtputf8 {
            flags |= FLAG_SMTPUTF8;
        }
        if envelope.params.body == Body::EightBitMime {
            flags |= FLAG_8BITMIME;
        }
        if envelope.esmtp {
            flags |= FLAG_ESMTP;
        }
        // Written once, straight into the header; envelope_len patched after.
        let size = envelope.params.size.unwrap_or(u64::MAX);
        let mut head = start_head(
            flags,
            received_ms,
            size,
            64 + envelope.recipients.len() * 32,
        );
        put_str(&mut head, &client.to_string());
        put_str(&mut head, &envelope.helo);
        let from = match &envelope.from {
            ReversePath::Null => String::new(),
            ReversePath::Mailbox(m) => m.to_string(),
        };
        put_str(&mut head, &from);
        head.extend_from_slice(&(envelope.recipients.len() as u32).to_le_bytes());
        for r in &envelope.recipients {
            put_str(&mut head, &r.to_string());
        }
        finish_head(&mut head);
        Encoder {
            preamble: Vec::new(),
            head,
            received,
            content,
        }
    }

    /// Writes `preamble` before the message record (see
    /// `crate::record::shadow`).
    pub fn with_preamble(mut self, preamble: Vec<u8>) -> Encoder<'a> {
        self.preamble = preamble;
        self
    }

    /// A message tern generates (a DSN): null sender, one recipient, from
    /// this host, no Received header (the content is complete).
    pub fn generated(
        hostname: &str,
        recipient: &str,
        received_ms: u64,
        content: &'a [u8],
    ) -> Encoder<'a> {
        let mut flags = FLAG_ESMTP;
        if content.iter().any(|&b| b >= 0x80) {
            flags |= FLAG_8BITMIME;
        }
        if !recipient.is_ascii() {
            flags |= FLAG_SMTPUTF8;
        }
        let mut head = start_head(flags, received_ms, u64::MAX, 64 + recipient.len());
        put_str(&mut head, "127.0.0.1:0");
        put_str(&mut head, hostname);
        put_str(&mut head, "");
        head.extend_from_slice(&1u32.to_le_bytes());
        put_str(&mut head, recipient);
        finish_head(&mut head);
        Encoder {
            preamble: Vec::new(),
            head,
            received: None,
            content,
        }
    }

    /// A Safety Net message queued again for `rcpts` (request `request`,
    /// copying `original`), received now; its content (the original
    /// `Received:` header included) is kept as stored.
    pub fn resubmitted(
        m: &'a StoredMessage,
        rcpts: &[&str],
        received_ms: u64,
        request: u64,
        original: &str,
    ) -> Encoder<'a> {
        let mut flags = FLAG_ESMTP | FLAG_RESUBMITTED;
        if m.smtputf8 {
            flags |= FLAG_SMTPUTF8;
        }
        if m.eight_bit {
            flags |= FLAG_8BITMIME;
        }
        let size = m.size_param.unwrap_or(u64::MAX);
        let mut head = start_head(flags, received_ms, size, 96 + rcpts.len() * 32);
        put_str(&mut head, &m.client);
        put_str(&mut head, &m.helo);
        put_str(&mut head, &m.mail_from);
        head.extend_from_slice(&(rcpts.len() as u32).to_le_bytes());
        for r in rcpts {
            put_str(&mut head, r);
        }
        head.extend_from_slice(&request.to_le_bytes());
        put_str(&mut head, original);
        finish_head(&mut head);
        Encoder {
            preamble: Vec::new(),
            head,
            received: None,
            content: &m.message,
        }
    }

    /// Exact payload length.
    pub fn len(&self) -> usize {
        self.preamble.len()
            + self.head.len()
            + self
                .received
                .map_or(0, |(p, s)| p.len() + QUEUE_ID_LEN + s.len())
            + self.content.len()
    }

    /// Length of the message itself (`Received:` header and content, as
    /// stored and as `tern queue list` shows it).
    pub fn message_len(&self) -> usize {
        self.len() - self.preamble.len() - self.head.len()
    }

    /// Never empty (the header alone has bytes); for clippy's `len` rule.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Writes the payload for queue id `id` through `put` (one copy of the
    /// content, straight into the log's batch buffer).
    pub fn write(&self, id: QueueId, put: &mut impl FnMut(&[u8])) {
        if !self.preamble.is_empty() {
            put(&self.preamble);
        }
        put(&self.head);
        if let Some((prefix, suffix)) = self.received {
            put(prefix);
            put(id.to_string().as_bytes());
            put(suffix);
        }
        put(self.content);
    }
}

/// Why a payload is not a message record.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed message record: {0}")]
pub struct Malformed(&'static str);

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], Malformed> {
        let b = self
            .buf
            .get(self.at..self.at + n)
            .ok_or(Malformed("truncated"))?;
        self.at += n;
        Ok(b)
    }
    fn u64(&mut self) -> Result<u64, Malformed> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn u32(&mut self) -> Result<u32, Malformed> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn string(&mut self) -> Result<String, Malformed> {
        let n = u16::from_le_bytes(self.take(2)?.try_into().expect("2")) as usize;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| Malformed("string not UTF-8"))
    }
}

/// The fields the queue needs, without decoding the strings:
/// `(received_ms, recipient count)`.
pub fn peek(payload: &[u8]) -> Result<(u64, u32), Malformed> {
    if payload.get(..4) != Some(MAGIC) {
        return Err(Malformed("bad magic"));
    }
    let mut r = Reader {
        buf: payload,
        at: 4,
    };
    if u16::from_le_bytes(r.take(2)?.try_into().expect("2")) != VERSION {
        return Err(Malformed("unknown version"));
    }
    r.take(6)?;
    let received_ms = r.u64()?;
    r.take(8)?;
    for _ in 0..3 {
        let n = u16::from_le_bytes(r.take(2)?.try_into().expect("2")) as usize;
        r.take(n)?;
    }
    let count = r.u32()?;
    if count > 100_000 {
        return Err(Malformed("too many recipients"));
    }
    Ok((received_ms, count))
}

/// Decodes a message record payload.
pub fn decode(payload: &bytes::Bytes) -> Result<StoredMessage, Malformed> {
    if payload.get(..4) != Some(MAGIC) {
        return Err(Malformed("bad magic"));
    }
    let mut r = Reader {
        buf: payload,
        at: 4,
    };
    let version = u16::from_le_bytes(r.take(2)?.try_into().expect("2"));
    if version != VERSION {
        return Err(Malformed("unknown version"));
    }
    let flags = u16::from_le_bytes(r.take(2)?.try_into().expect("2"));
    let env_len = r.u32()? as usize;
    let message_at = FIXED + env_len;
    if message_at > payload.len() {
        return Err(Malformed("envelope length past the end"));
    }
    let received_ms = r.u64()?;
    let size = r.u64()?;
    let client = r.string()?;
    let helo = r.string()?;
    let mail_from = r.string()?;
    let count = r.u32()? as usize;
    if count > 100_000 {
        return Err(Malformed("too many recipients"));
    }
    let mut recipients = Vec::with_capacity(count);
    for _ in 0..count {
        recipients.push(r.string()?);
    }
    let resubmitted = if flags & FLAG_RESUBMITTED != 0 {
        Some(Resubmitted {
            request: r.u64()?,
            original: r.string()?,
        })
    } else {
        None
    };
    if r.at != message_at {
        return Err(Malformed("envelope length mismatch"));
    }
    Ok(StoredMessage {
        received_ms,
        client,
        helo,
        esmtp: flags & FLAG_ESMTP != 0,
        mail_from,
        size_param: (size != u64::MAX).then_some(size),
        eight_bit: flags & FLAG_8BITMIME != 0,
        smtputf8: flags & FLAG_SMTPUTF8 != 0,
        recipients,
        message: payload.slice(message_at..),
        resubmitted,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_smtp::address::{ForwardPath, Mailbox};
    use tern_smtp::command::MailParams;

    #[test]
    fn round_trip() {
        let env = Envelope {
            helo: "client.example".into(),
            esmtp: true,
            authenticated: None,
            tls: false,
            from: ReversePath::Mailbox(Mailbox {
                local: "a".into(),
                domain: "x.example".into(),
            }),
            params: MailParams {
                size: Some(42),
                body: Body::EightBitMime,
                smtputf8: false,
                xshadow: None,
                auth: None,
            },
            recipients: vec![
                ForwardPath::Mailbox(Mailbox {
                    local: "b".into(),
                    domain: "y.example".into(),
                }),
                ForwardPath::Postmaster,
            ],
        };
        let enc = Encoder::new(
            &env,
            "127.0.0.1:4000".parse().unwrap(),
            1234,
            Some((b"Received: x id ", b"\r\n")),
            b"body\r\n",
        );
        let id = QueueId {
            store: StoreTag(0x3FA9C1),
            shard: 1,
            sequence: Sequence(0x2A),
        };
        let mut out = Vec::new();
        enc.write(id, &mut |b| out.extend_from_slice(b));
        assert_eq!(out.len(), enc.len());
        assert_eq!(peek(&out), Ok((1234, 2)));
        let m = decode(&bytes::Bytes::from(out)).unwrap();
        assert_eq!(m.mail_from, "a@x.example");
        assert_eq!(
            m.recipients,
            vec!["b@y.example".to_string(), "Postmaster".to_string()]
        );
        assert_eq!(
            (m.size_param, m.eight_bit, m.smtputf8, m.esmtp),
            (Some(42), true, false, true)
        );
        assert_eq!(
            &m.message[..],
            b"Received: x id 3FA9C10100000000002A\r\nbody\r\n"
        );
        assert_eq!(m.client, "127.0.0.1:4000");
        let g = Encoder::generated("mx.example", "a@x.example", 9, b"DSN\r\n");
        let mut out = Vec::new();
        g.write(id, &mut |b| out.extend_from_slice(b));
        assert_eq!(out.len(), g.len());
        let m = decode(&bytes::Bytes::from(out)).unwrap();
        assert_eq!(
            (m.mail_from.as_str(), &m.recipients[..]),
            ("", &["a@x.example".to_string()][..])
        );
        assert_eq!(&m.message[..], b"DSN\r\n");
        assert_eq!(id.to_string().parse::<QueueId>(), Ok(id));
        assert!(decode(&bytes::Bytes::from_static(b"TNM1\x01\x00")).is_err());
        assert!("xyz".parse::<QueueId>().is_err());
    }

    #[test]
    fn queue_ids_name_their_store() {
        let mut db = [0u8; 16];
        db[..4].copy_from_slice(&[0x3f, 0xa9, 0xc1, 0x77]);
        let store = StoreTag::of_database(&db);
        let id = QueueId {
            store,
            shard: 2,
            sequence: Sequence(0x1234),
        };
        let text = id.to_string();
        assert_eq!(text, "3FA9C102000000001234");
        assert_eq!(text.len(), QUEUE_ID_LEN);
        assert_eq!(text.parse::<QueueId>(), Ok(id));
        assert_eq!(QueueId::parse(&text, StoreTag::default()), Ok(id));
        assert_eq!(
            QueueId::parse(&text.to_lowercase(), StoreTag::default()),
            Ok(id)
        );
        // The old form is this store's.
        assert_eq!(QueueId::parse("02000000001234", store), Ok(id));
        assert!("02000000001234".parse::<QueueId>().is_err());
        // Another store's id keeps its tag (the caller compares).
        let other = QueueId::parse("00000102000000001234", store).unwrap();
        assert_ne!(other, id);
        assert_eq!((other.shard, other.sequence), (2, Sequence(0x1234)));
        for bad in [
            "",
            "xyz",
            "3FA9C10200000000123",
            "3FA9C1020000000012345",
            "3FA9C10200000000123G",
            "+2000000001234",
        ] {
            let e = QueueId::parse(bad, store).unwrap_err();
            assert!(e.contains("is not a queue id (20 hex digits"), "{bad}: {e}");
        }
        // Two stores, the same shard and sequence: different ids.
        let mut db2 = db;
        db2[2] ^= 1;
        let id2 = QueueId {
            store: StoreTag::of_database(&db2),
            ..id
        };
        assert_ne!(id.to_string(), id2.to_string());
        // The widest values fit the fixed width.
        let max = QueueId {
            store: StoreTag::of_database(&[0xFF; 16]),
            shard: 0xFF,
            sequence: Sequence(0xFFFF_FFFF_FFFF),
        };
        assert_eq!(max.to_string(), "FFFFFFFFFFFFFFFFFFFF");
    }

    #[test]
    fn resubmitted_round_trip() {
        let g = Encoder::generated("mx.example", "a@x.example", 9, b"Subject: s\r\n\r\nhi\r\n");
        let id = QueueId {
            store: StoreTag::default(),
            shard: 0,
            sequence: Sequence(7),
        };
        let mut out = Vec::new();
        g.write(id, &mut |b| out.extend_from_slice(b));
        let mut m = decode(&bytes::Bytes::from(out)).unwrap();
        m.mail_from = "s@y.example".into();
        assert_eq!(m.resubmitted, None);
        let r = Encoder::resubmitted(&m, &["b@z.example"], 77, 3, "000000000000007");
        let mut out = Vec::new();
        r.write(id, &mut |b| out.extend_from_slice(b));
        assert_eq!(out.len(), r.len());
        assert_eq!(peek(&out), Ok((77, 1)));
        let c = decode(&bytes::Bytes::from(out)).unwrap();
        assert_eq!(c.mail_from, "s@y.example");
        assert_eq!(c.recipients, vec!["b@z.example".to_string()]);
        assert_eq!(c.received_ms, 77);
        assert_eq!(c.message, m.message);
        assert_eq!(
            c.resubmitted,
            Some(Resubmitted {
                request: 3,
                original: "000000000000007".into()
            })
        );
    }
}
