//! `[delivery]`: outbound connections, retries, expiry and the Safety Net.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ByteSize, HumanDuration};

/// `[delivery]` as written; its `Default` is the default of every key.
#[derive(Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct DeliverySection {
    hold: bool,
    concurrency_per_destination: usize,
    connect_timeout: HumanDuration,
    greeting_timeout: HumanDuration,
    inactivity_timeout: HumanDuration,
    connection_idle: HumanDuration,
    messages_per_connection_max: usize,
    recipients_per_transaction_max: usize,
    retry_initial: HumanDuration,
    retry_max: HumanDuration,
    message_expiration_timeout: HumanDuration,
    /// 0s: no delay warnings.
    delay_warning_time: HumanDuration,
    safety_net_hold_time: HumanDuration,
    host_down_initial: HumanDuration,
    host_down_max: HumanDuration,
    mx_port: u16,
    /// "IP" or "IP:PORT"; empty: /etc/resolv.conf.
    dns_servers: Vec<String>,
    dns_timeout: HumanDuration,
    copy_forward_after: HumanDuration,
    in_flight_max: usize,
    dsn_return_content_max: ByteSize,
    recent_cache_bytes: ByteSize,
    maintenance_interval: HumanDuration,
    tls_policy: String,
}

const DAY_SECS: u64 = 86_400;

impl Default for DeliverySection {
    fn default() -> Self {
        DeliverySection {
            hold: false,
            concurrency_per_destination: 20,
            connect_timeout: HumanDuration::from_secs(30),
            greeting_timeout: HumanDuration::from_secs(300),
            inactivity_timeout: HumanDuration::from_secs(600),
            connection_idle: HumanDuration::from_secs(2),
            messages_per_connection_max: 1000,
            recipients_per_transaction_max: 100,
            retry_initial: HumanDuration::from_secs(60),
            retry_max: HumanDuration::from_secs(3600),
            message_expiration_timeout: HumanDuration::from_secs(2 * DAY_SECS),
            delay_warning_time: HumanDuration::from_secs(0),
            safety_net_hold_time: HumanDuration::from_secs(2 * DAY_SECS),
            host_down_initial: HumanDuration::from_secs(30),
            host_down_max: HumanDuration::from_secs(600),
            mx_port: 25,
            dns_servers: Vec::new(),
            dns_timeout: HumanDuration::from_secs(5),
            copy_forward_after: HumanDuration::from_secs(3600),
            in_flight_max: 10_000,
            dsn_return_content_max: ByteSize(1 << 20),
            recent_cache_bytes: ByteSize(64 << 20),
            maintenance_interval: HumanDuration::from_secs(1),
            tls_policy: "may".into(),
        }
    }
}

/// Outbound delivery settings (`[delivery]`).
#[derive(Clone, Debug)]
pub struct DeliveryConfig {
    /// Outbound TLS where the pool sets none (and for MX delivery).
    pub tls_policy: super::tls::TlsPolicy,
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
    /// One "delayed" DSN to the sender once a message has waited this long
    /// (`None`: off, the default).
    pub delay_warning_time: Option<Duration>,
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

/// DNS servers are queried on this port unless one is given.
const DNS_PORT: u16 = 53;

impl DeliverySection {
    /// The delivery settings, each checked against its bounds.
    pub(super) fn resolve(&self, problems: &mut Vec<String>) -> DeliveryConfig {
        let mut dns_servers = Vec::new();
        for s in &self.dns_servers {
            match s.parse::<SocketAddr>().or_else(|_| {
                s.parse::<std::net::IpAddr>()
                    .map(|ip| SocketAddr::new(ip, DNS_PORT))
            }) {
                Ok(a) => dns_servers.push(a),
                Err(_) => {
                    problems.push(format!("delivery.dns_servers: {s:?} is not IP or IP:PORT"))
                }
            }
        }
        let c = DeliveryConfig {
            tls_policy: super::tls::policy("delivery.tls_policy", &self.tls_policy, problems),
            hold: self.hold,
            concurrency_per_destination: self.concurrency_per_destination,
            connect_timeout: self.connect_timeout.0,
            greeting_timeout: self.greeting_timeout.0,
            inactivity_timeout: self.inactivity_timeout.0,
            connection_idle: self.connection_idle.0,
            messages_per_connection_max: self.messages_per_connection_max,
            recipients_per_transaction_max: self.recipients_per_transaction_max,
            retry_initial: self.retry_initial.0,
            retry_max: self.retry_max.0,
            message_expiration_timeout: self.message_expiration_timeout.0,
            safety_net_hold_time: self.safety_net_hold_time.0,
            delay_warning_time: Some(self.delay_warning_time.0).filter(|d| !d.is_zero()),
            host_down_initial: self.host_down_initial.0,
            host_down_max: self.host_down_max.0,
            mx_port: self.mx_port,
            dns_servers,
            dns_timeout: self.dns_timeout.0,
            copy_forward_after: self.copy_forward_after.0,
            in_flight_max: self.in_flight_max,
            dsn_return_content_max: self.dsn_return_content_max.as_usize(),
            recent_cache_bytes: self.recent_cache_bytes.as_usize(),
            maintenance_interval: self.maintenance_interval.0,
        };
        check(&c, problems);
        c
    }
}

/// Bounds of `[delivery]`.
fn check(c: &DeliveryConfig, problems: &mut Vec<String>) {
    let counts = [
        (
            "concurrency_per_destination",
            c.concurrency_per_destination,
            10_000,
        ),
        (
            "recipients_per_transaction_max",
            c.recipients_per_transaction_max,
            100_000,
        ),
        (
            "messages_per_connection_max",
            c.messages_per_connection_max,
            usize::MAX,
        ),
        ("in_flight_max", c.in_flight_max, usize::MAX),
    ];
    for (key, n, max) in counts {
        if !(1..=max).contains(&n) {
            let bounds = match max {
                usize::MAX => "at least 1".to_string(),
                max => format!("1..={max}"),
            };
            problems.push(format!("delivery.{key} must be {bounds}, got {n}"));
        }
    }
    super::check_timers(
        "delivery",
        &[
            ("connect_timeout", c.connect_timeout),
            ("greeting_timeout", c.greeting_timeout),
            ("inactivity_timeout", c.inactivity_timeout),
            ("retry_initial", c.retry_initial),
            ("host_down_initial", c.host_down_initial),
            ("dns_timeout", c.dns_timeout),
            ("maintenance_interval", c.maintenance_interval),
        ],
        problems,
    );
    let pairs = [
        ("retry_max", c.retry_max, "retry_initial", c.retry_initial),
        (
            "host_down_max",
            c.host_down_max,
            "host_down_initial",
            c.host_down_initial,
        ),
    ];
    for (key, value, floor_key, floor) in pairs {
        if value < floor {
            problems.push(format!(
                "delivery.{key} must be at least delivery.{floor_key} ({}), got {}",
                HumanDuration(floor),
                HumanDuration(value)
            ));
        }
    }
    if c.mx_port == 0 {
        problems.push("delivery.mx_port must be 1..=65535, got 0".into());
    }
}
