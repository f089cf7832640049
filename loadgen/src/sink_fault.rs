//! Fault injection: when to answer with a failure, and the command-line
//! splitter that lets the sink refuse EHLO/HELO and DATA (commands the
//! `Session` has no policy hook for).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::Duration;
use tern_smtp::{Reply, Status};

/// Where `--fail-on` injects the failure reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FailOn {
    /// EHLO and HELO.
    Ehlo,
    /// MAIL FROM.
    Mail,
    /// RCPT TO (each recipient decided separately).
    Rcpt,
    /// The DATA command (before 354; BDAT is not affected).
    Data,
    /// The end of data (the final dot or last BDAT chunk): the default.
    Dot,
}

/// The fault settings.
#[derive(Clone, Debug)]
pub struct FaultConfig {
    /// Probability of a failure reply at `fail_on`.
    pub fail_rate: f64,
    /// Where.
    pub fail_on: FailOn,
    /// The reply code (400..=599).
    pub fail_code: u16,
    /// Delay before every reply.
    pub delay: Option<Duration>,
    /// Probability of closing a connection mid-DATA.
    pub drop_rate: f64,
}

impl FaultConfig {
    /// From the flags: `--fail-on X` without `--fail-rate` always fails
    /// at X; `--fail-rate P` alone fails the end of data with probability P.
    pub fn new(
        fail_rate: Option<f64>,
        fail_on: Option<FailOn>,
        fail_code: u16,
        delay: Option<Duration>,
        drop_rate: f64,
    ) -> anyhow::Result<FaultConfig> {
        let fail_rate_v = fail_rate.unwrap_or(if fail_on.is_some() { 1.0 } else { 0.0 });
        for (name, p) in [("--fail-rate", fail_rate_v), ("--drop-rate", drop_rate)] {
            anyhow::ensure!(
                (0.0..=1.0).contains(&p),
                "{name} must be within 0..1, not {p}"
            );
        }
        anyhow::ensure!(
            (400..=599).contains(&fail_code),
            "--fail-code must be a 4xx or 5xx code, not {fail_code}"
        );
        Ok(FaultConfig {
            fail_rate: fail_rate_v,
            fail_on: fail_on.unwrap_or(FailOn::Dot),
            fail_code,
            delay: delay.filter(|d| !d.is_zero()),
            drop_rate,
        })
    }

    /// No faults (the benchmark configuration).
    pub fn none() -> FaultConfig {
        FaultConfig {
            fail_rate: 0.0,
            fail_on: FailOn::Dot,
            fail_code: 451,
            delay: None,
            drop_rate: 0.0,
        }
    }

    /// True when command lines must be split before the session sees them.
    pub fn intercepts(&self) -> bool {
        self.fail_rate > 0.0 && matches!(self.fail_on, FailOn::Ehlo | FailOn::Data)
    }

    /// The injected reply: "451 4.3.0 Injected failure" (or 5.3.0).
    pub fn reply(&self) -> Reply {
        Reply::new(
            self.fail_code,
            Status((self.fail_code / 100) as u8, 3, 0),
            "Injected failure",
        )
    }
}

/// Fault decisions of one core (its own seeded generator).
pub struct Faults {
    /// Settings.
    pub config: FaultConfig,
    rng: StdRng,
}

fn chance(rng: &mut StdRng, p: f64) -> bool {
    if p <= 0.0 {
        false
    } else if p >= 1.0 {
        true
    } else {
        rng.gen::<f64>() < p
    }
}

impl Faults {
    /// Faults for core `core`, reproducible from `seed`.
    pub fn new(config: FaultConfig, seed: u64, core: usize) -> Faults {
        let seed = seed ^ (core as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        Faults {
            config,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// The failure reply to give at `point`, if this one fails.
    pub fn fail(&mut self, point: FailOn) -> Option<Reply> {
        (point == self.config.fail_on && chance(&mut self.rng, self.config.fail_rate))
            .then(|| self.config.reply())
    }

    /// True if this DATA is to be dropped.
    pub fn drop_data(&mut self) -> bool {
        chance(&mut self.rng, self.config.drop_rate)
    }
}

/// What a piece of client input is, for the intercepting splitter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Piece {
    /// Message data (after a 354 or BDAT): feed it as it is.
    Bytes,
    /// The start of a command line whose end has not arrived yet: hold it
    /// until the line is complete (the session must see whole lines, so a
    /// refused one leaves nothing behind in it).
    Partial,
    /// A complete command line with this verb (upper case, 4 letters or
    /// empty), and the size if it is `BDAT n`.
    Line([u8; 4], Option<u64>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EndScan {
    LineStart,
    SawDot,
    SawDotCr,
    Mid,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Command,
    Data(EndScan),
    Bdat(u64),
}

/// Splits client input into whole command lines (so one can be answered
/// by the sink instead of the session) and data, tracking DATA/BDAT the
/// way the session does. Used only with `--fail-on ehlo|data`.
#[derive(Debug)]
pub struct Splitter {
    mode: Mode,
    /// Start of the current command line (verb and BDAT size).
    head: [u8; 32],
    head_len: usize,
}

impl Default for Splitter {
    fn default() -> Self {
        Splitter {
            mode: Mode::Command,
            head: [0; 32],
            head_len: 0,
        }
    }
}

impl Splitter {
    /// The next piece of `input`: its length and what it is.
    pub fn next(&mut self, input: &[u8]) -> (usize, Piece) {
        match self.mode {
            Mode::Command => {
                let (len, complete) = match input.iter().position(|&b| b == b'\n') {
                    Some(i) => (i + 1, true),
                    None => (input.len(), false),
                };
                let room = self.head.len() - self.head_len;
                let take = room.min(len);
                self.head[self.head_len..self.head_len + take].copy_from_slice(&input[..take]);
                self.head_len += take;
                if !complete {
                    return (len, Piece::Partial);
                }
                let head = &self.head[..self.head_len];
                let mut verb = [0u8; 4];
                if head.len() >= 4 && (head.len() == 4 || !head[4].is_ascii_alphanumeric()) {
                    verb.copy_from_slice(&head[..4]);
                    verb.make_ascii_uppercase();
                }
                let size = (&verb == b"BDAT")
                    .then(|| {
                        let rest = std::str::from_utf8(&head[4..]).ok()?;
                        rest.split_ascii_whitespace().next()?.parse().ok()
                    })
                    .flatten();
                self.head_len = 0;
                (len, Piece::Line(verb, size))
            }
            Mode::Data(mut st) => {
                for (i, &b) in input.iter().enumerate() {
                    st = match (st, b) {
                        (EndScan::LineStart, b'.') => EndScan::SawDot,
                        (EndScan::SawDot, b'\r') => EndScan::SawDotCr,
                        (EndScan::SawDotCr, b'\n') => {
                            self.mode = Mode::Command;
                            return (i + 1, Piece::Bytes);
                        }
                        (_, b'\n') => EndScan::LineStart,
                        _ => EndScan::Mid,
                    };
                }
                self.mode = Mode::Data(st);
                (input.len(), Piece::Bytes)
            }
            Mode::Bdat(n) => {
                let take = (input.len() as u64).min(n);
                self.mode = if take == n {
                    Mode::Command
                } else {
                    Mode::Bdat(n - take)
                };
                (take as usize, Piece::Bytes)
            }
        }
    }

    /// The session answered DATA with 354: message data follows.
    pub fn data_started(&mut self) {
        self.mode = Mode::Data(EndScan::LineStart);
    }

    /// The session consumes the `n` bytes of a BDAT chunk.
    pub fn bdat_started(&mut self, n: u64) {
        self.mode = if n == 0 { Mode::Command } else { Mode::Bdat(n) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::type_complexity)]
    fn fail_decisions() {
        // (rate, on, point asked, expected failures out of 1000)
        let table: &[(
            Option<f64>,
            Option<FailOn>,
            FailOn,
            std::ops::RangeInclusive<u32>,
        )] = &[
            (None, None, FailOn::Dot, 0..=0),
            (Some(1.0), None, FailOn::Dot, 1000..=1000),
            (Some(1.0), None, FailOn::Rcpt, 0..=0),
            (None, Some(FailOn::Rcpt), FailOn::Rcpt, 1000..=1000),
            (None, Some(FailOn::Rcpt), FailOn::Dot, 0..=0),
            (Some(0.0), Some(FailOn::Mail), FailOn::Mail, 0..=0),
            (Some(0.5), None, FailOn::Dot, 400..=600),
            (Some(0.1), Some(FailOn::Ehlo), FailOn::Ehlo, 50..=150),
        ];
        for (i, (rate, on, point, want)) in table.iter().enumerate() {
            let cfg = FaultConfig::new(*rate, *on, 451, None, 0.0).unwrap();
            let mut f = Faults::new(cfg, 42, 0);
            let n = (0..1000).filter(|_| f.fail(*point).is_some()).count() as u32;
            assert!(want.contains(&n), "row {i}: {n} failures");
        }
    }

    #[test]
    fn seeded_is_reproducible_and_replies_are_right() {
        let cfg = FaultConfig::new(Some(0.3), None, 554, None, 0.2).unwrap();
        let run = |seed| {
            let mut f = Faults::new(cfg.clone(), seed, 0);
            (0..200)
                .map(|_| (f.fail(FailOn::Dot).is_some(), f.drop_data()))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
        let mut out = Vec::new();
        cfg.reply().encode(&mut out);
        assert_eq!(out, b"554 5.3.0 Injected failure\r\n");
        assert!(FaultConfig::new(Some(1.5), None, 451, None, 0.0).is_err());
        assert!(FaultConfig::new(None, None, 250, None, 0.0).is_err());
        assert!(FaultConfig::new(None, None, 451, None, -0.1).is_err());
    }

    fn pieces(s: &mut Splitter, mut input: &[u8]) -> Vec<(String, Piece)> {
        let mut out = Vec::new();
        while !input.is_empty() {
            let (n, p) = s.next(input);
            out.push((String::from_utf8_lossy(&input[..n]).into_owned(), p));
            if p == Piece::Line(*b"DATA", None) {
                s.data_started();
            }
            if let Piece::Line(_, Some(n)) = p {
                s.bdat_started(n);
            }
            input = &input[n..];
        }
        out
    }

    #[test]
    fn splitter_tracks_lines_data_and_bdat() {
        let mut s = Splitter::default();
        let got = pieces(
            &mut s,
            b"ehlo x\r\nMAIL FROM:<a@b>\r\nDATA\r\n.x\r\nDATA\r\n.\r\nBDAT 5 LAST\r\nDATA\nquit\r\n",
        );
        let want: Vec<(&str, Piece)> = vec![
            ("ehlo x\r\n", Piece::Line(*b"EHLO", None)),
            ("MAIL FROM:<a@b>\r\n", Piece::Line(*b"MAIL", None)),
            ("DATA\r\n", Piece::Line(*b"DATA", None)),
            (".x\r\nDATA\r\n.\r\n", Piece::Bytes),
            ("BDAT 5 LAST\r\n", Piece::Line(*b"BDAT", Some(5))),
            ("DATA\n", Piece::Bytes),
            ("quit\r\n", Piece::Line(*b"QUIT", None)),
        ];
        let got: Vec<(&str, Piece)> = got.iter().map(|(a, p)| (a.as_str(), *p)).collect();
        assert_eq!(got, want);
        // A line split across reads is one line.
        let mut s = Splitter::default();
        assert_eq!(s.next(b"EH"), (2, Piece::Partial));
        assert_eq!(s.next(b"LO y\r\nX"), (6, Piece::Line(*b"EHLO", None)));
        // An end-of-data marker split across reads.
        let mut s = Splitter::default();
        s.data_started();
        assert_eq!(s.next(b"a\r\n."), (4, Piece::Bytes));
        assert_eq!(s.next(b"\r\nNOOP\r\n"), (2, Piece::Bytes));
        assert_eq!(s.next(b"NOOP\r\n"), (6, Piece::Line(*b"NOOP", None)));
    }
}
