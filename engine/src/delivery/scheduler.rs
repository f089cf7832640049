//! The scheduler: tails the log and starts an attempt for each due
//! message, within `delivery.in_flight_max` attempts (none while
//! `delivery.hold`). It sleeps until the next message is due (at most
//! 1 s), new records arrive, or delivery stops.
//!
//! No attempt without the means to record its outcome: while the log has
//! less than half its reserve left (a full file system) or has failed,
//! no attempt starts (each such pass with messages due is counted in
//! `attempts_held_back`); a message
//! delivered but not recorded would be delivered again after a restart.

use std::rc::Rc;
use std::time::Duration;

use tern_storage::TimestampMs;

use super::Delivery;
use crate::metrics::CoreMetrics;

impl Delivery {
    /// Can the outcome of a new attempt be made durable? The log must not
    /// have failed and must keep at least half its reserve (what is left
    /// is for the attempts already under way).
    pub(super) fn can_record_outcomes(&self) -> bool {
        let log = &self.shard().log;
        let reserve = self.parts.config.storage.reserve();
        log.failure().is_none() && log.headroom() >= reserve / 2
    }

    /// Tails the log and starts attempts for due messages.
    pub(super) async fn scheduler(self: Rc<Self>) {
        loop {
            let appended = self.shard().listen_appended();
            if self.is_stopping() {
                return;
            }
            if let Err(e) = self.ingest(false) {
                tracing::error!(error = %e, "cannot read the log; delivery paused");
            }
            let now = TimestampMs::now().0;
            let room = if self.cfg.hold {
                0
            } else if !self.can_record_outcomes() {
                if self.queue.borrow().next_due().is_some_and(|t| t <= now) {
                    CoreMetrics::inc(&self.metrics().attempts_held_back);
                }
                0
            } else {
                self.cfg
                    .in_flight_max
                    .saturating_sub(self.open_attempts.get())
            };
            let due = self.queue.borrow_mut().pop_due(now, room);
            for key in due {
                self.open_attempts.set(self.open_attempts.get() + 1);
                glommio::spawn_local(self.clone().dispatch(key)).detach();
            }
            let wait = match self.queue.borrow().next_due() {
                Some(t) if room > 0 => Duration::from_millis(t.saturating_sub(now).clamp(1, 1000)),
                _ => Duration::from_secs(1),
            };
            let timer = glommio::timer::sleep(wait);
            let stop = self.stopping.event.listen();
            futures_lite::future::or(futures_lite::future::or(appended, stop), async {
                timer.await;
            })
            .await;
        }
    }
}
