//! TLS handshake counts, shared by `send` and `sink`: full versus
//! resumed handshakes, failed ones, and the negotiated protocol version
//! and cipher suite (per core, merged at the end, like the histograms).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use rustls::{CipherSuite, CommonState, HandshakeKind, ProtocolVersion};
use serde::Serialize;

/// Handshakes of one core (then merged).
#[derive(Debug, Default, Clone)]
pub struct Handshakes {
    /// Full handshakes (a HelloRetryRequest included).
    pub full: u64,
    /// Of those, the ones with a HelloRetryRequest.
    pub hello_retry: u64,
    /// Resumed sessions.
    pub resumed: u64,
    /// Handshakes that failed.
    pub failed: u64,
    /// Completed handshakes by (protocol version, cipher suite), as their
    /// wire values (no allocation per handshake once a pair is known).
    pub suites: BTreeMap<(u16, u16), u64>,
}

impl Handshakes {
    /// Counts a completed handshake.
    pub fn completed(&mut self, conn: &CommonState) {
        match conn.handshake_kind() {
            Some(HandshakeKind::Resumed) => self.resumed += 1,
            Some(HandshakeKind::FullWithHelloRetryRequest) => {
                self.full += 1;
                self.hello_retry += 1;
            }
            Some(HandshakeKind::Full) | None => self.full += 1,
        }
        let version = conn.protocol_version().map_or(0, u16::from);
        let suite = conn
            .negotiated_cipher_suite()
            .map_or(0, |s| u16::from(s.suite()));
        *self.suites.entry((version, suite)).or_insert(0) += 1;
    }

    /// Completed handshakes.
    pub fn total(&self) -> u64 {
        self.full + self.resumed
    }

    /// Adds another core's counts.
    pub fn merge(&mut self, other: &Handshakes) {
        self.full += other.full;
        self.hello_retry += other.hello_retry;
        self.resumed += other.resumed;
        self.failed += other.failed;
        for (k, n) in &other.suites {
            *self.suites.entry(*k).or_insert(0) += n;
        }
    }

    /// The JSON form; `None` when no handshake was attempted (no TLS).
    pub fn report(&self) -> Option<TlsReport> {
        if self.total() == 0 && self.failed == 0 {
            return None;
        }
        Some(TlsReport {
            handshakes: self.total(),
            full: self.full,
            hello_retry: self.hello_retry,
            resumed: self.resumed,
            failed: self.failed,
            suites: self
                .suites
                .iter()
                .map(|(&(v, s), &count)| TlsSuite {
                    version: version_name(v),
                    cipher_suite: suite_name(s),
                    count,
                })
                .collect(),
        })
    }
}

fn version_name(v: u16) -> String {
    format!("{:?}", ProtocolVersion::from(v))
}

fn suite_name(s: u16) -> String {
    format!("{:?}", CipherSuite::from(s))
}

/// TLS handshakes in the JSON reports (`"tls"`, null without TLS):
///
/// ```text
/// "tls": {"handshakes": n, "full": n, "hello_retry": n, "resumed": n, "failed": n,
///         "suites": [{"version": "TLSv1_3", "cipher_suite": "TLS13_AES_256_GCM_SHA384", "count": n}]}
/// ```
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TlsReport {
    /// Completed handshakes (full + resumed).
    pub handshakes: u64,
    /// Full handshakes.
    pub full: u64,
    /// Full handshakes with a HelloRetryRequest (counted in `full` too).
    pub hello_retry: u64,
    /// Resumed sessions.
    pub resumed: u64,
    /// Failed handshakes.
    pub failed: u64,
    /// By negotiated version and cipher suite.
    pub suites: Vec<TlsSuite>,
}

/// One negotiated (version, cipher suite) pair.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TlsSuite {
    /// E.g. "TLSv1_3".
    pub version: String,
    /// E.g. "TLS13_AES_256_GCM_SHA384".
    pub cipher_suite: String,
    /// Handshakes that negotiated it.
    pub count: u64,
}

impl TlsReport {
    /// One line for the text reports: `tls: 10 handshakes (8 resumed, 2
    /// full, 0 with HelloRetryRequest), 0 failed; TLSv1_3
    /// TLS13_AES_256_GCM_SHA384: 10`.
    pub fn text(&self) -> String {
        let mut t = format!(
            "tls: {} handshakes ({} resumed, {} full, {} with HelloRetryRequest), {} failed",
            self.handshakes, self.resumed, self.full, self.hello_retry, self.failed
        );
        for (i, s) in self.suites.iter().enumerate() {
            let sep = if i == 0 { ';' } else { ',' };
            let _ = write!(t, "{sep} {} {}: {}", s.version, s.cipher_suite, s.count);
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_and_report() {
        let mut a = Handshakes {
            full: 2,
            failed: 1,
            ..Handshakes::default()
        };
        a.suites.insert((0x0304, 0x1302), 2);
        let mut b = Handshakes {
            resumed: 5,
            ..Handshakes::default()
        };
        b.suites.insert((0x0304, 0x1302), 5);
        a.merge(&b);
        let r = a.report().expect("handshakes");
        assert_eq!((r.handshakes, r.full, r.resumed, r.failed), (7, 2, 5, 1));
        assert_eq!(r.suites.len(), 1);
        assert_eq!(r.suites[0].version, "TLSv1_3");
        assert_eq!(r.suites[0].cipher_suite, "TLS13_AES_256_GCM_SHA384");
        assert_eq!(
            r.text(),
            "tls: 7 handshakes (5 resumed, 2 full, 0 with HelloRetryRequest), 1 failed; \
             TLSv1_3 TLS13_AES_256_GCM_SHA384: 7"
        );
        assert_eq!(Handshakes::default().report(), None);
    }
}
