//! One message on a [`Conn`]: its stamped header section, the transaction
//! (pipelined DATA chained on the previous message, pipelined BDAT, or
//! one command per round trip), the per-phase timings, and how it is
//! accounted (ok, temporary or permanent failure).
//!
//! Bodies are built once per size and shared ([`Bodies`]); each message
//! gets only its own header section (the stamp varies, its checksum covers
//! the shared body), in a recycled buffer. Generated content has no line
//! that starts with a dot and only CRLF line ends, so it goes on the wire
//! as it is, without dot-stuffing or a copy.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Write as _;
use std::rc::Rc;
use std::time::Instant;

use tern_smtp::client;

use super::send_conn::{io_err, us, Conn, Stats};
use super::send_plan::Plan;
use super::send_stats::Phase;

/// A prebuilt body (shared by all messages of one size: the stamp header
/// varies per message, and its checksum covers the body).
pub(super) struct Body {
    bytes: Vec<u8>,
    sum: u32,
}

/// This core's bodies, one per size.
#[derive(Default)]
pub(super) struct Bodies(RefCell<HashMap<usize, Rc<Body>>>);

impl Bodies {
    /// The body of `size` bytes of run `run` (built on first use).
    pub(super) fn get(&self, run: u64, size: usize) -> Rc<Body> {
        self.0
            .borrow_mut()
            .entry(size)
            .or_insert_with(|| {
                let msg = crate::stamp::build_message(run, 0, 0, size, "", "");
                let at = msg
                    .windows(4)
                    .position(|w| w == b"\r\n\r\n")
                    .expect("built messages have a body");
                let bytes = msg[at + 4..].to_vec();
                Rc::new(Body {
                    sum: crc32fast::hash(&bytes),
                    bytes,
                })
            })
            .clone()
    }
}

/// One message on its way.
pub(super) struct Msg {
    pub(super) seq: u64,
    /// Open loop: when it was due.
    due: Option<Instant>,
    /// When its MAIL was written.
    t0: Instant,
    /// Header section + body.
    size: usize,
    head: Vec<u8>,
    body: Rc<Body>,
}

/// How a transaction ended (connection errors are `Err`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Ok,
    Temp,
    Perm,
}

/// Keeps the highest failure code.
fn note(code: u16, worst: &mut u16) {
    if code >= 400 {
        *worst = (*worst).max(code);
    }
}

/// The failure of a transaction that failed before DATA/BDAT, from its
/// MAIL and RCPT replies: the MAIL reply if it failed (the RCPTs after it
/// are then refused for sequence), else the worst RCPT reply if none was
/// accepted. `None` if the envelope was accepted. The reply to a pipelined
/// DATA/BDAT after such a failure (503/554) says nothing about the message,
/// so the outcome is the same pipelined or not.
fn envelope_failure(mail: u16, rcpts: &[u16]) -> Option<u16> {
    if mail >= 400 {
        return Some(mail);
    }
    if !rcpts.is_empty() && rcpts.iter().all(|&c| c >= 400) {
        return rcpts.iter().copied().max();
    }
    None
}

/// Bodies up to this size are copied into the output buffer (one write);
/// larger ones are written from the shared body.
const COPY_MAX: usize = 64 << 10;

impl Conn {
    fn push_mail(&mut self, plan: &Plan, size: usize) {
        let _ = write!(self.out, "MAIL FROM:<{}>", plan.from);
        if self.caps.size.is_some() {
            let _ = write!(self.out, " SIZE={size}");
        }
        self.out.extend_from_slice(b"\r\n");
    }

    fn push_rcpt(&mut self, rcpt: &str) {
        let _ = write!(self.out, "RCPT TO:<{rcpt}>\r\n");
    }

    /// A new message with its stamped header section.
    pub(super) fn message(
        &mut self,
        plan: &Plan,
        body: Rc<Body>,
        seq: u64,
        due: Option<Instant>,
    ) -> Msg {
        let sent_us = crate::stamp::now_us();
        let run = plan.run;
        let mut head = self.spare_heads.pop().unwrap_or_default();
        head.clear();
        let _ = write!(
            head,
            "From: <{}>\r\nTo: <{}>\r\nSubject: tern-loadgen {run:016x} #{seq}\r\nMessage-ID: <{run:016x}.{seq}@tern-loadgen>\r\n{}: run={run:016x}; seq={seq}; sent={sent_us}; sum={:08x}\r\n\r\n",
            plan.from,
            plan.rcpts.first().map_or("", String::as_str),
            crate::stamp::HEADER,
            body.sum
        );
        Msg {
            seq,
            due,
            t0: Instant::now(),
            size: head.len() + body.bytes.len(),
            head,
            body,
        }
    }

    /// Appends MAIL, RCPTs and DATA for `m` (pipelined group).
    pub(super) fn begin(&mut self, plan: &Plan, m: &mut Msg) {
        self.push_mail(plan, m.size);
        for r in &plan.rcpts {
            self.push_rcpt(r);
        }
        client::data(&mut self.out);
        m.t0 = Instant::now();
        self.sent += 1;
    }

    /// Appends the content of `m` to the output buffer (a large body is
    /// written from the shared copy, after what was buffered), then
    /// `trailer`; the caller appends more and flushes.
    async fn send_content(&mut self, m: &Msg, trailer: &[u8]) -> std::io::Result<()> {
        self.out.extend_from_slice(&m.head);
        if m.body.bytes.len() <= COPY_MAX {
            self.out.extend_from_slice(&m.body.bytes);
        } else {
            self.flush().await?;
            self.out.clear();
            self.write_direct(&m.body.bytes).await?;
        }
        self.out.extend_from_slice(trailer);
        Ok(())
    }

    /// Accounts a finished transaction.
    fn finish(&mut self, plan: &Plan, m: Msg, worst: u16, stats: &Stats) -> Outcome {
        self.unfinished = None;
        let mut s = stats.borrow_mut();
        let from = if plan.rate.is_some() {
            m.due.unwrap_or(m.t0)
        } else {
            m.t0
        };
        s.record(Phase::Transaction, us(from));
        let outcome = match worst {
            0 => {
                s.ok += 1;
                s.bytes += m.size as u64;
                if let Some(acked) = s.acked.as_mut() {
                    acked.push(m.seq);
                }
                Outcome::Ok
            }
            400..=499 => {
                s.temp_fail += 1;
                Outcome::Temp
            }
            _ => {
                s.perm_fail += 1;
                Outcome::Perm
            }
        };
        if outcome != Outcome::Ok {
            let (seq, e) = (m.seq, &self.last_error);
            s.error(|| format!("seq {seq}: {e}"));
        }
        s.completed_at(plan.start.elapsed().as_secs() as usize);
        self.spare_heads.push(m.head);
        outcome
    }

    /// Pipelined DATA: `m`'s MAIL/RCPT/DATA group has been written. Reads
    /// its replies, sends its content, and in the closed loop starts the
    /// next transaction in the same write (returned, its group written).
    pub(super) async fn step(
        &mut self,
        plan: &Plan,
        m: Msg,
        stats: &Stats,
        next: &mut dyn FnMut(&mut Conn) -> Option<Msg>,
    ) -> std::io::Result<Option<Msg>> {
        self.unfinished = Some(m.seq);
        let mut worst = 0u16;
        let mail = self.reply(stats, None).await?;
        stats.borrow_mut().record(Phase::Mail, us(m.t0));
        note(mail, &mut worst);
        if mail == 421 {
            // The server closes: the message failed temporarily, as without
            // pipelining (not a connection error).
            self.finish(plan, m, mail, stats);
            return Err(io_err(self.last_error.clone()));
        }
        let mut rcpts = Vec::with_capacity(plan.rcpts.len());
        for _ in &plan.rcpts {
            let code = self.reply(stats, None).await?;
            stats.borrow_mut().record(Phase::Rcpt, us(m.t0));
            note(code, &mut worst);
            if code == 421 {
                self.finish(plan, m, code, stats);
                return Err(io_err(self.last_error.clone()));
            }
            rcpts.push(code);
        }
        let code = self.reply(stats, None).await?;
        stats.borrow_mut().record(Phase::Data, us(m.t0));
        self.out.clear();
        let mut chained = None;
        if code == 354 {
            let t = Instant::now();
            self.send_content(&m, b".\r\n").await?;
            if plan.rate.is_none() && !self.should_quit(plan) {
                if let Some(mut n) = next(self) {
                    self.begin(plan, &mut n);
                    self.chained = Some(n.seq);
                    chained = Some(n);
                }
            }
            self.flush().await?;
            let code = self.reply(stats, None).await?;
            stats.borrow_mut().record(Phase::Eod, us(t));
            note(code, &mut worst);
            let outcome = self.finish(plan, m, worst, stats);
            if outcome != Outcome::Ok && worst == 421 {
                return Err(io_err(self.last_error.clone()));
            }
        } else {
            match envelope_failure(mail, &rcpts) {
                Some(code) => worst = code,
                None => note(code.max(400), &mut worst),
            }
            let outcome = self.finish(plan, m, worst, stats);
            if outcome != Outcome::Ok {
                self.after_failure(worst, stats).await?;
            }
        }
        self.chained = None;
        Ok(chained)
    }

    /// After a failed transaction: 421 closes; anything else is RSET.
    async fn after_failure(&mut self, worst: u16, stats: &Stats) -> std::io::Result<()> {
        if worst == 421 {
            return Err(io_err(self.last_error.clone()));
        }
        self.out.clear();
        client::rset(&mut self.out);
        self.flush().await?;
        self.reply(stats, None).await?;
        Ok(())
    }

    /// One transaction without pipelining, or with BDAT.
    pub(super) async fn transaction(
        &mut self,
        plan: &Plan,
        m: Msg,
        stats: &Stats,
    ) -> std::io::Result<()> {
        let pipelining = plan.pipelining && self.caps.pipelining;
        let bdat = plan.bdat && self.caps.chunking;
        self.unfinished = Some(m.seq);
        self.sent += 1;
        self.out.clear();
        self.push_mail(plan, m.size);
        let worst = if pipelining {
            self.pipelined_bdat(plan, &m, stats).await?
        } else {
            self.lockstep(plan, &m, bdat, stats).await?
        };
        let outcome = self.finish(plan, m, worst, stats);
        if outcome != Outcome::Ok {
            self.after_failure(worst, stats).await?;
        }
        Ok(())
    }

    /// Pipelined BDAT, MAIL already buffered: the whole transaction is one
    /// group (RCPTs, `BDAT <size> LAST` and the content in one write), then
    /// its replies in order. Returns the worst failure code (0 if none).
    async fn pipelined_bdat(
        &mut self,
        plan: &Plan,
        m: &Msg,
        stats: &Stats,
    ) -> std::io::Result<u16> {
        let mut worst = 0u16;
        let t0 = m.t0;
        for r in &plan.rcpts {
            self.push_rcpt(r);
        }
        let _ = write!(self.out, "BDAT {} LAST\r\n", m.size);
        self.send_content(m, b"").await?;
        self.flush().await?;
        let mail = self.reply(stats, None).await?;
        stats.borrow_mut().record(Phase::Mail, us(t0));
        note(mail, &mut worst);
        let mut rcpts = Vec::with_capacity(plan.rcpts.len());
        for _ in &plan.rcpts {
            let code = self.reply(stats, None).await?;
            stats.borrow_mut().record(Phase::Rcpt, us(t0));
            note(code, &mut worst);
            rcpts.push(code);
        }
        let code = self.reply(stats, None).await?;
        stats.borrow_mut().record(Phase::Eod, us(t0));
        match envelope_failure(mail, &rcpts) {
            Some(code) => worst = code,
            None => note(code, &mut worst),
        }
        Ok(worst)
    }

    /// Without pipelining, MAIL already buffered: MAIL, each RCPT, then
    /// DATA or BDAT, one round trip each. Returns the worst failure code
    /// (0 if none).
    async fn lockstep(
        &mut self,
        plan: &Plan,
        m: &Msg,
        bdat: bool,
        stats: &Stats,
    ) -> std::io::Result<u16> {
        let mut worst = 0u16;
        self.flush().await?;
        let code = self.reply(stats, None).await?;
        stats.borrow_mut().record(Phase::Mail, us(m.t0));
        note(code, &mut worst);
        let mut accepted = 0;
        if code < 400 {
            for r in &plan.rcpts {
                self.out.clear();
                self.push_rcpt(r);
                let t = Instant::now();
                self.flush().await?;
                let code = self.reply(stats, None).await?;
                stats.borrow_mut().record(Phase::Rcpt, us(t));
                note(code, &mut worst);
                accepted += usize::from(code < 400);
            }
        }
        if accepted > 0 {
            self.lockstep_content(m, bdat, &mut worst, stats).await?;
        }
        Ok(worst)
    }

    /// The content after an accepted envelope, without pipelining: BDAT
    /// LAST with the content, or DATA, its 354, the content and the dot;
    /// then the final reply. Notes failures in `worst`.
    async fn lockstep_content(
        &mut self,
        m: &Msg,
        bdat: bool,
        worst: &mut u16,
        stats: &Stats,
    ) -> std::io::Result<()> {
        self.out.clear();
        let t = Instant::now();
        if bdat {
            let _ = write!(self.out, "BDAT {} LAST\r\n", m.size);
            self.send_content(m, b"").await?;
            self.flush().await?;
        } else {
            client::data(&mut self.out);
            self.flush().await?;
            let code = self.reply(stats, None).await?;
            stats.borrow_mut().record(Phase::Data, us(t));
            if code != 354 {
                note(code.max(400), worst);
                return Ok(());
            }
            self.out.clear();
            self.send_content(m, b".\r\n").await?;
            self.flush().await?;
        }
        let t = if bdat { t } else { Instant::now() };
        let code = self.reply(stats, None).await?;
        stats.borrow_mut().record(Phase::Eod, us(t));
        note(code, worst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_failure_ignores_the_follow_up_data_reply() {
        assert_eq!(envelope_failure(250, &[250, 250]), None);
        assert_eq!(envelope_failure(451, &[503]), Some(451));
        assert_eq!(envelope_failure(250, &[451, 451]), Some(451));
        assert_eq!(envelope_failure(250, &[451, 550]), Some(550));
        // One recipient accepted: the message goes on.
        assert_eq!(envelope_failure(250, &[451, 250]), None);
    }

    #[test]
    fn bodies_are_shared_and_stamp_verifies() {
        let bodies = Bodies::default();
        let a = bodies.get(7, 4096);
        let b = bodies.get(7, 4096);
        assert!(Rc::ptr_eq(&a, &b));
        assert!(a.bytes.len() + 300 >= 4096);
        assert_eq!(a.sum, crc32fast::hash(&a.bytes));
    }
}
