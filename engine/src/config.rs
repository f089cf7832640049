//! Configuration: a strict TOML file (unknown keys are errors), command-line
//! overrides, defaults, and validation that reports every problem at once.
//! Every key is documented in `tern.example.toml` and README.md.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use tern_storage::LogConfig;

use crate::cluster::{ClusterConfig, Peer, ShadowPreference};

/// A duration written as "5m", "30s", "2d" (humantime).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map(HumanDuration)
            .map_err(|e| serde::de::Error::custom(format!("invalid duration {s:?}: {e}")))
    }
}

/// A size written as "35MiB", "128 MiB", "4096" (bytes), "1GiB", "10kB".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num.parse().map_err(|_| format!("invalid size {s:?}"))?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "kB" | "KB" => 1000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            other => {
                return Err(format!(
                    "unknown size unit {other:?} in {s:?} (use B, KiB, MiB, GiB, kB, MB, GB)"
                ))
            }
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("size {s:?} overflows"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(ByteSize(n)),
            Raw::Str(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// The config file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    server: ServerSection,
    #[serde(default)]
    smtp: SmtpSection,
    #[serde(default)]
    relay: RelaySection,
    #[serde(default)]
    storage: StorageSection,
    #[serde(default)]
    delivery: DeliverySection,
    #[serde(default)]
    pools: std::collections::BTreeMap<String, PoolSection>,
    #[serde(default)]
    routes: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    cluster: ClusterSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterSection {
    node_id: Option<String>,
    site: Option<String>,
    shadow_redundancy: Option<bool>,
    shadow_preference: Option<String>,
    max_retries_remote_site: Option<u32>,
    max_retries_local_site: Option<u32>,
    reject_on_shadow_failure: Option<bool>,
    shadow_heartbeat_frequency: Option<HumanDuration>,
    shadow_message_auto_discard_interval: Option<HumanDuration>,
    shadow_resubmit_time_span: Option<HumanDuration>,
    shadow_timeout: Option<HumanDuration>,
    duplicate_window: Option<HumanDuration>,
    peers: Option<Vec<PeerSection>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PeerSection {
    node_id: String,
    address: String,
    site: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeliverySection {
    hold: Option<bool>,
    concurrency_per_destination: Option<usize>,
    connect_timeout: Option<HumanDuration>,
    greeting_timeout: Option<HumanDuration>,
    inactivity_timeout: Option<HumanDuration>,
    connection_idle: Option<HumanDuration>,
    messages_per_connection_max: Option<usize>,
    recipients_per_transaction_max: Option<usize>,
    retry_initial: Option<HumanDuration>,
    retry_max: Option<HumanDuration>,
    message_expiration_timeout: Option<HumanDuration>,
    safety_net_hold_time: Option<HumanDuration>,
    host_down_initial: Option<HumanDuration>,
    host_down_max: Option<HumanDuration>,
    mx_port: Option<u16>,
    dns_servers: Option<Vec<String>>,
    dns_timeout: Option<HumanDuration>,
    copy_forward_after: Option<HumanDuration>,
    in_flight_max: Option<usize>,
    dsn_return_content_max: Option<ByteSize>,
    recent_cache_bytes: Option<ByteSize>,
    maintenance_interval: Option<HumanDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PoolSection {
    hosts: Vec<PoolHostSection>,
    failover: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PoolHostSection {
    address: String,
    priority: Option<u16>,
    weight: Option<u32>,
}

/// Outbound delivery settings (`[delivery]`).
#[derive(Clone, Debug)]
pub struct DeliveryConfig {
    /// Queue everything, deliver nothing (maintenance, tests).
    pub hold: bool,
    /// Connections per destination (pool, smarthost or MX domain), per core.
    pub concurrency_per_destination: usize,
    /// Longest TCP connect to a next hop.
    pub connect_timeout: Duration,
    /// Longest wait for a next hop's 220 greeting (RFC 5321 4.5.3.2.1).
    pub greeting_timeout: Duration,
    /// Longest wait for a next hop's reply (send side; RFC 5321 4.5.3.2).
    pub inactivity_timeout: Duration,
    /// How long an idle outbound connection is kept for reuse.
    pub connection_idle: Duration,
    /// Messages sent over one connection before it is closed and reopened.
    pub messages_per_connection_max: usize,
    /// Recipients per outbound transaction (more are split).
    pub recipients_per_transaction_max: usize,
    /// First retry delay; doubles per attempt.
    pub retry_initial: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// A message not delivered this long after it arrived is bounced.
    pub message_expiration_timeout: Duration,
    /// Handled messages stay in the Safety Net this long.
    pub safety_net_hold_time: Duration,
    /// A next-hop host that failed is not tried for this long (doubling).
    pub host_down_initial: Duration,
    /// Longest time a failed host is skipped.
    pub host_down_max: Duration,
    /// Port for MX delivery.
    pub mx_port: u16,
    /// DNS servers for MX lookups (empty: /etc/resolv.conf).
    pub dns_servers: Vec<SocketAddr>,
    /// DNS query timeout.
    pub dns_timeout: Duration,
    /// A queued message whose record is older than this, in a segment that
    /// is not the newest, is copied to the log head so old segments can go.
    pub copy_forward_after: Duration,
    /// Messages being delivered at once, per core.
    pub in_flight_max: usize,
    /// Bounces carry the whole original up to this size, else its headers.
    pub dsn_return_content_max: usize,
    /// Just-accepted messages kept in memory for their first delivery
    /// attempt (beyond it, delivery reads the log), per core.
    pub recent_cache_bytes: usize,
    /// How often cursors move, segments are reclaimed and pinned messages
    /// copied forward.
    pub maintenance_interval: Duration,
}

/// One host of a pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolHost {
    /// As written (HOST:PORT).
    pub name: String,
    /// Resolved at start.
    pub addr: SocketAddr,
    /// Lower is tried first (as MX preference / SRV priority).
    pub priority: u16,
    /// Share of connections among hosts of the same priority (as SRV).
    pub weight: u32,
}

/// A named pool of next-hop hosts (`[pools.NAME]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pool {
    /// Its name.
    pub name: String,
    /// Hosts.
    pub hosts: Vec<PoolHost>,
    /// Pool used while every host of this one is down.
    pub failover: Option<String>,
}

/// Name of the implicit pool made from `server.relay_to`.
pub const SMARTHOST_POOL: &str = "relay_to";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerSection {
    listen: Option<String>,
    hostname: Option<String>,
    data_dir: Option<PathBuf>,
    cores: Option<usize>,
    relay_to: Option<String>,
    admin_listen: Option<String>,
    shutdown_grace: Option<HumanDuration>,
    incoming_cpu: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SmtpSection {
    message_size_max: Option<ByteSize>,
    recipients_max: Option<usize>,
    errors_max: Option<u32>,
    inactivity_timeout: Option<HumanDuration>,
    session_timeout: Option<HumanDuration>,
    connections_per_core_max: Option<usize>,
    connections_per_ip_max: Option<usize>,
    message_memory_max: Option<ByteSize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RelaySection {
    client_networks: Option<Vec<String>>,
    recipient_domains: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StorageSection {
    segment_size: Option<ByteSize>,
    segment_age_max: Option<HumanDuration>,
    retention_min: Option<HumanDuration>,
    pending_bytes_max: Option<ByteSize>,
    zero_fill_ahead: Option<ByteSize>,
    io: Option<String>,
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
}

/// SMTP session limits.
#[derive(Clone, Debug)]
pub struct SmtpLimits {
    /// Largest message (advertised in SIZE).
    pub message_size_max: usize,
    /// Recipients per message.
    pub recipients_max: usize,
    /// Errors before the session is closed.
    pub errors_max: u32,
    /// Longest wait for the client's next bytes.
    pub inactivity_timeout: Duration,
    /// Longest whole session.
    pub session_timeout: Duration,
    /// Open connections per core.
    pub connections_per_core_max: usize,
    /// Open connections per client IP (whole server).
    pub connections_per_ip_max: usize,
    /// Message content held in memory per core by sessions receiving
    /// DATA/BDAT; above it the session that crossed it gets 421 4.3.2.
    pub message_memory_max: usize,
}

/// Who may relay.
#[derive(Clone, Debug)]
pub struct RelayRules {
    /// Clients in these networks may relay anywhere.
    pub client_networks: Vec<IpNet>,
    /// Anyone may send to these domains (lower case).
    pub recipient_domains: Vec<String>,
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
    /// Bound on finishing in-flight transactions at shutdown.
    pub shutdown_grace: Duration,
    /// Each core's listener takes the connections that arrive on its own
    /// CPU (`SO_INCOMING_CPU` in the `SO_REUSEPORT` group).
    pub incoming_cpu: bool,
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
    pub pools: std::collections::BTreeMap<String, Pool>,
    /// Static routes: domain, `*.domain` or `*` -> pool name.
    pub routes: std::collections::BTreeMap<String, String>,
    /// The HA boundary and shadow redundancy.
    pub cluster: ClusterConfig,
}

fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn local_hostname() -> String {
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

impl Config {
    /// Reads `path` (if any), applies `overrides`, fills defaults and
    /// validates. Errors list every problem.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Config, Vec<String>> {
        let file = match path {
            None => FileConfig::default(),
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| vec![format!("cannot read {}: {e}", p.display())])?;
                toml::from_str(&text).map_err(|e| vec![format!("{}: {e}", p.display())])?
            }
        };
        Config::resolve(file, overrides)
    }

    /// Parses TOML text (for tests and `tern check-config`).
    pub fn from_toml(text: &str, overrides: &Overrides) -> Result<Config, Vec<String>> {
        let file: FileConfig = toml::from_str(text).map_err(|e| vec![e.to_string()])?;
        Config::resolve(file, overrides)
    }

    fn resolve(f: FileConfig, o: &Overrides) -> Result<Config, Vec<String>> {
        let mut problems = Vec::new();
        let listen_s = o
            .listen
            .clone()
            .or(f.server.listen)
            .unwrap_or_else(|| "127.0.0.1:2525".into());
        let listen = listen_s
            .parse()
            .map_err(|_| problems.push(format!("server.listen: {listen_s:?} is not IP:PORT")))
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 2525)));
        let admin_s = o
            .admin_listen
            .clone()
            .or(f.server.admin_listen)
            .unwrap_or_else(|| "127.0.0.1:8025".into());
        let admin_listen = if admin_s == "off" {
            None
        } else {
            match admin_s.parse() {
                Ok(a) => Some(a),
                Err(_) => {
                    problems.push(format!(
                        "server.admin_listen: {admin_s:?} is not IP:PORT or \"off\""
                    ));
                    None
                }
            }
        };
        let cores = o.cores.or(f.server.cores).unwrap_or(0);
        let cores = if cores == 0 {
            // Automatic: one per CPU, but never fewer than the shards the
            // data directory already holds (each shard's log is served by
            // its own core; executors wrap around the CPUs).
            let dir = o
                .data_dir
                .clone()
                .or(f.server.data_dir.clone())
                .unwrap_or_else(|| "./tern-data".into());
            available_cores()
                .min(256)
                .max(crate::layout::existing_shards(&dir))
        } else {
            cores
        };
        if cores > 256 {
            problems.push(format!(
                "server.cores: {cores} is above 256 (the queue id has 2 hex digits of shard)"
            ));
        }
        let relay_to = o.relay_to.clone().or(f.server.relay_to);
        if let Some(r) = &relay_to {
            if r.rsplit_once(':')
                .and_then(|(_, p)| p.parse::<u16>().ok())
                .is_none()
            {
                problems.push(format!("server.relay_to: {r:?} is not HOST:PORT"));
            }
        }
        let delivery = resolve_delivery(&f.delivery, &mut problems);
        let (pools, routes) =
            resolve_pools(&f.pools, &f.routes, relay_to.as_deref(), &mut problems);
        let smtp = resolve_smtp(&f.smtp, &mut problems);
        let relay = resolve_relay(&f.relay, &mut problems);
        let storage = resolve_storage(&f.storage, &smtp, &mut problems);
        let io = match f.storage.io.as_deref() {
            None | Some("auto") => IoMode::Auto,
            Some("buffered") => IoMode::Buffered,
            Some("direct") => IoMode::Direct,
            Some(other) => {
                problems.push(format!(
                    "storage.io: {other:?} is not \"auto\", \"buffered\" or \"direct\""
                ));
                IoMode::Auto
            }
        };
        if io != IoMode::Buffered && storage.zero_fill_ahead_bytes == 0 {
            // Measured: O_DIRECT writes into preallocated (unwritten) extents
            // run ~8x slower than with zero-fill ahead (BENCHMARKS.md).
            problems.push("storage.zero_fill_ahead = 0 requires storage.io = \"buffered\"".into());
        }
        let hostname = f.server.hostname.unwrap_or_else(local_hostname);
        if !tern_smtp::address::domain_name(&hostname) {
            problems.push(format!(
                "server.hostname: {hostname:?} is not a domain name"
            ));
        }
        let cluster = resolve_cluster(&f.cluster, &hostname, &mut problems);
        let config = Config {
            listen,
            hostname,
            data_dir: o
                .data_dir
                .clone()
                .or(f.server.data_dir)
                .unwrap_or_else(|| "./tern-data".into()),
            cores,
            relay_to,
            admin_listen,
            shutdown_grace: f
                .server
                .shutdown_grace
                .map_or(Duration::from_secs(30), |d| d.0),
            incoming_cpu: f.server.incoming_cpu.unwrap_or(false),
            smtp,
            relay,
            storage,
            io,
            delivery,
            pools,
            routes,
            cluster,
        };
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(problems)
        }
    }
}

fn dur(d: Option<HumanDuration>, default: Duration) -> Duration {
    d.map_or(default, |d| d.0)
}

fn resolve_delivery(d: &DeliverySection, problems: &mut Vec<String>) -> DeliveryConfig {
    let mut dns_servers = Vec::new();
    for s in d.dns_servers.clone().unwrap_or_default() {
        match s.parse::<SocketAddr>().or_else(|_| {
            s.parse::<std::net::IpAddr>()
                .map(|ip| SocketAddr::new(ip, 53))
        }) {
            Ok(a) => dns_servers.push(a),
            Err(_) => problems.push(format!("delivery.dns_servers: {s:?} is not IP or IP:PORT")),
        }
    }
    let c = DeliveryConfig {
        hold: d.hold.unwrap_or(false),
        concurrency_per_destination: d.concurrency_per_destination.unwrap_or(20),
        connect_timeout: dur(d.connect_timeout, Duration::from_secs(30)),
        greeting_timeout: dur(d.greeting_timeout, Duration::from_secs(300)),
        inactivity_timeout: dur(d.inactivity_timeout, Duration::from_secs(600)),
        connection_idle: dur(d.connection_idle, Duration::from_secs(2)),
        messages_per_connection_max: d.messages_per_connection_max.unwrap_or(1000),
        recipients_per_transaction_max: d.recipients_per_transaction_max.unwrap_or(100),
        retry_initial: dur(d.retry_initial, Duration::from_secs(60)),
        retry_max: dur(d.retry_max, Duration::from_secs(3600)),
        message_expiration_timeout: dur(
            d.message_expiration_timeout,
            Duration::from_secs(2 * 86400),
        ),
        safety_net_hold_time: dur(d.safety_net_hold_time, Duration::from_secs(2 * 86400)),
        host_down_initial: dur(d.host_down_initial, Duration::from_secs(30)),
        host_down_max: dur(d.host_down_max, Duration::from_secs(600)),
        mx_port: d.mx_port.unwrap_or(25),
        dns_servers,
        dns_timeout: dur(d.dns_timeout, Duration::from_secs(5)),
        copy_forward_after: dur(d.copy_forward_after, Duration::from_secs(3600)),
        in_flight_max: d.in_flight_max.unwrap_or(10_000),
        dsn_return_content_max: d.dsn_return_content_max.map_or(1 << 20, |b| b.0 as usize),
        recent_cache_bytes: d.recent_cache_bytes.map_or(64 << 20, |b| b.0 as usize),
        maintenance_interval: dur(d.maintenance_interval, Duration::from_secs(1)),
    };
    if !(1..=10_000).contains(&c.concurrency_per_destination) {
        problems.push("delivery.concurrency_per_destination must be 1..=10000".into());
    }
    if !(1..=100_000).contains(&c.recipients_per_transaction_max) {
        problems.push("delivery.recipients_per_transaction_max must be 1..=100000".into());
    }
    if c.messages_per_connection_max == 0 || c.in_flight_max == 0 {
        problems.push(
            "delivery.messages_per_connection_max and in_flight_max must be at least 1".into(),
        );
    }
    for (name, v) in [
        ("connect_timeout", c.connect_timeout),
        ("greeting_timeout", c.greeting_timeout),
        ("inactivity_timeout", c.inactivity_timeout),
        ("retry_initial", c.retry_initial),
        ("host_down_initial", c.host_down_initial),
        ("dns_timeout", c.dns_timeout),
        ("maintenance_interval", c.maintenance_interval),
    ] {
        if v < Duration::from_millis(100) {
            problems.push(format!("delivery.{name} must be at least 100ms"));
        }
    }
    if c.retry_max < c.retry_initial || c.host_down_max < c.host_down_initial {
        problems.push(
            "delivery.retry_max must be >= retry_initial and host_down_max >= host_down_initial"
                .into(),
        );
    }
    if c.mx_port == 0 {
        problems.push("delivery.mx_port must not be 0".into());
    }
    c
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

/// Node ids and sites are compared in lower case.
fn cluster_token(key: &str, s: &str, problems: &mut Vec<String>) -> String {
    if !crate::cluster::is_token(s) {
        problems.push(format!(
            "{key}: {s:?} must be 1..=64 of letters, digits, '.', '_', '-'"
        ));
    }
    s.to_ascii_lowercase()
}

fn resolve_cluster(
    c: &ClusterSection,
    hostname: &str,
    problems: &mut Vec<String>,
) -> ClusterConfig {
    let node_id = match c.node_id.as_deref() {
        None | Some("") => hostname,
        Some(id) => id,
    };
    let node_id = cluster_token(
        "cluster.node_id (default: server.hostname)",
        node_id,
        problems,
    );
    let site = cluster_token(
        "cluster.site",
        c.site.as_deref().unwrap_or("default"),
        problems,
    );
    let shadow_preference = c
        .shadow_preference
        .as_deref()
        .map_or(Ok(ShadowPreference::PreferRemote), str::parse)
        .unwrap_or_else(|e| {
            problems.push(format!("cluster.shadow_preference: {e}"));
            ShadowPreference::PreferRemote
        });
    let peers = resolve_peers(c.peers.as_deref().unwrap_or_default(), &node_id, problems);
    let cluster = ClusterConfig {
        node_id,
        site,
        shadow_redundancy: c.shadow_redundancy.unwrap_or(true),
        shadow_preference,
        max_retries_remote_site: c.max_retries_remote_site.unwrap_or(4),
        max_retries_local_site: c.max_retries_local_site.unwrap_or(2),
        reject_on_shadow_failure: c.reject_on_shadow_failure.unwrap_or(false),
        shadow_heartbeat_frequency: dur(c.shadow_heartbeat_frequency, Duration::from_secs(120)),
        shadow_message_auto_discard_interval: dur(
            c.shadow_message_auto_discard_interval,
            Duration::from_secs(2 * 86400),
        ),
        shadow_resubmit_time_span: dur(c.shadow_resubmit_time_span, Duration::from_secs(3 * 3600)),
        shadow_timeout: dur(c.shadow_timeout, Duration::from_secs(30)),
        duplicate_window: dur(c.duplicate_window, Duration::from_secs(600)),
        peers,
    };
    check_cluster(&cluster, problems);
    cluster
}

fn resolve_peers(list: &[PeerSection], node_id: &str, problems: &mut Vec<String>) -> Vec<Peer> {
    let mut seen = std::collections::BTreeSet::from([node_id.to_string()]);
    let mut peers = Vec::new();
    for (i, p) in list.iter().enumerate() {
        let key = format!("cluster.peers[{i}]");
        let peer_id = cluster_token(&format!("{key}.node_id"), &p.node_id, problems);
        if !seen.insert(peer_id.clone()) {
            problems.push(format!(
                "{key}.node_id: {peer_id:?} is not unique (nor may it be this node's)"
            ));
        }
        let site = p.site.as_deref().unwrap_or("default");
        let site = cluster_token(&format!("{key}.site"), site, problems);
        match resolve_host(&p.address) {
            Ok(addr) => peers.push(Peer {
                node_id: peer_id,
                addr,
                name: p.address.clone(),
                site,
            }),
            Err(e) => problems.push(format!("{key}.address: {e}")),
        }
    }
    peers
}

fn check_cluster(c: &ClusterConfig, problems: &mut Vec<String>) {
    let max = crate::cluster::RETRIES_MAX;
    if c.max_retries_remote_site > max || c.max_retries_local_site > max {
        problems.push(format!(
            "cluster.max_retries_remote_site and max_retries_local_site must be 0..={max}"
        ));
    }
    for (name, v) in [
        ("shadow_heartbeat_frequency", c.shadow_heartbeat_frequency),
        (
            "shadow_message_auto_discard_interval",
            c.shadow_message_auto_discard_interval,
        ),
        ("shadow_resubmit_time_span", c.shadow_resubmit_time_span),
        ("shadow_timeout", c.shadow_timeout),
        ("duplicate_window", c.duplicate_window),
    ] {
        if v < Duration::from_millis(100) {
            problems.push(format!("cluster.{name} must be at least 100ms"));
        }
    }
    // Peers listed, but the preference and tries leave none to try: every
    // shadow would fail.
    if c.shadow_redundancy && !c.peers.is_empty() && c.shadow_order(0).is_empty() {
        problems.push(format!(
            "cluster: shadow_preference = {:?} with max_retries_remote_site = {} and \
             max_retries_local_site = {} leaves no peer to try (sites: this node {:?}, peers {:?})",
            c.shadow_preference.as_str(),
            c.max_retries_remote_site,
            c.max_retries_local_site,
            c.site,
            c.peers.iter().map(|p| p.site.as_str()).collect::<Vec<_>>(),
        ));
    }
}

type Pools = std::collections::BTreeMap<String, Pool>;
type Routes = std::collections::BTreeMap<String, String>;

fn resolve_pools(
    sections: &std::collections::BTreeMap<String, PoolSection>,
    routes_in: &Routes,
    relay_to: Option<&str>,
    problems: &mut Vec<String>,
) -> (Pools, Routes) {
    let mut pools = Pools::new();
    for (name, p) in sections {
        if name == SMARTHOST_POOL {
            problems.push(format!(
                "pools.{name}: the name is reserved for server.relay_to"
            ));
            continue;
        }
        if p.hosts.is_empty() {
            problems.push(format!("pools.{name}: hosts is empty"));
        }
        let mut hosts = Vec::new();
        for h in &p.hosts {
            match resolve_host(&h.address) {
                Ok(addr) => hosts.push(PoolHost {
                    name: h.address.clone(),
                    addr,
                    priority: h.priority.unwrap_or(0),
                    weight: h.weight.unwrap_or(1).max(1),
                }),
                Err(e) => problems.push(format!("pools.{name}.hosts: {e}")),
            }
        }
        pools.insert(
            name.clone(),
            Pool {
                name: name.clone(),
                hosts,
                failover: p.failover.clone(),
            },
        );
    }
    if let Some(r) = relay_to {
        let resolved = resolve_host(r);
        if let Ok(addr) = resolved {
            pools.insert(
                SMARTHOST_POOL.into(),
                Pool {
                    name: SMARTHOST_POOL.into(),
                    hosts: vec![PoolHost {
                        name: r.to_string(),
                        addr,
                        priority: 0,
                        weight: 1,
                    }],
                    failover: None,
                },
            );
        } else if let Err(e) = resolved {
            // A malformed value was reported above; this is a lookup error.
            if !e.contains("is not HOST:PORT") {
                problems.push(format!("server.relay_to: {e}"));
            }
        }
    }
    for (name, p) in &pools {
        if let Some(f) = &p.failover {
            if !pools.contains_key(f) {
                problems.push(format!("pools.{name}.failover: no pool named {f:?}"));
            }
        }
    }
    let mut routes = Routes::new();
    for (pattern, pool) in routes_in {
        let pattern = pattern.to_ascii_lowercase();
        let domain = pattern.strip_prefix("*.").unwrap_or(&pattern);
        if pattern != "*" && !tern_smtp::address::domain_name(domain) {
            problems.push(format!("routes: {pattern:?} is not DOMAIN, *.DOMAIN or *"));
        }
        if !pools.contains_key(pool) {
            problems.push(format!("routes.{pattern:?}: no pool named {pool:?}"));
        }
        routes.insert(pattern, pool.clone());
    }
    (pools, routes)
}

fn resolve_smtp(s: &SmtpSection, problems: &mut Vec<String>) -> SmtpLimits {
    let limits = SmtpLimits {
        message_size_max: s.message_size_max.map_or(35 << 20, |b| b.0 as usize),
        recipients_max: s.recipients_max.unwrap_or(1000),
        errors_max: s.errors_max.unwrap_or(20),
        inactivity_timeout: s
            .inactivity_timeout
            .map_or(Duration::from_secs(300), |d| d.0),
        session_timeout: s.session_timeout.map_or(Duration::from_secs(600), |d| d.0),
        connections_per_core_max: s.connections_per_core_max.unwrap_or(2000),
        connections_per_ip_max: s.connections_per_ip_max.unwrap_or(100),
        message_memory_max: s.message_memory_max.map_or(1 << 30, |b| b.0 as usize),
    };
    // Bounds, each with its reason.
    if !(1024..=(1 << 30)).contains(&limits.message_size_max) {
        problems.push("smtp.message_size_max must be 1KiB..=1GiB".into());
    }
    if !(100..=100_000).contains(&limits.recipients_max) {
        problems.push(
            "smtp.recipients_max must be 100..=100000 (RFC 5321 4.5.3.1.8 requires at least 100)"
                .into(),
        );
    }
    if limits.errors_max == 0 {
        problems.push("smtp.errors_max must be at least 1".into());
    }
    if limits.inactivity_timeout < Duration::from_secs(1)
        || limits.session_timeout < limits.inactivity_timeout
    {
        problems.push("smtp.inactivity_timeout must be >= 1s and <= smtp.session_timeout".into());
    }
    if limits.message_memory_max < limits.message_size_max {
        problems.push("smtp.message_memory_max must be at least smtp.message_size_max".into());
    }
    if limits.connections_per_core_max == 0 || limits.connections_per_ip_max == 0 {
        problems.push(
            "smtp.connections_per_core_max and connections_per_ip_max must be at least 1".into(),
        );
    }
    limits
}

fn resolve_relay(r: &RelaySection, problems: &mut Vec<String>) -> RelayRules {
    let nets = r
        .client_networks
        .clone()
        .unwrap_or_else(|| vec!["127.0.0.0/8".into(), "::1/128".into()]);
    let mut client_networks = Vec::new();
    for n in nets {
        match n
            .parse::<IpNet>()
            .or_else(|_| n.parse::<std::net::IpAddr>().map(IpNet::from))
        {
            Ok(net) => client_networks.push(net),
            Err(_) => problems.push(format!("relay.client_networks: {n:?} is not an IP network")),
        }
    }
    let mut recipient_domains = Vec::new();
    for d in r.recipient_domains.clone().unwrap_or_default() {
        if tern_smtp::address::domain_name(&d) {
            recipient_domains.push(d.to_lowercase());
        } else {
            problems.push(format!("relay.recipient_domains: {d:?} is not a domain"));
        }
    }
    RelayRules {
        client_networks,
        recipient_domains,
    }
}

fn resolve_storage(s: &StorageSection, smtp: &SmtpLimits, problems: &mut Vec<String>) -> LogConfig {
    let defaults = LogConfig::default();
    // A record holds the envelope plus the message: every recipient path
    // (RFC 5321 4.5.3.1.3: 256 octets, +2 for its length) and 1 MiB for the
    // rest (sender, HELO name, client, Received header).
    let record_bytes_max = smtp.message_size_max + smtp.recipients_max * 258 + (1 << 20);
    let segment = s.segment_size.map_or(defaults.segment_bytes_max, |b| b.0);
    let cfg = LogConfig {
        record_bytes_max,
        segment_bytes_max: segment,
        segment_age_max_ms: s
            .segment_age_max
            .map_or(defaults.segment_age_max_ms, |d| d.0.as_millis() as u64),
        retention_min_ms: s
            .retention_min
            .map_or(defaults.retention_min_ms, |d| d.0.as_millis() as u64),
        pending_bytes_max: s
            .pending_bytes_max
            .map_or(defaults.pending_bytes_max, |b| b.0 as usize),
        zero_fill_ahead_bytes: s
            .zero_fill_ahead
            .map_or(defaults.zero_fill_ahead_bytes, |b| b.0),
        cursors: defaults.cursors,
    };
    if let Err(tern_storage::Error::Config(list)) = cfg.validate() {
        problems.extend(list.into_iter().map(|p| {
            format!("storage: {p} (record_bytes_max = smtp.message_size_max + 258 * smtp.recipients_max + 1MiB)")
        }));
    }
    cfg
}

/// How the log writes: through the page cache or with `O_DIRECT`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IoMode {
    /// `Direct` where the file system supports `O_DIRECT`, else `Buffered`
    /// (decided per shard directory at start).
    #[default]
    Auto,
    /// Page cache + fdatasync.
    Buffered,
    /// `O_DIRECT` from aligned buffers + fdatasync.
    Direct,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let c = Config::from_toml("", &Overrides::default()).unwrap();
        assert_eq!(c.listen, "127.0.0.1:2525".parse().unwrap());
        assert_eq!(c.data_dir, PathBuf::from("./tern-data"));
        assert_eq!(c.smtp.message_size_max, 35 << 20);
        assert_eq!(c.smtp.inactivity_timeout, Duration::from_secs(300));
        assert_eq!(c.smtp.session_timeout, Duration::from_secs(600));
        assert_eq!(c.relay.client_networks.len(), 2);
        assert_eq!(c.admin_listen, Some("127.0.0.1:8025".parse().unwrap()));
        assert!(c.cores >= 1);
        assert!(!c.incoming_cpu);
    }

    #[test]
    fn file_values_and_overrides() {
        let text = r#"
            [server]
            listen = "127.0.0.2:25"
            cores = 2
            admin_listen = "off"
            incoming_cpu = true
            [smtp]
            message_size_max = "10MiB"
            inactivity_timeout = "30s"
            [relay]
            client_networks = ["10.0.0.0/8", "192.0.2.7"]
            recipient_domains = ["Example.COM"]
            [storage]
            segment_size = "64MiB"
        "#;
        let o = Overrides {
            cores: Some(1),
            data_dir: Some("/x".into()),
            ..Default::default()
        };
        let c = Config::from_toml(text, &o).unwrap();
        assert_eq!(c.listen.port(), 25);
        assert_eq!(c.cores, 1);
        assert_eq!(c.admin_listen, None);
        assert!(c.incoming_cpu);
        assert_eq!(c.data_dir, PathBuf::from("/x"));
        assert_eq!(c.smtp.message_size_max, 10 << 20);
        assert_eq!(c.storage.segment_bytes_max, 64 << 20);
        assert_eq!(c.relay.recipient_domains, vec!["example.com".to_string()]);
        assert_eq!(c.relay.client_networks[1].to_string(), "192.0.2.7/32");
    }

    #[test]
    fn pools_routes_and_delivery() {
        let text = r#"
            [server]
            relay_to = "127.0.0.1:2600"
            [delivery]
            retry_initial = "2s"
            retry_max = "10s"
            dns_servers = ["127.0.0.53:5353", "127.0.0.54"]
            [pools.main]
            hosts = [ { address = "127.0.0.2:25", priority = 10, weight = 3 }, { address = "127.0.0.3:25" } ]
            failover = "backup"
            [pools.backup]
            hosts = [ { address = "127.0.0.4:25" } ]
            [routes]
            "Example.com" = "main"
            "*.example.net" = "backup"
        "#;
        let c = Config::from_toml(text, &Overrides::default()).unwrap();
        assert_eq!(c.delivery.retry_initial, Duration::from_secs(2));
        assert_eq!(c.delivery.dns_servers[1].to_string(), "127.0.0.54:53");
        assert_eq!(c.pools["main"].hosts[0].weight, 3);
        assert_eq!(c.pools["main"].hosts[1].priority, 0);
        assert_eq!(c.pools["main"].failover.as_deref(), Some("backup"));
        assert_eq!(c.pools[SMARTHOST_POOL].hosts[0].addr.port(), 2600);
        assert_eq!(c.routes["example.com"], "main");
        let bad = r#"
            [delivery]
            retry_initial = "1h"
            retry_max = "1m"
            [pools.a]
            hosts = []
            failover = "nowhere"
            [pools.relay_to]
            hosts = [ { address = "127.0.0.1:25" } ]
            [routes]
            "x.example" = "missing"
            "bad domain" = "a"
        "#;
        let problems = Config::from_toml(bad, &Overrides::default()).unwrap_err();
        assert_eq!(problems.len(), 6, "{problems:#?}");
    }

    #[test]
    fn strict_and_reports_every_problem() {
        assert!(Config::from_toml("[server]\nlisten_typo = \"x\"", &Overrides::default()).is_err());
        assert!(Config::from_toml("[nope]\n", &Overrides::default()).is_err());
        assert!(
            Config::from_toml("[server]\nhostname = \"bad name\"", &Overrides::default()).is_err()
        );
        assert!(Config::from_toml("[server]\nhostname = \"\"", &Overrides::default()).is_err());
        // Many recipients: the record limit grows with them.
        let many =
            Config::from_toml("[smtp]\nrecipients_max = 100000", &Overrides::default()).unwrap();
        assert!(many.storage.record_bytes_max >= (35 << 20) + 100_000 * 258);
        let text = r#"
            [server]
            listen = "nonsense"
            relay_to = "no-port"
            [smtp]
            recipients_max = 5
            [relay]
            client_networks = ["300.1.1.1/8"]
        "#;
        let problems = Config::from_toml(text, &Overrides::default()).unwrap_err();
        assert_eq!(problems.len(), 4, "{problems:#?}");
        assert!(Config::from_toml(
            "[smtp]\nmessage_size_max = \"5 parsecs\"",
            &Overrides::default()
        )
        .is_err());
        assert!(Config::from_toml(
            "[smtp]\ninactivity_timeout = \"soon\"",
            &Overrides::default()
        )
        .is_err());
    }

    #[test]
    fn cluster_defaults_values_and_problems() {
        let c = Config::from_toml(
            "[server]\nhostname = \"MX1.example.net\"",
            &Overrides::default(),
        )
        .unwrap()
        .cluster;
        assert_eq!(c.node_id, "mx1.example.net");
        assert_eq!(c.site, "default");
        assert!(c.shadow_redundancy && !c.reject_on_shadow_failure);
        assert_eq!(c.shadow_preference, ShadowPreference::PreferRemote);
        assert_eq!(
            (c.max_retries_remote_site, c.max_retries_local_site),
            (4, 2)
        );
        assert_eq!(c.shadow_heartbeat_frequency, Duration::from_secs(120));
        assert_eq!(
            c.shadow_message_auto_discard_interval,
            Duration::from_secs(2 * 86400)
        );
        assert_eq!(c.shadow_resubmit_time_span, Duration::from_secs(3 * 3600));
        assert_eq!(c.shadow_timeout, Duration::from_secs(30));
        assert_eq!(c.duplicate_window, Duration::from_secs(600));
        assert!(c.peers.is_empty());
        let text = r#"
            [cluster]
            node_id = "A"
            site = "East"
            shadow_preference = "local_only"
            shadow_timeout = "2s"
            peers = [
              { node_id = "b", address = "127.0.0.3:2525" },
              { node_id = "c", address = "localhost:2526", site = "east" },
              { node_id = "w", address = "127.0.0.4:2525", site = "west" },
            ]
        "#;
        let c = Config::from_toml(text, &Overrides::default())
            .unwrap()
            .cluster;
        assert_eq!((c.node_id.as_str(), c.site.as_str()), ("a", "east"));
        assert_eq!(c.shadow_timeout, Duration::from_secs(2));
        assert_eq!(c.peers[0].site, "default");
        assert_eq!(c.peers[1].name, "localhost:2526");
        assert_eq!(c.peers[1].addr.port(), 2526);
        assert_eq!(c.local_peers().count(), 1);
        assert!(Config::from_toml(
            "[cluster]\npeers = [ { node_id = \"b\", address = \"127.0.0.3:25\", port = 1 } ]",
            &Overrides::default()
        )
        .is_err());
        let bad = r#"
            [server]
            hostname = "mx1.example.net"
            [cluster]
            node_id = "has space"
            site = ""
            shadow_preference = "anywhere"
            max_retries_local_site = 101
            shadow_heartbeat_frequency = "10ms"
            duplicate_window = "0s"
            peers = [
              { node_id = "b", address = "no-port" },
              { node_id = "B", address = "127.0.0.3:2525" },
              { node_id = "c/d", address = "127.0.0.4:2525", site = "x y" },
            ]
        "#;
        let problems = Config::from_toml(bad, &Overrides::default()).unwrap_err();
        assert_eq!(problems.len(), 10, "{problems:#?}");
        // Own id among the peers; remote_only with one site.
        let bad = r#"
            [cluster]
            node_id = "a"
            shadow_preference = "remote_only"
            peers = [ { node_id = "A", address = "127.0.0.3:2525" } ]
        "#;
        let problems = Config::from_toml(bad, &Overrides::default()).unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:#?}");
        let long = format!("[server]\nhostname = \"{}.example\"", "x".repeat(60));
        let problems = Config::from_toml(&long, &Overrides::default()).unwrap_err();
        assert!(problems[0].starts_with("cluster.node_id"), "{problems:#?}");
    }

    #[test]
    fn example_config_is_valid_and_states_the_defaults() {
        let text = include_str!("../../tern.example.toml");
        let example = Config::from_toml(text, &Overrides::default()).unwrap();
        let defaults = Config::from_toml("", &Overrides::default()).unwrap();
        assert_eq!(format!("{example:?}"), format!("{defaults:?}"));
    }

    #[test]
    fn sizes() {
        assert_eq!("35MiB".parse::<ByteSize>(), Ok(ByteSize(35 << 20)));
        assert_eq!("128 MiB".parse::<ByteSize>(), Ok(ByteSize(128 << 20)));
        assert_eq!("4096".parse::<ByteSize>(), Ok(ByteSize(4096)));
        assert!("1XB".parse::<ByteSize>().is_err());
        assert!("99999999999999999999GiB".parse::<ByteSize>().is_err());
    }
}
