//! The stamp header every generated message carries, so a sink can verify
//! it end to end (through any relay):
//!
//! ```text
//! X-Tern-Loadgen: run=<16 hex>; seq=<decimal>; sent=<unix microseconds>; sum=<8 hex>
//! ```
//!
//! `sum` is crc32 of the body (everything after the blank line that ends
//! the header section), so relays may add or rewrite headers (Received:)
//! without breaking verification, but any change to the body is caught.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Header name.
pub const HEADER: &str = "X-Tern-Loadgen";

/// What a stamp says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    /// Random id of the sending run (so runs and stray mail do not mix).
    pub run: u64,
    /// Message number within the run, from 0.
    pub seq: u64,
    /// When the sender queued it for sending, microseconds since the epoch.
    pub sent_us: u64,
    /// crc32 of the body.
    pub sum: u32,
}

impl Stamp {
    /// The header line, with CRLF.
    pub fn header_line(&self) -> String {
        format!(
            "{HEADER}: run={:016x}; seq={}; sent={}; sum={:08x}\r\n",
            self.run, self.seq, self.sent_us, self.sum
        )
    }
}

/// Now on the clock of a stamp's `sent` field: microseconds since the
/// Unix epoch (0 before it). The sender stamps with it and the sink
/// measures end-to-end latency against it.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Why a received message does not verify.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StampError {
    /// No stamp header in the header section.
    #[error("no {HEADER} header")]
    Missing,
    /// The header does not parse.
    #[error("malformed {HEADER} header")]
    Malformed,
    /// The body checksum differs: the body was changed in transit.
    #[error("body checksum mismatch")]
    BadSum,
}

/// Splits a message into header section and body (after the first empty
/// line); a message without one is all header.
fn split(message: &[u8]) -> (&[u8], &[u8]) {
    match memfind(message, b"\r\n\r\n") {
        Some(i) => (&message[..i + 2], &message[i + 4..]),
        None => (message, &[]),
    }
}

fn memfind(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Finds, parses and verifies the stamp of a received message.
pub fn verify(message: &[u8]) -> Result<Stamp, StampError> {
    let (headers, body) = split(message);
    let prefix = format!("{HEADER}:");
    let line = headers
        .split(|&b| b == b'\n')
        .find(|l| {
            l.len() > prefix.len() && l[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
        })
        .ok_or(StampError::Missing)?;
    let text = std::str::from_utf8(&line[prefix.len()..]).map_err(|_| StampError::Malformed)?;
    let mut run = None;
    let mut seq = None;
    let mut sent = None;
    let mut sum = None;
    for field in text.trim().split(';') {
        let (k, v) = field.trim().split_once('=').ok_or(StampError::Malformed)?;
        let v = v.trim();
        match k {
            "run" => run = u64::from_str_radix(v, 16).ok(),
            "seq" => seq = v.parse().ok(),
            "sent" => sent = v.parse().ok(),
            "sum" => sum = u32::from_str_radix(v, 16).ok(),
            _ => {}
        }
    }
    let stamp = Stamp {
        run: run.ok_or(StampError::Malformed)?,
        seq: seq.ok_or(StampError::Malformed)?,
        sent_us: sent.ok_or(StampError::Malformed)?,
        sum: sum.ok_or(StampError::Malformed)?,
    };
    if crc32fast::hash(body) != stamp.sum {
        return Err(StampError::BadSum);
    }
    Ok(stamp)
}

/// Builds a complete message of about `size` bytes (at least the headers)
/// with CRLF lines of at most 78 characters, stamped.
pub fn build_message(
    run: u64,
    seq: u64,
    sent_us: u64,
    size: usize,
    from: &str,
    to: &str,
) -> Vec<u8> {
    let mut body = Vec::with_capacity(size);
    // Deterministic printable text per (run, seq).
    let mut rng = StdRng::seed_from_u64(run ^ seq.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    while body.len() < size.saturating_sub(300) {
        for _ in 0..76 {
            body.push(b'a' + rng.gen_range(0..26u8));
        }
        body.extend_from_slice(b"\r\n");
    }
    if body.is_empty() {
        body.extend_from_slice(b"x\r\n");
    }
    let stamp = Stamp {
        run,
        seq,
        sent_us,
        sum: crc32fast::hash(&body),
    };
    let mut msg = format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: tern-loadgen {run:016x} #{seq}\r\nMessage-ID: <{run:016x}.{seq}@tern-loadgen>\r\n{}\r\n",
        stamp.header_line()
    )
    .into_bytes();
    msg.extend_from_slice(&body);
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper_detection() {
        for size in [0, 100, 4096, 100_000] {
            let msg = build_message(0xabc, 7, 1_700_000_000_000_000, size, "a@x", "b@y");
            assert!(msg.len() >= size.min(msg.len()));
            assert!(!tern_smtp::client::has_bare_newline(&msg));
            let s = verify(&msg).unwrap();
            assert_eq!((s.run, s.seq, s.sent_us), (0xabc, 7, 1_700_000_000_000_000));
            // A relay adding a header keeps it valid.
            let mut relayed = b"Received: from x by y; date\r\n".to_vec();
            relayed.extend_from_slice(&msg);
            assert_eq!(verify(&relayed).unwrap(), s);
            // Changing one body byte is caught.
            let mut bad = msg.clone();
            let last = bad.len() - 3;
            bad[last] ^= 1;
            assert_eq!(verify(&bad), Err(StampError::BadSum));
        }
        assert_eq!(
            verify(b"Subject: x\r\n\r\nbody\r\n"),
            Err(StampError::Missing)
        );
        assert_eq!(
            verify(b"X-Tern-Loadgen: run=zz\r\n\r\n"),
            Err(StampError::Malformed)
        );
    }
}
