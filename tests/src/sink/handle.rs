//! [`TestSink`], the handle a test holds: start, queries, stop; and the
//! accept thread, which starts one session thread per connection.

use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::session::Session;
use super::state::{summary, Shared, State};
use super::{Behavior, SinkMessage, ACCEPT_TICK, READ_TICK, WRITE_WAIT};

/// Distinguishes sinks in thread names (see [`TestSink::thread_name_prefix`]).
static SINK_IDS: AtomicU64 = AtomicU64::new(1);

/// A running (or stopped) test SMTP server.
pub struct TestSink {
    id: u64,
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl TestSink {
    /// Listens on `addr` (`127.0.0.1:0` for any free port; a stopped
    /// sink's address works again). Panics when it cannot bind.
    #[track_caller]
    pub fn start(addr: SocketAddr) -> TestSink {
        TestSink::try_start(addr).unwrap_or_else(|e| panic!("test sink: bind {addr}: {e}"))
    }

    /// [`TestSink::start`] that returns the bind error.
    pub fn try_start(addr: SocketAddr) -> io::Result<TestSink> {
        // std sets SO_REUSEADDR on Unix listeners, so the port of a
        // stopped sink (its connections in TIME_WAIT) can be bound again.
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let id = SINK_IDS.fetch_add(1, Ordering::Relaxed);
        let shared = Arc::new(Shared {
            stopping: AtomicBool::new(false),
            state: Mutex::new(State::default()),
            recorded: Condvar::new(),
        });
        let for_thread = Arc::clone(&shared);
        let accept = thread::Builder::new()
            .name(format!("tsink{id}-accept"))
            .spawn(move || accept_loop(listener, for_thread, id))?;
        Ok(TestSink {
            id,
            addr,
            shared,
            accept: Some(accept),
        })
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every thread of this sink is named starting with this (Linux keeps
    /// the first 15 bytes), so a test can check none outlives it.
    pub fn thread_name_prefix(&self) -> String {
        format!("tsink{}-", self.id)
    }

    /// Replaces the behaviour for new connections and transactions.
    pub fn set_behavior(&self, behavior: Behavior) {
        self.shared.lock().behavior = behavior;
    }

    /// The current behaviour.
    pub fn behavior(&self) -> Behavior {
        self.shared.lock().behavior.clone()
    }

    /// The messages recorded so far, in order.
    pub fn messages(&self) -> Vec<SinkMessage> {
        self.shared.lock().messages.clone()
    }

    /// Waits until at least `n` messages were recorded and returns all of
    /// them; panics with a summary of what arrived after `timeout`.
    #[track_caller]
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<SinkMessage> {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.lock();
        while state.messages.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let summary = summary(&state);
                drop(state);
                panic!(
                    "test sink {}: expected at least {n} messages within {timeout:?}, got {}\n{summary}",
                    self.addr,
                    self.shared.lock().messages.len(),
                );
            }
            state = self
                .shared
                .recorded
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        state.messages.clone()
    }

    /// Forgets the recorded messages, counters and RCPT replies (open
    /// connections and the behaviour stay).
    pub fn clear(&self) {
        let mut state = self.shared.lock();
        state.messages.clear();
        state.rcpt_replies.clear();
        state.connections = 0;
        state.transactions = 0;
        state.rejected = 0;
        state.pipelining_violations = 0;
    }

    /// Connections accepted.
    pub fn connections(&self) -> u64 {
        self.shared.lock().connections
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.shared.lock().streams.len()
    }

    /// MAIL commands accepted (2xx).
    pub fn transactions(&self) -> u64 {
        self.shared.lock().transactions
    }

    /// End-of-data replies that were not 250.
    pub fn rejected(&self) -> u64 {
        self.shared.lock().rejected
    }

    /// Replies written while more client input was already waiting
    /// although PIPELINING was not advertised (the client did not wait).
    pub fn pipelining_violations(&self) -> u64 {
        self.shared.lock().pipelining_violations
    }

    /// Every RCPT address (without `<>`) with its reply code, in order.
    pub fn rcpt_replies(&self) -> Vec<(String, u16)> {
        self.shared.lock().rcpt_replies.clone()
    }

    /// Closes the listener (the address then refuses connections) and
    /// every connection, and joins every thread. Idempotent.
    pub fn stop(&mut self) {
        let Some(accept) = self.accept.take() else {
            return;
        };
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Joined first: after it, no connection gets registered any more.
        let mut panicked = accept.join().is_err();
        let threads = {
            let mut state = self.shared.lock();
            for stream in state.streams.values() {
                let _ = stream.shutdown(Shutdown::Both);
            }
            std::mem::take(&mut state.threads)
        };
        for t in threads {
            panicked |= t.join().is_err();
        }
        if panicked && !thread::panicking() {
            panic!("test sink {}: a sink thread panicked", self.addr);
        }
    }
}

impl Drop for TestSink {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>, sink: u64) {
    let mut next_conn = 1;
    while !shared.stopping() {
        match listener.accept() {
            Ok((stream, _)) => {
                // Failures (e.g. no threads left) drop the connection.
                let _ = spawn_session(&shared, stream, sink, next_conn);
                next_conn += 1;
            }
            Err(_) => thread::sleep(ACCEPT_TICK),
        }
    }
}

fn spawn_session(shared: &Arc<Shared>, stream: TcpStream, sink: u64, conn: u64) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(READ_TICK))?;
    stream.set_write_timeout(Some(WRITE_WAIT))?;
    stream.set_nodelay(true)?;
    let registered = stream.try_clone()?;
    let session = Session::new(conn, stream, Arc::clone(shared));
    let mut state = shared.lock();
    state.threads.retain(|t| !t.is_finished());
    state.streams.insert(conn, registered);
    state.connections += 1;
    let for_thread = Arc::clone(shared);
    let spawned = thread::Builder::new()
        .name(format!("tsink{sink}-c{conn}"))
        .spawn(move || {
            session.run();
            // Dropping the registered clone closes the socket for good.
            for_thread.lock().streams.remove(&conn);
        });
    match spawned {
        Ok(handle) => state.threads.push(handle),
        Err(e) => {
            state.streams.remove(&conn);
            return Err(e);
        }
    }
    Ok(())
}
