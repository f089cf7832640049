//! What the sink's threads share: the behaviour, the records and
//! counters, and a clone of every open connection (to shut it down on
//! stop), behind one mutex.

use std::collections::HashMap;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use super::{Behavior, SinkMessage};

/// What the sink saw, guarded by [`Shared::state`].
#[derive(Default)]
pub(super) struct State {
    pub(super) behavior: Behavior,
    pub(super) messages: Vec<SinkMessage>,
    pub(super) connections: u64,
    pub(super) transactions: u64,
    pub(super) rejected: u64,
    pub(super) pipelining_violations: u64,
    pub(super) rcpt_replies: Vec<(String, u16)>,
    /// A clone of every open connection, to shut it down on stop.
    pub(super) streams: HashMap<u64, TcpStream>,
    pub(super) threads: Vec<JoinHandle<()>>,
}

pub(super) struct Shared {
    pub(super) stopping: AtomicBool,
    pub(super) state: Mutex<State>,
    /// Signalled when a message is recorded.
    pub(super) recorded: Condvar,
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }
}

/// What arrived, for a failure message.
pub(super) fn summary(state: &State) -> String {
    let mut out = format!(
        "  connections {}, transactions {}, rejected {}, open {}\n  rcpt replies: {:?}\n",
        state.connections,
        state.transactions,
        state.rejected,
        state.streams.len(),
        state.rcpt_replies,
    );
    for m in &state.messages {
        out.push_str(&format!(
            "  conn {} from <{}> to {:?}: {} bytes{}\n",
            m.conn,
            m.mail_from,
            m.rcpts,
            m.content.len(),
            if m.bdat { " (BDAT)" } else { "" },
        ));
    }
    out
}
