//! A test certificate authority (rcgen): certificates that verify with
//! WebPKI for given names once the CA is trusted (`tls.ca_file`), for
//! `verify` delivery and MTA-STS tests.

use std::path::PathBuf;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::ServerConfig;

/// A CA whose certificate is in `ca_file`; issued pairs go in its
/// directory, removed with it.
pub struct TestCa {
    /// The CA certificate (PEM), for `tls.ca_file`.
    pub ca_file: PathBuf,
    cert: rcgen::Certificate,
    key: KeyPair,
    dir: tempfile::TempDir,
}

/// A certificate issued by a [`TestCa`].
pub struct Issued {
    /// PEM chain (the leaf).
    pub cert_file: PathBuf,
    /// PEM key.
    pub key_file: PathBuf,
}

impl TestCa {
    /// A new CA.
    pub fn new() -> TestCa {
        let dir = tempfile::tempdir().expect("temp dir for the CA");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "tern test CA");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, cert.pem()).expect("write the CA");
        TestCa {
            ca_file,
            cert,
            key,
            dir,
        }
    }

    /// A server certificate for `names` (DNS names), written as
    /// `<first name>.crt` / `.key`.
    pub fn issue(&self, names: &[&str]) -> Issued {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names.clone()).expect("leaf params");
        params
            .distinguished_name
            .push(DnType::CommonName, names[0].clone());
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("sign the leaf");
        let cert_file = self.dir.path().join(format!("{}.crt", names[0]));
        let key_file = self.dir.path().join(format!("{}.key", names[0]));
        std::fs::write(&cert_file, cert.pem()).expect("write the certificate");
        std::fs::write(&key_file, key.serialize_pem()).expect("write the key");
        Issued {
            cert_file,
            key_file,
        }
    }
}

impl Default for TestCa {
    fn default() -> Self {
        TestCa::new()
    }
}

impl Issued {
    /// `[tls]` serving this certificate.
    pub fn tls_section(&self) -> String {
        format!(
            "[tls]\ncertificates = [ {{ cert_file = \"{}\", key_file = \"{}\" }} ]\n",
            self.cert_file.display(),
            self.key_file.display()
        )
    }

    /// A rustls server config serving it.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        crate::tls::server_config_from(&self.cert_file, &self.key_file)
    }
}
