//! TLS for the integration tests: one cluster certificate shared by every
//! node a test process starts (so each node's pin of its peers is that
//! certificate's fingerprint), the `[tls]` section and peer entries that
//! use it, and rustls client configurations for [`crate::smtp::Client`]
//! (any server certificate; optionally showing a client certificate).

use std::io;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime};

use rustls::ClientConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tern_engine::tls::identity;
use tern_engine::tls::verify::ServerCheck;

/// A certificate and key on disk and the certificate's fingerprint.
pub struct CertPair {
    /// PEM chain.
    pub cert_file: PathBuf,
    /// PEM key.
    pub key_file: PathBuf,
    /// `sha256:<hex>` as peers' `fingerprint` take it.
    pub fingerprint: String,
    _dir: Option<tempfile::TempDir>,
}

impl CertPair {
    /// A new self-signed pair for `hostname` (tern's own generator),
    /// kept in a fresh directory until dropped.
    pub fn generate(hostname: &str) -> CertPair {
        let dir = tempfile::tempdir().expect("temp dir for a certificate");
        let mut pair = CertPair::generate_in(dir.path(), hostname);
        pair._dir = Some(dir);
        pair
    }

    /// A new self-signed pair in `dir/tls/` (not removed).
    pub fn generate_in(dir: &Path, hostname: &str) -> CertPair {
        identity::ensure_self_signed(dir, hostname).expect("generate a certificate");
        let files = identity::self_signed_files(dir);
        let id = identity::load(&files, SystemTime::now()).expect("load the certificate");
        CertPair {
            cert_file: files.cert_file,
            key_file: files.key_file,
            fingerprint: id.fingerprint.to_string(),
            _dir: None,
        }
    }

    /// The chain and key from the files.
    fn read(&self) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        read_pair(&self.cert_file, &self.key_file)
    }

    /// `[tls]` serving this pair.
    pub fn tls_section(&self) -> String {
        format!(
            "[tls]\ncertificates = [ {{ cert_file = \"{}\", key_file = \"{}\" }} ]\n",
            self.cert_file.display(),
            self.key_file.display()
        )
    }

    /// A client configuration that shows this pair as its certificate
    /// (and takes any server certificate).
    pub fn client_config(&self) -> Arc<ClientConfig> {
        let (chain, key) = self.read();
        let config = builder()
            .with_client_auth_cert(chain, key)
            .expect("client certificate");
        Arc::new(config)
    }
}

fn builder() -> rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert> {
    ClientConfig::builder_with_provider(Arc::new(tern_engine::tls::provider()))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(ServerCheck::any())
}

/// A client configuration without a client certificate that takes any
/// server certificate (as a `may`/`encrypt` sender would).
pub fn anonymous_client() -> Arc<ClientConfig> {
    static CONFIG: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| Arc::new(builder().with_no_client_auth()))
        .clone()
}

/// The certificate every node of this test process serves and pins.
pub fn cluster() -> &'static CertPair {
    static PAIR: OnceLock<CertPair> = OnceLock::new();
    PAIR.get_or_init(|| CertPair::generate("cluster.test"))
}

/// The `[tls]` section of a cluster node (the cluster certificate).
pub fn tls_section() -> String {
    cluster().tls_section()
}

/// One inline `cluster.peers` entry pinning the cluster certificate;
/// `site` is left out when `None`.
pub fn peer(node_id: &str, address: impl std::fmt::Display, site: Option<&str>) -> String {
    let site = site.map_or(String::new(), |s| format!(", site = \"{s}\""));
    format!(
        "{{ node_id = \"{node_id}\", address = \"{address}\"{site}, fingerprint = \"{}\" }}",
        cluster().fingerprint
    )
}

impl CertPair {
    /// A server configuration serving this pair (no client certificate
    /// asked), for test servers that speak STARTTLS.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        server_config_from(&self.cert_file, &self.key_file)
    }
}

/// The PEM chain and key in these files.
fn read_pair(
    cert_file: &Path,
    key_file: &Path,
) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let chain = CertificateDer::pem_file_iter(cert_file)
        .expect("read the chain")
        .collect::<Result<_, _>>()
        .expect("parse the chain");
    let key = PrivateKeyDer::from_pem_file(key_file).expect("read the key");
    (chain, key)
}

/// A server configuration serving the PEM chain and key in these files
/// (no client certificate asked).
pub fn server_config_from(cert_file: &Path, key_file: &Path) -> Arc<rustls::ServerConfig> {
    let (chain, key) = read_pair(cert_file, key_file);
    let config =
        rustls::ServerConfig::builder_with_provider(Arc::new(tern_engine::tls::provider()))
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server certificate");
    Arc::new(config)
}

/// A server-side TLS stream over a blocking socket.
pub type ServerStream = rustls::StreamOwned<rustls::ServerConnection, TcpStream>;

/// Runs the server side of a handshake on `tcp` (which may have a read
/// timeout: timeouts are retried until `deadline`).
pub fn accept(
    tcp: TcpStream,
    config: Arc<rustls::ServerConfig>,
    deadline: Instant,
) -> io::Result<ServerStream> {
    let conn = rustls::ServerConnection::new(config)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        match tls.conn.complete_io(&mut tls.sock) {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) && Instant::now() < deadline => {}
            Err(e) => return Err(e),
        }
    }
    Ok(tls)
}

/// A client that says EHLO, STARTTLS with the cluster certificate (so
/// the node takes it for a peer) and EHLO again (must be 250).
#[track_caller]
pub fn peer_client(addr: std::net::SocketAddr) -> crate::smtp::Client {
    let mut c = crate::smtp::Client::ehlo(addr);
    c.starttls(cluster().client_config());
    c.cmd("EHLO client.test").assert(250, None);
    c
}

/// The `sha256:<hex>` fingerprint of the first certificate in a PEM file.
pub fn fingerprint_of(cert_file: &Path) -> String {
    let leaf = CertificateDer::pem_file_iter(cert_file)
        .expect("read the chain")
        .next()
        .expect("a certificate in the file")
        .expect("parse the certificate");
    identity::fingerprint(&leaf).to_string()
}

impl CertPair {
    /// A self-signed pair for `hostname` whose validity ended on
    /// 2020-02-01 (tern's own generator makes only valid ones), kept in a
    /// fresh directory until dropped.
    pub fn expired(hostname: &str) -> CertPair {
        let dir = tempfile::tempdir().expect("temp dir for a certificate");
        let mut params = rcgen::CertificateParams::new(vec![hostname.to_string()]).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, hostname);
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2020, 2, 1);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("certificate");
        let cert_file = dir.path().join("expired.crt");
        let key_file = dir.path().join("expired.key");
        std::fs::write(&cert_file, cert.pem()).expect("write the certificate");
        std::fs::write(&key_file, key.serialize_pem()).expect("write the key");
        CertPair {
            fingerprint: fingerprint_of(&cert_file),
            cert_file,
            key_file,
            _dir: Some(dir),
        }
    }

    /// Puts this pair's key and certificate in place of `served`'s files
    /// as a renewal tool does: each written to a temporary file beside
    /// the target and renamed over it (key first). `served.fingerprint`
    /// still names the old certificate.
    pub fn install_over(&self, served: &CertPair) {
        for (from, to) in [
            (&self.key_file, &served.key_file),
            (&self.cert_file, &served.cert_file),
        ] {
            let tmp = to.with_extension("renewing");
            std::fs::copy(from, &tmp).expect("write the renewed file");
            std::fs::rename(&tmp, to).expect("rename the renewed file into place");
        }
    }
}

/// The server certificates a [`recording_client`] configuration was
/// shown, as fingerprints, in handshake order.
#[derive(Debug, Default)]
pub struct SeenCertificates(std::sync::Mutex<Vec<String>>);

impl SeenCertificates {
    /// The fingerprint of the last certificate seen.
    pub fn last(&self) -> Option<String> {
        self.0.lock().expect("seen lock").last().cloned()
    }
}

#[derive(Debug)]
struct Recording {
    seen: Arc<SeenCertificates>,
    inner: Arc<ServerCheck>,
}

impl rustls::client::danger::ServerCertVerifier for Recording {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls_pki_types::ServerName<'_>,
        ocsp: &[u8],
        now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let fp = identity::fingerprint(end_entity).to_string();
        self.seen.0.lock().expect("seen lock").push(fp);
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A client configuration that takes any server certificate (handshake
/// signatures still checked) and records each one it is shown. A new
/// configuration has no session cache: its first handshake is a full
/// one, so the server must show its current certificate.
pub fn recording_client() -> (Arc<ClientConfig>, Arc<SeenCertificates>) {
    let seen = Arc::new(SeenCertificates::default());
    let verifier = Arc::new(Recording {
        seen: seen.clone(),
        inner: ServerCheck::any(),
    });
    let config = ClientConfig::builder_with_provider(Arc::new(tern_engine::tls::provider()))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    (Arc::new(config), seen)
}
