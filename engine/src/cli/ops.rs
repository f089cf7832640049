//! `tern queue summary/flush/hold/release/bounce/delete`, `tern
//! destination suspend/resume/list`, `tern resubmit add/list/disable/
//! remove`: requests to the running server's admin API (README has the
//! table). Text by default, the API's JSON with `--json`.

use std::io::Write;

use clap::Subcommand;
use serde_json::{json, Value};

use super::remote::admin_request;
use super::AdminArgs;

/// Which messages (the flags all given must match).
#[derive(clap::Args, Clone, Default)]
pub(super) struct Select {
    /// Queue id (20 hex digits, as in "queued as ..."; the older 14-digit form is accepted).
    id: Option<String>,
    /// Destination: pool:NAME, mx:DOMAIN, a pool name or a recipient domain.
    #[arg(long)]
    destination: Option<String>,
    /// Envelope sender.
    #[arg(long)]
    sender: Option<String>,
    /// Recipient address.
    #[arg(long)]
    recipient: Option<String>,
    /// List what would be hit; change nothing.
    #[arg(long)]
    dry_run: bool,
}

impl Select {
    fn body(&self, reason: Option<&str>) -> Value {
        let mut b = json!({ "dry_run": self.dry_run });
        let m = b.as_object_mut().expect("object");
        for (k, v) in [
            ("id", &self.id),
            ("destination", &self.destination),
            ("sender", &self.sender),
            ("recipient", &self.recipient),
        ] {
            if let Some(v) = v {
                m.insert(k.into(), json!(v));
            }
        }
        if let Some(r) = reason {
            m.insert("reason".into(), json!(r));
        }
        b
    }
}

/// The queue commands that act through the admin API.
#[derive(Subcommand)]
pub(super) enum QueueOp {
    /// Per destination: state, messages, recipients, bytes, oldest age,
    /// next attempt, last error.
    Summary {
        /// Only recipients of this domain.
        #[arg(long)]
        domain: Option<String>,
        /// Only messages from this sender.
        #[arg(long)]
        sender: Option<String>,
        /// Only messages at least this old (e.g. 10m).
        #[arg(long)]
        min_age: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Retry now (everything when nothing is named); clears the
    /// destination's host-down backoff.
    Flush {
        #[command(flatten)]
        select: Select,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Hold: never attempted, never expired, until released.
    Hold {
        #[command(flatten)]
        select: Select,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Release held messages: due at once.
    Release {
        #[command(flatten)]
        select: Select,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Bounce the pending recipients now (one DSN to the sender).
    Bounce {
        #[command(flatten)]
        select: Select,
        /// Why (in the DSN).
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Drop the pending recipients (no DSN).
    Delete {
        #[command(flatten)]
        select: Select,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// `tern destination ...`.
#[derive(Subcommand)]
pub(super) enum DestinationAction {
    /// Attempt nothing to D on any core until resumed (or for DURATION).
    Suspend {
        /// pool:NAME, mx:DOMAIN, a pool name or a recipient domain.
        destination: String,
        /// End the suspension by itself after this long (e.g. 30m).
        #[arg(long = "for")]
        duration: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// End D's suspension; its messages are due at once.
    Resume {
        /// As given to suspend.
        destination: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Suspended destinations.
    List {
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// `tern resubmit ...`.
#[derive(Subcommand)]
pub(super) enum ResubmitAction {
    /// Queue again the Safety Net messages that arrived in the window.
    Add {
        /// Window start, RFC 3339 (e.g. 2026-12-02T10:00:00Z).
        #[arg(long)]
        start: String,
        /// Window end, RFC 3339, after start and in the past.
        #[arg(long)]
        end: String,
        /// Only this recipient.
        #[arg(long)]
        recipient: Option<String>,
        /// Only this sender.
        #[arg(long)]
        sender: Option<String>,
        /// Only recipients of this domain.
        #[arg(long)]
        recipient_domain: Option<String>,
        /// Only recipients routed to this pool.
        #[arg(long)]
        next_hop: Option<String>,
        /// Only the message with this Message-ID.
        #[arg(long)]
        message_id: Option<String>,
        /// Resubmit NODE's handled messages from this node's shadow
        /// Safety Net instead of our own.
        #[arg(long)]
        unresponsive_primary: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Requests with their state and counts.
    List {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Stop a request (what it queued stays queued).
    Disable {
        /// Request id.
        id: u64,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Forget a request.
    Remove {
        /// Request id.
        id: u64,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// Sends the request; prints the JSON (`--json`) or `text` of it.
fn call(
    a: &AdminArgs,
    method: &str,
    path: &str,
    body: Option<&Value>,
    out: &mut impl Write,
    text: impl FnOnce(&Value, &mut dyn Write) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let answer = admin_request(a, method, path, &body)?;
    if a.json {
        write_quietly(out, answer.as_bytes())?;
        return Ok(());
    }
    let v: Value = serde_json::from_str(&answer)
        .map_err(|e| anyhow::anyhow!("the server's answer is not JSON ({e}): {answer}"))?;
    let mut buf = Vec::new();
    text(&v, &mut buf)?;
    write_quietly(out, &buf)
}

/// Writes; a closed pipe (`| head`) is not an error.
fn write_quietly(out: &mut impl Write, b: &[u8]) -> anyhow::Result<()> {
    match out.write_all(b).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(x) => x.clone(),
        other => other.to_string(),
    }
}

/// `tern queue summary/flush/...`.
pub(super) fn queue(op: QueueOp, out: &mut impl Write) -> anyhow::Result<()> {
    let (a, action, select, reason) = match op {
        QueueOp::Summary {
            domain,
            sender,
            min_age,
            admin,
        } => {
            let mut q = Vec::new();
            for (k, v) in [("domain", domain), ("sender", sender), ("min_age", min_age)] {
                if let Some(v) = v {
                    q.push(format!("{k}={}", encode(&v)));
                }
            }
            let path = match q.is_empty() {
                true => "/queue/summary".to_string(),
                false => format!("/queue/summary?{}", q.join("&")),
            };
            return call(&admin, "GET", &path, None, out, |v, w| {
                writeln!(
                    w,
                    "{:<32} {:<9} {:>8} {:>8} {:>12} {:>8}  {:<20}  LAST-ERROR",
                    "DESTINATION", "STATE", "MESSAGES", "RCPTS", "BYTES", "OLDEST", "NEXT-ATTEMPT"
                )?;
                for d in v["destinations"].as_array().into_iter().flatten() {
                    writeln!(
                        w,
                        "{:<32} {:<9} {:>8} {:>8} {:>12} {:>7}s  {:<20}  {}",
                        s(&d["destination"]),
                        s(&d["state"]),
                        s(&d["messages"]),
                        s(&d["recipients"]),
                        s(&d["bytes"]),
                        s(&d["oldest_age_s"]),
                        s(&d["next_attempt"]),
                        s(&d["last_error"])
                    )?;
                }
                writeln!(
                    w,
                    "-- {} message(s), {} recipient(s), {} bytes queued",
                    s(&v["messages"]),
                    s(&v["recipients"]),
                    s(&v["bytes"])
                )
            });
        }
        QueueOp::Flush { select, admin } => (admin, "flush", select, None),
        QueueOp::Hold { select, admin } => (admin, "hold", select, None),
        QueueOp::Release { select, admin } => (admin, "release", select, None),
        QueueOp::Bounce {
            select,
            reason,
            admin,
        } => (admin, "bounce", select, reason),
        QueueOp::Delete { select, admin } => (admin, "delete", select, None),
    };
    let body = select.body(reason.as_deref());
    call(
        &a,
        "POST",
        &format!("/queue/{action}"),
        Some(&body),
        out,
        |v, w| {
            let verb = if v["dry_run"].as_bool() == Some(true) {
                format!("would {action}")
            } else {
                action.to_string()
            };
            for id in v["messages"].as_array().into_iter().flatten() {
                writeln!(w, "{}", s(id))?;
            }
            writeln!(
                w,
                "-- {verb}: {} message(s) ({} in an attempt now: acted on when it ends)",
                s(&v["matched"]),
                s(&v["in_flight"])
            )
        },
    )
}

/// `tern destination ...`.
pub(super) fn destination(action: DestinationAction, out: &mut impl Write) -> anyhow::Result<()> {
    let line = |d: &Value, w: &mut dyn Write| {
        writeln!(
            w,
            "{} suspended since {} until {} by {}",
            s(&d["destination"]),
            s(&d["since"]),
            if d["until"].is_null() {
                "resumed".into()
            } else {
                s(&d["until"])
            },
            s(&d["by"])
        )
    };
    match action {
        DestinationAction::Suspend {
            destination,
            duration,
            admin,
        } => {
            let mut b = json!({ "destination": destination });
            if let Some(d) = duration {
                b["for"] = json!(d);
            }
            call(&admin, "POST", "/destinations/suspend", Some(&b), out, line)
        }
        DestinationAction::Resume { destination, admin } => {
            let b = json!({ "destination": destination });
            call(
                &admin,
                "POST",
                "/destinations/resume",
                Some(&b),
                out,
                |d, w| writeln!(w, "{} resumed", s(&d["destination"])),
            )
        }
        DestinationAction::List { admin } => {
            call(&admin, "GET", "/destinations", None, out, |v, w| {
                for d in v["suspended"].as_array().into_iter().flatten() {
                    line(d, w)?;
                }
                Ok(())
            })
        }
    }
}

fn request_line(r: &Value, w: &mut dyn Write) -> std::io::Result<()> {
    let mut filters = Vec::new();
    for k in [
        "recipient",
        "sender",
        "recipient_domain",
        "next_hop",
        "message_id",
        "unresponsive_primary",
    ] {
        if !r[k].is_null() {
            filters.push(format!("{k}={}", s(&r[k])));
        }
    }
    writeln!(
        w,
        "{} {} {} .. {} {} matched {} resubmitted {} delivered {}",
        s(&r["id"]),
        s(&r["state"]),
        s(&r["start"]),
        s(&r["end"]),
        if filters.is_empty() {
            "-".into()
        } else {
            filters.join(" ")
        },
        s(&r["matched"]),
        s(&r["resubmitted"]),
        s(&r["delivered"])
    )
}

/// `tern resubmit ...`.
pub(super) fn resubmit(action: ResubmitAction, out: &mut impl Write) -> anyhow::Result<()> {
    match action {
        ResubmitAction::Add {
            start,
            end,
            recipient,
            sender,
            recipient_domain,
            next_hop,
            message_id,
            unresponsive_primary,
            admin,
        } => {
            let mut b = json!({ "start": start, "end": end });
            for (k, v) in [
                ("recipient", recipient),
                ("sender", sender),
                ("recipient_domain", recipient_domain),
                ("next_hop", next_hop),
                ("message_id", message_id),
                ("unresponsive_primary", unresponsive_primary),
            ] {
                if let Some(v) = v {
                    b[k] = json!(v);
                }
            }
            call(&admin, "POST", "/resubmit", Some(&b), out, request_line)
        }
        ResubmitAction::List { admin } => call(&admin, "GET", "/resubmit", None, out, |v, w| {
            for r in v["requests"].as_array().into_iter().flatten() {
                request_line(r, w)?;
            }
            Ok(())
        }),
        ResubmitAction::Disable { id, admin } => call(
            &admin,
            "POST",
            &format!("/resubmit/{id}/disable"),
            Some(&json!({})),
            out,
            request_line,
        ),
        ResubmitAction::Remove { id, admin } => call(
            &admin,
            "DELETE",
            &format!("/resubmit/{id}"),
            None,
            out,
            |_, w| writeln!(w, "request {id} removed"),
        ),
    }
}

/// Percent-encodes a query value.
fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
