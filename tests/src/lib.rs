//! Shared helpers for tern integration tests.
//!
//! - [`admin`]: the admin API with its token, and the operator commands (`tern queue flush`...).
//! - [`crash`]: payloads of the storage crash writer.
//! - [`dns`]: an authoritative test DNS server on loopback ([`dns::TestDns`]).
//! - [`server`]: the real `tern` binary as a child process ([`server::TernProcess`]).
//! - [`smtp`]: a blocking SMTP client that reads complete replies.
//! - [`node`]: a `tern serve` restarted on the same address and store ([`node::Node`]).
//! - [`queue`]: `tern queue list/show`, run and parsed.
//! - [`sink`]: an in-process SMTP server that tern delivers to ([`sink::TestSink`]).
//! - [`tls`]: the cluster certificate, `[tls]` and pinned peer entries, client TLS settings.

pub mod acked;
pub mod admin;
pub mod crash;
pub mod dns;
pub mod frontend;
pub mod https;
pub mod node;
pub mod pki;
pub mod queue;
pub mod server;
pub mod sink;
pub mod smtp;
pub mod tls;
