//! The process-wide stop flag and each core's shutdown signal.
//!
//! SIGTERM/SIGINT set the [`StopFlag`] (the signal thread, `server/`);
//! each core's watcher turns it into that core's [`Shutdown`], which its
//! tasks await without polling.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once when the server is to stop (read by every core and the admin
/// thread).
#[derive(Debug, Default)]
pub struct StopFlag(AtomicBool);

impl StopFlag {
    /// Asks everything to stop.
    pub fn set(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Has stopping been asked for?
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Core-local shutdown signal.
#[derive(Default)]
pub struct Shutdown {
    set: Cell<bool>,
    event: event_listener::Event,
}

impl Shutdown {
    /// Has shutdown begun?
    pub fn is_set(&self) -> bool {
        self.set.get()
    }

    /// Begins shutdown: wakes every waiter.
    pub fn trigger(&self) {
        self.set.set(true);
        self.event.notify(usize::MAX);
    }

    /// Resolves once shutdown begins.
    pub async fn wait(&self) {
        if self.is_set() {
            return;
        }
        let listener = self.event.listen();
        if self.is_set() {
            return;
        }
        listener.await;
    }
}
