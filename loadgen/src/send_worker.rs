//! One executor's share of `send`: [`run`] starts its connections
//! (workers) and the ticker (live counters, watchdog sweep); each worker
//! takes tickets, keeps a connection (reconnecting, failing over), and
//! runs one transaction after the other on it.
//!
//! Nothing here takes a lock: the only shared writes are the ticket
//! counter (one atomic add per message) and target health (on connect
//! failures).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_rustls::TlsConnector;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::send_conn::{connect_any, Conn, Stats};
use super::send_plan::Plan;
use super::send_stats::CoreStats;
use super::send_transaction::{Bodies, Body, Msg};
use super::send_watchdog::Watch;

/// The body of the next message, its size drawn from `--size`.
fn pick_body(plan: &Plan, bodies: &Bodies, rng: &mut StdRng) -> Rc<Body> {
    bodies.get(plan.run, plan.sizes.pick(rng.gen()))
}

/// One connection's loop, without the connection (kept beside it so a
/// transaction can borrow both).
struct Worker {
    plan: Arc<Plan>,
    stats: Stats,
    bodies: Rc<Bodies>,
    rng: StdRng,
    /// Spreads connections over the targets of a priority group.
    spread: usize,
    /// This core's TLS connector (its session cache is the core's).
    tls: Option<TlsConnector>,
}

/// What [`Worker::start`] got.
enum Start {
    /// A message, its pipelined group already written when pipelined.
    Msg(Msg),
    /// Its message was lost (no connection); take the next ticket.
    Lost,
    /// The run is over.
    Done,
}

/// What [`Worker::send`] did.
enum Sent {
    /// The transaction ended; the next message if one was chained on it.
    Ended(Option<Msg>),
    /// The connection failed (its messages accounted).
    ConnLost,
}

impl Worker {
    /// Counts message `seq` as lost to a connection error.
    fn lost(&self, seq: u64, e: &str) {
        let mut s = self.stats.borrow_mut();
        s.conn_errors += 1;
        s.error(|| format!("seq {seq}: {e}"));
        s.completed_at(self.plan.start.elapsed().as_secs() as usize);
    }

    /// Takes a ticket, waits until it is due (open loop), connects if
    /// need be, and builds its message; with pipelined DATA, writes its
    /// MAIL/RCPT/DATA group.
    async fn start(&mut self, conn: &mut Option<Conn>) -> Start {
        let Some((seq, due)) = self.plan.ticket() else {
            return Start::Done;
        };
        if let Some(due) = due {
            let now = Instant::now();
            if due > now {
                glommio::timer::sleep(due - now).await;
            }
        }
        if conn.is_none() {
            let tls = self.tls.as_ref();
            match connect_any(&self.plan, &self.stats, &mut self.spread, tls).await {
                Ok(c) => *conn = Some(c),
                Err(e) => {
                    self.lost(seq, &e);
                    return Start::Lost;
                }
            }
        }
        let c = conn.as_mut().expect("connected");
        let body = pick_body(&self.plan, &self.bodies, &mut self.rng);
        let mut m = c.message(&self.plan, body, seq, due);
        if c.pipelined_data(&self.plan) {
            c.out.clear();
            c.begin(&self.plan, &mut m);
            if let Err(e) = c.flush().await {
                let target = self.plan.addrs[c.target];
                self.lost(seq, &format!("{target}: {e}"));
                *conn = None;
                return Start::Lost;
            }
        }
        Start::Msg(m)
    }

    /// Runs `m`'s transaction on `c`; in the closed loop with pipelined
    /// DATA the next message rides on its content.
    async fn send(&mut self, c: &mut Conn, m: Msg) -> Sent {
        self.stats.borrow_mut().target_messages[c.target] += 1;
        let seq = m.seq;
        let result = if c.pipelined_data(&self.plan) {
            let (plan, bodies, rng) = (&self.plan, &self.bodies, &mut self.rng);
            let mut next = |c: &mut Conn| {
                let (seq, due) = plan.ticket()?;
                let body = pick_body(plan, bodies, rng);
                Some(c.message(plan, body, seq, due))
            };
            c.step(plan, m, &self.stats, &mut next).await
        } else {
            c.transaction(&self.plan, m, &self.stats)
                .await
                .map(|()| None)
        };
        match result {
            Ok(next) => Sent::Ended(next),
            Err(e) => {
                let e = format!("{}: {e}", self.plan.addrs[c.target]);
                // Unless finish() already accounted it (a 421 or a failed
                // RSET after the reply).
                if c.unfinished.take() == Some(seq) {
                    self.lost(seq, &e);
                }
                if let Some(next) = c.chained.take() {
                    self.lost(next, &e);
                }
                Sent::ConnLost
            }
        }
    }
}

async fn worker(
    plan: Arc<Plan>,
    stats: Stats,
    bodies: Rc<Bodies>,
    id: usize,
    tls: Option<TlsConnector>,
) {
    let rng = StdRng::seed_from_u64(plan.run ^ (id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut w = Worker {
        plan,
        stats,
        bodies,
        rng,
        spread: id,
        tls,
    };
    let mut conn: Option<Conn> = None;
    // A message whose pipelined group is already written on `conn`.
    let mut pending: Option<Msg> = None;
    loop {
        let m = match pending.take() {
            Some(m) => m,
            None => match w.start(&mut conn).await {
                Start::Msg(m) => m,
                Start::Lost => continue,
                Start::Done => break,
            },
        };
        let c = conn.as_mut().expect("connected");
        match w.send(c, m).await {
            Sent::Ended(next) => pending = next,
            Sent::ConnLost => {
                conn = None;
                continue;
            }
        }
        if pending.is_none() && c.should_quit(&w.plan) {
            if let Some(c) = conn.take() {
                c.quit(&w.stats).await;
            }
        }
    }
    if let Some(c) = conn {
        c.quit(&w.stats).await;
    }
}

/// Runs `conns` connections on this executor; `first_id` numbers them
/// globally (for spreading over targets).
pub async fn run(plan: Arc<Plan>, core: usize, conns: usize, first_id: usize) -> CoreStats {
    let stats: Stats = Rc::new(RefCell::new(CoreStats::new(plan.addrs.len())));
    if plan.record_acked {
        stats.borrow_mut().acked = Some(Vec::new());
    }
    let bodies = Rc::new(Bodies::default());
    // One TLS client configuration per core: its connections share one
    // session cache, without contention between cores.
    let tls = plan.tls.as_ref().map(|t| t.connector());
    let done = Rc::new(Cell::new(false));
    let ticker = {
        let (plan, stats, done) = (plan.clone(), stats.clone(), done.clone());
        glommio::spawn_local(async move {
            while !done.get() {
                plan.live[core].publish(&stats.borrow());
                Watch::sweep(plan.timeout);
                glommio::timer::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let workers: Vec<_> = (0..conns)
        .map(|w| {
            glommio::spawn_local(worker(
                plan.clone(),
                stats.clone(),
                bodies.clone(),
                first_id + w,
                tls.clone(),
            ))
        })
        .collect();
    for w in workers {
        w.await;
    }
    stats.borrow_mut().elapsed = plan.start.elapsed();
    done.set(true);
    ticker.await;
    plan.live[core].publish(&stats.borrow());
    drop(bodies);
    Rc::try_unwrap(stats)
        .map(RefCell::into_inner)
        .unwrap_or_else(|rc| {
            let mut s = CoreStats::new(plan.addrs.len());
            s.merge(std::mem::replace(&mut rc.borrow_mut(), CoreStats::new(0)));
            s
        })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::size::Sizes;

    #[test]
    fn size_picking_follows_weights() {
        let sizes: Sizes = "1KiB:60,16KiB:30,1MiB:10".parse().unwrap();
        let mut rng = StdRng::seed_from_u64(12345);
        let mut counts = HashMap::new();
        for _ in 0..100_000 {
            *counts.entry(sizes.pick(rng.gen())).or_insert(0u32) += 1;
        }
        let share = |s: usize| counts[&s] as f64 / 100_000.0;
        assert!((share(1024) - 0.6).abs() < 0.01);
        assert!((share(16384) - 0.3).abs() < 0.01);
        assert!((share(1 << 20) - 0.1).abs() < 0.01);
    }
}
