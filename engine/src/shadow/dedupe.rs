//! Duplicate detection (SPEC 2.6): a sender whose session timed out after
//! the message was made durable (and shadowed) sends it again; the second
//! copy must not be delivered twice. A message is the same when it comes
//! from the same client address (the one whose 250 may have been lost)
//! with the same `Message-ID`, the same envelope (sender and recipients,
//! local parts compared exactly, domains in ASCII lower case, recipients
//! in any order) and byte for byte the same content: within
//! `cluster.duplicate_window` the second one is answered 250 with the
//! first one's queue id and not queued. (The content is part of it so
//! nobody can suppress a later message by sending first with its
//! Message-ID, and a message looping back, which carries one more
//! `Received:` header, is not taken for its own duplicate.)
//!
//! The key is a 128-bit digest (two independently keyed SipHash
//! passes), kept per node in 64 shards, each behind its own mutex: one
//! uncontended lock per message, shared by all cores, because a retry
//! usually arrives on a new connection and so on any core.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Mutex;

use std::net::IpAddr;

use tern_smtp::server::Envelope;

const SHARDS: usize = 64;

/// The digest of a message for duplicate detection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Digest(u64, u64);

#[derive(Debug, Default)]
struct Shard {
    by_digest: HashMap<Digest, (String, u64)>,
    /// (at_ms, digest), oldest first, for expiry.
    order: VecDeque<(u64, Digest)>,
}

/// Recently accepted messages, per node.
#[derive(Debug)]
pub struct Window {
    shards: Vec<Mutex<Shard>>,
    keys: (
        std::collections::hash_map::RandomState,
        std::collections::hash_map::RandomState,
    ),
}

impl Default for Window {
    fn default() -> Self {
        Window {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            keys: Default::default(),
        }
    }
}

/// The `Message-ID` header's value (unfolded, trimmed), if the header
/// section has one.
pub fn message_id(content: &[u8]) -> Option<String> {
    let end = memchr::memmem::find(content, b"\r\n\r\n").map_or(content.len(), |i| i + 2);
    let head = &content[..end];
    let mut lines = head.split(|&b| b == b'\n').peekable();
    while let Some(line) = lines.next() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        if !line[..colon].eq_ignore_ascii_case(b"message-id") {
            continue;
        }
        let mut value = String::from_utf8_lossy(&line[colon + 1..]).into_owned();
        while let Some(next) = lines.peek() {
            if next.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
                let next = lines.next().expect("peeked");
                value.push_str(&String::from_utf8_lossy(
                    next.strip_suffix(b"\r").unwrap_or(next),
                ));
            } else {
                break;
            }
        }
        let value = value.trim().to_owned();
        return (!value.is_empty()).then_some(value);
    }
    None
}

impl Window {
    /// The digest of (client address, Message-ID, envelope, content);
    /// `None` without a Message-ID.
    pub fn digest(&self, client: IpAddr, env: &Envelope, content: &[u8]) -> Option<Digest> {
        let id = message_id(content)?;
        let mut rcpts: Vec<String> = env
            .recipients
            .iter()
            .map(|r| fold_domain(&r.to_string()))
            .collect();
        rcpts.sort();
        let from = fold_domain(&env.from.to_string());
        // One keyed pass over the content (64 bits an outsider cannot aim
        // at), then two over the rest for the 128-bit digest.
        let body = {
            let mut h = self.keys.0.build_hasher();
            h.write(content);
            h.finish()
        };
        let one = |state: &std::collections::hash_map::RandomState| {
            let mut h = state.build_hasher();
            client.hash(&mut h);
            id.hash(&mut h);
            from.hash(&mut h);
            rcpts.hash(&mut h);
            body.hash(&mut h);
            h.finish()
        };
        Some(Digest(one(&self.keys.0), one(&self.keys.1)))
    }

    fn shard(&self, d: &Digest) -> std::sync::MutexGuard<'_, Shard> {
        self.shards[(d.0 as usize) % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The queue id of the same message accepted within `window_ms`.
    pub fn seen(&self, d: &Digest, now_ms: u64, window_ms: u64) -> Option<String> {
        let mut s = self.shard(d);
        while s
            .order
            .front()
            .is_some_and(|(at, _)| at.saturating_add(window_ms) <= now_ms)
        {
            let (at, old) = s.order.pop_front().expect("front");
            if s.by_digest.get(&old).is_some_and(|(_, a)| *a == at) {
                s.by_digest.remove(&old);
            }
        }
        s.by_digest.get(d).map(|(id, _)| id.clone())
    }

    /// Remembers an accepted message.
    pub fn insert(&self, d: Digest, queue_id: String, now_ms: u64) {
        let mut s = self.shard(&d);
        s.by_digest.insert(d, (queue_id, now_ms));
        s.order.push_back((now_ms, d));
    }
}

/// `local@Domain` with the domain folded as everywhere (the local part is
/// the recipient's own business, RFC 5321 2.4).
fn fold_domain(path: &str) -> String {
    match path.rsplit_once('@') {
        Some((local, domain)) => format!("{local}@{}", tern_smtp::address::fold_domain(domain)),
        None => path.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_smtp::address::{ForwardPath, Mailbox, ReversePath};

    fn env(rcpts: &[&str]) -> Envelope {
        Envelope {
            helo: "c".into(),
            esmtp: true,
            authenticated: None,
            tls: false,
            from: ReversePath::Mailbox(Mailbox {
                local: "s".into(),
                domain: "x.example".into(),
            }),
            params: Default::default(),
            recipients: rcpts
                .iter()
                .map(|r| {
                    ForwardPath::Mailbox(Mailbox {
                        local: (*r).into(),
                        domain: "y.example".into(),
                    })
                })
                .collect(),
        }
    }

    #[test]
    fn domains_fold_local_parts_do_not() {
        assert_eq!(fold_domain("Ab@Example.COM"), "Ab@example.com");
        assert_eq!(fold_domain("<>"), "<>");
    }

    #[test]
    fn same_message_and_envelope_within_the_window() {
        let w = Window::default();
        let m = b"Subject: a\r\nMessage-ID:\r\n <1@x.example>\r\n\r\nbody\r\n";
        assert_eq!(message_id(m).as_deref(), Some("<1@x.example>"));
        assert_eq!(
            message_id(b"Subject: a\r\n\r\nMessage-ID: <not a header>\r\n"),
            None
        );
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let d = w.digest(ip, &env(&["a", "b"]), m).unwrap();
        assert_eq!(
            w.digest(ip, &env(&["b", "a"]), m),
            Some(d),
            "recipient order"
        );
        assert_ne!(w.digest(ip, &env(&["a"]), m), Some(d), "other envelope");
        assert_ne!(
            w.digest(ip, &env(&["A", "b"]), m),
            Some(d),
            "local parts are exact"
        );
        let other = b"Subject: b\r\nMessage-ID:\r\n <1@x.example>\r\n\r\nbody\r\n";
        assert_ne!(
            w.digest(ip, &env(&["a", "b"]), other),
            Some(d),
            "another message with the same Message-ID and envelope"
        );
        let looped =
            b"Received: from tern\r\nSubject: a\r\nMessage-ID:\r\n <1@x.example>\r\n\r\nbody\r\n";
        assert_ne!(
            w.digest(ip, &env(&["a", "b"]), looped),
            Some(d),
            "a message looping back"
        );
        let elsewhere: IpAddr = "192.0.2.2".parse().unwrap();
        assert_ne!(
            w.digest(elsewhere, &env(&["a", "b"]), m),
            Some(d),
            "another client"
        );
        assert_eq!(w.seen(&d, 1000, 600), None);
        w.insert(d, "Q1".into(), 1000);
        assert_eq!(w.seen(&d, 1500, 600).as_deref(), Some("Q1"));
        assert_eq!(w.seen(&d, 1600, 600), None, "window passed");
    }
}
