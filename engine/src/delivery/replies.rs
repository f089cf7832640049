//! The replies an attempt got, for its status record (format in
//! `crate::record::status`): what `tern queue list/show` shows as each
//! recipient's last reply, and, in the Safety Net, the reply that made it
//! final. Recipients with the same reply share one entry.

use std::collections::HashMap;

use tern_smtp::Reply as SmtpReply;

use super::logline::Hop;
use super::{Attempt, Outcome};
use crate::config::DeliveryConfig;
use crate::record::status::Reply;

/// The replies of attempt `a`, finished at `now`: one per distinct text,
/// in the order the recipients came. A temporary failure past the expiry
/// (it bounces) says so.
pub(super) fn of(a: &Attempt, now: u64, cfg: &DeliveryConfig) -> Vec<Reply> {
    let expires = a.msg.received_ms + cfg.message_expiration_timeout.as_millis() as u64;
    let mut by_text: HashMap<String, usize> = HashMap::new();
    let mut out: Vec<Reply> = Vec::new();
    for (i, outcome) in a.results.borrow().iter() {
        let text = match outcome {
            Outcome::Delivered(r, hop) => said(r, Some(hop)),
            Outcome::Permanent(r, hop) => said(r, hop.as_deref()),
            Outcome::Temporary(r, hop) if now >= expires => {
                format!("expired, last reply: {}", said(r, hop.as_deref()))
            }
            Outcome::Temporary(r, hop) => said(r, hop.as_deref()),
            Outcome::NotTried | Outcome::Suspended(_) | Outcome::Deleted | Outcome::Untouched => {
                continue
            }
        };
        match by_text.get(&text) {
            Some(&at) => out[at].rcpts.push(*i),
            None => {
                by_text.insert(text.clone(), out.len());
                out.push(Reply::new(a.key, now, vec![*i], text));
            }
        }
    }
    out
}

/// `HOST[ADDR]:PORT said: CODE X.Y.Z TEXT`, or tern's own reply (no
/// next hop).
fn said(reply: &SmtpReply, hop: Option<&Hop>) -> String {
    match hop {
        Some(h) => format!("{} said: {reply}", super::logline::relay(h)),
        None => reply.to_string(),
    }
}

/// `events` and `replies` in record-sized parts (at most `max` of each
/// per part); none when there are no events.
pub(super) fn chunks<'a, E, R>(
    events: &'a [E],
    replies: &'a [R],
    max: usize,
) -> impl Iterator<Item = (&'a [E], &'a [R])> {
    let parts = if events.is_empty() {
        0
    } else {
        events.len().max(replies.len()).div_ceil(max)
    };
    let part = move |len: usize, i: usize| (i * max).min(len)..((i + 1) * max).min(len);
    (0..parts).map(move |i| {
        (
            &events[part(events.len(), i)],
            &replies[part(replies.len(), i)],
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_keep_everything_once() {
        let events: Vec<u32> = (0..5).collect();
        let replies: Vec<u32> = (0..7).collect();
        let parts: Vec<_> = chunks(&events, &replies, 3).collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0], (&events[..3], &replies[..3]));
        assert_eq!(parts[2], (&events[5..], &replies[6..]));
        assert_eq!(chunks(&events, &[] as &[u32], 10).count(), 1);
        assert_eq!(chunks(&[] as &[u32], &replies, 10).count(), 0);
    }

    #[test]
    fn said_names_the_host() {
        let r = SmtpReply::new(451, tern_smtp::Status(4, 3, 0), "try later");
        let hop = Hop {
            name: "mx.example".into(),
            addr: "192.0.2.1:25".parse().unwrap(),
            tls: None,
            picked_ms: 0,
            setup_ms: 0,
            xfer_ms: 0,
        };
        assert_eq!(
            said(&r, Some(&hop)),
            "mx.example[192.0.2.1]:25 said: 451 4.3.0 try later"
        );
        assert_eq!(said(&r, None), "451 4.3.0 try later");
    }
}
