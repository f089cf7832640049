//! Delay warnings (Postfix's `delay_warning_time`; off by default): one
//! RFC 3464 report with `Action: delayed` to the sender of a message that
//! has waited `delivery.delay_warning_time` and is still being retried.
//!
//! Once per message, with no state of its own: the deferral that sends it
//! is the first one at or past the threshold, told by the time of the
//! previous deferral, which the retry schedule gives (the attempt was
//! due at `previous + retry_delay(attempts - 1)`). An attempt an operator
//! made due at once (`tern queue flush`) has no known previous deferral
//! and sends none; the regular ones after it do not either (they are past
//! the threshold already), so a flush across the threshold skips the
//! warning rather than risking two. Not for the null sender (a report is
//! never reported on), nor for a Safety Net resubmission.

use std::rc::Rc;

use tern_smtp::{Reply, Status};

use super::logline::Hop;
use super::{retry_delay, Attempt, Delivery};
use crate::config::DeliveryConfig;
use crate::dsn::{Action, RecipientReport};

/// When an attempt (its message received at `received`, its `attempts`
/// with this one, due at `due`) was made.
struct Timing {
    received: u64,
    attempts: u32,
    due: u64,
}

impl Timing {
    fn of(a: &Attempt) -> Timing {
        Timing {
            received: a.msg.received_ms,
            attempts: a.attempts,
            due: a.due_ms,
        }
    }
}

/// Is this attempt's deferral at `now` the first one at least `after`
/// past the arrival?
fn first_past(t: Timing, cfg: &DeliveryConfig, after: u64, now: u64) -> bool {
    if now.saturating_sub(t.received) < after {
        return false;
    }
    let previous = if t.attempts <= 1 {
        t.received
    } else if t.due == 0 {
        return false;
    } else {
        let gap = retry_delay(cfg, t.attempts - 1).as_millis() as u64;
        t.due.saturating_sub(gap)
    };
    previous.saturating_sub(t.received) < after
}

impl Delivery {
    /// Queues the delay warning for `a` when this deferral (of the
    /// `temporary` recipients, at `now`) is the one to send it.
    pub(super) async fn warn_if_due(
        &self,
        a: &Attempt,
        temporary: &[(u32, Reply, Option<Rc<Hop>>)],
        now: u64,
        copies: &mut Vec<glommio::Task<()>>,
    ) {
        let Some(after) = self.cfg.delay_warning_time else {
            return;
        };
        let after = after.as_millis() as u64;
        if a.msg.mail_from.is_empty()
            || a.msg.resubmitted.is_some()
            || !first_past(Timing::of(a), &self.cfg, after, now)
        {
            return;
        }
        let until = a.msg.received_ms + self.cfg.message_expiration_timeout.as_millis() as u64;
        let explanation = format!(
            "the message has not been delivered yet; tern keeps trying until {}",
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_millis(until)
            )
        );
        let reports: Vec<RecipientReport> = temporary
            .iter()
            .map(|(i, reply, hop)| RecipientReport {
                recipient: &a.msg.recipients[*i as usize],
                action: Action::Delayed,
                status: reply.status.unwrap_or(Status(4, 0, 0)),
                remote_mta: hop.as_deref().map(|h| h.name.as_str()),
                diagnostic: Some(reply),
                explanation: &explanation,
                last_attempt_ms: Some(now),
            })
            .collect();
        // A warning that cannot be queued is not retried (the log is
        // failing; the message itself is kept and retried).
        let _ = self
            .queue_report(a, &reports, now, copies, "delay warning")
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(attempts: u32, due: u64) -> Timing {
        Timing {
            received: 1_000_000,
            attempts,
            due,
        }
    }

    #[test]
    fn the_first_deferral_past_the_threshold_warns_once() {
        let cfg = crate::config::Config::from_toml("", &Default::default())
            .unwrap()
            .delivery;
        // retry_initial 60 s, doubling: deferrals at +0, +60, +180, +420 s.
        let t0 = 1_000_000;
        let after = 200_000; // warn after 200 s
        let at = |s: u64| t0 + s * 1000;
        // Attempt 1 at +0: too early.
        assert!(!first_past(attempt(1, 0), &cfg, after, at(0)));
        // Attempt 2 (due at +60 after the first deferral at +0): too early.
        assert!(!first_past(attempt(2, at(60)), &cfg, after, at(60)));
        // Attempt 3 at +180: previous deferral +60, still < 200 s.
        assert!(!first_past(attempt(3, at(180)), &cfg, after, at(180)));
        // Attempt 4 at +420: previous deferral at +180 (< 200): this one.
        assert!(first_past(attempt(4, at(420)), &cfg, after, at(420)));
        // Attempt 5 at +900: previous at +420, past it already: none.
        assert!(!first_past(attempt(5, at(900)), &cfg, after, at(900)));
        // A first attempt already past the threshold warns.
        assert!(first_past(attempt(1, 0), &cfg, after, at(300)));
        // An attempt made due at once by an operator: none.
        assert!(!first_past(attempt(4, 0), &cfg, after, at(420)));
    }
}
