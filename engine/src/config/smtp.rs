//! `[smtp]`: limits of inbound SMTP sessions.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ByteSize, HumanDuration};

/// `[smtp]` as written; its `Default` is the default of every key.
#[derive(Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct SmtpSection {
    message_size_max: ByteSize,
    recipients_max: usize,
    errors_max: u32,
    junk_commands_max: u32,
    hops_max: u32,
    inactivity_timeout: HumanDuration,
    session_timeout: HumanDuration,
    connections_per_core_max: usize,
    connections_per_ip_max: usize,
    message_memory_max: ByteSize,
}

impl Default for SmtpSection {
    fn default() -> Self {
        SmtpSection {
            message_size_max: ByteSize(35 << 20),
            recipients_max: 1000,
            errors_max: 20,
            junk_commands_max: 100,
            hops_max: 50,
            inactivity_timeout: HumanDuration::from_secs(300),
            session_timeout: HumanDuration::from_secs(600),
            connections_per_core_max: 2000,
            connections_per_ip_max: 100,
            message_memory_max: ByteSize(1 << 30),
        }
    }
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
    /// NOOP/VRFY/RSET/HELP without an accepted message in between after
    /// which each one counts as an error.
    pub junk_commands_max: u32,
    /// A message arriving with this many `Received:` headers is refused
    /// (554 5.4.6, a mail loop).
    pub hops_max: u32,
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

impl SmtpSection {
    /// The limits, each checked against its bounds.
    pub(super) fn resolve(&self, problems: &mut Vec<String>) -> SmtpLimits {
        let limits = SmtpLimits {
            message_size_max: self.message_size_max.as_usize(),
            recipients_max: self.recipients_max,
            errors_max: self.errors_max,
            junk_commands_max: self.junk_commands_max,
            hops_max: self.hops_max,
            inactivity_timeout: self.inactivity_timeout.0,
            session_timeout: self.session_timeout.0,
            connections_per_core_max: self.connections_per_core_max,
            connections_per_ip_max: self.connections_per_ip_max,
            message_memory_max: self.message_memory_max.as_usize(),
        };
        check(&limits, problems);
        limits
    }
}

/// Bounds, each with its reason.
fn check(limits: &SmtpLimits, problems: &mut Vec<String>) {
    let size = |n: usize| ByteSize(n as u64);
    let time = HumanDuration;
    if !(1024..=(1 << 30)).contains(&limits.message_size_max) {
        problems.push(format!(
            "smtp.message_size_max must be 1KiB..=1GiB, got {}",
            size(limits.message_size_max)
        ));
    }
    if !(100..=100_000).contains(&limits.recipients_max) {
        problems.push(format!(
            "smtp.recipients_max must be 100..=100000 (RFC 5321 4.5.3.1.8 requires at least 100), got {}",
            limits.recipients_max
        ));
    }
    if limits.errors_max == 0 {
        problems.push("smtp.errors_max must be at least 1, got 0".into());
    }
    if !(2..=1000).contains(&limits.hops_max) {
        problems.push(format!(
            "smtp.hops_max must be 2..=1000, got {}",
            limits.hops_max
        ));
    }
    if !(1..=100_000).contains(&limits.junk_commands_max) {
        problems.push(format!(
            "smtp.junk_commands_max must be 1..=100000, got {}",
            limits.junk_commands_max
        ));
    }
    if limits.inactivity_timeout < Duration::from_secs(1) {
        problems.push(format!(
            "smtp.inactivity_timeout must be at least 1s, got {}",
            time(limits.inactivity_timeout)
        ));
    } else if limits.session_timeout < limits.inactivity_timeout {
        problems.push(format!(
            "smtp.session_timeout must be at least smtp.inactivity_timeout ({}), got {}",
            time(limits.inactivity_timeout),
            time(limits.session_timeout)
        ));
    }
    if limits.message_memory_max < limits.message_size_max {
        problems.push(format!(
            "smtp.message_memory_max must be at least smtp.message_size_max ({}), got {}",
            size(limits.message_size_max),
            size(limits.message_memory_max)
        ));
    }
    if limits.connections_per_core_max == 0 {
        problems.push("smtp.connections_per_core_max must be at least 1, got 0".into());
    }
    if limits.connections_per_ip_max == 0 {
        problems.push("smtp.connections_per_ip_max must be at least 1, got 0".into());
    }
}
