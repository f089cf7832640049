//! tern-loadgen: a load generator (`send`) and sink (`sink`) for
//! benchmarking and load-testing any RFC 5321 server.
//!
//! # Layout
//!
//! ```text
//! stamp.rs     the X-Tern-Loadgen header: run id, sequence, send time, body checksum
//! size.rs      message size distributions
//! latency.rs   latency histograms and summaries (both reports)
//! tls_stats.rs TLS handshake counts: full/resumed, version, cipher suite (both reports)
//! send*.rs     the sender (closed and open loop, targets with priorities, phases, TLS, AUTH)
//! sink*.rs     the sink (verifies stamps, counts lost/duplicated, fault injection, TLS)
//! ```
#![warn(missing_docs)]

pub mod latency;
pub mod send;
pub mod sink;
pub mod size;
pub mod stamp;
pub mod tls_stats;
