//! Certificate checks rustls does not ship: accept any server certificate
//! (outbound `may` and `encrypt`, as Postfix's levels of the same names),
//! accept only one pinned certificate (the shadow link), verify with
//! WebPKI but only report a failure (MTA-STS `testing`), and accept any
//! client certificate (a peer's, checked against the pins by the session
//! after the handshake). Every one of them still verifies the handshake
//! signatures, so the other side must hold the key of the certificate it
//! shows: a pin cannot be passed by replaying a certificate.

use std::sync::Arc;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::identity::fingerprint;
use crate::config::Fingerprint;

/// The ring provider's signature algorithms.
fn algorithms() -> WebPkiSupportedAlgorithms {
    super::provider().signature_verification_algorithms
}

/// Which server certificates an outbound connection takes.
#[derive(Debug)]
pub struct ServerCheck {
    /// `None`: any; `Some`: only the certificate with this fingerprint.
    pin: Option<Fingerprint>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCheck {
    /// Any certificate (signatures still verified).
    pub fn any() -> Arc<ServerCheck> {
        Arc::new(ServerCheck {
            pin: None,
            algorithms: algorithms(),
        })
    }

    /// Only the certificate pinned by `pin`.
    pub fn pinned(pin: Fingerprint) -> Arc<ServerCheck> {
        Arc::new(ServerCheck {
            pin: Some(pin),
            algorithms: algorithms(),
        })
    }
}

impl ServerCertVerifier for ServerCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        match self.pin {
            Some(pin) if fingerprint(end_entity) != pin => Err(Error::General(format!(
                "certificate {} is not the pinned {pin}",
                fingerprint(end_entity)
            ))),
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// WebPKI verification whose failure is logged and counted but lets the
/// handshake go on: what MTA-STS `testing` asks (RFC 8461 5: report,
/// deliver anyway).
#[derive(Debug)]
pub struct ReportCheck {
    inner: Arc<WebPkiServerVerifier>,
    reported: Arc<AtomicU64>,
}

impl ReportCheck {
    /// Verifies against `roots`; failures counted in `reported`.
    pub fn new(roots: rustls::RootCertStore, reported: Arc<AtomicU64>) -> Arc<ReportCheck> {
        let inner = WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(super::provider()),
        )
        .build()
        .expect("the WebPKI roots are not empty");
        Arc::new(ReportCheck { inner, reported })
    }
}

impl ServerCertVerifier for ReportCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let r = self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now);
        if let Err(e) = r {
            self.reported.fetch_add(1, Relaxed);
            tracing::warn!(host = %server_name.to_str(), error = %e,
                "MTA-STS testing: the certificate would fail verification; delivering anyway");
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Asks connecting cluster peers for their certificate and takes any
/// (optional: a client without one is just not a peer).
#[derive(Debug)]
pub struct PeerClientCheck {
    algorithms: WebPkiSupportedAlgorithms,
}

impl PeerClientCheck {
    /// The verifier.
    pub fn new() -> Arc<PeerClientCheck> {
        Arc::new(PeerClientCheck {
            algorithms: algorithms(),
        })
    }
}

impl ClientCertVerifier for PeerClientCheck {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
