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
        let chain = CertificateDer::pem_file_iter(&self.cert_file)
            .expect("read the chain")
            .collect::<Result<_, _>>()
            .expect("parse the chain");
        let key = PrivateKeyDer::from_pem_file(&self.key_file).expect("read the key");
        (chain, key)
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
        let (chain, key) = self.read();
        let config =
            rustls::ServerConfig::builder_with_provider(Arc::new(tern_engine::tls::provider()))
                .with_safe_default_protocol_versions()
                .expect("protocol versions")
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .expect("server certificate");
        Arc::new(config)
    }
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
