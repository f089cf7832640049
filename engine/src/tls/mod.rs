//! TLS for every connection tern has: inbound STARTTLS (RFC 3207) and
//! implicit TLS (RFC 8314), outbound STARTTLS by policy (`none`, `may`,
//! `encrypt`, `verify`), and the shadow link, where peers know each other
//! by pinned certificate fingerprints both ways.
//!
//! rustls with the *ring* provider: pure Rust plus ring's C and assembly
//! (a C compiler, no cmake, no Go, no NASM, where aws-lc-rs needs cmake
//! and builds a large C library). BENCHMARKS.md has the handshake and
//! per-message cost measured with it.
//!
//! # Layout
//!
//! ```text
//! mod.rs       Tls: the node's server and client configs; TlsInfo; TlsError
//! identity.rs  a certificate and key from PEM files, checked; the self-signed pair; fingerprints
//! certs.rs     the served set, chosen by SNI, swapped on reload
//! verify.rs    certificate checks rustls does not ship (any, pinned, peer client certs)
//! reload.rs    SIGHUP and file-change reloads
//! stats.rs     sessions by cipher suite, handshake failures by reason
//! stream.rs    Stream: plain TCP or TLS on top of it
//! ```

pub mod certs;
pub mod identity;
pub mod reload;
pub mod stats;
pub mod stream;
pub mod verify;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_rustls::{TlsAcceptor, TlsConnector};
use glommio::net::TcpStream;
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};

use crate::config::{Config, Fingerprint, MinVersion, TlsPolicy};
pub use certs::Certificates;
pub use stats::{Failure, TlsStats};
pub use stream::Stream;

/// Why TLS could not be set up (start-up and reload errors; each names
/// the file and what to do).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {}: {source} (check the path and that tern may read it)", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file could not be written (the self-signed pair).
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The certificate file is not a usable PEM chain.
    #[error("{}: {why}", path.display())]
    BadCertificate {
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// The key file is not a usable PEM key (or not the certificate's).
    #[error("{}: {why}", path.display())]
    BadKey {
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// The certificate's validity ended.
    #[error("{}: the certificate expired on {not_after}; renew it", path.display())]
    Expired {
        /// The file.
        path: PathBuf,
        /// End of validity.
        not_after: String,
    },
    /// The self-signed certificate could not be made.
    #[error("cannot make a self-signed certificate: {why}")]
    Generate {
        /// Why.
        why: String,
    },
    /// `tls.ca_file` has no usable certificate.
    #[error("tls.ca_file {}: {why}", path.display())]
    BadRoots {
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
}

/// The provider every config uses (see the module doc).
pub fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// What a TLS session negotiated, for `Received:` and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlsInfo {
    /// `TLSv1.2` or `TLSv1.3`.
    pub version: &'static str,
    /// IANA-style suite name as rustls spells it (`TLS13_AES_256_GCM_SHA384`).
    pub cipher: &'static str,
    /// The session was resumed (no full handshake).
    pub resumed: bool,
    /// The other side's certificate (a peer's, on the shadow link).
    pub peer: Option<Fingerprint>,
}

impl TlsInfo {
    /// Reads it from a finished handshake.
    pub fn of(c: &rustls::CommonState) -> TlsInfo {
        let version = match c.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
            _ => "TLS",
        };
        TlsInfo {
            version,
            cipher: c
                .negotiated_cipher_suite()
                .and_then(|s| s.suite().as_str())
                .unwrap_or("unknown"),
            resumed: c.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
            peer: c
                .peer_certificates()
                .and_then(|c| c.first())
                .map(identity::fingerprint),
        }
    }
}

/// Server-side sessions kept for resumption (TLS 1.2 ids; TLS 1.3 uses
/// stateless tickets). Each entry is a few hundred bytes.
const SERVER_SESSIONS_MAX: usize = 20_000;

/// A node's TLS: built once at start, shared by every core (rustls
/// configs are `Send + Sync`; a handshake takes them by `Arc`).
pub struct Tls {
    /// The served certificates (reloadable); `None` when there are none
    /// (`tls.self_signed = false` and no `tls.certificates`): no inbound
    /// TLS is offered then.
    pub certs: Option<Arc<Certificates>>,
    /// Counters.
    pub stats: Arc<TlsStats>,
    /// For clients: no client certificate asked.
    public: Option<TlsAcceptor>,
    /// For cluster peers' addresses: their certificate is asked for.
    peers: Option<TlsAcceptor>,
    /// Outbound `may` and `encrypt`: any certificate.
    any: TlsConnector,
    /// Outbound `verify`: WebPKI roots plus `tls.ca_file`.
    verify: TlsConnector,
    /// The same roots, failures only reported (MTA-STS `testing`).
    report: TlsConnector,
    /// The `verify` config, for HTTPS clients (MTA-STS policy fetches).
    webpki: Arc<ClientConfig>,
    /// The shadow link: one per peer, that peer's pin, our certificate.
    pinned: HashMap<Fingerprint, TlsConnector>,
    /// Longest handshake.
    pub handshake_timeout: Duration,
    /// Delivery default.
    pub default_policy: TlsPolicy,
}

impl Tls {
    /// Loads the certificates (making the self-signed pair when none are
    /// configured and `tls.self_signed` is on) and builds every config.
    pub fn start(config: &Config) -> Result<Arc<Tls>, TlsError> {
        let mut files = config.tls.certificates.clone();
        if files.is_empty() && config.tls.self_signed {
            if identity::ensure_self_signed(&config.data_dir, &config.hostname)? {
                tracing::warn!(
                    dir = %config.data_dir.join("tls").display(),
                    hostname = %config.hostname,
                    "no tls.certificates configured: made a self-signed certificate; \
                     STARTTLS is offered with it (set tls.certificates for a real one)"
                );
            }
            files.push(identity::self_signed_files(&config.data_dir));
        }
        let certs = match files.is_empty() {
            true => None,
            false => Some(Arc::new(Certificates::load(files)?)),
        };
        let versions = versions(config.tls.min_version);
        let acceptor = |peer_certs| {
            certs
                .as_ref()
                .map(|c| TlsAcceptor::from(server_config(c, versions, peer_certs)))
        };
        let (public, peers) = (acceptor(false), acceptor(true));
        let any = client_config(versions, verify::ServerCheck::any(), None);
        let roots = roots(config.tls.ca_file.as_deref())?;
        let stats = Arc::new(TlsStats::default());
        let report = client_config(
            versions,
            verify::ReportCheck::new(roots.clone(), stats.verify_reported.clone()),
            None,
        );
        let verify = Arc::new(
            ClientConfig::builder_with_provider(Arc::new(provider()))
                .with_protocol_versions(versions)
                .expect("ring supports TLS 1.2 and 1.3")
                .with_root_certificates(roots)
                .with_no_client_auth(),
        );
        let pinned = config
            .cluster
            .peers
            .iter()
            .map(|p| {
                let c = client_config(
                    versions,
                    verify::ServerCheck::pinned(p.fingerprint),
                    certs.clone(),
                );
                (p.fingerprint, TlsConnector::from(c))
            })
            .collect();
        for id in certs.iter().flat_map(|c| c.identities()) {
            tracing::info!(
                cert = %id.files.cert_file.display(),
                names = ?id.names,
                fingerprint = %id.fingerprint,
                "TLS certificate loaded"
            );
        }
        Ok(Arc::new(Tls {
            certs,
            stats,
            public,
            peers,
            any: TlsConnector::from(any),
            verify: TlsConnector::from(verify.clone()),
            report: TlsConnector::from(report),
            webpki: verify,
            pinned,
            handshake_timeout: config.tls.handshake_timeout,
            default_policy: config.delivery.tls_policy,
        }))
    }

    /// A client config that verifies servers with the WebPKI roots plus
    /// `tls.ca_file` (for HTTPS: MTA-STS policy fetches).
    pub fn webpki_client(&self) -> Arc<ClientConfig> {
        self.webpki.clone()
    }

    /// Inbound TLS can be offered (a certificate exists).
    pub fn offers_tls(&self) -> bool {
        self.certs.is_some()
    }

    /// The server side of a handshake on `tcp` (after our 220 to
    /// STARTTLS, or at once on the implicit listener). `peer_certs`: ask
    /// for the client's certificate (the address is a cluster peer's).
    pub async fn accept(&self, tcp: TcpStream, peer_certs: bool) -> Result<Stream, Failure> {
        let acceptor = if peer_certs {
            &self.peers
        } else {
            &self.public
        };
        let acceptor = acceptor.as_ref().ok_or(Failure::Certificate)?;
        let r = within(self.handshake_timeout, acceptor.accept(tcp)).await;
        match r {
            Ok(s) => {
                let info = TlsInfo::of(s.get_ref().1);
                self.stats.session(stats::Direction::In, info);
                Ok(Stream::Server(Box::new(s)))
            }
            Err(e) => {
                let f = Failure::of(&e);
                self.stats.failed(stats::Direction::In, f);
                Err(f)
            }
        }
    }

    /// The client side of a handshake with `host`: `Verify` checks the
    /// certificate for that name (WebPKI); `Any` takes any; `Pinned`
    /// takes only that certificate and shows ours.
    pub async fn connect(
        &self,
        tcp: TcpStream,
        host: &str,
        check: Check,
    ) -> Result<Stream, Failure> {
        let connector = match check {
            Check::Any => &self.any,
            Check::Verify => &self.verify,
            Check::Report => &self.report,
            Check::Pinned(f) => self.pinned.get(&f).ok_or(Failure::Certificate)?,
        };
        let name = server_name(host);
        let r = within(self.handshake_timeout, connector.connect(name, tcp)).await;
        match r {
            Ok(s) => {
                let info = TlsInfo::of(s.get_ref().1);
                self.stats.session(stats::Direction::Out, info);
                Ok(Stream::Client(Box::new(s)))
            }
            Err(e) => {
                let f = Failure::of(&e);
                self.stats.failed(stats::Direction::Out, f);
                Err(f)
            }
        }
    }
}

/// `fut` with a time limit (`TimedOut` when it passes).
async fn within<T>(
    limit: Duration,
    fut: impl std::future::Future<Output = std::io::Result<T>>,
) -> std::io::Result<T> {
    let timer = async {
        glommio::timer::sleep(limit).await;
        Err(std::io::ErrorKind::TimedOut.into())
    };
    futures_lite::future::or(fut, timer).await
}

/// How an outbound handshake checks the server's certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// Any certificate (`may`, `encrypt`).
    Any,
    /// WebPKI for the host name (`verify`).
    Verify,
    /// WebPKI checked, failures only reported (MTA-STS `testing`).
    Report,
    /// Exactly this certificate (the shadow link).
    Pinned(Fingerprint),
}

/// The SNI / verification name: an IP address or a DNS name (a trailing
/// dot dropped); a name rustls cannot take falls back to `localhost`,
/// which only `verify` would then refuse.
fn server_name(host: &str) -> ServerName<'static> {
    let host = match host.strip_prefix('[').and_then(|h| h.split_once(']')) {
        Some((inside, _port)) => inside,
        None => match host.rsplit_once(':') {
            Some((h, p)) if p.parse::<u16>().is_ok() && !h.contains(':') => h,
            _ => host,
        },
    };
    let host = host.trim_end_matches('.');
    ServerName::try_from(host.to_string())
        .unwrap_or_else(|_| ServerName::try_from("localhost").expect("valid name"))
}

static TLS13_ONLY: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

fn versions(min: MinVersion) -> &'static [&'static rustls::SupportedProtocolVersion] {
    match min {
        MinVersion::Tls12 => rustls::ALL_VERSIONS,
        MinVersion::Tls13 => TLS13_ONLY,
    }
}

fn server_config(
    certs: &Arc<Certificates>,
    versions: &'static [&'static rustls::SupportedProtocolVersion],
    peer_certs: bool,
) -> Arc<ServerConfig> {
    let builder = ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(versions)
        .expect("ring supports TLS 1.2 and 1.3");
    let builder = if peer_certs {
        builder.with_client_cert_verifier(verify::PeerClientCheck::new())
    } else {
        builder.with_no_client_auth()
    };
    let mut c = builder.with_cert_resolver(certs.clone());
    c.session_storage = rustls::server::ServerSessionMemoryCache::new(SERVER_SESSIONS_MAX);
    if let Ok(t) = rustls::crypto::ring::Ticketer::new() {
        c.ticketer = t;
    }
    Arc::new(c)
}

fn client_config(
    versions: &'static [&'static rustls::SupportedProtocolVersion],
    check: Arc<dyn rustls::client::danger::ServerCertVerifier>,
    identity: Option<Arc<Certificates>>,
) -> Arc<ClientConfig> {
    let builder = ClientConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(versions)
        .expect("ring supports TLS 1.2 and 1.3")
        .dangerous()
        .with_custom_certificate_verifier(check);
    Arc::new(match identity {
        Some(certs) => builder.with_client_cert_resolver(Arc::new(certs::ClientIdentity(certs))),
        None => builder.with_no_client_auth(),
    })
}

/// The WebPKI roots, plus those of `ca_file`.
fn roots(ca_file: Option<&Path>) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let text = std::fs::read(path).map_err(|e| TlsError::Read {
            path: path.to_path_buf(),
            source: e,
        })?;
        let bad = |why: String| TlsError::BadRoots {
            path: path.to_path_buf(),
            why,
        };
        let mut n = 0;
        for c in CertificateDer::pem_slice_iter(&text) {
            roots
                .add(c.map_err(|e| bad(e.to_string()))?)
                .map_err(|e| bad(e.to_string()))?;
            n += 1;
        }
        if n == 0 {
            return Err(bad("no PEM certificate in it".into()));
        }
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_drop_ports_brackets_and_the_root_dot() {
        let s = |h: &str| server_name(h).to_str().into_owned();
        assert_eq!(s("mx.example."), "mx.example");
        assert_eq!(s("mx.example:25"), "mx.example");
        assert_eq!(s("127.0.0.2:2525"), "127.0.0.2");
        assert_eq!(s("[::1]:25"), "::1");
    }
}
