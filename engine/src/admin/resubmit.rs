//! `POST /resubmit`, `GET /resubmit`, `POST /resubmit/ID/disable`,
//! `DELETE /resubmit/ID`: Safety Net resubmission requests (SPEC 5).

use std::time::SystemTime;

use serde::Deserialize;

use super::http::{Answer, Req};
use super::queue::{now_ms, rfc3339};
use super::Admin;
use crate::ops::state::Request;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddBody {
    start: String,
    end: String,
    #[serde(default)]
    recipient: Option<String>,
    #[serde(default)]
    sender: Option<String>,
    #[serde(default)]
    recipient_domain: Option<String>,
    #[serde(default)]
    next_hop: Option<String>,
    #[serde(default)]
    message_id: Option<String>,
    #[serde(default)]
    unresponsive_primary: Option<String>,
}

/// Unix ms of an RFC 3339 time.
fn parse_time(what: &str, s: &str) -> Result<u64, String> {
    let t = humantime::parse_rfc3339_weak(s.trim()).map_err(|e| {
        format!("{what} {s:?} is not an RFC 3339 time (e.g. 2026-12-02T10:00:00Z): {e}")
    })?;
    Ok(t.duration_since(SystemTime::UNIX_EPOCH)
        .map_err(|_| format!("{what} {s:?} is before 1970"))?
        .as_millis() as u64)
}

/// A request as the API shows it.
pub(super) fn view(r: &Request) -> serde_json::Value {
    serde_json::json!({
        "id": r.id,
        "state": r.state(),
        "created": rfc3339(r.created_ms),
        "by": r.by,
        "start": rfc3339(r.start_ms),
        "end": rfc3339(r.end_ms),
        "recipient": r.recipient,
        "sender": r.sender,
        "recipient_domain": r.recipient_domain,
        "next_hop": r.next_hop,
        "message_id": r.message_id,
        "unresponsive_primary": r.unresponsive_primary,
        "cores_pending": r.cores_pending,
        "matched": r.matched,
        "resubmitted": r.resubmitted,
        "delivered": r.delivered,
    })
}

/// `POST /resubmit`.
pub(super) fn add(a: &Admin, req: &Req) -> Answer {
    let b: AddBody = match req.json() {
        Ok(b) => b,
        Err(e) => return e,
    };
    let now = now_ms();
    let (start_ms, end_ms) = match (parse_time("start", &b.start), parse_time("end", &b.end)) {
        (Ok(s), Ok(e)) => (s, e),
        (Err(e), _) | (_, Err(e)) => return Answer::error(400, e),
    };
    if end_ms <= start_ms {
        return Answer::error(
            400,
            format!(
                "the window ends ({}) before it starts ({}): end must be after start",
                b.end, b.start
            ),
        );
    }
    if end_ms > now {
        return Answer::error(
            400,
            format!(
                "the window must be in the past: end {} is after now ({})",
                b.end,
                rfc3339(now)
            ),
        );
    }
    if let Some(p) = &b.next_hop {
        if !a.config.pools.contains_key(p) {
            return Answer::error(400, format!("next_hop: no pool named {p:?}"));
        }
    }
    if let Some(n) = &b.unresponsive_primary {
        if !a.config.cluster.peers.iter().any(|p| &p.node_id == n) {
            return Answer::error(
                400,
                format!("unresponsive_primary: {n:?} is not a peer of this node ([cluster] peers)"),
            );
        }
    }
    let lower = |s: Option<String>| s.map(|x| x.trim().to_ascii_lowercase());
    let request = Request {
        created_ms: now,
        by: req.who.clone(),
        start_ms,
        end_ms,
        recipient: lower(b.recipient),
        sender: lower(b.sender),
        recipient_domain: lower(b.recipient_domain),
        next_hop: b.next_hop,
        message_id: b
            .message_id
            .map(|m| m.trim().trim_matches(['<', '>']).to_owned()),
        unresponsive_primary: b.unresponsive_primary,
        ..Request::default()
    };
    match a.ops.add_request(request) {
        Ok(r) => {
            a.ops.stats.count("resubmit");
            tracing::info!(request = r.id, who = %req.who, start = %rfc3339(r.start_ms), end = %rfc3339(r.end_ms),
                unresponsive_primary = r.unresponsive_primary.as_deref().unwrap_or("-"), "operator: resubmission request added");
            Answer::json(&view(&r))
        }
        Err(r) => Answer::error(r.0, r.1),
    }
}

/// `GET /resubmit`.
pub(super) fn list(a: &Admin) -> Answer {
    let all: Vec<_> = a.ops.requests().iter().map(view).collect();
    Answer::json(&serde_json::json!({ "requests": all }))
}

/// `POST /resubmit/ID/disable`, `DELETE /resubmit/ID`, `GET /resubmit/ID`.
pub(super) fn one(a: &Admin, req: &Req, rest: &str) -> Answer {
    let (id, verb) = rest.split_once('/').unwrap_or((rest, ""));
    let Ok(id) = id.parse::<u64>() else {
        return Answer::error(400, format!("{id:?} is not a request id"));
    };
    match (&req.method, verb) {
        (super::listener::Method::Get, "") => match a.ops.request(id) {
            Some(r) => Answer::json(&view(&r)),
            None => Answer::error(404, format!("no resubmission request {id}")),
        },
        (super::listener::Method::Post, "disable") => match a.ops.disable(id) {
            Ok(r) => {
                a.ops.stats.count("resubmit_disable");
                tracing::info!(request = id, who = %req.who, "operator: resubmission request disabled");
                Answer::json(&view(&r))
            }
            Err(r) => Answer::error(r.0, r.1),
        },
        (super::listener::Method::Delete, "") => match a.ops.remove(id) {
            Ok(()) => {
                a.ops.stats.count("resubmit_remove");
                tracing::info!(request = id, who = %req.who, "operator: resubmission request removed");
                Answer::json(&serde_json::json!({ "removed": id }))
            }
            Err(r) => Answer::error(r.0, r.1),
        },
        _ => Answer::error(
            405,
            "use GET /resubmit/ID, POST /resubmit/ID/disable or DELETE /resubmit/ID",
        ),
    }
}
