//! BDAT (RFC 3030 CHUNKING): each chunk's bytes follow its command
//! without a go-ahead, so they are always consumed, even when refused; a
//! BDAT line we cannot parse ends the session (the framing is lost).

use super::{reply, Event, Phase, Policy, Session};
use crate::data::ContentError;
use crate::reply::{Reply, Status};

/// Does this command line start with the BDAT verb?
pub(super) fn is_bdat(line: &[u8]) -> bool {
    line.len() >= 4
        && line[..4].eq_ignore_ascii_case(b"BDAT")
        && line
            .get(4)
            .is_none_or(|&b| b == b' ' || b == b'\t' || b == b'\r')
}

/// Reply to a BDAT line we cannot parse: its chunk size is unknown, so the
/// session ends (RFC 3030 framing cannot be recovered).
pub(super) fn bdat_unparsed() -> Reply {
    reply(
        554,
        (5, 5, 2),
        "Error: cannot parse BDAT command; closing (chunk length unknown)",
    )
}

impl<P: Policy> Session<P> {
    /// `BDAT <size> [LAST]`: starts reading a chunk (refused or not).
    pub(super) fn bdat(&mut self, size: u64, last: bool) {
        // The chunk's bytes follow whatever we answer: always consume them.
        self.phase = Phase::Bdat {
            remaining: size,
            last,
        };
        let refusal = match &self.tx {
            None => Some(reply(503, (5, 5, 1), "Error: need MAIL command")),
            Some(tx) if tx.recipients.is_empty() => {
                Some(reply(503, (5, 5, 1), "Error: need RCPT command"))
            }
            Some(_) => None,
        };
        if let Some(r) = refusal {
            self.drop_tx();
            self.error(r);
            if !matches!(self.phase, Phase::Closing { .. }) {
                self.phase = Phase::Bdat {
                    remaining: size,
                    last: false,
                };
            }
            return;
        }
        if self.config.proxy && !self.tx.as_ref().expect("checked").bdat_started {
            // The caller opens the content behind first (the chunk's
            // bytes wait in the input meanwhile).
            return self.ask(super::proxy::Asked::Bdat { size, last }, Event::Data);
        }
        self.start_chunk(size);
    }

    /// Takes a chunk of `size` octets into the transaction (or marks it
    /// too large).
    pub(super) fn start_chunk(&mut self, size: u64) {
        let proxy = self.config.proxy;
        let tx = self.tx.as_mut().expect("checked");
        tx.bdat_started = true;
        let limit = self.config.message_bytes_max as u64;
        if let Some(chunks) = &mut tx.chunks {
            if size > limit.saturating_sub(tx.received) {
                tx.chunks = None;
            } else {
                // The client's number does not decide an allocation: grow
                // as bytes arrive, at most 1 MiB ahead (a proxy holds one
                // piece).
                let ahead = if proxy {
                    super::proxy::CONTENT_PIECE_BYTES
                } else {
                    1 << 20
                };
                chunks.reserve((size as usize).min(ahead));
            }
        }
    }

    /// Takes the chunk's bytes from buffered input; at its end, answers or
    /// hands the message over. Returns as [`Session::data_step`] does.
    pub(super) fn bdat_step(&mut self) -> Option<Option<Event>> {
        let Phase::Bdat { remaining, last } = &mut self.phase else {
            unreachable!("bdat_step outside BDAT")
        };
        let available = (self.input.len() - self.start) as u64;
        let take = available.min(*remaining) as usize;
        let bytes = &self.input[self.start..self.start + take];
        let mut piece = None;
        if let Some(tx) = &mut self.tx {
            tx.checker.check(bytes);
            tx.received += take as u64;
            if let Some(chunks) = &mut tx.chunks {
                chunks.extend_from_slice(bytes);
                if self.config.proxy && (tx.checker.failed() || self.abandoned.is_some()) {
                    // Refused at the end anyway: hold nothing meanwhile.
                    chunks.clear();
                } else if self.config.proxy && chunks.len() >= super::proxy::CONTENT_PIECE_BYTES {
                    piece = Some(std::mem::replace(
                        chunks,
                        Vec::with_capacity(chunks.capacity()),
                    ));
                }
            }
        }
        self.start += take;
        *remaining -= take as u64;
        if *remaining > 0 {
            return Some(piece.map(|bytes| Event::Content { bytes, last: false }));
        }
        let last = *last;
        self.phase = Phase::Command;
        if self.tx.is_some() && self.end_abandoned() {
            return None;
        }
        let Some(tx) = &mut self.tx else {
            return None; // refused chunk fully skipped
        };
        if tx.chunks.is_none() {
            // RFC 3030: a failed chunk fails the transaction; later chunks
            // are consumed and refused (no transaction).
            self.reject_content(ContentError::TooLarge);
            return None;
        }
        if !last {
            let received = tx.received;
            self.ok(Reply::new(
                250,
                Status(2, 0, 0),
                format!("Ok: {received} octets received"),
            ));
            // A proxy hands the piece on before the 250 goes out.
            return piece.map(|bytes| Some(Event::Content { bytes, last: false }));
        }
        let error = match (&tx.chunks, tx.checker.finish()) {
            (None, _) => Some(ContentError::TooLarge),
            (_, e) => e,
        };
        if let Some(e) = error {
            self.reject_content(e);
            return None;
        }
        let mut content = tx.chunks.take().expect("checked");
        if self.config.proxy {
            if let Some(mut first) = piece {
                first.append(&mut content);
                content = first;
            }
            self.phase = Phase::Waiting;
            return Some(Some(Event::Content {
                bytes: content,
                last: true,
            }));
        }
        Some(Some(self.hand_over(content)))
    }
}
