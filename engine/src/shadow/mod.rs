//! Shadow redundancy (SPEC sections 1-4): this node's messages copied to
//! peers before they are acknowledged, and copies held here for peers.
//!
//! # Layout
//!
//! ```text
//! primary.rs    our messages: making copies (shadow before acknowledge),
//!               withdrawing a message no peer took, discard answers and
//!               watermarks for our shadows, duplicate detection
//! replica.rs    copies held here for peers: queueing them from the link,
//!               upkeep (discard, expire), takeover
//! link.rs       the primary's side of the pipelined shadow link
//! heartbeat.rs  asking each peer (as our primary) which copies may go
//! discard.rs    discard ids, watermarks, the XQDISCARD answer format
//! dedupe.rs     the duplicate window (SPEC 2.6)
//! ```
//!
//! The shadow link protocol (EHLO `XSHADOW`, `MAIL ... XSHADOW=`,
//! `XQDISCARD`) is in `tern_smtp`; the shadow record format in
//! `crate::record::shadow`; ARCHITECTURE.md documents both.

pub mod dedupe;
pub mod discard;
pub mod heartbeat;
pub mod link;
pub mod primary;
pub mod replica;

use crate::cluster::DatabaseId;

/// Shadow state shared by all cores of this node (never on the
/// per-message path when shadow redundancy is off).
pub struct ShadowShared {
    /// This node's transport database id (announced to peers).
    pub database_id: DatabaseId,
    /// Our side as a primary: handled messages and watermarks.
    pub primary: primary::Shared,
    /// Our side as a shadow: what the primaries told us.
    pub replica: replica::Shared,
    /// Messages accepted within `cluster.duplicate_window`.
    pub dedupe: dedupe::Window,
}

impl ShadowShared {
    /// Empty state for the store with `database_id`.
    pub fn new(database_id: DatabaseId) -> ShadowShared {
        ShadowShared {
            database_id,
            primary: Default::default(),
            replica: Default::default(),
            dedupe: Default::default(),
        }
    }
}

/// Locks `m`, going on with the data if a panicking thread poisoned it
/// (every value behind these locks is valid after any single update).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
