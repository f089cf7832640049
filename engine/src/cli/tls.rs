//! `tern tls fingerprint`: the SHA-256 fingerprint peers pin
//! (`cluster.peers[].fingerprint`). Without `tls.certificates` it makes
//! the node's self-signed pair first (as `tern serve` would), so a
//! cluster can be configured before any node has started.

use clap::Subcommand;

use super::{load, Common};
use crate::config::Overrides;
use crate::tls::identity;

/// `tern tls ...`.
#[derive(Subcommand)]
pub enum TlsAction {
    /// Print the fingerprint of each certificate (the first is the one
    /// the shadow link shows): `sha256:HEX<TAB>CERT_FILE<TAB>NAMES`.
    Fingerprint {
        #[command(flatten)]
        common: Common,
    },
}

/// Runs a `tern tls` command.
pub fn run(action: TlsAction, out: &mut impl std::io::Write) -> anyhow::Result<()> {
    match action {
        TlsAction::Fingerprint { common } => {
            // Peers' fingerprints may not be known yet: this node's
            // certificate does not depend on them.
            let config = load(&common, Overrides::default()).or_else(|e| {
                if e.to_string().contains(".fingerprint") {
                    load_without_peers(&common)
                } else {
                    Err(e)
                }
            })?;
            let mut files = config.tls.certificates.clone();
            if files.is_empty() {
                std::fs::create_dir_all(&config.data_dir).map_err(|e| {
                    anyhow::anyhow!("cannot create {}: {e}", config.data_dir.display())
                })?;
                identity::ensure_self_signed(&config.data_dir, &config.hostname)?;
                files.push(identity::self_signed_files(&config.data_dir));
            }
            let now = std::time::SystemTime::now();
            for f in &files {
                let id = identity::load(f, now)?;
                writeln!(
                    out,
                    "{}\t{}\t{}",
                    id.fingerprint,
                    f.cert_file.display(),
                    id.names.join(",")
                )?;
            }
            Ok(())
        }
    }
}

/// The config with `cluster.peers` emptied (only for reading this
/// node's own TLS settings).
fn load_without_peers(common: &Common) -> anyhow::Result<crate::config::Config> {
    let text = match &common.config {
        Some(p) => std::fs::read_to_string(p)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()))?,
        None => String::new(),
    };
    let mut doc: toml::Table = toml::from_str(&text)?;
    if let Some(toml::Value::Table(c)) = doc.get_mut("cluster") {
        c.remove("peers");
    }
    let o = Overrides {
        data_dir: common.data_dir.clone(),
        ..Overrides::default()
    };
    let dir = match &common.config {
        Some(p) => Some(crate::config::Config::dir_of(p).map_err(anyhow::Error::msg)?),
        None => None,
    };
    crate::config::Config::check_toml(&doc.to_string(), dir.as_deref(), &o)
        .map(|c| c.config)
        .map_err(|p| anyhow::anyhow!("invalid configuration:\n  {}", p.join("\n  ")))
}
