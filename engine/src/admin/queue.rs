//! `GET /queue/summary`, `POST /queue/{flush,hold,release,bounce,delete}`
//! and `GET /destinations`, `POST /destinations/{suspend,resume}`: asked
//! of every core, merged here.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::Deserialize;

use super::http::{Answer, Req};
use super::metric_table::DESTINATIONS_MAX;
use super::render::QueueGauges;
use super::Admin;
use crate::ops::command::{
    ActBody, Acted, Action, Answer as CoreAnswer, Command, DestLine, SummaryFilter,
};
use crate::ops::state::Suspension;
use crate::ops::Destination;

/// Bound on the cores' answers.
const CORE_WAIT: Duration = Duration::from_secs(60);
/// Bound on the cores' answers for a `/metrics` scrape (well inside a
/// scraper's usual 10 s timeout; the queue gauges are left out of a
/// scrape that a core did not answer in time).
const METRICS_CORE_WAIT: Duration = Duration::from_secs(5);

/// Unix ms now.
pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// RFC 3339 (UTC, seconds) of unix ms.
pub(super) fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
        .to_string()
}

/// `GET /queue/summary?domain=&sender=&min_age=`.
pub(super) fn summary(a: &Admin, req: &Req) -> Answer {
    let min_age_ms = match req.param("min_age") {
        Some(s) => match humantime::parse_duration(s) {
            Ok(d) => Some(d.as_millis() as u64),
            Err(e) => return Answer::error(400, format!("min_age {s:?}: {e}")),
        },
        None => None,
    };
    let filter = SummaryFilter {
        domain: req.param("domain").map(str::to_owned),
        sender: req.param("sender").map(str::to_owned),
        min_age_ms,
    };
    let answers = match a.ops.ask_all(&Command::Summary(filter), CORE_WAIT) {
        Ok(x) => x,
        Err(e) => return Answer::error(503, e),
    };
    let now = now_ms();
    let mut merged: BTreeMap<String, DestLine> = BTreeMap::new();
    for ans in answers {
        let CoreAnswer::Summary(lines) = ans else {
            continue;
        };
        for l in lines {
            let m = merged
                .entry(l.destination.clone())
                .or_insert_with(|| DestLine {
                    destination: l.destination.clone(),
                    ..DestLine::default()
                });
            m.messages += l.messages;
            m.recipients += l.recipients;
            m.bytes += l.bytes;
            m.held += l.held;
            m.in_flight += l.in_flight;
            m.oldest_age_s = m.oldest_age_s.max(l.oldest_age_s);
            m.next_ms = match (m.next_ms, l.next_ms) {
                (Some(x), Some(y)) => Some(x.min(y)),
                (x, y) => x.or(y),
            };
            if l.error_ms > m.error_ms {
                m.error_ms = l.error_ms;
                m.last_error = l.last_error;
            }
        }
    }
    let suspended = a.ops.suspensions(now);
    let mut out: Vec<DestLine> = merged.into_values().collect();
    let (mut messages, mut recipients, mut bytes) = (0, 0, 0);
    for l in &mut out {
        let domain = l.destination.strip_prefix("mx:").unwrap_or("");
        let is_suspended = suspended
            .iter()
            .any(|s| Destination::from_key(&s.destination).matches(&l.destination, domain));
        l.state = if is_suspended {
            "suspended"
        } else if l.held == l.messages {
            "held"
        } else if l.in_flight > 0 || l.next_ms.is_some_and(|n| n <= now) {
            "active"
        } else {
            "deferred"
        }
        .into();
        l.next_attempt = l.next_ms.map(|n| rfc3339(n.max(now)));
        messages += l.messages;
        recipients += l.recipients;
        bytes += l.bytes;
    }
    Answer::json(&serde_json::json!({
        "destinations": out,
        "messages": messages,
        "recipients": recipients,
        "bytes": bytes,
    }))
}

/// The queue gauges of `/metrics`: every core's summary (the same walk as
/// `tern queue summary`, in chunks between the core's other work), merged
/// per destination; the largest [`DESTINATIONS_MAX`] by messages keep
/// their name, the rest are summed as `other` (always present).
pub(super) fn gauges(a: &Admin) -> Option<QueueGauges> {
    let command = Command::Summary(SummaryFilter::default());
    let answers = match a.ops.ask_all(&command, METRICS_CORE_WAIT) {
        Ok(x) => x,
        Err(e) => {
            tracing::debug!(error = %e, "queue gauges left out of this scrape");
            return None;
        }
    };
    let mut per: BTreeMap<String, u64> = BTreeMap::new();
    let mut oldest_age_s = 0;
    for ans in answers {
        let CoreAnswer::Summary(lines) = ans else {
            continue;
        };
        for l in lines {
            *per.entry(l.destination).or_insert(0) += l.messages;
            oldest_age_s = oldest_age_s.max(l.oldest_age_s);
        }
    }
    let mut destinations: Vec<(String, u64)> = per.into_iter().collect();
    // Largest first; equal counts by name, so the set is stable.
    destinations.sort_by(|x, y| y.1.cmp(&x.1).then_with(|| x.0.cmp(&y.0)));
    let rest: u64 = destinations
        .iter()
        .skip(DESTINATIONS_MAX)
        .map(|(_, n)| n)
        .sum();
    destinations.truncate(DESTINATIONS_MAX);
    destinations.push(("other".into(), rest));
    Some(QueueGauges {
        destinations,
        oldest_age_s,
    })
}

/// `POST /queue/ACTION`.
pub(super) fn act(a: &Admin, req: &Req, action: &str) -> Answer {
    let Some(action) = Action::parse(action) else {
        return Answer::error(
            404,
            format!("no queue action {action:?} (flush, hold, release, bounce, delete)"),
        );
    };
    let body: ActBody = match req.json() {
        Ok(b) => b,
        Err(e) => return e,
    };
    let mut selector = body.selector();
    if selector.is_empty() {
        if action != Action::Flush {
            return Answer::error(
                400,
                "name the messages: id, destination, sender and/or recipient (or all: true)",
            );
        }
        selector.all = true;
    }
    if let Some(id) = &selector.id {
        // 20 hex digits (store, shard, sequence), or the 14 of an id from
        // before ids named their store (`crate::record::message::QueueId`).
        if ![20, 14].contains(&id.len()) || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Answer::error(
                400,
                format!("{id:?} is not a queue id (20 hex digits, or 14 for ids from before they named their store)"),
            );
        }
    }
    if let Some(d) = &selector.destination {
        if let Err(e) = a.ops.destination(d) {
            return Answer::error(400, e);
        }
    }
    let command = Command::Act {
        action,
        selector: selector.clone(),
        reason: body.reason.clone(),
        dry_run: body.dry_run,
        by: req.who.clone(),
    };
    let answers = match a.ops.ask_all(&command, CORE_WAIT) {
        Ok(x) => x,
        Err(e) => return Answer::error(503, e),
    };
    let mut total = Acted::default();
    for ans in answers {
        if let CoreAnswer::Acted(x) = ans {
            total.matched += x.matched;
            total.in_flight += x.in_flight;
            total.messages.extend(x.messages);
        }
    }
    if !body.dry_run {
        a.ops.stats.count(action.as_str());
        tracing::info!(action = action.as_str(), who = %req.who, ?selector, reason = body.reason.as_deref().unwrap_or("-"),
            matched = total.matched, in_flight = total.in_flight, "operator: queue action");
    }
    Answer::json(&serde_json::json!({
        "action": action.as_str(),
        "dry_run": body.dry_run,
        "matched": total.matched,
        "in_flight": total.in_flight,
        "messages": total.messages,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SuspendBody {
    destination: String,
    #[serde(default, rename = "for")]
    duration: Option<String>,
}

fn suspension_json(s: &Suspension) -> serde_json::Value {
    serde_json::json!({
        "destination": s.destination,
        "since": rfc3339(s.since_ms),
        "until": s.until_ms.map(rfc3339),
        "by": s.by,
    })
}

/// `GET /destinations`.
pub(super) fn destinations(a: &Admin) -> Answer {
    let list: Vec<_> = a
        .ops
        .suspensions(now_ms())
        .iter()
        .map(suspension_json)
        .collect();
    Answer::json(&serde_json::json!({ "suspended": list }))
}

/// `POST /destinations/suspend` and `/destinations/resume`.
pub(super) fn suspend_or_resume(a: &Admin, req: &Req, what: &str) -> Answer {
    let body: SuspendBody = match req.json() {
        Ok(b) => b,
        Err(e) => return e,
    };
    let dest = match a.ops.destination(&body.destination) {
        Ok(d) => d,
        Err(e) => return Answer::error(400, e),
    };
    let now = now_ms();
    let result = match what {
        "suspend" => {
            let until = match body.duration.as_deref().map(humantime::parse_duration) {
                None => None,
                Some(Ok(d)) if !d.is_zero() => Some(now + d.as_millis() as u64),
                Some(Ok(_)) => return Answer::error(400, "for: a duration above 0 (e.g. 30m)"),
                Some(Err(e)) => return Answer::error(400, format!("for: {e}")),
            };
            a.ops.suspend(&dest, until, now, &req.who)
        }
        "resume" => a.ops.resume(&dest, now),
        _ => return Answer::error(404, "use /destinations/suspend or /destinations/resume"),
    };
    match result {
        Ok(s) => {
            a.ops.stats.count(what);
            tracing::info!(action = what, who = %req.who, destination = %s.destination,
                until = s.until_ms.map(rfc3339).as_deref().unwrap_or("resumed"), "operator: destination");
            Answer::json(&suspension_json(&s))
        }
        Err(r) => Answer::error(r.0, r.1),
    }
}
