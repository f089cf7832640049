//! TLS for `send`: the flags, the client configuration (one per core, so
//! the connections of a core share its session cache), the certificate
//! verifier that accepts any certificate, and the connection's stream
//! (plain or TLS).
//!
//! * `--starttls` (RFC 3207): after EHLO, STARTTLS, its 220, the
//!   handshake, EHLO again. A server that does not offer it fails the
//!   connection: the user asked for TLS.
//! * `--tls` (RFC 8314 implicit TLS): the handshake right after connect,
//!   before the greeting.
//!
//! Benchmarks usually run against self-signed certificates, so by default
//! any certificate is accepted; the handshake signatures are still
//! checked with the provider's algorithms (the key exchange is real).
//! `--tls-verify --tls-ca FILE` verifies against the roots in FILE.
//!
//! Session resumption is on (an in-memory cache per core, shared by its
//! connections); `--tls-no-resume` forces a full handshake on every
//! connection, so a benchmark can measure both.

use std::path::PathBuf;
use std::sync::Arc;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use futures_rustls::TlsConnector;
use glommio::net::TcpStream;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::send_target::Target;

/// The TLS flags of `send`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TlsArgs {
    /// STARTTLS (RFC 3207) after EHLO, then EHLO again; a server that does
    /// not offer STARTTLS is a connection error.
    #[arg(long, conflicts_with = "tls")]
    pub starttls: bool,
    /// Implicit TLS (RFC 8314): the TLS handshake right after connect,
    /// before the greeting (e.g. port 465).
    #[arg(long)]
    pub tls: bool,
    /// Verify the server's certificate against the roots in --tls-ca
    /// (default: accept any certificate, still checking the handshake
    /// signatures).
    #[arg(long, requires = "tls_ca")]
    pub tls_verify: bool,
    /// PEM file of the root certificates --tls-verify trusts.
    #[arg(long, value_name = "FILE", requires = "tls_verify")]
    pub tls_ca: Option<PathBuf>,
    /// TLS server name: sent as SNI and verified with --tls-verify.
    /// Default: the target's host; an IP address is verified as such and
    /// sends no SNI.
    #[arg(long, value_name = "NAME")]
    pub tls_sni: Option<String>,
    /// A full handshake on every connection: no TLS session resumption
    /// (default: resume, from a session cache per core).
    #[arg(long)]
    pub tls_no_resume: bool,
}

/// When the handshake happens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsMode {
    /// After EHLO, on STARTTLS.
    StartTls,
    /// Right after connect.
    Implicit,
}

/// How the server's certificate is checked.
#[derive(Clone, Debug)]
enum Verify {
    /// Any certificate (handshake signatures still checked).
    Any,
    /// Against these roots.
    Roots(Arc<RootCertStore>),
}

/// Sessions the per-core cache keeps (rustls keys it by server name, and
/// keeps a few TLS 1.3 tickets per name): room for many targets.
const SESSIONS_MAX: usize = 256;

/// The TLS settings every core shares.
#[derive(Clone, Debug)]
pub struct TlsPlan {
    /// `--starttls` or `--tls`.
    pub mode: TlsMode,
    verify: Verify,
    resume: bool,
    /// The server name of each target.
    names: Vec<ServerName<'static>>,
}

impl TlsPlan {
    /// The plan of `args` for `targets`; `None` without `--starttls` or
    /// `--tls`.
    pub fn from_args(args: &TlsArgs, targets: &[Target]) -> anyhow::Result<Option<TlsPlan>> {
        let mode = match (args.starttls, args.tls) {
            (true, _) => TlsMode::StartTls,
            (false, true) => TlsMode::Implicit,
            (false, false) => {
                anyhow::ensure!(
                    !args.tls_verify && args.tls_sni.is_none() && !args.tls_no_resume,
                    "--tls-verify, --tls-sni and --tls-no-resume need --starttls or --tls"
                );
                return Ok(None);
            }
        };
        let verify = match &args.tls_ca {
            Some(path) if args.tls_verify => Verify::Roots(Arc::new(roots(path)?)),
            _ => Verify::Any,
        };
        let names = targets
            .iter()
            .map(|t| server_name(args.tls_sni.as_deref().unwrap_or_else(|| t.host())))
            .collect::<anyhow::Result<_>>()?;
        Ok(Some(TlsPlan {
            mode,
            verify,
            resume: !args.tls_no_resume,
            names,
        }))
    }

    /// A core's connector, with its own session cache.
    pub(super) fn connector(&self) -> TlsConnector {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default versions");
        let mut config = match &self.verify {
            Verify::Any => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
                .with_no_client_auth(),
            Verify::Roots(roots) => builder
                .with_root_certificates(roots.clone())
                .with_no_client_auth(),
        };
        config.resumption = if self.resume {
            Resumption::in_memory_sessions(SESSIONS_MAX)
        } else {
            Resumption::disabled()
        };
        TlsConnector::from(Arc::new(config))
    }

    /// The server name of target `target`.
    pub(super) fn name(&self, target: usize) -> ServerName<'static> {
        self.names[target].clone()
    }
}

fn server_name(name: &str) -> anyhow::Result<ServerName<'static>> {
    // "[::1]" as written in a target.
    let name = name.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(name.to_owned())
        .map_err(|e| anyhow::anyhow!("TLS server name {name:?}: {e}"))
}

fn roots(path: &std::path::Path) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    for cert in certs {
        let cert = cert.map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        roots
            .add(cert)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    }
    anyhow::ensure!(!roots.is_empty(), "{}: no certificate", path.display());
    Ok(roots)
}

/// Accepts any server certificate, but checks the handshake signatures
/// (made with the certificate's key) with the provider's algorithms.
#[derive(Debug)]
struct AnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A connection's byte stream. The plain arm is the glommio stream
/// itself: no copy, no buffer, one branch per call.
pub(super) enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP (boxed: the TLS state is large).
    Tls(Box<futures_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    /// Writes all of `bytes` onto the wire (a TLS stream may keep records
    /// buffered until flushed).
    pub(super) async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.write_all(bytes).await,
            Stream::Tls(s) => {
                s.write_all(bytes).await?;
                s.flush().await
            }
        }
    }

    /// Reads what is there (at least one byte; 0 at EOF).
    pub(super) async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf).await,
            Stream::Tls(s) => s.read(buf).await,
        }
    }

    /// Closes (TLS: close_notify first).
    pub(super) async fn close(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.close().await,
            Stream::Tls(s) => s.close().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(args: &TlsArgs, targets: &[&str]) -> anyhow::Result<Option<TlsPlan>> {
        let targets: Vec<Target> = targets.iter().map(|t| t.parse().unwrap()).collect();
        TlsPlan::from_args(args, &targets)
    }

    #[test]
    fn server_names_default_to_the_target_host() {
        let args = TlsArgs {
            starttls: true,
            ..TlsArgs::default()
        };
        let p = plan(&args, &["mx.example.com:25", "127.0.0.1:25", "[::1]:25"])
            .unwrap()
            .unwrap();
        assert_eq!(p.mode, TlsMode::StartTls);
        assert!(matches!(p.name(0), ServerName::DnsName(d) if d.as_ref() == "mx.example.com"));
        assert!(matches!(p.name(1), ServerName::IpAddress(_)));
        assert!(matches!(p.name(2), ServerName::IpAddress(_)));
        let args = TlsArgs {
            tls: true,
            tls_sni: Some("localhost".into()),
            ..TlsArgs::default()
        };
        let p = plan(&args, &["127.0.0.1:465"]).unwrap().unwrap();
        assert_eq!(p.mode, TlsMode::Implicit);
        assert!(matches!(p.name(0), ServerName::DnsName(d) if d.as_ref() == "localhost"));
    }

    #[test]
    fn tls_options_need_a_tls_mode() {
        assert!(plan(&TlsArgs::default(), &["a:1"]).unwrap().is_none());
        let args = TlsArgs {
            tls_no_resume: true,
            ..TlsArgs::default()
        };
        assert!(plan(&args, &["a:1"]).is_err());
    }
}
