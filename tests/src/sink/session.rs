//! One connection: the socket loop (reads with a short timeout, so it
//! notices a stop), the processing of what is buffered, the replies (with
//! the behaviour's delay) and the command dispatch. The verbs are in
//! `commands.rs`.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::Instant;

use super::content::{Content, DotReader};
use super::state::Shared;
use super::{Behavior, HOSTNAME, IDLE_MAX, LINE_MAX, READ_TICK};

/// The outcome of one processing step.
pub(super) enum Step {
    /// Progress was made; try again with what is buffered.
    Again,
    /// Nothing more to do until more input arrives.
    NeedInput,
    /// Close the connection.
    Close,
}

/// What the buffered input is.
pub(super) enum Mode {
    Command,
    Data(DotReader),
    Bdat {
        size: u64,
        remaining: u64,
        last: bool,
        /// The reply for a refused chunk, which is read and discarded.
        refuse: Option<(u16, &'static str)>,
    },
}

/// One MAIL transaction.
pub(super) struct Txn {
    pub(super) mail_from: String,
    pub(super) mail_params: String,
    pub(super) rcpts: Vec<String>,
    pub(super) content: Content,
    pub(super) bdat: bool,
    /// The last BDAT octet so far was a CR.
    pub(super) cr_pending: bool,
}

/// One connection.
pub(super) struct Session {
    pub(super) conn: u64,
    stream: TcpStream,
    pub(super) shared: Arc<Shared>,
    pub(super) behavior: Behavior,
    pub(super) buf: Vec<u8>,
    pub(super) mode: Mode,
    /// Skipping the rest of an over-long command line.
    discarding: bool,
    pub(super) helo: Option<String>,
    pub(super) txn: Option<Txn>,
    /// Messages recorded on this connection.
    pub(super) recorded: usize,
}

impl Session {
    pub(super) fn new(conn: u64, stream: TcpStream, shared: Arc<Shared>) -> Session {
        let behavior = shared.lock().behavior.clone();
        Session {
            conn,
            stream,
            shared,
            behavior,
            buf: Vec::new(),
            mode: Mode::Command,
            discarding: false,
            helo: None,
            txn: None,
            recorded: 0,
        }
    }

    pub(super) fn run(mut self) {
        if self.greet() {
            self.serve();
        }
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    /// The banner; false when the connection is to be closed.
    fn greet(&mut self) -> bool {
        match self.behavior.banner.clone() {
            Some((code, text)) => matches!(self.say(code, &text), Step::Again) && code / 100 == 2,
            None => matches!(
                self.say(220, &format!("{HOSTNAME} ESMTP test sink")),
                Step::Again
            ),
        }
    }

    fn serve(&mut self) {
        let mut chunk = vec![0u8; 64 * 1024];
        let mut last_input = Instant::now();
        while !self.shared.stopping() {
            match self.stream.read(&mut chunk) {
                Ok(0) => return,
                Ok(n) => {
                    last_input = Instant::now();
                    self.buf.extend_from_slice(&chunk[..n]);
                    if let Step::Close = self.process() {
                        return;
                    }
                }
                Err(e) if is_timeout(&e) => {
                    if last_input.elapsed() > IDLE_MAX {
                        self.say(421, "4.4.2 Idle too long, closing");
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }

    /// Consumes what is buffered, replying as it goes.
    fn process(&mut self) -> Step {
        loop {
            let step = match self.mode {
                Mode::Command => self.command_line(),
                Mode::Data(_) => self.data_content(),
                Mode::Bdat { .. } => self.bdat_content(),
            };
            match step {
                Step::Again => {}
                other => return other,
            }
        }
    }

    /// Sleeps the reply delay, then writes `code text`. A write failure or
    /// a stop closes the connection.
    pub(super) fn say(&mut self, code: u16, text: &str) -> Step {
        if !self.delay() {
            return Step::Close;
        }
        self.write_reply(&format!("{code} {text}\r\n"))
    }

    /// The reply delay; false when the sink stopped meanwhile.
    pub(super) fn delay(&self) -> bool {
        self.delay_for(self.behavior.reply_delay)
    }

    /// Sleeps `d` (false when the sink stopped meanwhile).
    pub(super) fn delay_for(&self, d: std::time::Duration) -> bool {
        let until = Instant::now() + d;
        loop {
            if self.shared.stopping() {
                return false;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            thread::sleep(left.min(READ_TICK));
        }
    }

    pub(super) fn write_reply(&mut self, reply: &str) -> Step {
        let waiting = !self.buf.is_empty() && matches!(self.mode, Mode::Command);
        if waiting && self.behavior.no_pipelining {
            self.shared.lock().pipelining_violations += 1;
        }
        match self.stream.write_all(reply.as_bytes()) {
            Ok(()) => Step::Again,
            Err(_) => Step::Close,
        }
    }

    fn command_line(&mut self) -> Step {
        let Some(lf) = self.buf.iter().position(|&b| b == b'\n') else {
            if self.discarding {
                self.buf.clear();
            } else if self.buf.len() > LINE_MAX {
                self.buf.clear();
                self.discarding = true;
                return self.say(500, "5.5.2 Line too long");
            }
            return Step::NeedInput;
        };
        let line: Vec<u8> = self.buf.drain(..=lf).collect();
        if std::mem::take(&mut self.discarding) {
            return Step::Again;
        }
        if line.len() > LINE_MAX {
            return self.say(500, "5.5.2 Line too long");
        }
        let line = String::from_utf8_lossy(&line);
        let line = line.trim_end_matches(['\r', '\n']);
        let (verb, arg) = line.split_once(' ').unwrap_or((line, ""));
        match verb.to_ascii_uppercase().as_str() {
            "EHLO" => self.ehlo(arg.trim(), true),
            "HELO" => self.ehlo(arg.trim(), false),
            "MAIL" => self.mail(arg),
            "RCPT" => self.rcpt(arg),
            "DATA" => self.data(),
            "BDAT" => self.bdat(arg),
            "RSET" => {
                self.txn = None;
                self.say(250, "2.0.0 Ok")
            }
            "NOOP" => self.say(250, "2.0.0 Ok"),
            "STARTTLS" if self.behavior.broken_starttls => {
                self.say(220, "2.0.0 Ready to start TLS");
                let _ = self.stream.write_all(b"this is not a TLS record\r\n");
                Step::Close
            }
            "QUIT" => {
                self.say(221, "2.0.0 Bye");
                Step::Close
            }
            _ => self.say(500, "5.5.2 Command unrecognized"),
        }
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}
