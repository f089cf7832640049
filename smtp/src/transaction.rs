//! One outbound mail transaction as a sans-IO state machine (for delivery
//! and shadow links): bytes out with [`Transaction::transmit`], replies in
//! with [`Transaction::handle`], and a per-recipient [`Outcome`] at the end.
//!
//! With PIPELINING (RFC 2920) MAIL, every RCPT and DATA (or the BDAT
//! chunks) go out in one write and the replies are matched in order;
//! without it, one command per round trip. DATA content is sent only after
//! the 354 (RFC 2920 3.1); with CHUNKING the content follows as BDAT
//! chunks, pipelined when allowed.
//!
//! Recipient results: a 2xx to RCPT and a 2xx at the end of data is
//! delivered; a 4xx anywhere on its path is temporary; a 5xx permanent.
//! MAIL refused fails every recipient with that reply. When no recipient
//! was accepted the content is not sent (DATA's reply is consumed; with
//! BDAT the chunks were already sent and their replies are consumed too).

use std::collections::VecDeque;

use crate::client::{self, Capabilities, MailOptions};
use crate::reply::Reply;

/// What happened to one recipient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RcptStatus {
    /// Accepted at end of data.
    Delivered(Reply),
    /// A 4xx: try again later.
    Temporary(Reply),
    /// A 5xx: bounce.
    Permanent(Reply),
}

impl RcptStatus {
    fn from_failure(r: &Reply) -> RcptStatus {
        if r.is_permanent() {
            RcptStatus::Permanent(r.clone())
        } else {
            RcptStatus::Temporary(r.clone())
        }
    }
}

/// The result of a transaction, one status per recipient (same order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Per recipient.
    pub recipients: Vec<RcptStatus>,
}

/// The server said something the protocol does not allow here.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unexpected reply {0} in state {1}")]
pub struct Unexpected(pub Reply, pub &'static str);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Await {
    Mail,
    Rcpt(usize),
    /// 354 after DATA.
    Data,
    /// Reply to a non-final BDAT chunk.
    Chunk,
    /// Final reply (end of data or last BDAT chunk).
    Final,
}

/// One transaction in flight.
pub struct Transaction {
    out: Vec<u8>,
    /// Commands not yet written (without pipelining, one at a time).
    queue: VecDeque<(Vec<u8>, Await)>,
    /// Replies expected, in order, for what was written.
    expect: VecDeque<Await>,
    pipelining: bool,
    content: Vec<u8>,
    rcpt_replies: Vec<Option<Reply>>,
    mail_failed: Option<Reply>,
    data_failed: Option<Reply>,
    done: Option<Outcome>,
}

/// Largest BDAT chunk we send.
pub const CHUNK_BYTES_MAX: usize = 1 << 20;

impl Transaction {
    /// Prepares `MAIL FROM:<from>`, one `RCPT TO` per recipient and the
    /// content (`content` as stored: CRLF lines, not dot-stuffed).
    pub fn new(
        caps: &Capabilities,
        from: &str,
        recipients: &[String],
        opts: &MailOptions,
        content: &[u8],
    ) -> Transaction {
        let mut queue = VecDeque::new();
        let mut mail = Vec::new();
        client::mail_from(&mut mail, from, opts, caps);
        queue.push_back((mail, Await::Mail));
        for (i, r) in recipients.iter().enumerate() {
            let mut rcpt = Vec::new();
            client::rcpt_to(&mut rcpt, r);
            queue.push_back((rcpt, Await::Rcpt(i)));
        }
        let mut content_wire = Vec::new();
        if caps.chunking {
            // BDAT frames are commands with their data: queue each chunk.
            let mut framed = Vec::new();
            client::bdat(&mut framed, content, CHUNK_BYTES_MAX);
            // Walk the frames as written (line-ending repair may have
            // grown the content): `BDAT <size>[ LAST]\r\n` + size bytes.
            let mut rest = &framed[..];
            while !rest.is_empty() {
                let header_end = rest.iter().position(|&b| b == b'\n').expect("BDAT line") + 1;
                let line = std::str::from_utf8(&rest[5..header_end - 2]).expect("ascii");
                let mut words = line.split(' ');
                let size: usize = words
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("BDAT size");
                let last = words.next() == Some("LAST");
                let end = header_end + size;
                queue.push_back((
                    rest[..end].to_vec(),
                    if last { Await::Final } else { Await::Chunk },
                ));
                rest = &rest[end..];
            }
        } else {
            let mut data = Vec::new();
            client::data(&mut data);
            queue.push_back((data, Await::Data));
            client::dot_stuff(&mut content_wire, content);
        }
        let mut t = Transaction {
            out: Vec::new(),
            queue,
            expect: VecDeque::new(),
            pipelining: caps.pipelining,
            content: content_wire,
            rcpt_replies: vec![None; recipients.len()],
            mail_failed: None,
            data_failed: None,
            done: None,
        };
        t.fill();
        t
    }

    /// Moves queued commands to the output: all of them when pipelining,
    /// else one when nothing is awaited.
    fn fill(&mut self) {
        while let Some((bytes, what)) = self.queue.pop_front() {
            if !self.pipelining && !self.expect.is_empty() {
                self.queue.push_front((bytes, what));
                return;
            }
            self.out.extend_from_slice(&bytes);
            self.expect.push_back(what);
            if !self.pipelining {
                return;
            }
        }
    }

    /// Bytes to write now (take them all).
    pub fn transmit(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// The outcome, once every expected reply arrived.
    pub fn outcome(&self) -> Option<&Outcome> {
        self.done.as_ref()
    }

    fn accepted(&self) -> usize {
        self.rcpt_replies
            .iter()
            .filter(|r| r.as_ref().is_some_and(Reply::is_positive))
            .count()
    }

    /// Feeds the next reply from the server.
    pub fn handle(&mut self, reply: Reply) -> Result<(), Unexpected> {
        let Some(what) = self.expect.pop_front() else {
            return Err(Unexpected(reply, "idle"));
        };
        match what {
            Await::Mail => {
                if !reply.is_positive() {
                    self.mail_failed = Some(reply);
                    // Not yet sent (no pipelining): nothing more to send.
                    self.queue.clear();
                }
            }
            Await::Rcpt(i) => {
                self.rcpt_replies[i] = Some(reply);
                let last = i + 1 == self.rcpt_replies.len();
                if last && self.accepted() == 0 {
                    // Nobody accepted: do not send DATA or chunks not yet
                    // written (without pipelining).
                    self.queue.clear();
                }
            }
            Await::Data => {
                if reply.code == 354 && self.mail_failed.is_none() && self.accepted() > 0 {
                    // RFC 2920: content only after the 354.
                    let content = std::mem::take(&mut self.content);
                    self.out.extend_from_slice(&content);
                    self.expect.push_back(Await::Final);
                } else if reply.code == 354 {
                    // Nobody to deliver to, yet the server wants data:
                    // send an empty message's terminator and discard it.
                    self.out.extend_from_slice(b".\r\n");
                    self.expect.push_back(Await::Final);
                    self.data_failed.get_or_insert(reply);
                } else {
                    self.data_failed = Some(reply);
                }
            }
            Await::Chunk => {
                if !reply.is_positive() {
                    self.data_failed.get_or_insert(reply);
                }
            }
            Await::Final => {
                if !reply.is_positive() {
                    self.data_failed.get_or_insert(reply.clone());
                }
                self.finish(Some(reply));
                return Ok(());
            }
        }
        self.fill();
        if self.expect.is_empty() && self.queue.is_empty() {
            self.finish(None);
        }
        Ok(())
    }

    fn finish(&mut self, final_reply: Option<Reply>) {
        let statuses = self
            .rcpt_replies
            .iter()
            .map(|r| {
                if let Some(m) = &self.mail_failed {
                    return RcptStatus::from_failure(m);
                }
                match r {
                    Some(r) if !r.is_positive() => RcptStatus::from_failure(r),
                    Some(_) => match (&self.data_failed, &final_reply) {
                        (Some(f), _) => RcptStatus::from_failure(f),
                        (None, Some(f)) if f.is_positive() => RcptStatus::Delivered(f.clone()),
                        (None, Some(f)) => RcptStatus::from_failure(f),
                        (None, None) => RcptStatus::Temporary(missing()),
                    },
                    None => RcptStatus::Temporary(missing()),
                }
            })
            .collect();
        self.done = Some(Outcome {
            recipients: statuses,
        });
    }
}

fn missing() -> Reply {
    Reply::new(451, crate::reply::Status(4, 4, 0), "no reply received")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reply::{ReplyParser, Status};

    fn caps(pipelining: bool, chunking: bool) -> Capabilities {
        Capabilities {
            pipelining,
            chunking,
            size: Some(0),
            ..Default::default()
        }
    }

    fn r(code: u16) -> Reply {
        let class = (code / 100) as u8;
        Reply::new(code, Status(class, 0, 0), "x")
    }

    /// Drives a transaction against scripted replies; returns everything
    /// written (one entry per write) and the outcome.
    fn run(c: &Capabilities, rcpts: usize, replies: &[u16]) -> (Vec<String>, Outcome) {
        let to: Vec<String> = (0..rcpts).map(|i| format!("r{i}@y")).collect();
        let mut t = Transaction::new(
            c,
            "a@x",
            &to,
            &MailOptions::default(),
            b"Subject: s\r\n\r\n.dot\r\n",
        );
        let mut writes = vec![String::from_utf8(t.transmit()).unwrap()];
        for &code in replies {
            t.handle(r(code)).unwrap();
            let w = t.transmit();
            if !w.is_empty() {
                writes.push(String::from_utf8(w).unwrap());
            }
        }
        (writes, t.outcome().expect("done").clone())
    }

    fn kinds(o: &Outcome) -> Vec<char> {
        o.recipients
            .iter()
            .map(|s| match s {
                RcptStatus::Delivered(_) => 'D',
                RcptStatus::Temporary(_) => 'T',
                RcptStatus::Permanent(_) => 'P',
            })
            .collect()
    }

    #[test]
    fn pipelined_data_sends_content_only_after_354() {
        let (w, o) = run(&caps(true, false), 2, &[250, 250, 250, 354, 250]);
        assert_eq!(
            w[0],
            "MAIL FROM:<a@x>\r\nRCPT TO:<r0@y>\r\nRCPT TO:<r1@y>\r\nDATA\r\n"
        );
        assert_eq!(w[1], "Subject: s\r\n\r\n..dot\r\n.\r\n");
        assert_eq!(w.len(), 2);
        assert_eq!(kinds(&o), ['D', 'D']);
    }

    #[test]
    fn table_of_outcomes() {
        // (pipelining, chunking, recipients, replies, statuses, writes)
        type Case = (bool, bool, usize, Vec<u16>, Vec<char>, usize);
        let cases: Vec<Case> = vec![
            (
                true,
                false,
                3,
                vec![250, 250, 550, 451, 354, 250],
                vec!['D', 'P', 'T'],
                2,
            ),
            (true, false, 1, vec![250, 250, 354, 452], vec!['T'], 2),
            (true, false, 1, vec![250, 250, 354, 554], vec!['P'], 2),
            (true, false, 2, vec![451, 503, 503, 503], vec!['T', 'T'], 1),
            (true, false, 2, vec![250, 550, 550, 554], vec!['P', 'P'], 1),
            (true, false, 1, vec![250, 250, 451], vec!['T'], 1),
            // Without pipelining: one command per write; stops early.
            (
                false,
                false,
                2,
                vec![250, 250, 250, 354, 250],
                vec!['D', 'D'],
                5,
            ),
            (false, false, 2, vec![550], vec!['P', 'P'], 1),
            (false, false, 2, vec![250, 550, 450], vec!['P', 'T'], 3),
            // BDAT: chunks pipelined with the envelope.
            (true, true, 1, vec![250, 250, 250], vec!['D'], 1),
            (true, true, 2, vec![250, 250, 550, 250], vec!['D', 'P'], 1),
            (true, true, 1, vec![250, 250, 552], vec!['P'], 1),
            (false, true, 1, vec![250, 250, 250], vec!['D'], 3),
        ];
        for (p, ch, n, replies, want, writes) in cases {
            let (w, o) = run(&caps(p, ch), n, &replies);
            assert_eq!(kinds(&o), want, "pipelining {p} chunking {ch} {replies:?}");
            assert_eq!(
                w.len(),
                writes,
                "pipelining {p} chunking {ch} {replies:?}: {w:?}"
            );
        }
    }

    #[test]
    fn bdat_chunks_follow_the_repaired_content() {
        // Bare LFs just under a chunk boundary grow past it when repaired
        // to CRLF: the frames (and the awaited replies) follow what is
        // written, with exactly one LAST at the end.
        let content = vec![b'\n'; CHUNK_BYTES_MAX - 10];
        let mut t = Transaction::new(
            &caps(true, true),
            "a@x",
            &["b@y".to_string()],
            &MailOptions::default(),
            &content,
        );
        let out = t.transmit();
        let text = String::from_utf8_lossy(&out);
        assert_eq!(text.matches("BDAT ").count(), 2);
        assert_eq!(text.matches(" LAST\r\n").count(), 1);
        for code in [250, 250, 250] {
            assert!(t.outcome().is_none());
            t.handle(Reply::new(code, crate::Status(2, 0, 0), "ok"))
                .unwrap();
        }
        assert!(t.outcome().is_none(), "the LAST reply is still awaited");
        t.handle(Reply::new(250, crate::Status(2, 0, 0), "ok"))
            .unwrap();
        assert!(matches!(
            t.outcome().unwrap().recipients[0],
            RcptStatus::Delivered(_)
        ));
    }

    #[test]
    fn bdat_framing_and_reply_parsing_round_trip() {
        let c = caps(true, true);
        let mut t = Transaction::new(
            &c,
            "",
            &["b@y".to_string()],
            &MailOptions::default(),
            b"x\r\n",
        );
        assert_eq!(
            t.transmit(),
            b"MAIL FROM:<>\r\nRCPT TO:<b@y>\r\nBDAT 3 LAST\r\nx\r\n"
        );
        let mut p = ReplyParser::new();
        p.feed(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.0.0 queued\r\n");
        while let Some(reply) = p.next_reply().unwrap() {
            t.handle(reply).unwrap();
        }
        assert!(
            matches!(&t.outcome().unwrap().recipients[0], RcptStatus::Delivered(r) if r.text() == "queued")
        );
        assert!(t.handle(r(250)).is_err(), "no reply is expected any more");
    }
}
