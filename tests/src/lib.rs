//! Shared helpers for tern integration tests.
