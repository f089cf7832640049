//! `[server]`: listen addresses, hostname, data directory, cores.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{HumanDuration, Overrides};

/// Most cores: the queue id carries two hex digits of shard.
const CORES_MAX: usize = 256;

/// `[server]` as written; its `Default` is the default of every key.
#[derive(Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct ServerSection {
    listen: String,
    /// `None`: the machine's hostname.
    pub(super) hostname: Option<String>,
    data_dir: PathBuf,
    /// 0: one per CPU (and at least one per existing shard).
    cores: usize,
    /// `None`: no smarthost.
    relay_to: Option<String>,
    /// An address or "off".
    admin_listen: String,
    /// `None`: `DATA_DIR/admin-token`, generated at first start.
    admin_token_file: Option<PathBuf>,
    shutdown_grace: HumanDuration,
    incoming_cpu: bool,
    /// A level or `TARGET=LEVEL` list (`RUST_LOG` wins when set).
    log_level: String,
    /// `relay` or `front-end`.
    role: String,
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            listen: "127.0.0.1:2525".into(),
            hostname: None,
            data_dir: "./tern-data".into(),
            cores: 0,
            relay_to: None,
            admin_listen: "127.0.0.1:8025".into(),
            admin_token_file: None,
            shutdown_grace: HumanDuration::from_secs(30),
            incoming_cpu: false,
            log_level: "info".into(),
            role: "relay".into(),
        }
    }
}

/// What a node is (`server.role`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The relay: accepts, stores, shadows and delivers mail.
    Relay,
    /// A stateless SMTP proxy before relays (SPEC 7): queues nothing,
    /// answers end of data with its back end's reply.
    FrontEnd,
}

/// The resolved `[server]` keys but `hostname` (see [`resolve_hostname`]).
pub(super) struct Server {
    pub(super) role: Role,
    pub(super) listen: SocketAddr,
    pub(super) data_dir: PathBuf,
    pub(super) cores: usize,
    pub(super) relay_to: Option<String>,
    pub(super) admin_listen: Option<SocketAddr>,
    pub(super) admin_token_file: Option<PathBuf>,
    pub(super) shutdown_grace: Duration,
    pub(super) incoming_cpu: bool,
    pub(super) log_level: String,
}

/// Stands in for an address that did not parse (the config is rejected).
const UNPARSED: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);

impl ServerSection {
    /// Sets the keys given on the command line; returns their names.
    pub(super) fn apply(&mut self, o: &Overrides) -> Vec<&'static str> {
        let mut set = Vec::new();
        if let Some(listen) = &o.listen {
            self.listen = listen.clone();
            set.push("listen");
        }
        if let Some(dir) = &o.data_dir {
            self.data_dir = dir.clone();
            set.push("data_dir");
        }
        if let Some(cores) = o.cores {
            self.cores = cores;
            set.push("cores");
        }
        if let Some(relay_to) = &o.relay_to {
            self.relay_to = Some(relay_to.clone());
            set.push("relay_to");
        }
        if let Some(admin) = &o.admin_listen {
            self.admin_listen = admin.clone();
            set.push("admin_listen");
        }
        if let Some(role) = &o.role {
            self.role = role.clone();
            set.push("role");
        }
        set
    }

    /// Relative paths are taken relative to `dir` (the config file's);
    /// `data_dir` only when the file sets it (its default is relative to
    /// the working directory).
    pub(super) fn rebase(&mut self, dir: &Path, data_dir_written: bool) {
        if data_dir_written {
            super::rebase(&mut self.data_dir, dir);
        }
        if let Some(p) = &mut self.admin_token_file {
            super::rebase(p, dir);
        }
    }

    /// Checks every key but `hostname`.
    pub(super) fn resolve(&self, problems: &mut Vec<String>) -> Server {
        let listen = self.listen.parse().unwrap_or_else(|_| {
            problems.push(format!("server.listen: {:?} is not IP:PORT", self.listen));
            UNPARSED
        });
        let admin_listen = resolve_admin_listen(&self.admin_listen, problems);
        let data_dir = self.data_dir.clone();
        let cores = resolve_cores(self.cores, &data_dir, problems);
        let relay_to = self.relay_to.clone();
        if let Some(r) = &relay_to {
            if r.rsplit_once(':')
                .and_then(|(_, p)| p.parse::<u16>().ok())
                .is_none()
            {
                problems.push(format!("server.relay_to: {r:?} is not HOST:PORT"));
            }
        }
        if let Err(e) = crate::logging::parse(&self.log_level) {
            problems.push(format!("server.log_level: {e}"));
        }
        let role = match self.role.as_str() {
            "relay" => Role::Relay,
            "front-end" => Role::FrontEnd,
            other => {
                problems.push(format!(
                    "server.role must be \"relay\" or \"front-end\", got {other:?}"
                ));
                Role::Relay
            }
        };
        Server {
            role,
            log_level: self.log_level.trim().to_owned(),
            listen,
            data_dir,
            cores,
            relay_to,
            admin_listen,
            admin_token_file: self.admin_token_file.clone(),
            shutdown_grace: self.shutdown_grace.0,
            incoming_cpu: self.incoming_cpu,
        }
    }
}

fn resolve_admin_listen(admin_s: &str, problems: &mut Vec<String>) -> Option<SocketAddr> {
    if admin_s == "off" {
        return None;
    }
    match admin_s.parse() {
        Ok(a) => Some(a),
        Err(_) => {
            problems.push(format!(
                "server.admin_listen: {admin_s:?} is not IP:PORT or \"off\""
            ));
            None
        }
    }
}

fn resolve_cores(cores: usize, data_dir: &Path, problems: &mut Vec<String>) -> usize {
    let cores = if cores == 0 {
        // Automatic: one per CPU, but never fewer than the shards the
        // data directory already holds (each shard's log is served by
        // its own core; executors wrap around the CPUs).
        available_cores()
            .min(CORES_MAX)
            .max(crate::layout::existing_shards(data_dir))
    } else {
        cores
    };
    if cores > CORES_MAX {
        problems.push(format!(
            "server.cores must be 0..={CORES_MAX} (the queue id has 2 hex digits of shard), got {cores}"
        ));
    }
    cores
}

/// `server.hostname`, else the machine's name; must be a domain name.
pub(super) fn resolve_hostname(hostname: Option<&str>, problems: &mut Vec<String>) -> String {
    let hostname = hostname.map_or_else(local_hostname, str::to_string);
    if !tern_smtp::address::domain_name(&hostname) {
        problems.push(format!(
            "server.hostname: {hostname:?} is not a domain name"
        ));
    }
    hostname
}

fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The machine's hostname (`gethostname`), "localhost" without one.
pub(super) fn local_hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buf is valid for its length; gethostname NUL-terminates or
    // truncates.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let name = if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        String::new()
    };
    if name.is_empty() {
        "localhost".into()
    } else {
        name
    }
}
