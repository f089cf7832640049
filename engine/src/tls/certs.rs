//! The certificates a node serves, chosen by SNI, replaced as a whole on
//! reload (SIGHUP, or a changed file): handshakes in progress keep the
//! set they started with, new ones get the new set, and a reload that
//! fails (a half-written renewal, a key that does not match) keeps the
//! old set and says why, so renewal can never take the server down.

use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::identity::{self, Identity};
use super::TlsError;
use crate::config::CertificateFiles;

/// The served set; the first identity is the default (no SNI, or a name
/// no certificate has).
#[derive(Debug)]
struct Set {
    identities: Vec<Identity>,
}

impl Set {
    fn load(files: &[CertificateFiles]) -> Result<Set, TlsError> {
        let now = SystemTime::now();
        let identities = files
            .iter()
            .map(|f| identity::load(f, now))
            .collect::<Result<Vec<_>, _>>()?;
        assert!(!identities.is_empty(), "a certificate set is never empty");
        Ok(Set { identities })
    }

    /// Exact name first, then a `*.` wildcard one label up, else the
    /// default.
    fn choose(&self, sni: Option<&str>) -> &Identity {
        let Some(name) = sni.map(str::to_ascii_lowercase) else {
            return &self.identities[0];
        };
        let wildcard = name.split_once('.').map(|(_, up)| format!("*.{up}"));
        let has = |n: &str| {
            self.identities
                .iter()
                .find(|i| i.names.iter().any(|x| x == n))
        };
        has(&name)
            .or_else(|| wildcard.as_deref().and_then(has))
            .unwrap_or(&self.identities[0])
    }
}

/// The node's certificates.
#[derive(Debug)]
pub struct Certificates {
    files: Vec<CertificateFiles>,
    current: RwLock<Arc<Set>>,
}

impl Certificates {
    /// Loads every file; any problem is an error naming the file.
    pub fn load(files: Vec<CertificateFiles>) -> Result<Certificates, TlsError> {
        let set = Set::load(&files)?;
        Ok(Certificates {
            files,
            current: RwLock::new(Arc::new(set)),
        })
    }

    fn set(&self) -> Arc<Set> {
        self.current.read().expect("certificate lock").clone()
    }

    /// Reads every file again and swaps the set in if all of them are
    /// good; otherwise the served set stays as it was.
    pub fn reload(&self) -> Result<(), TlsError> {
        let set = Set::load(&self.files)?;
        *self.current.write().expect("certificate lock") = Arc::new(set);
        Ok(())
    }

    /// The files (for the change watcher).
    pub fn files(&self) -> &[CertificateFiles] {
        &self.files
    }

    /// The default identity (what peers pin, what the shadow link shows).
    pub fn default_identity(&self) -> Identity {
        self.set().identities[0].clone()
    }

    /// Every identity served now.
    pub fn identities(&self) -> Vec<Identity> {
        self.set().identities.clone()
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.set().choose(hello.server_name()).key.clone())
    }
}

/// What a node shows as a TLS client on the shadow link: its default
/// certificate, so the peer can check the pin.
#[derive(Debug)]
pub struct ClientIdentity(pub Arc<Certificates>);

impl rustls::client::ResolvesClientCert for ClientIdentity {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.set().identities[0].key.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(dir: &std::path::Path, name: &str) -> CertificateFiles {
        let sub = dir.join(name);
        identity::ensure_self_signed(&sub, name).unwrap();
        identity::self_signed_files(&sub)
    }

    #[test]
    fn sni_chooses_by_name_with_the_first_as_default() {
        let dir = tempfile::tempdir().unwrap();
        let a = pair(dir.path(), "a.example");
        let b = pair(dir.path(), "b.example");
        let certs = Certificates::load(vec![a, b]).unwrap();
        let set = certs.set();
        assert_eq!(set.choose(Some("B.example")).names, ["b.example"]);
        assert_eq!(set.choose(Some("a.example")).names, ["a.example"]);
        assert_eq!(set.choose(Some("other.example")).names, ["a.example"]);
        assert_eq!(set.choose(None).names, ["a.example"]);
    }

    #[test]
    fn a_failed_reload_keeps_the_served_set() {
        let dir = tempfile::tempdir().unwrap();
        let a = pair(dir.path(), "a.example");
        let certs = Certificates::load(vec![a.clone()]).unwrap();
        let before = certs.default_identity().fingerprint;
        std::fs::write(&a.cert_file, "-----BEGIN CERTIFICATE-----\nhalf").unwrap();
        assert!(certs.reload().is_err());
        assert_eq!(certs.default_identity().fingerprint, before);
        // A renewed pair (new key and certificate) is picked up.
        std::fs::remove_file(&a.cert_file).unwrap();
        std::fs::remove_file(&a.key_file).unwrap();
        identity::ensure_self_signed(&dir.path().join("a.example"), "a.example").unwrap();
        certs.reload().unwrap();
        assert_ne!(certs.default_identity().fingerprint, before);
    }
}
