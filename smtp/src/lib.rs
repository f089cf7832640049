//! tern-smtp: the SMTP protocol (RFC 5321 with PIPELINING, SIZE, 8BITMIME,
//! SMTPUTF8, ENHANCEDSTATUSCODES, CHUNKING) without any I/O.
#![warn(missing_docs)]

pub mod address;
pub mod client;
pub mod command;
pub mod data;
pub mod fuzzing;
pub mod limits;
pub mod reply;
pub mod server;
pub mod transaction;

pub use reply::{Reply, ReplyParser, Status};
