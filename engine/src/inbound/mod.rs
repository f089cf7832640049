//! Receiving mail: per core, the listener and admission, the socket loop
//! of each session, relay control and the accept step.
//!
//! # Layout
//!
//! ```text
//! mod.rs       Inbound: what a core's sessions share
//! listener.rs  SO_REUSEPORT listener, accept loop, admission (connection limits)
//! session.rs   the socket loop around tern_smtp::server::Session (buffers, deadlines, memory)
//! relay.rs     relay control (which recipients this client may send to)
//! accept.rs    the accept step: record + shadow copy, replies to storage and shadow failures
//! tls_auth.rs  STARTTLS, implicit TLS, SMTP AUTH (offer, handshake, login check)
//! xclient.rs   XCLIENT from a front end: the real client's address, per-IP count, login
//! ```

pub mod accept;
pub mod listener;
pub mod relay;
pub mod session;
mod tls_auth;
mod xclient;

use std::cell::{Cell, RefCell};
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;

use tern_smtp::server::ServerConfig;

use crate::config::{Config, RelayRules};
use crate::metrics::CoreMetrics;
use crate::shadow::primary::Primary;
use crate::shadow::replica::Replica;
use crate::shard::Shard;
use crate::stop::Shutdown;
use listener::Admission;

/// The settings a session starts with (and keeps to its end, across a
/// reload).
pub struct Settings {
    /// The configuration in force when the session began.
    pub config: Arc<Config>,
    /// Protocol settings shared by this core's sessions.
    smtp: Rc<ServerConfig>,
    /// Relay rules.
    relay: Rc<RelayRules>,
}

/// What one core's sessions share.
pub struct Inbound {
    /// The config in force, node-wide (reload).
    live: Arc<crate::reload::Live>,
    /// The settings built from `live` at its generation (the first
    /// field).
    settings: RefCell<(u64, Rc<Settings>)>,
    /// The primary's shadow EHLO keyword.
    shadow_ehlo: Option<String>,
    /// This core's log shard.
    shard: Rc<Shard>,
    /// Our messages' shadow copies.
    primary: Rc<Primary>,
    /// Copies held here for peers.
    replica: Rc<Replica>,
    /// This core's counters.
    metrics: Arc<CoreMetrics>,
    /// This core's shutdown signal.
    shutdown: Rc<Shutdown>,
    /// Connection limits.
    admission: Admission,
    /// Message content held by this core's sessions, in bytes of buffer
    /// capacity (see `smtp.message_memory_max`).
    content_bytes: Cell<usize>,
    /// Cluster peers' addresses (asked for a TLS client certificate; a
    /// bigger read buffer).
    peer_ips: Vec<IpAddr>,
    /// Cluster peers' certificates: only a client showing one of them may
    /// use the shadow link.
    peer_pins: Vec<crate::config::Fingerprint>,
    /// Certificates and TLS configs.
    tls: Arc<crate::tls::Tls>,
    /// SMTP AUTH users; `None`: AUTH is not offered.
    users: Option<Arc<crate::auth::Users>>,
    /// Failed AUTH attempts per client, this core's.
    limiter: RefCell<crate::auth::Limiter>,
    /// Back pressure and the failed state, node-wide.
    pressure: Arc<crate::pressure::Pressure>,
}

/// The pieces a core's inbound side is made of.
pub struct Parts {
    /// The config in force (reloaded on SIGHUP).
    pub live: Arc<crate::reload::Live>,
    /// This core's log shard.
    pub shard: Rc<Shard>,
    /// Our messages' shadow copies.
    pub primary: Rc<Primary>,
    /// Copies held here for peers.
    pub replica: Rc<Replica>,
    /// This core's counters.
    pub metrics: Arc<CoreMetrics>,
    /// This core's shutdown signal.
    pub shutdown: Rc<Shutdown>,
    /// Open connections per client address, whole server.
    pub per_ip: Arc<listener::PerIp>,
    /// Certificates and TLS configs.
    pub tls: Arc<crate::tls::Tls>,
    /// SMTP AUTH users.
    pub users: Option<Arc<crate::auth::Users>>,
    /// Back pressure and the failed state, node-wide.
    pub pressure: Arc<crate::pressure::Pressure>,
}

impl Settings {
    fn new(config: Arc<Config>, shadow_ehlo: Option<String>) -> Settings {
        let smtp = Rc::new(ServerConfig {
            hostname: config.hostname.clone(),
            message_bytes_max: config.smtp.message_size_max,
            recipients_max: config.smtp.recipients_max,
            errors_max: config.smtp.errors_max,
            junk_commands_max: config.smtp.junk_commands_max,
            extra_ehlo: Vec::new(),
            shadow_ehlo,
            proxy: false,
        });
        Settings {
            relay: Rc::new(config.relay.clone()),
            smtp,
            config,
        }
    }
}

impl Inbound {
    /// A core's inbound side.
    pub fn new(p: Parts) -> Inbound {
        let config = p.live.get();
        let shadow_ehlo = p.primary.ehlo_keyword();
        let settings = Rc::new(Settings::new(config.clone(), shadow_ehlo.clone()));
        Inbound {
            settings: RefCell::new((p.live.generation(), settings)),
            live: p.live,
            shadow_ehlo,
            shard: p.shard,
            primary: p.primary,
            replica: p.replica,
            metrics: p.metrics.clone(),
            shutdown: p.shutdown,
            admission: Admission::new(p.per_ip, p.metrics),
            content_bytes: Cell::new(0),
            peer_ips: config.cluster.peers.iter().map(|p| p.addr.ip()).collect(),
            peer_pins: config.cluster.peers.iter().map(|p| p.fingerprint).collect(),
            tls: p.tls,
            users: p.users,
            limiter: RefCell::new(crate::auth::Limiter::new(&config.auth)),
            pressure: p.pressure,
        }
    }

    /// The settings for a new session: rebuilt when a reload put a new
    /// config in force (one atomic load otherwise).
    pub fn settings(&self) -> Rc<Settings> {
        let generation = self.live.generation();
        let mut cell = self.settings.borrow_mut();
        if cell.0 != generation {
            let s = Settings::new(self.live.get(), self.shadow_ehlo.clone());
            *cell = (generation, Rc::new(s));
        }
        cell.1.clone()
    }

    /// Sessions open on this core.
    pub fn open_sessions(&self) -> usize {
        self.admission.open()
    }
}
