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
        let hint = tx.params.size.unwrap_or(0) as usize;
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
                Some(None)
            }
            Progress::Fatal { consumed, error } => {
                self.start += consumed;
                let text = if error == ContentError::BareCr {
                    "Error: bare <CR> received"
                } else {
                    "Error: bare <LF> received"
                };
                self.tx = None;
                self.close_with(reply(521, (5, 5, 2), text));
                None
            }
            Progress::Done { consumed } => {
                self.start += consumed;
                let Phase::Data(receiver) = std::mem::replace(&mut self.phase, Phase::Command)
                else {
                    unreachable!()
                };
                if let Some(e) = receiver.error() {
                    self.reject_content(e);
                    return None;
                }
                Some(Some(self.hand_over(receiver.into_body())))
            }
        }
    }
}
