//! Shared helpers for tern integration tests.

pub mod crash;
