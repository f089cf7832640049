//! Certificate reloads without a restart: on SIGHUP (the server's signal
//! thread calls [`reload`]) and when a certificate or key file changes
//! (a thread compares modification times every
//! `tls.reload_check_interval`). Renewal tools write new files and
//! expect the server to pick them up; a reload that fails keeps serving
//! the old set (see `certs.rs`).

use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use super::Certificates;

/// Reloads now and logs the outcome. `why`: what asked for it.
pub fn reload(certs: &Certificates, why: &str) {
    match certs.reload() {
        Ok(()) => {
            for id in certs.identities() {
                tracing::info!(
                    why,
                    cert = %id.files.cert_file.display(),
                    fingerprint = %id.fingerprint,
                    "TLS certificate reloaded"
                );
            }
        }
        Err(e) => {
            tracing::error!(why, error = %e, "TLS certificate reload failed; still serving the previous certificates")
        }
    }
}

fn stamps(certs: &Certificates) -> Vec<Option<SystemTime>> {
    certs
        .files()
        .iter()
        .flat_map(|f| [&f.cert_file, &f.key_file])
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

/// Starts the file watcher; it ends when the certificates are dropped.
pub fn watch(certs: &Arc<Certificates>, every: Duration) -> std::io::Result<()> {
    let weak: Weak<Certificates> = Arc::downgrade(certs);
    let mut seen = stamps(certs);
    std::thread::Builder::new()
        .name("tern-tls-reload".into())
        .spawn(move || loop {
            std::thread::sleep(every);
            let Some(certs) = weak.upgrade() else { return };
            let now = stamps(&certs);
            if now != seen {
                // A renewal writes the key and the certificate one after
                // the other: wait a moment so both are in place.
                std::thread::sleep(Duration::from_millis(200));
                reload(&certs, "file changed");
                seen = stamps(&certs);
            }
        })?;
    Ok(())
}
