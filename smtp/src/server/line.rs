//! One command line: framing (CRLF, no bare CR or LF), the length limits
//! of RFC 5321 4.5.3.1.4, unauthorised pipelining (RFC 2920), and the
//! dispatch to the verb's own file.

use super::bdat::{bdat_unparsed, is_bdat};
use super::{reply, Policy, Session};
use crate::command::{self, Command};
use crate::limits::{COMMAND_LINE_MAX, PARAMS_EXTRA};

impl<P: Policy> Session<P> {
    /// One command line if complete; false when more input is needed.
    pub(super) fn command_step(&mut self) -> bool {
        let pending = &self.input[self.start..];
        let max = COMMAND_LINE_MAX + PARAMS_EXTRA;
        let Some(lf) = memchr::memchr(b'\n', pending) else {
            if pending.len() > max {
                if is_bdat(pending) {
                    // The chunk's size is unknown: its bytes would be read
                    // as commands. Never guess at framing.
                    self.close_with(bdat_unparsed());
                    return true;
                }
                // RFC 5321 4.5.3.1.4: refuse, then drop the rest of the line.
                self.start = self.input.len();
                if !self.skipping_line {
                    self.skipping_line = true;
                    self.error(reply(500, (5, 5, 2), "Error: command line too long"));
                }
            }
            return false;
        };
        let line_end = self.start + lf;
        self.start = line_end + 1;
        if std::mem::take(&mut self.skipping_line) {
            return true;
        }
        let line = &self.input[line_end - lf..line_end];
        let Some(line) = line.strip_suffix(b"\r") else {
            self.close_with(reply(521, (5, 5, 2), "Error: bare <LF> received"));
            return true;
        };
        if memchr::memchr(b'\r', line).is_some() {
            self.close_with(reply(521, (5, 5, 2), "Error: bare <CR> received"));
            return true;
        }
        let parsed = command::parse(line);
        let too_long = line.len() + 2
            > match parsed {
                Ok(Command::Mail { .. } | Command::Rcpt { .. } | Command::Xclient(_)) => max,
                _ => COMMAND_LINE_MAX,
            };
        let ahead = self.start < self.input.len();
        if (too_long || parsed.is_err()) && is_bdat(line) {
            self.close_with(bdat_unparsed());
            return true;
        }
        match parsed {
            _ if too_long => self.error(reply(500, (5, 5, 2), "Error: command line too long")),
            Ok(cmd) if ahead && !self.may_pipeline(&cmd) => self.close_with(reply(
                554,
                (5, 5, 0),
                "Error: improper use of SMTP command pipelining",
            )),
            Ok(cmd) => self.dispatch(cmd),
            Err(e) => self.error(e.reply()),
        }
        true
    }

    /// RFC 2920: only after EHLO advertised PIPELINING, and never with
    /// bytes following DATA before the 354.
    fn may_pipeline(&self, cmd: &Command) -> bool {
        let esmtp = self.helo.as_ref().is_some_and(|(_, esmtp)| *esmtp);
        match cmd {
            Command::Data => false,
            Command::Quit => true,
            _ => esmtp,
        }
    }

    fn dispatch(&mut self, cmd: Command) {
        match cmd {
            Command::Ehlo(name) => self.hello(name, true),
            Command::Helo(name) => self.hello(name, false),
            Command::Mail { from, params } => self.mail(from, params),
            Command::Rcpt { to } => self.rcpt(to),
            Command::Data => self.data(),
            Command::Bdat { size, last } => self.bdat(size, last),
            Command::Rset => self.rset(),
            Command::Noop => self.noop(),
            Command::Quit => self.quit(),
            Command::Vrfy => self.vrfy(),
            Command::Help => self.help(),
            Command::NotImplemented(_) => self.not_implemented(),
            Command::XqDiscard {
                node,
                database,
                taken,
            } => self.xqdiscard(node, database, taken),
            Command::Xclient(x) => self.xclient(x),
            Command::StartTls => self.starttls(),
            Command::Auth { mechanism, initial } => self.auth(&mechanism, initial),
        }
    }
}
