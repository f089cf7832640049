//! tern-engine: the `tern` SMTP relay server.
//!
//! # Layout
//!
//! Rooms from the top down; a room imports only from rooms below it
//! (checked by `tests/module_layers.rs`; ARCHITECTURE.md has the table).
//!
//! ```text
//! cli/        the `tern` command line: serve, queue tools, route and shadow commands
//! admin/      admin HTTP listener: /metrics (rendering), /routes, /shadow
//! server/     tern serve: executors, signals, one core's wiring and stop order
//! inbound/    listener and admission, the session socket loop, relay control, the accept step
//! delivery/   queue (a cursor over the log), scheduler, dispatch, connections, writer, maintenance
//! shadow/     shadow redundancy: primary side, replica side, link, heartbeat, discards, dedupe
//! outbound.rs one outbound SMTP connection (used by delivery and the shadow link)
//! shard/      a core's log shard: the appender (announce + append), fresh payloads, storage env
//! record/     the record formats: message (kind 1), status (2), shadow copy (3)
//! dsn/        delivery status notifications (RFC 3464 / RFC 6522)
//! dns.rs      MX resolution (hickory on a tokio thread per core)
//! received.rs the Received: trace header and RFC 5322 dates
//! reload.rs   the config in force (generation + Arc) and what a reload may change
//! ops/        operator actions: admin token, suspensions and resubmission requests, per-core channels
//! auth/       SMTP AUTH: the users file (argon2id hashes), verify, failed-attempt limiter
//! cluster.rs  node id, peers, shadow peer order; the transport database id
//! metrics.rs  per-core counters
//! logbuf.rs   a core's log lines handed to the log thread in batches
//! logging.rs  the log's format (logfmt, JSON), writer and run-time level
//! stop.rs     the stop flag and each core's shutdown signal
//! layout.rs   the data directory's layout (shard directories)
//! config/     TOML config (strict, one file per section: serde defaults) + CLI
//!             overrides + validation; the cluster settings in config/cluster.rs
//! ```
#![warn(missing_docs)]

pub mod admin;
pub mod auth;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod delivery;
pub mod dns;
pub mod dsn;
pub mod frontend;
pub mod inbound;
pub mod layout;
pub mod logbuf;
pub mod logging;
pub mod metrics;
pub mod mta_sts;
pub mod ops;
pub mod outbound;
pub mod pressure;
pub mod received;
pub mod record;
pub mod reload;
pub mod server;
pub mod shadow;
pub mod shard;
pub mod stop;
pub mod tls;
