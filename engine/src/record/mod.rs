//! The record formats of the log: what each record kind's payload holds.
//! Each format is documented next to its encoder; ARCHITECTURE.md lists
//! them together.
//!
//! # Layout
//!
//! ```text
//! message.rs  kind 1: an accepted (or generated) message: envelope + content; queue ids
//! status.rs   kind 2: delivery status events (delivered, bounced, deferred, done, snapshot)
//! shadow.rs   kind 3: a copy held for a peer: its origin + a kind 1 payload
//! ```

pub mod message;
pub mod shadow;
pub mod status;
