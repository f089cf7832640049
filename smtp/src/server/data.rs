//! DATA: the 354 go-ahead, then the dot-stuffed content up to
//! `<CRLF>.<CRLF>` read by a [`DataReceiver`].

use super::{reply, Event, Phase, Policy, Session};
use crate::data::{ContentError, DataReceiver, Progress};
use crate::reply::Reply;

impl<P: Policy> Session<P> {
    /// DATA: needs a transaction with recipients and no BDAT chunk yet.
    pub(super) fn data(&mut self) {
        let Some(tx) = &self.tx else {
            return self.error(reply(503, (5, 5, 1), "Error: need MAIL command"));
        };
        if tx.recipients.is_empty() {
            return self.error(reply(503, (5, 5, 1), "Error: need RCPT command"));
        }
        if tx.bdat_started {
            return self.error(reply(503, (5, 5, 1), "Error: DATA after BDAT"));
        }
        if self.config.proxy {
            return self.ask(super::proxy::Asked::Data, Event::Data);
        }
        self.start_data();
    }

    /// The 354 and the content receiver.
    pub(super) fn start_data(&mut self) {
        // A proxy hands the content on in pieces: no buffer for all of it.
        let hint = match &self.tx {
            Some(tx) if !self.config.proxy => tx.params.size.unwrap_or(0) as usize,
            _ => 0,
        };
        self.phase = Phase::Data(DataReceiver::new(self.config.message_bytes_max, hint));
        Reply::plain(354, vec!["End data with <CR><LF>.<CR><LF>".into()]).encode(&mut self.output);
    }

    /// Feeds buffered input to the content receiver. `None`: go on with
    /// the next phase; `Some(step)`: what [`Session::poll`] returns.
    pub(super) fn data_step(&mut self) -> Option<Option<Event>> {
        let Phase::Data(receiver) = &mut self.phase else {
            unreachable!("data_step outside DATA")
        };
        let progress = receiver.feed(&self.input[self.start..]);
        match progress {
            Progress::NeedMore => {
                self.start = self.input.len();
                if self.config.proxy && receiver.len() >= super::proxy::CONTENT_PIECE_BYTES {
                    let bytes = receiver.take_body();
                    // Content refused at its end anyway is not handed on.
                    if receiver.error().is_none() && self.abandoned.is_none() {
                        return Some(Some(Event::Content { bytes, last: false }));
                    }
                }
                Some(None)
            }
            Progress::Fatal { consumed, error } => {
                self.start += consumed;
                let text = if error == ContentError::BareCr {
                    "Error: bare <CR> received"
                } else {
                    "Error: bare <LF> received"
                };
                self.drop_tx();
                self.close_with(reply(521, (5, 5, 2), text));
                None
            }
            Progress::Done { consumed } => {
                self.start += consumed;
                let Phase::Data(receiver) = std::mem::replace(&mut self.phase, Phase::Command)
                else {
                    unreachable!()
                };
                if self.end_abandoned() {
                    return None;
                }
                if let Some(e) = receiver.error() {
                    self.reject_content(e);
                    return None;
                }
                if self.config.proxy {
                    self.phase = Phase::Waiting;
                    let bytes = receiver.into_body();
                    return Some(Some(Event::Content { bytes, last: true }));
                }
                Some(Some(self.hand_over(receiver.into_body())))
            }
        }
    }
}
