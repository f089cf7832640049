//! Shared helpers for tern integration tests.
//!
//! - [`crash`]: payloads of the storage crash writer.
//! - [`server`]: the real `tern` binary as a child process ([`server::TernProcess`]).
//! - [`smtp`]: a blocking SMTP client that reads complete replies.
//! - [`queue`]: `tern queue list/show`, run and parsed.
//! - [`sink`]: an in-process SMTP server that tern delivers to ([`sink::TestSink`]).

pub mod crash;
pub mod queue;
pub mod server;
pub mod sink;
pub mod smtp;
