//! Reloading the config file while serving (SIGHUP, `POST /reload`):
//! read and check the file again (with the same command-line overrides),
//! put what may change at run time in force ([`crate::reload::merge`]),
//! re-read the TLS certificates, and say what was applied and what waits
//! for a restart. A config with problems changes nothing: the node goes
//! on with the one in force, and the problems are logged and answered.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::config::{Config, Overrides};
use crate::reload::Live;

/// Where the config came from, to read it again.
#[derive(Clone, Debug, Default)]
pub struct Source {
    /// `--config` (`None`: defaults and flags only).
    pub path: Option<PathBuf>,
    /// The command-line overrides given at start (they still win).
    pub overrides: Overrides,
}

/// What a reload needs.
pub struct Reloader {
    pub(super) source: Source,
    pub(super) live: Arc<Live>,
    pub(super) tls: Arc<crate::tls::Tls>,
}

impl Reloader {
    /// Reloads now; `why` is logged (SIGHUP, an admin request). `Ok`: a
    /// report for the operator; `Err`: the config's problems.
    pub fn reload(&self, why: &str) -> Result<String, String> {
        let file = self.source.path.as_ref().map(|p| p.display().to_string());
        let file = file.as_deref().unwrap_or("(no config file)");
        let new = match Config::load(self.source.path.as_deref(), &self.source.overrides) {
            Ok(c) => c,
            Err(problems) => {
                self.live.failed.fetch_add(1, Ordering::Relaxed);
                let text = problems.join("; ");
                tracing::error!(why, file, problems = %text,
                    "config reload refused: the config in force is kept");
                return Err(format!(
                    "{file}: reload refused, nothing changed:\n  {}",
                    problems.join("\n  ")
                ));
            }
        };
        let old = self.live.get();
        let mut new = new;
        // The descriptor budget lowered this at start: keep it lowered.
        new.smtp.connections_per_core_max = new
            .smtp
            .connections_per_core_max
            .min(super::fd_budget_per_core(&old));
        let (merged, changes) = crate::reload::merge(&old, new);
        if changes.applied.contains(&"server.log_level") {
            if let Err(e) = crate::logging::apply_configured(&merged.log_level) {
                tracing::error!(error = %e, "server.log_level not applied");
            }
        }
        self.live.publish(Arc::new(merged));
        self.live.applied.fetch_add(1, Ordering::Relaxed);
        if let Some(certs) = &self.tls.certs {
            crate::tls::reload::reload(certs, why);
        }
        let applied = list(&changes.applied);
        let kept = list(&changes.kept);
        tracing::info!(why, file, applied = %applied, "config reloaded");
        if !changes.kept.is_empty() {
            tracing::warn!(why, file, kept = %kept,
                "config reload: these changes take effect only at the next start");
        }
        let mut out = format!("reloaded {file}\napplied: {applied}\n");
        if !changes.kept.is_empty() {
            out.push_str(&format!("needs a restart (kept as before): {kept}\n"));
        }
        Ok(out)
    }
}

fn list(keys: &[&str]) -> String {
    if keys.is_empty() {
        "nothing changed".into()
    } else {
        keys.join(", ")
    }
}
