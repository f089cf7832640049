//! `[tls]`: the node's certificates (inbound STARTTLS, implicit TLS, the
//! shadow link's identity), the TLS versions it speaks, and the trust
//! roots for outbound `verify`. The outbound policy itself is per pool
//! (`pools.NAME.tls_policy`) with a default in `[delivery]`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::HumanDuration;

/// Most certificates (SNI names) one node serves: each is parsed and
/// kept in memory, and every reload re-reads all of them.
pub const CERTIFICATES_MAX: usize = 64;

/// Fastest file-change check: below it the reload watcher would spin on
/// `stat`.
const RELOAD_CHECK_MIN: Duration = Duration::from_secs(1);

/// Outbound TLS, per pool or the delivery default (the names of Postfix's
/// `smtp_tls_security_level` levels).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsPolicy {
    /// Never STARTTLS.
    None,
    /// STARTTLS when offered, no verification; a failed handshake is
    /// retried once in clear text (counted).
    May,
    /// TLS required (not offered or failed: deferred), no verification.
    Encrypt,
    /// TLS required and the next hop's certificate must verify (WebPKI)
    /// for its host name.
    Verify,
}

impl TlsPolicy {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsPolicy::None => "none",
            TlsPolicy::May => "may",
            TlsPolicy::Encrypt => "encrypt",
            TlsPolicy::Verify => "verify",
        }
    }

    /// TLS is required (no clear-text delivery).
    pub fn required(self) -> bool {
        matches!(self, TlsPolicy::Encrypt | TlsPolicy::Verify)
    }
}

impl FromStr for TlsPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(TlsPolicy::None),
            "may" => Ok(TlsPolicy::May),
            "encrypt" => Ok(TlsPolicy::Encrypt),
            "verify" => Ok(TlsPolicy::Verify),
            _ => Err(format!(
                "{s:?} is not \"none\", \"may\", \"encrypt\" or \"verify\""
            )),
        }
    }
}

/// Parses a `tls_policy` value at `key`, appending a problem if bad.
pub(super) fn policy(key: &str, s: &str, problems: &mut Vec<String>) -> TlsPolicy {
    s.parse().unwrap_or_else(|e| {
        problems.push(format!("{key}: {e}"));
        TlsPolicy::May
    })
}

/// Lowest TLS version accepted, inbound and outbound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MinVersion {
    /// TLS 1.2 and 1.3.
    Tls12,
    /// TLS 1.3 only.
    Tls13,
}

/// One certificate chain and its key (PEM files).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateFiles {
    /// Chain, leaf first.
    pub cert_file: PathBuf,
    /// PKCS#8, PKCS#1 or SEC1 private key.
    pub key_file: PathBuf,
}

/// The resolved `[tls]` section.
#[derive(Clone, Debug)]
pub struct TlsConfig {
    /// Certificates served; the first is the default, the others are
    /// chosen by SNI (the names in each certificate).
    pub certificates: Vec<CertificateFiles>,
    /// With no `certificates`: make (once) and use a self-signed one in
    /// `DATA_DIR/tls/`, so STARTTLS is on by default.
    pub self_signed: bool,
    /// Lowest version.
    pub min_version: MinVersion,
    /// Implicit-TLS listener (RFC 8314, port 465 style); `None` when off.
    pub implicit_listen: Option<SocketAddr>,
    /// How often the certificate files are checked for changes.
    pub reload_check_interval: Duration,
    /// Extra trust roots (PEM) for outbound `verify`, besides the WebPKI
    /// roots.
    pub ca_file: Option<PathBuf>,
    /// Longest TLS handshake, inbound and outbound.
    pub handshake_timeout: Duration,
}

/// `[tls]` as written; its `Default` is the default of every key.
#[derive(Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct TlsSection {
    certificates: Vec<CertificateSection>,
    self_signed: bool,
    min_version: String,
    implicit_listen: String,
    reload_check_interval: HumanDuration,
    ca_file: Option<PathBuf>,
    handshake_timeout: HumanDuration,
}

/// One entry of `tls.certificates`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CertificateSection {
    cert_file: PathBuf,
    key_file: PathBuf,
}

impl Default for TlsSection {
    fn default() -> Self {
        TlsSection {
            certificates: Vec::new(),
            self_signed: true,
            min_version: "1.2".into(),
            implicit_listen: "off".into(),
            reload_check_interval: HumanDuration(Duration::from_secs(5)),
            ca_file: None,
            handshake_timeout: HumanDuration(Duration::from_secs(30)),
        }
    }
}

impl TlsSection {
    /// Relative certificate, key and CA files are taken relative to `dir`
    /// (the config file's).
    pub(super) fn rebase(&mut self, dir: &std::path::Path) {
        for c in &mut self.certificates {
            super::rebase(&mut c.cert_file, dir);
            super::rebase(&mut c.key_file, dir);
        }
        if let Some(ca) = &mut self.ca_file {
            super::rebase(ca, dir);
        }
    }

    /// Converts and checks every key.
    pub(super) fn resolve(&self, problems: &mut Vec<String>) -> TlsConfig {
        if self.certificates.len() > CERTIFICATES_MAX {
            problems.push(format!(
                "tls.certificates must have at most {CERTIFICATES_MAX} entries, got {}",
                self.certificates.len()
            ));
        }
        let min_version = match self.min_version.as_str() {
            "1.2" => MinVersion::Tls12,
            "1.3" => MinVersion::Tls13,
            other => {
                problems.push(format!(
                    "tls.min_version: {other:?} is not \"1.2\" or \"1.3\""
                ));
                MinVersion::Tls12
            }
        };
        let implicit_listen = match self.implicit_listen.as_str() {
            "off" | "" => None,
            s => match super::resolve_host(s) {
                Ok(a) => Some(a),
                Err(e) => {
                    problems.push(format!("tls.implicit_listen: {e}"));
                    None
                }
            },
        };
        if self.reload_check_interval.0 < RELOAD_CHECK_MIN {
            problems.push(format!(
                "tls.reload_check_interval must be at least 1s, got {}",
                self.reload_check_interval
            ));
        }
        super::check_timers(
            "tls",
            &[("handshake_timeout", self.handshake_timeout.0)],
            problems,
        );
        TlsConfig {
            certificates: self
                .certificates
                .iter()
                .map(|c| CertificateFiles {
                    cert_file: c.cert_file.clone(),
                    key_file: c.key_file.clone(),
                })
                .collect(),
            self_signed: self.self_signed,
            min_version,
            implicit_listen,
            reload_check_interval: self.reload_check_interval.0,
            ca_file: self.ca_file.clone(),
            handshake_timeout: self.handshake_timeout.0,
        }
    }
}

/// The SHA-256 digest of a DER certificate: how cluster peers are pinned
/// (`cluster.peers[].fingerprint`). Written `sha256:` and 64 hex digits;
/// read with or without the prefix, colons and case as `openssl x509
/// -fingerprint -sha256` prints them.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(pub [u8; 32]);

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("sha256:")?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl FromStr for Fingerprint {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let t = t
            .strip_prefix("sha256:")
            .or_else(|| t.strip_prefix("SHA256:"))
            .or_else(|| t.strip_prefix("sha256 Fingerprint="))
            .unwrap_or(t);
        let hex: Vec<u8> = t.bytes().filter(|&b| b != b':').collect();
        let bad = || format!("{s:?} is not a SHA-256 fingerprint (sha256: and 64 hex digits)");
        if hex.len() != 64 {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, pair) in hex.chunks(2).enumerate() {
            let text = std::str::from_utf8(pair).map_err(|_| bad())?;
            out[i] = u8::from_str_radix(text, 16).map_err(|_| bad())?;
        }
        Ok(Fingerprint(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_read_as_tern_and_openssl_write_them() {
        let tern = "sha256:".to_string() + &"ab".repeat(32);
        let f: Fingerprint = tern.parse().unwrap();
        assert_eq!(f.to_string(), tern);
        let openssl = format!("sha256 Fingerprint={}", vec!["AB"; 32].join(":"));
        assert_eq!(openssl.parse::<Fingerprint>().unwrap(), f);
        assert!("sha256:abcd".parse::<Fingerprint>().is_err());
        assert!(("sha256:".to_string() + &"zz".repeat(32))
            .parse::<Fingerprint>()
            .is_err());
    }

    #[test]
    fn policies_parse_by_their_config_names() {
        for p in [
            TlsPolicy::None,
            TlsPolicy::May,
            TlsPolicy::Encrypt,
            TlsPolicy::Verify,
        ] {
            assert_eq!(p.as_str().parse::<TlsPolicy>(), Ok(p));
        }
        let mut problems = Vec::new();
        policy("delivery.tls_policy", "dane", &mut problems);
        assert!(problems[0].starts_with("delivery.tls_policy: \"dane\""));
    }
}
