//! Configuration: a strict TOML file (unknown keys are errors), command-line
//! overrides, defaults, and validation that reports every problem at once.
//! Every key is documented in `tern.example.toml` and README.md.
//!
//! # Layout
//!
//! ```text
//! mod.rs        Config (resolved), FileConfig (as written), Overrides, Checked, load
//! file.rs       reading the file: syntax, unknown keys, types, lines; relative paths
//! keys.rs       each section's keys (from its struct), "did you mean"
//! warnings.rs   valid but suspicious values
//! effective.rs  the effective config as TOML (`tern check-config [--diff]`)
//! units.rs      HumanDuration ("5m") and ByteSize ("35MiB")
//! server.rs     [server]
//! smtp.rs       [smtp]      -> SmtpLimits
//! relay.rs      [relay]     -> RelayRules
//! storage.rs    [storage]   -> tern_storage::LogConfig + IoMode
//! delivery.rs   [delivery]  -> DeliveryConfig
//! pools.rs      [pools.NAME], [routes] -> Pool, PoolHost
//! cluster.rs    [cluster]   -> ClusterConfig, Peer (re-exported by crate::cluster)
//! tls.rs        [tls]       -> TlsConfig; TlsPolicy (delivery.tls_policy, pools.NAME.tls_policy)
//! auth.rs       [auth]      -> AuthConfig (SMTP AUTH users file, failure limits)
//! pressure.rs   [pressure]  -> PressureConfig (back pressure thresholds)
//! frontend.rs   [frontend]  -> FrontendConfig (server.role = "front-end")
//! ```
//!
//! # Defaults
//!
//! Each section is a struct whose `Default` impl (used by serde through
//! `#[serde(default)]`) holds the default of every key of that section,
//! and nothing else does: resolution only converts and checks. Keys with a
//! computed default (`server.hostname`, `cluster.node_id`) or none
//! (`server.relay_to`) are `Option`s. The tests check that
//! `tern.example.toml` and README.md name every key and state these
//! defaults. The same structs give the keys the reader knows (their serde
//! field names) and, serialized, the effective config and its defaults.
//!
//! # Problems
//!
//! `file.rs` reports what does not read (a syntax error stops there; an
//! unknown key is dropped, a value of the wrong type keeps the default) and
//! the rest is still resolved. A value that reads but is out of bounds or
//! inconsistent is a problem, a sentence starting with its key
//! (`cluster.node_id ...`) and ending with the value given. Every
//! section's resolution appends its problems to one list; each is then
//! prefixed with the line of its key, and a config is rejected with all of
//! them at once, in file order.
//!
//! # Paths
//!
//! Relative paths written in a config file are taken relative to the
//! file's directory (made absolute); command-line paths and the default
//! `data_dir` stay relative to the working directory.

mod auth;
pub(crate) mod cluster;
mod delivery;
#[cfg(test)]
mod docs_tests;
mod effective;
mod file;
mod frontend;
mod keys;
mod mta_sts;
mod pools;
pub(crate) mod pressure;
mod relay;
mod server;
mod smtp;
mod storage;
#[cfg(test)]
mod tests;
pub(crate) mod tls;
mod units;
mod warnings;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tern_storage::LogConfig;

use cluster::ClusterConfig;

pub use auth::{AuthConfig, AUTH_DELAY_MAX};
pub use delivery::DeliveryConfig;
pub use effective::Shown;
pub use frontend::{ClientIdentity, FrontendConfig};
pub use mta_sts::MtaStsConfig;
pub use pools::{Pool, PoolHost, BACKENDS_POOL, SMARTHOST_POOL};
pub use pressure::{Amount, PressureConfig};
pub use relay::RelayRules;
pub use server::Role;
pub use smtp::SmtpLimits;
pub use storage::IoMode;
pub use tls::{CertificateFiles, Fingerprint, MinVersion, TlsConfig, TlsPolicy};
pub use units::{ByteSize, HumanDuration};

/// Shortest delivery and cluster timer: below it, timers would spin.
const DURATION_MIN: Duration = Duration::from_millis(100);

/// Each of `timers` (key, value) of `[section]` must be at least
/// [`DURATION_MIN`].
fn check_timers(section: &str, timers: &[(&str, Duration)], problems: &mut Vec<String>) {
    for (name, v) in timers {
        if *v < DURATION_MIN {
            problems.push(format!(
                "{section}.{name} must be at least 100ms, got {}",
                HumanDuration(*v)
            ));
        }
    }
}

/// The config file as written. Its fields are the sections, in the order
/// `tern check-config` prints them; `file.rs` reads each one.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    server: server::ServerSection,
    #[serde(default)]
    smtp: smtp::SmtpSection,
    #[serde(default)]
    relay: relay::RelaySection,
    #[serde(default)]
    storage: storage::StorageSection,
    #[serde(default)]
    delivery: delivery::DeliverySection,
    #[serde(default)]
    pools: BTreeMap<String, pools::PoolSection>,
    #[serde(default)]
    routes: BTreeMap<String, String>,
    #[serde(default)]
    cluster: cluster::ClusterSection,
    #[serde(default)]
    tls: tls::TlsSection,
    #[serde(default)]
    auth: auth::AuthSection,
    #[serde(default)]
    mta_sts: mta_sts::MtaStsSection,
    #[serde(default)]
    pressure: pressure::PressureSection,
    #[serde(default)]
    frontend: frontend::FrontendSection,
}

/// Command-line values that override the file.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `--listen`.
    pub listen: Option<String>,
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--cores`.
    pub cores: Option<usize>,
    /// `--relay-to`.
    pub relay_to: Option<String>,
    /// `--admin-listen`.
    pub admin_listen: Option<String>,
    /// `--role`.
    pub role: Option<String>,
    /// `--backend HOST:PORT[,PRIO]` (repeatable): the front end's pool
    /// `backends`, the default route.
    pub backends: Vec<String>,
}

/// The resolved configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// SMTP listen address (SO_REUSEPORT on every core).
    pub listen: SocketAddr,
    /// Name in the greeting, EHLO and Received headers.
    pub hostname: String,
    /// Data directory (`shard-N/` per core).
    pub data_dir: PathBuf,
    /// Cores (executors) to run.
    pub cores: usize,
    /// Smarthost for delivery (used by the delivery issue).
    pub relay_to: Option<String>,
    /// Admin listener (metrics); `None` when set to "off".
    pub admin_listen: Option<SocketAddr>,
    /// The admin token's file (`None`: `DATA_DIR/admin-token`, generated
    /// at first start).
    pub admin_token_file: Option<std::path::PathBuf>,
    /// Bound on finishing in-flight transactions at shutdown.
    pub shutdown_grace: Duration,
    /// Each core's listener takes the connections that arrive on its own
    /// CPU (`SO_INCOMING_CPU` in the `SO_REUSEPORT` group).
    pub incoming_cpu: bool,
    /// `server.log_level`: the log filter (`RUST_LOG` wins when set).
    pub log_level: String,
    /// Session limits.
    pub smtp: SmtpLimits,
    /// Relay control.
    pub relay: RelayRules,
    /// Log settings per shard.
    pub storage: LogConfig,
    /// How the log writes (page cache or O_DIRECT).
    pub io: IoMode,
    /// Outbound delivery.
    pub delivery: DeliveryConfig,
    /// Next-hop pools by name (including `relay_to` when set).
    pub pools: BTreeMap<String, Pool>,
    /// Static routes: domain, `*.domain` or `*` -> pool name.
    pub routes: BTreeMap<String, String>,
    /// The HA boundary and shadow redundancy.
    pub cluster: ClusterConfig,
    /// Certificates and TLS versions.
    pub tls: TlsConfig,
    /// SMTP AUTH: the users file and the failure limits.
    pub auth: AuthConfig,
    /// `[mta_sts]`.
    pub mta_sts: MtaStsConfig,
    /// `[pressure]`: back pressure thresholds.
    pub pressure: PressureConfig,
    /// `server.role`: a relay, or a front end before relays.
    pub role: Role,
    /// `[frontend]`.
    pub frontend: FrontendConfig,
}

/// A configuration that passed its checks, with its warnings.
#[derive(Debug)]
pub struct Checked {
    /// The configuration.
    pub config: Config,
    /// Values that are valid but probably not meant (an open relay, `0s`
    /// expiry), each starting with its key (and line).
    pub warnings: Vec<String>,
    /// The file as read, overrides applied.
    file: FileConfig,
}

impl Checked {
    /// The effective configuration as TOML: a config file that gives this
    /// configuration. Errors only for a path (from the command line) that
    /// is not UTF-8.
    pub fn to_toml(&self, shown: Shown) -> Result<String, String> {
        effective::render(&self.file, &self.config, shown)
    }
}

impl Config {
    /// Reads `path` (if any), applies `overrides`, fills defaults and
    /// validates. Errors list every problem.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Config, Vec<String>> {
        Config::check(path, overrides).map(|c| c.config)
    }

    /// [`Config::load`], with the warnings and the effective TOML. Relative
    /// paths in the file are taken relative to the file's directory.
    pub fn check(path: Option<&Path>, overrides: &Overrides) -> Result<Checked, Vec<String>> {
        let Some(p) = path else {
            return Config::check_toml("", None, overrides);
        };
        let text = std::fs::read_to_string(p)
            .map_err(|e| vec![format!("cannot read {}: {e}", p.display())])?;
        let dir = Config::dir_of(p).map_err(|e| vec![e])?;
        Config::check_toml(&text, Some(&dir), overrides)
    }

    /// The directory relative paths in the config file `path` are
    /// relative to: the file's own, as an absolute path.
    pub fn dir_of(path: &Path) -> Result<PathBuf, String> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        std::path::absolute(dir).map_err(|e| format!("cannot resolve {}: {e}", dir.display()))
    }

    /// Parses TOML text (for tests and `tern check-config`); relative
    /// paths stay relative to the working directory.
    pub fn from_toml(text: &str, overrides: &Overrides) -> Result<Config, Vec<String>> {
        Config::check_toml(text, None, overrides).map(|c| c.config)
    }

    /// Checks TOML text whose relative paths are relative to `dir` (else
    /// to the working directory). Errors list every problem, by line.
    pub fn check_toml(
        text: &str,
        dir: Option<&Path>,
        overrides: &Overrides,
    ) -> Result<Checked, Vec<String>> {
        let mut problems = Vec::new();
        let Some(mut parsed) = file::parse(text, dir, &mut problems) else {
            return Err(problems);
        };
        for key in parsed.file.server.apply(overrides) {
            parsed.lines.forget(&format!("server.{key}"));
        }
        pools::apply_backends(
            &overrides.backends,
            &mut parsed.file.pools,
            &mut parsed.file.routes,
            &mut problems,
        );
        let mut resolved = Vec::new();
        let config = Config::resolve(&parsed.file, &mut resolved);
        problems.extend(
            resolved
                .into_iter()
                .filter(|p| !parsed.about_dropped(p))
                .map(|p| parsed.lines.locate(p)),
        );
        if !problems.is_empty() {
            // In file order; problems without a line (defaults in
            // conflict, command-line values) last.
            problems.sort_by_key(|p| file::line_number(p).unwrap_or(usize::MAX));
            return Err(problems);
        }
        let warnings = warnings::check(&parsed.file, &config, &parsed.lines);
        Ok(Checked {
            config,
            warnings,
            file: parsed.file,
        })
    }

    /// Checks every section of `f`, collecting problems.
    fn resolve(f: &FileConfig, problems: &mut Vec<String>) -> Config {
        let server = f.server.resolve(problems);
        let delivery = f.delivery.resolve(problems);
        let (pools, routes) =
            pools::resolve(&f.pools, &f.routes, server.relay_to.as_deref(), problems);
        let smtp = f.smtp.resolve(problems);
        let relay = f.relay.resolve(problems);
        let (storage, io) = f.storage.resolve(&smtp, problems);
        let hostname = server::resolve_hostname(f.server.hostname.as_deref(), problems);
        let cluster = f.cluster.resolve(&hostname, problems);
        let tls = f.tls.resolve(problems);
        let auth = f.auth.resolve(problems);
        let mta_sts = f.mta_sts.resolve(problems);
        let pressure = f.pressure.resolve(problems);
        let frontend = f.frontend.resolve(problems);
        pools::check_role(server.role, &pools, &routes, problems);
        Config {
            role: server.role,
            frontend,
            listen: server.listen,
            hostname,
            data_dir: server.data_dir,
            cores: server.cores,
            relay_to: server.relay_to,
            admin_listen: server.admin_listen,
            admin_token_file: server.admin_token_file,
            shutdown_grace: server.shutdown_grace,
            incoming_cpu: server.incoming_cpu,
            log_level: server.log_level,
            smtp,
            relay,
            storage,
            io,
            delivery,
            pools,
            routes,
            cluster,
            tls,
            auth,
            mta_sts,
            pressure,
        }
    }
}

/// A relative `path` from a config file becomes relative to its `dir`.
fn rebase(path: &mut PathBuf, dir: &Path) {
    if path.is_relative() && !path.as_os_str().is_empty() {
        *path = dir.join(&*path);
    }
}

/// Resolves HOST:PORT (a name is looked up once, at start).
fn resolve_host(s: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    if let Ok(a) = s.parse() {
        return Ok(a);
    }
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?} is not HOST:PORT"))?;
    if port.parse::<u16>().is_err() || host.is_empty() {
        return Err(format!("{s:?} is not HOST:PORT"));
    }
    s.to_socket_addrs()
        .map_err(|e| format!("{s:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("{s:?} has no address"))
}
