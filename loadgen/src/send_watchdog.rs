//! The per-core watchdog that enforces `--timeout` on every read and
//! write: each connection has a [`Watch`] (its fd and when its pending
//! operation started); the core's ticker calls [`Watch::sweep`] every
//! 100 ms and shuts down the sockets stuck for longer than the timeout,
//! which makes their pending operations fail.
//!
//! Cheaper than glommio's per-operation timeouts, which add a timeout and
//! a cancel request to every read and write; the price is a timeout that
//! fires up to one sweep late.

use std::cell::{Cell, RefCell};
use std::os::fd::RawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// A connection's deadline, enforced by the core's watchdog.
pub(super) struct Watch {
    fd: RawFd,
    /// When the pending read or write started; `None` when idle.
    pub(super) since: Cell<Option<Instant>>,
    /// The watchdog shut the socket down.
    fired: Cell<bool>,
}

thread_local! {
    /// The watches of this executor's connections.
    static WATCHES: RefCell<Vec<Rc<Watch>>> = const { RefCell::new(Vec::new()) };
}

impl Watch {
    /// Watches the socket `fd` of a new connection (forgotten once the
    /// connection drops its reference).
    pub(super) fn register(fd: RawFd) -> Rc<Watch> {
        let watch = Rc::new(Watch {
            fd,
            since: Cell::new(None),
            fired: Cell::new(false),
        });
        WATCHES.with(|w| w.borrow_mut().push(watch.clone()));
        watch
    }

    /// Ends a read or write: a timeout shows as such.
    pub(super) fn check<T>(&self, r: std::io::Result<T>) -> std::io::Result<T> {
        self.since.set(None);
        if self.fired.get() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no progress within the timeout",
            ));
        }
        r
    }

    /// Shuts down the sockets stuck for longer than `timeout`, and forgets
    /// closed connections.
    pub(super) fn sweep(timeout: Duration) {
        WATCHES.with(|w| {
            w.borrow_mut().retain(|watch| {
                if Rc::strong_count(watch) == 1 {
                    return false;
                }
                if watch
                    .since
                    .get()
                    .is_some_and(|t| t.elapsed() > timeout && !watch.fired.get())
                {
                    watch.fired.set(true);
                    // SAFETY: the fd belongs to a live connection (its
                    // Conn holds the other reference); shutdown only makes
                    // its pending operations fail.
                    unsafe { libc::shutdown(watch.fd, libc::SHUT_RDWR) };
                }
                true
            })
        });
    }
}
