//! Delivery: per core, the queue is a cursor over this core's log shard.
//!
//! ```text
//! accept ──append──▶ log ──tail──▶ Queue (in memory) ──due──▶ dispatch
//!                     ▲                                          │ route, DNS
//!                     │ status records (batched)                 ▼
//!                  writer ◀──── attempt finished ◀──── Dest ── connections
//! ```
//!
//! # Layout
//!
//! ```text
//! mod.rs          Delivery: start (rebuild), stop; attempts and jobs
//! ingest.rs       tailing the log into the queue; the replay rule shared with `tern queue`
//! scheduler.rs    starting attempts for due messages
//! dispatch.rs     an attempt: read, route, group by destination (routes, MX cache)
//! connection.rs   destinations, host slots and health, sending jobs on outbound connections
//! writer.rs       outcomes -> DSN records + one status record per batch
//! logline.rs      the delivery log: one Postfix-style line per attempt and recipient group
//! warning.rs      delay warnings (delivery.delay_warning_time): one "delayed" report
//! replies.rs      the replies of an attempt, for its status record
//! maintenance.rs  copy-forward, cursors, reclaim, watermarks, shadow upkeep
//! queue.rs        the sans-IO queue (entries, timers, the cursor rule)
//! route.rs        routes, pools with failover, host health
//! operate.rs      operator requests: the channel, selections, flush/hold/release/bounce/delete
//! summary.rs      the operator's queue summary (per destination)
//! suspension.rs   suspended destinations: the check per recipient, start and end
//! resubmit.rs     Safety Net resubmission (own and shadow Safety Net)
//! ```
//!
//! Restart: a clean stop records everything (jobs not yet sent are
//! recorded as not tried), so nothing is delivered twice. After a crash,
//! attempts whose outcome was not yet durable run again: at-least-once.

mod connection;
mod dispatch;
pub mod ingest;
mod logline;
mod maintenance;
mod operate;
pub mod queue;
mod replies;
mod resubmit;
pub mod route;
mod scheduler;
mod summary;
mod suspension;
mod warning;
mod writer;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tern_smtp::Reply;

use logline::Hop;

use crate::config::{Config, DeliveryConfig};
use crate::metrics::CoreMetrics;
use crate::record::message::{QueueId, StoredMessage};
use crate::shadow::primary::Primary;
use crate::shadow::replica::Replica;
use crate::shard::Shard;
use queue::Queue;
use route::RouteOverrides;

pub use writer::retry_delay;

/// What became of one recipient in one attempt.
#[derive(Clone, Debug)]
enum Outcome {
    /// The next hop's reply at the end of data, and the next hop.
    Delivered(Reply, Rc<Hop>),
    /// The reply, and the next hop that gave it (`None`: tern's own
    /// reason, no next hop reached).
    Temporary(Reply, Option<Rc<Hop>>),
    Permanent(Reply, Option<Rc<Hop>>),
    /// Not sent (shutdown): retry at once after restart, no attempt counted.
    NotTried,
    /// Its destination is suspended (until then; `None`: until resumed):
    /// waits, never bounces, no attempt counted.
    Suspended(Option<u64>),
    /// Dropped by an operator: final, no DSN.
    Deleted,
    /// Left as it was by an operator action on other recipients of the
    /// message.
    Untouched,
}

/// One delivery attempt of one message (all its pending recipients).
struct Attempt {
    key: u64,
    id: QueueId,
    msg: StoredMessage,
    attempts: u32,
    /// When this attempt began (ms since the epoch; the delivery log's
    /// delays).
    started_ms: u64,
    /// When it was due (the queue's next attempt time; 0: at once).
    due_ms: u64,
    /// Branches (destinations) still working, plus one while dispatching.
    branches: Cell<usize>,
    results: RefCell<Vec<(u32, Outcome)>>,
    /// The recipients this attempt is for.
    rcpts: Vec<u32>,
    /// Recorded early (shutdown): later reports are ignored.
    closed: Cell<bool>,
    /// An operator's action, not a delivery attempt: the next attempt it
    /// leaves in place for recipients it did not touch.
    operator: Option<u64>,
}

/// Recipients of one attempt going to one destination.
struct Job {
    attempt: Rc<Attempt>,
    rcpts: Vec<u32>,
    /// Where it goes.
    dest: Rc<connection::Dest>,
}

impl Job {
    /// Every recipient of the job with the same outcome.
    fn all(&self, outcome: &Outcome) -> Vec<(u32, Outcome)> {
        self.rcpts.iter().map(|&i| (i, outcome.clone())).collect()
    }
}

/// What a core's delivery is built from.
pub struct Parts {
    /// The configuration.
    pub config: Arc<Config>,
    /// This core's log shard.
    pub shard: Rc<Shard>,
    /// Our messages' shadow side (DSN copies, discard status).
    pub primary: Rc<Primary>,
    /// Copies held for peers (found by the tail, kept up by maintenance).
    pub replica: Rc<Replica>,
    /// This core's counters.
    pub metrics: Arc<CoreMetrics>,
    /// Run-time route overrides (admin).
    pub routes: Arc<RouteOverrides>,
    /// The config in force (a reload changes pools and routes).
    pub live: Arc<crate::reload::Live>,
    /// Outbound TLS configs and counters.
    pub tls: Arc<crate::tls::Tls>,
    /// Back pressure: this core's log size and state go there.
    pub pressure: Arc<crate::pressure::Pressure>,
    /// MTA-STS policies (node-wide cache).
    pub mta_sts: Arc<crate::mta_sts::MtaSts>,
    /// Operator requests, suspensions, resubmission requests.
    pub ops: Arc<crate::ops::Ops>,
}

/// Stopping: set once, with an event for the tasks that wait.
#[derive(Default)]
struct Stopping {
    set: Cell<bool>,
    event: event_listener::Event,
}

/// The delivery side of one core.
pub struct Delivery {
    parts: Parts,
    cfg: DeliveryConfig,
    queue: RefCell<Queue>,
    tail: ingest::Tail,
    dispatch: dispatch::Dispatcher,
    hosts: connection::Hosts,
    finished: writer::Finished,
    /// Attempts created and not yet recorded.
    open_attempts: Cell<usize>,
    /// Attempts under way (dispatched, not yet finished).
    live: RefCell<HashMap<u64, Rc<Attempt>>>,
    stopping: Stopping,
    /// What operators asked of this core's queue.
    operate: operate::CoreOps,
    /// Maintenance failures, logged without repeating every pass.
    failing: maintenance::Failing,
}

impl Delivery {
    /// Rebuilds this core's queue from the log (from the `queue` cursor)
    /// and starts the scheduler, the writer and maintenance.
    pub fn start(parts: Parts) -> anyhow::Result<Rc<Delivery>> {
        let cfg = parts.config.delivery.clone();
        let d = Rc::new(Delivery {
            dispatch: dispatch::Dispatcher::new(&parts, &cfg),
            hosts: connection::Hosts::new(&cfg),
            cfg,
            queue: RefCell::new(Queue::new()),
            tail: ingest::Tail::default(),
            finished: writer::Finished::default(),
            open_attempts: Cell::new(0),
            live: RefCell::new(HashMap::new()),
            stopping: Stopping::default(),
            operate: operate::CoreOps::default(),
            failing: maintenance::Failing::default(),
            parts,
        });
        d.rebuild()?;
        glommio::spawn_local(d.clone().scheduler()).detach();
        glommio::spawn_local(d.clone().writer()).detach();
        glommio::spawn_local(d.clone().maintenance()).detach();
        glommio::spawn_local(d.clone().operator()).detach();
        Ok(d)
    }

    fn shard(&self) -> &Shard {
        &self.parts.shard
    }

    fn metrics(&self) -> &CoreMetrics {
        &self.parts.metrics
    }

    fn is_stopping(&self) -> bool {
        self.stopping.set.get()
    }

    /// A branch of `attempt` reported `results`; the last one finishes it.
    fn branch_done(&self, attempt: &Rc<Attempt>, results: Vec<(u32, Outcome)>) {
        if attempt.closed.get() {
            return;
        }
        attempt.results.borrow_mut().extend(results);
        let left = attempt.branches.get() - 1;
        attempt.branches.set(left);
        if left == 0 {
            self.finish(attempt);
        }
    }

    /// Hands a finished attempt to the writer.
    fn finish(&self, attempt: &Rc<Attempt>) {
        attempt.closed.set(true);
        self.live.borrow_mut().remove(&attempt.key);
        self.finished.push(attempt.clone());
    }

    fn report(&self, job: Job, results: Vec<(u32, Outcome)>) {
        self.operate.note_error(&job.dest.name, &results);
        self.branch_done(&job.attempt, results);
    }

    fn fail_job(&self, job: Job, outcome: Outcome) {
        let results = job.all(&outcome);
        self.report(job, results);
    }

    /// Stops delivery: no new attempts; connections finish the
    /// transaction they are in, jobs not started are recorded as not
    /// tried; returns when every attempt is recorded (or `grace` passed).
    pub async fn stop(&self, grace: Duration) {
        self.stopping.set.set(true);
        self.stopping.event.notify(usize::MAX);
        self.finished.wake_all();
        // Jobs no connection has started are not tried: recorded as such
        // now, without waiting for connections still connecting or
        // greeting.
        for d in self.dispatch.destinations() {
            while let Some(job) = d.pop_job() {
                self.fail_job(job, Outcome::NotTried);
            }
            d.wake_all();
        }
        let deadline = Instant::now() + grace;
        self.wait_recorded(deadline).await;
        let live: Vec<Rc<Attempt>> = self.live.borrow().values().cloned().collect();
        if !live.is_empty() {
            // Record what is known (e.g. recipients another transaction of
            // the same message already delivered); the transactions still
            // waiting for a reply count as not tried and run again after
            // restart.
            tracing::warn!(
                open = live.len(),
                "grace period over with transactions in flight; they will run again after restart"
            );
            for a in live {
                let answered: Vec<u32> = a.results.borrow().iter().map(|(i, _)| *i).collect();
                let missing: Vec<(u32, Outcome)> = a
                    .rcpts
                    .iter()
                    .filter(|i| !answered.contains(i))
                    .map(|&i| (i, Outcome::NotTried))
                    .collect();
                a.results.borrow_mut().extend(missing);
                self.finish(&a);
            }
            self.wait_recorded(Instant::now() + Duration::from_secs(5))
                .await;
        }
        if let Err(e) = self.set_queue_cursor().await {
            tracing::error!(error = %e, "cannot set the queue cursor at shutdown");
        }
    }

    /// Waits until every attempt is recorded, or `deadline`.
    async fn wait_recorded(&self, deadline: Instant) {
        while self.open_attempts.get() > 0 && Instant::now() < deadline {
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
    }
}
