//! Shadow redundancy (SPEC sections 1-4): copies of messages held for
//! other nodes, and this node's copies held by peers.
//!
//! Built so far: the shadow record format ([`record`]), the primary's side
//! of the link ([`link`]), discard notifications and heartbeats
//! ([`discard`], [`heartbeat`]). The shadow link protocol (EHLO `XSHADOW`,
//! `MAIL ... XSHADOW=`, `XQDISCARD`) is in `tern_smtp`; ARCHITECTURE.md
//! documents both.

pub mod dedupe;
pub mod discard;
pub mod heartbeat;
pub mod link;
pub mod record;
