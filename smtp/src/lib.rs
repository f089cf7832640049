//! tern-smtp: the SMTP protocol (RFC 5321 with PIPELINING, SIZE, 8BITMIME,
//! SMTPUTF8, ENHANCEDSTATUSCODES, CHUNKING) without any I/O.
//!
//! Bytes in, events and reply bytes out; time is the caller's (STYLE
//! rule 1). No runtime, socket or file type appears here.
//!
//! # Layout
//!
//! - [`limits`]: every protocol limit, named, with its RFC section.
//! - [`address`], [`command`]: the RFC 5321 grammar (paths, command lines
//!   and their ESMTP parameters), pure functions.
//! - [`data`]: message content receivers (DATA, BDAT chunks) and the
//!   checks both share.
//! - [`reply`]: replies, their encoding and an incremental parser.
//! - [`server`]: the inbound session state machine, one file per verb
//!   (`server/ehlo.rs`, `mail.rs`, `rcpt.rs`, `data.rs`, `bdat.rs`, ...).
//! - [`client`], [`transaction`]: the outbound side (command encoders,
//!   EHLO capabilities, one pipelined mail transaction).
//! - [`xclient`]: the XCLIENT extension (a trusted proxy names the real
//!   client): attributes, parsing, encoding.
//! - [`fuzzing`]: entry points shared by the fuzz targets and the corpus
//!   replay test.
#![warn(missing_docs)]

pub mod address;
pub mod client;
pub mod command;
pub mod data;
pub mod downgrade;
pub mod fuzzing;
pub mod limits;
pub mod reply;
pub mod server;
pub mod transaction;
pub mod xclient;

pub use reply::{Reply, ReplyParser, Status};
