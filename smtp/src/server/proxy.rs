//! Proxy mode ([`super::ServerConfig::proxy`]): the session keeps the
//! protocol, the caller (a front end forwarding the session to a server
//! behind it) gives the answers to MAIL, RCPT and DATA, and takes the
//! content in pieces as it arrives.

use super::{reply, Event, Phase, Policy, Session};
use crate::address::{ForwardPath, ReversePath};
use crate::command::MailParams;
use crate::reply::Reply;

/// Content a proxying session holds before handing it on
/// ([`Event::Content`]); with one read buffer on top, what a session in
/// proxy mode holds of a message at most.
pub const CONTENT_PIECE_BYTES: usize = 64 * 1024;

/// The command waiting for the caller.
#[derive(Debug)]
pub(super) enum Asked {
    /// MAIL (kept to open the transaction on a positive verdict).
    Mail(ReversePath, MailParams),
    /// RCPT.
    Rcpt(ForwardPath),
    /// DATA.
    Data,
    /// The first BDAT of a transaction.
    Bdat {
        /// Its chunk size.
        size: u64,
        /// LAST was given.
        last: bool,
    },
    /// XCLIENT (answered with [`Session::xclient_result`]).
    Xclient(Box<crate::xclient::Xclient>),
}

impl<P: Policy> Session<P> {
    /// Hands `event` to the caller and waits for its answer.
    pub(super) fn ask(&mut self, asked: Asked, event: Event) {
        self.asked = Some(asked);
        self.phase = Phase::Waiting;
        self.pending_event = Some(event);
    }

    /// A refusal from the server behind: a permanent one counts toward
    /// `errors_max`, a transient one (its back pressure, too many
    /// recipients) does not.
    fn refused(&mut self, r: Reply) {
        if r.is_permanent() {
            self.error(r);
        } else {
            self.ok(r);
        }
    }

    /// The caller's answer to [`Event::Mail`], [`Event::Rcpt`] or
    /// [`Event::Data`]: the reply of the server behind. For MAIL and RCPT
    /// a 2xx accepts (the reply goes to the client as given); for DATA a
    /// 3xx lets the content come. Anything else is sent as the refusal.
    pub fn verdict(&mut self, r: Reply) {
        assert!(
            matches!(self.phase, Phase::Waiting),
            "verdict() without a question"
        );
        let asked = match self.asked.take() {
            Some(a @ (Asked::Mail(..) | Asked::Rcpt(_) | Asked::Data | Asked::Bdat { .. })) => a,
            other => panic!("verdict() without a MAIL, RCPT or DATA question: {other:?}"),
        };
        self.phase = Phase::Command;
        let go_ahead = r.code / 100 == 3;
        match asked {
            Asked::Mail(from, params) if r.is_positive() => {
                self.open_tx(from, params);
                self.ok(r);
            }
            Asked::Rcpt(to) if r.is_positive() => {
                if let Some(tx) = &mut self.tx {
                    tx.recipients.push(to);
                }
                self.ok(r);
            }
            Asked::Data if go_ahead => self.start_data(),
            Asked::Bdat { size, last } if go_ahead => {
                self.phase = Phase::Bdat {
                    remaining: size,
                    last,
                };
                self.start_chunk(size);
            }
            Asked::Mail(..) | Asked::Rcpt(_) => self.refused(r),
            Asked::Data => {
                self.tx = None;
                self.refused(r);
            }
            Asked::Bdat { size, .. } => {
                // The chunk's bytes follow anyway: consume them unread.
                self.tx = None;
                self.refused(r);
                if !matches!(self.phase, Phase::Closing { .. }) {
                    self.phase = Phase::Bdat {
                        remaining: size,
                        last: false,
                    };
                }
            }
            Asked::Xclient(_) => unreachable!("matched above"),
        }
    }

    /// Proxy mode: the server behind failed while the content is
    /// coming: the rest of it is read and dropped, and `r` (a 4xx) is the
    /// reply at its end. (While a verdict is asked, answer
    /// [`Session::verdict`] with `r`; after the last piece,
    /// [`Session::complete_with`].)
    pub fn abandon(&mut self, r: Reply) {
        self.abandoned = Some(r);
    }

    /// At the end of a chunk or of DATA: the transaction ends with the
    /// failure [`Session::abandon`] recorded. False: none was.
    pub(super) fn end_abandoned(&mut self) -> bool {
        let Some(r) = self.abandoned.take() else {
            return false;
        };
        self.tx = None;
        self.phase = Phase::Command;
        self.refused(r);
        true
    }
}

/// The reply a proxy gives when the server behind failed mid-transaction
/// (connection lost, timeout): the client tries again later.
pub fn backend_failed() -> Reply {
    reply(
        451,
        (4, 4, 0),
        "Error: the server behind this one failed; try again later",
    )
}
