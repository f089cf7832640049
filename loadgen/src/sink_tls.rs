//! TLS and AUTH for `sink`: the flags, the server configuration (a PEM
//! certificate and key, or a self-signed certificate generated at start),
//! and the command lines the sink answers itself before the session sees
//! them ([`Hooks`]): STARTTLS (RFC 3207) and, with `--auth-any`, AUTH
//! PLAIN (RFC 4954) with any credentials.
//!
//! The session (`tern_smtp::server::Session`) implements neither: the
//! connection loop feeds it whole command lines (the splitter path, as
//! for fault injection) while a hook may fire, and the plain fast path
//! otherwise. After STARTTLS the loop discards whatever the client sent
//! behind it before the handshake (command injection, RFC 3207 6), and
//! starts a new session without greeting: back to before EHLO.

use std::path::PathBuf;
use std::sync::Arc;

use futures_rustls::TlsAcceptor;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The TLS and AUTH flags of `sink`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct SinkTlsArgs {
    /// Offer STARTTLS (RFC 3207) in EHLO and accept it (certificate:
    /// --tls-cert/--tls-key, or a self-signed one generated at start).
    #[arg(long, conflicts_with = "tls")]
    pub starttls: bool,
    /// Implicit TLS (RFC 8314) on the listener: every connection starts
    /// with the TLS handshake.
    #[arg(long)]
    pub tls: bool,
    /// PEM certificate chain for --starttls/--tls (default: a self-signed
    /// certificate for localhost, 127.0.0.1 and ::1).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Offer AUTH PLAIN and accept any credentials with 235 (for
    /// benchmarking clients that authenticate).
    #[arg(long)]
    pub auth_any: bool,
}

/// When the handshake happens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// On STARTTLS.
    StartTls,
    /// Right after accept.
    Implicit,
}

/// The TLS settings every core shares (one ticketer: a session resumes
/// on any core).
#[derive(Clone)]
pub struct SinkTls {
    /// `--starttls` or `--tls`.
    pub mode: Mode,
    /// The server configuration.
    pub acceptor: TlsAcceptor,
}

impl SinkTls {
    /// The TLS settings of `args`; `None` without `--starttls` or `--tls`.
    pub fn from_args(args: &SinkTlsArgs) -> anyhow::Result<Option<SinkTls>> {
        let mode = match (args.starttls, args.tls) {
            (true, _) => Mode::StartTls,
            (false, true) => Mode::Implicit,
            (false, false) => {
                anyhow::ensure!(
                    args.tls_cert.is_none(),
                    "--tls-cert and --tls-key need --starttls or --tls"
                );
                return Ok(None);
            }
        };
        let (chain, key) = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => load(cert, key)?,
            _ => self_signed()?,
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        // Stateless TLS 1.3 tickets (and TLS 1.2 ones): resumption works
        // across cores and needs no server-side cache.
        config.ticketer = rustls::crypto::ring::Ticketer::new()?;
        Ok(Some(SinkTls {
            mode,
            acceptor: TlsAcceptor::from(Arc::new(config)),
        }))
    }
}

type Chain = Vec<CertificateDer<'static>>;

fn load(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<(Chain, PrivateKeyDer<'static>)> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", cert.display()))?;
    anyhow::ensure!(!chain.is_empty(), "{}: no certificate", cert.display());
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", key.display()))?;
    Ok((chain, key))
}

fn self_signed() -> anyhow::Result<(Chain, PrivateKeyDer<'static>)> {
    let names = ["localhost", "127.0.0.1", "::1"].map(String::from).to_vec();
    let c = rcgen::generate_simple_self_signed(names)?;
    let key = PrivatePkcs8KeyDer::from(c.key_pair.serialize_der());
    Ok((vec![c.cert.der().clone()], key.into()))
}

/// What the sink does with a command line.
#[derive(Debug, PartialEq, Eq)]
pub enum Hook {
    /// The session handles it.
    Pass,
    /// Answered by the sink with this reply.
    Reply(&'static [u8]),
    /// STARTTLS accepted: send [`READY_TLS`], discard the rest of the
    /// input, and hand the socket to the TLS handshake.
    StartTls,
}

/// The reply to an accepted STARTTLS.
pub const READY_TLS: &[u8] = b"220 2.0.0 Ready to start TLS\r\n";
const AUTH_OK: &[u8] = b"235 2.7.0 Authentication successful\r\n";

/// The command lines the sink answers itself on one connection layer
/// (plain, or inside TLS).
#[derive(Debug, Default)]
pub struct Hooks {
    /// STARTTLS accepted (plain layer with `--starttls`).
    pub starttls: bool,
    /// AUTH PLAIN accepted (`--auth-any`).
    pub auth_any: bool,
    /// AUTH PLAIN without an initial response: the next line is it.
    auth_pending: bool,
}

/// The longest command line prefix [`Hooks::line`] looks at.
pub const LINE_HEAD: usize = 64;

impl Hooks {
    /// Hooks for STARTTLS (when `starttls`) and AUTH PLAIN (`auth_any`).
    pub fn new(starttls: bool, auth_any: bool) -> Hooks {
        Hooks {
            starttls,
            auth_any,
            auth_pending: false,
        }
    }

    /// True if some line may be answered by the sink.
    pub fn active(&self) -> bool {
        self.starttls || self.auth_any
    }

    /// Classifies a complete command line, of which `head` is the first
    /// [`LINE_HEAD`] bytes at most (CRLF included when it fits).
    pub fn line(&mut self, head: &[u8]) -> Hook {
        if self.auth_pending {
            self.auth_pending = false;
            if head.trim_ascii() == b"*" {
                return Hook::Reply(b"501 5.7.0 Authentication cancelled\r\n");
            }
            return Hook::Reply(AUTH_OK);
        }
        let mut words = head
            .split(u8::is_ascii_whitespace)
            .filter(|w| !w.is_empty());
        let verb = words.next().unwrap_or(b"");
        if self.starttls && verb.eq_ignore_ascii_case(b"STARTTLS") {
            if words.next().is_some() {
                return Hook::Reply(b"501 5.5.4 Syntax: STARTTLS\r\n");
            }
            return Hook::StartTls;
        }
        if self.auth_any && verb.eq_ignore_ascii_case(b"AUTH") {
            return match (words.next(), words.next()) {
                (Some(m), Some(_)) if m.eq_ignore_ascii_case(b"PLAIN") => Hook::Reply(AUTH_OK),
                (Some(m), None) if m.eq_ignore_ascii_case(b"PLAIN") => {
                    self.auth_pending = true;
                    Hook::Reply(b"334 \r\n")
                }
                (Some(_), _) => Hook::Reply(b"504 5.5.4 Mechanism not supported\r\n"),
                (None, _) => Hook::Reply(b"501 5.5.4 Syntax: AUTH mechanism\r\n"),
            };
        }
        Hook::Pass
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hooks_table() {
        let on = || Hooks::new(true, true);
        let table: &[(&[u8], Hook)] = &[
            (b"STARTTLS\r\n", Hook::StartTls),
            (b"starttls\r\n", Hook::StartTls),
            (
                b"STARTTLS now\r\n",
                Hook::Reply(b"501 5.5.4 Syntax: STARTTLS\r\n"),
            ),
            (b"AUTH PLAIN AGJvYgBwdw==\r\n", Hook::Reply(AUTH_OK)),
            (b"auth plain AGJvYgBwdw==", Hook::Reply(AUTH_OK)),
            (
                b"AUTH LOGIN\r\n",
                Hook::Reply(b"504 5.5.4 Mechanism not supported\r\n"),
            ),
            (
                b"AUTH\r\n",
                Hook::Reply(b"501 5.5.4 Syntax: AUTH mechanism\r\n"),
            ),
            (b"NOOP\r\n", Hook::Pass),
            (b"STARTTLSX\r\n", Hook::Pass),
            (b"MAIL FROM:<a@b>\r\n", Hook::Pass),
        ];
        for (line, want) in table {
            assert_eq!(
                &on().line(line),
                want,
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
        // Off: everything passes.
        let mut off = Hooks::default();
        assert_eq!(off.line(b"STARTTLS\r\n"), Hook::Pass);
        assert_eq!(off.line(b"AUTH PLAIN x\r\n"), Hook::Pass);
        // AUTH PLAIN without an initial response: 334, then the response.
        let mut h = on();
        assert_eq!(h.line(b"AUTH PLAIN\r\n"), Hook::Reply(b"334 \r\n"));
        assert_eq!(h.line(b"AGJvYgBwdw==\r\n"), Hook::Reply(AUTH_OK));
        assert_eq!(h.line(b"NOOP\r\n"), Hook::Pass);
        assert_eq!(h.line(b"AUTH PLAIN\r\n"), Hook::Reply(b"334 \r\n"));
        assert_eq!(
            h.line(b"*\r\n"),
            Hook::Reply(b"501 5.7.0 Authentication cancelled\r\n")
        );
    }

    #[test]
    fn self_signed_config_builds() {
        let args = SinkTlsArgs {
            starttls: true,
            ..SinkTlsArgs::default()
        };
        let t = SinkTls::from_args(&args).unwrap().unwrap();
        assert_eq!(t.mode, Mode::StartTls);
        assert!(SinkTls::from_args(&SinkTlsArgs::default())
            .unwrap()
            .is_none());
    }
}
