//! tern-engine: the `tern` SMTP relay server.
//!
//! # Layout
//!
//! ```text
//! main.rs      CLI (clap): serve, queue list/show, check-config
//! config/      TOML config (strict, one file per section) + CLI overrides +
//!              validation; the cluster settings live in config/cluster.rs
//! cluster.rs   HA boundary: node id, site, peers, shadow peer order; database id
//! server.rs    one pinned glommio executor per core, signals, admin thread
//! core.rs      per core: log shard, SO_REUSEPORT listener, accept loop, limits
//! session.rs   per connection: socket loop (buffers, deadlines) around tern_smtp
//! policy.rs    relay control
//! message.rs   the message record format (envelope + Received + content)
//! received.rs  the Received: trace header
//! delivery/    queue (cursor over the log), routing + pools, outbound client,
//!              retries, bounces, Safety Net and reclamation
//! shadow/      shadow redundancy: the shadow record (more to come, issue 6)
//! dsn.rs       delivery status notifications (bounces, delay notices)
//! metrics.rs   per-core counters, Prometheus rendering
//! admin.rs     admin HTTP listener (/metrics)
//! dns.rs       MX resolution for delivery (hickory on a tokio thread)
//! failpoint.rs storage env with a test-only fdatasync failpoint
//! logbuf.rs    log lines of a core handed to the log thread in batches
//! queue_cmd.rs `tern queue list/show` over the read-only inspector
//! ```
#![warn(missing_docs)]

pub mod admin;
pub mod cluster;
pub mod config;
pub mod core;
pub mod delivery;
pub mod dns;
pub mod dsn;
pub mod failpoint;
pub mod logbuf;
pub mod message;
pub mod metrics;
pub mod policy;
pub mod queue_cmd;
pub mod received;
pub mod server;
pub mod session;
pub mod shadow;
