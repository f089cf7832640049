//! A certificate chain and its key, read from PEM files and checked at
//! start (and at every reload): readable, parseable, the key matches, not
//! expired. Also the self-signed certificate a fresh node makes for
//! itself, and the fingerprint that pins it.
//!
//! The self-signed pair lives in `DATA_DIR/tls/`:
//!
//! ```text
//! tls/self-signed.crt   PEM certificate, CN and SAN = server.hostname
//! tls/self-signed.key   PEM PKCS#8 key (ECDSA P-256), mode 0600
//! ```
//!
//! Made once (key first, then certificate, each written to a temporary
//! file, fsynced and renamed; then the directory fsynced) and reused at
//! every start, so the node's fingerprint stays the same.

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::Digest;

use super::TlsError;
use crate::config::{CertificateFiles, Fingerprint};

/// A usable certificate: what a handshake presents, and what logs and
/// `tern tls fingerprint` say about it.
#[derive(Clone, Debug)]
pub struct Identity {
    /// Chain and signing key.
    pub key: Arc<CertifiedKey>,
    /// DNS names (SAN, else CN), lower case, for SNI.
    pub names: Vec<String>,
    /// End of validity.
    pub not_after: SystemTime,
    /// SHA-256 of the leaf.
    pub fingerprint: Fingerprint,
    /// Where it was read from.
    pub files: CertificateFiles,
}

/// The fingerprint of a DER certificate.
pub fn fingerprint(cert: &CertificateDer<'_>) -> Fingerprint {
    Fingerprint(sha2::Sha256::digest(cert.as_ref()).into())
}

/// Reads and checks one chain and key.
pub fn load(files: &CertificateFiles, now: SystemTime) -> Result<Identity, TlsError> {
    let (cert_path, key_path) = (&files.cert_file, &files.key_file);
    let chain = read_chain(cert_path)?;
    let key = read_key(key_path)?;
    let bad = |why: String| TlsError::BadCertificate {
        path: cert_path.clone(),
        why,
    };
    let signer =
        rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| TlsError::BadKey {
            path: key_path.clone(),
            why: e.to_string(),
        })?;
    let (names, not_before, not_after) = describe(&chain[0]).map_err(bad)?;
    if now > not_after {
        return Err(TlsError::Expired {
            path: cert_path.clone(),
            not_after: httpdate::fmt_http_date(not_after),
        });
    }
    if now < not_before {
        tracing::warn!(path = %cert_path.display(), "certificate is not valid yet");
    }
    let certified = CertifiedKey::new(chain, signer);
    certified.keys_match().map_err(|e| TlsError::BadKey {
        path: key_path.clone(),
        why: format!(
            "does not match the certificate in {}: {e}",
            cert_path.display()
        ),
    })?;
    Ok(Identity {
        fingerprint: fingerprint(&certified.cert[0]),
        key: Arc::new(certified),
        names,
        not_after,
        files: files.clone(),
    })
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let text = read(path)?;
    let chain: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&text).collect();
    match chain {
        Ok(c) if !c.is_empty() => Ok(c),
        Ok(_) => Err(TlsError::BadCertificate {
            path: path.to_path_buf(),
            why: "no PEM certificate in it".into(),
        }),
        Err(e) => Err(TlsError::BadCertificate {
            path: path.to_path_buf(),
            why: e.to_string(),
        }),
    }
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let text = read(path)?;
    PrivateKeyDer::from_pem_slice(&text).map_err(|e| TlsError::BadKey {
        path: path.to_path_buf(),
        why: format!("no PEM private key in it ({e})"),
    })
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::Read {
        path: path.to_path_buf(),
        source: e,
    })
}

/// Names and validity of a leaf certificate.
fn describe(cert: &CertificateDer<'_>) -> Result<(Vec<String>, SystemTime, SystemTime), String> {
    use x509_parser::prelude::*;
    let (_, x) = X509Certificate::from_der(cert.as_ref()).map_err(|e| e.to_string())?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = x.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                names.push(d.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        for cn in x.subject().iter_common_name() {
            if let Ok(s) = cn.as_str() {
                names.push(s.to_ascii_lowercase());
            }
        }
    }
    let at = |t: ASN1Time| {
        let secs = t.timestamp();
        if secs >= 0 {
            SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs as u64)
        } else {
            SystemTime::UNIX_EPOCH
        }
    };
    let v = x.validity();
    Ok((names, at(v.not_before), at(v.not_after)))
}

/// The self-signed pair's paths in `data_dir`.
pub fn self_signed_files(data_dir: &Path) -> CertificateFiles {
    let dir = data_dir.join("tls");
    CertificateFiles {
        cert_file: dir.join("self-signed.crt"),
        key_file: dir.join("self-signed.key"),
    }
}

/// Makes the self-signed pair for `hostname` unless it exists. True when
/// it was made now.
pub fn ensure_self_signed(data_dir: &Path, hostname: &str) -> Result<bool, TlsError> {
    let files = self_signed_files(data_dir);
    if files.cert_file.exists() && files.key_file.exists() {
        return Ok(false);
    }
    let dir = data_dir.join("tls");
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TlsError::Write { path, source }
    };
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let (cert, key) = generate(hostname).map_err(|e| TlsError::Generate { why: e.to_string() })?;
    write_private(&files.key_file, key.as_bytes()).map_err(io(&files.key_file))?;
    write_private(&files.cert_file, cert.as_bytes()).map_err(io(&files.cert_file))?;
    std::fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(io(&dir))?;
    Ok(true)
}

/// Years a self-signed certificate is valid: long, since nobody renews
/// it, but finite, so it still has an end like any certificate.
const SELF_SIGNED_YEARS: i32 = 10;

/// A self-signed certificate for `hostname` (PEM certificate, PEM key).
fn generate(hostname: &str) -> Result<(String, String), rcgen::Error> {
    let mut params = rcgen::CertificateParams::new(vec![hostname.to_string()])?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, hostname);
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // Whole years from 1970 (365.2425 days each) are close enough here.
    let year = 1970 + (secs / 31_556_952) as i32;
    params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + SELF_SIGNED_YEARS, 1, 1);
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Writes `bytes` to `path` (mode 0600) through a fsynced temporary file.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    tern_storage::log::replace_file_durably(path, bytes, 0o600)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_is_made_once_and_loads() {
        let dir = tempfile::tempdir().unwrap();
        assert!(ensure_self_signed(dir.path(), "mx.example").unwrap());
        assert!(!ensure_self_signed(dir.path(), "mx.example").unwrap());
        let id = load(&self_signed_files(dir.path()), SystemTime::now()).unwrap();
        assert_eq!(id.names, ["mx.example"]);
        assert!(id.not_after > SystemTime::now());
        let again = load(&self_signed_files(dir.path()), SystemTime::now()).unwrap();
        assert_eq!(id.fingerprint, again.fingerprint);
    }

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let files = CertificateFiles {
            cert_file: dir.path().join("missing.crt"),
            key_file: dir.path().join("missing.key"),
        };
        let e = load(&files, SystemTime::now()).unwrap_err().to_string();
        assert!(e.contains("missing.crt"), "{e}");
        std::fs::write(&files.cert_file, "not pem").unwrap();
        let e = load(&files, SystemTime::now()).unwrap_err().to_string();
        assert!(e.contains("no PEM certificate"), "{e}");
        ensure_self_signed(dir.path(), "a.example").unwrap();
        let good = self_signed_files(dir.path());
        std::fs::write(&files.key_file, "garbage").unwrap();
        let e = load(
            &CertificateFiles {
                cert_file: good.cert_file.clone(),
                key_file: files.key_file.clone(),
            },
            SystemTime::now(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("missing.key") && e.contains("private key"),
            "{e}"
        );
    }

    #[test]
    fn an_expired_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        ensure_self_signed(dir.path(), "a.example").unwrap();
        let far = SystemTime::now() + std::time::Duration::from_secs(200 * 365 * 86_400);
        let e = load(&self_signed_files(dir.path()), far).unwrap_err();
        assert!(matches!(e, TlsError::Expired { .. }), "{e}");
        assert!(e.to_string().contains("self-signed.crt"), "{e}");
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        ensure_self_signed(a.path(), "a.example").unwrap();
        ensure_self_signed(b.path(), "b.example").unwrap();
        let files = CertificateFiles {
            cert_file: self_signed_files(a.path()).cert_file,
            key_file: self_signed_files(b.path()).key_file,
        };
        let e = load(&files, SystemTime::now()).unwrap_err().to_string();
        assert!(e.contains("does not match"), "{e}");
    }
}
