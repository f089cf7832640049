//! TLS counters, node-wide (a handshake is rare next to messages, so one
//! set of atomics is fine): sessions by direction and cipher suite (the
//! suite names the version), handshake failures by direction and reason,
//! and `may` deliveries that fell back to clear text.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use super::TlsInfo;

/// Suites counted by name; anything else is counted as `other`. Covers
/// every suite of the ring provider.
const SUITES: [&str; 9] = [
    "TLS13_AES_256_GCM_SHA384",
    "TLS13_AES_128_GCM_SHA256",
    "TLS13_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
];

/// Inbound (we are the server) or outbound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Clients to us.
    In,
    /// Us to next hops and peers.
    Out,
}

impl Direction {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::In => "in",
            Direction::Out => "out",
        }
    }
}

/// Why a handshake failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// It took longer than `tls.handshake_timeout`.
    Timeout,
    /// The certificate was refused (or, inbound, there is none to offer).
    Certificate,
    /// No common version or suite, or a TLS protocol error.
    Protocol,
    /// The connection broke.
    Io,
}

/// Every failure, for rendering.
pub const FAILURES: [Failure; 4] = [
    Failure::Timeout,
    Failure::Certificate,
    Failure::Protocol,
    Failure::Io,
];

impl Failure {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Timeout => "timeout",
            Failure::Certificate => "certificate",
            Failure::Protocol => "protocol",
            Failure::Io => "io",
        }
    }

    /// Classifies a handshake error (rustls errors come wrapped in
    /// `io::ErrorKind::InvalidData`).
    pub fn of(e: &std::io::Error) -> Failure {
        if e.kind() == std::io::ErrorKind::TimedOut {
            return Failure::Timeout;
        }
        match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            Some(
                rustls::Error::InvalidCertificate(_)
                | rustls::Error::NoCertificatesPresented
                | rustls::Error::General(_),
            ) => Failure::Certificate,
            Some(rustls::Error::AlertReceived(a))
                if format!("{a:?}").contains("Certificate") || format!("{a:?}") == "UnknownCA" =>
            {
                Failure::Certificate
            }
            Some(_) => Failure::Protocol,
            None => Failure::Io,
        }
    }
}

/// The counters.
#[derive(Default)]
pub struct TlsStats {
    sessions: [[AtomicU64; SUITES.len() + 1]; 2],
    resumed: [AtomicU64; 2],
    failures: [[AtomicU64; FAILURES.len()]; 2],
    /// `may` deliveries retried in clear text after a failed handshake.
    pub cleartext_fallbacks: AtomicU64,
    /// Certificates that failed WebPKI verification on connections that
    /// only report it (MTA-STS `testing`).
    pub verify_reported: Arc<AtomicU64>,
}

fn dir(d: Direction) -> usize {
    match d {
        Direction::In => 0,
        Direction::Out => 1,
    }
}

impl TlsStats {
    /// A handshake completed.
    pub fn session(&self, d: Direction, info: TlsInfo) {
        let i = SUITES
            .iter()
            .position(|s| *s == info.cipher)
            .unwrap_or(SUITES.len());
        self.sessions[dir(d)][i].fetch_add(1, Relaxed);
        if info.resumed {
            self.resumed[dir(d)].fetch_add(1, Relaxed);
        }
    }

    /// A handshake failed.
    pub fn failed(&self, d: Direction, f: Failure) {
        let i = FAILURES.iter().position(|x| *x == f).expect("listed");
        self.failures[dir(d)][i].fetch_add(1, Relaxed);
    }

    /// Sessions per (version, suite) with a non-zero count.
    pub fn sessions(&self, d: Direction) -> Vec<(&'static str, &'static str, u64)> {
        let mut out = Vec::new();
        for (i, n) in self.sessions[dir(d)].iter().enumerate() {
            let n = n.load(Relaxed);
            if n == 0 {
                continue;
            }
            let suite = SUITES.get(i).copied().unwrap_or("other");
            let version = if suite.starts_with("TLS13_") {
                "TLSv1.3"
            } else if suite == "other" {
                "other"
            } else {
                "TLSv1.2"
            };
            out.push((version, suite, n));
        }
        out
    }

    /// Resumed sessions.
    pub fn resumed(&self, d: Direction) -> u64 {
        self.resumed[dir(d)].load(Relaxed)
    }

    /// Failed handshakes for `f`.
    pub fn failures(&self, d: Direction, f: Failure) -> u64 {
        let i = FAILURES.iter().position(|x| *x == f).expect("listed");
        self.failures[dir(d)][i].load(Relaxed)
    }
}
