//! The `message/delivery-status` part (RFC 3464 2.2, 2.3): per-message
//! fields, then a block of fields per recipient.

use super::fields::{ascii_text, date, push_field};
use super::Notice;

/// The `message/delivery-status` body (RFC 3464 2.2, 2.3).
pub(super) fn status_part(notice: &Notice) -> Vec<u8> {
    let mut out = Vec::new();
    let mta = format!("dns; {}", ascii_text(notice.reporting_mta));
    push_field(&mut out, "Reporting-MTA", &mta);
    push_field(&mut out, "X-Tern-Queue-ID", &ascii_text(notice.queue_id));
    push_field(&mut out, "Arrival-Date", &date(notice.arrival_ms));
    for r in notice.recipients {
        out.extend_from_slice(b"\r\n");
        let recipient = format!("rfc822; {}", ascii_text(r.recipient));
        push_field(&mut out, "Final-Recipient", &recipient);
        push_field(&mut out, "Action", r.action.as_str());
        push_field(&mut out, "Status", &r.status.to_string());
        if let Some(host) = r.remote_mta {
            push_field(
                &mut out,
                "Remote-MTA",
                &format!("dns; {}", ascii_text(host)),
            );
        }
        if let Some(reply) = r.diagnostic {
            let code = format!("smtp; {}", ascii_text(&reply.to_string()));
            push_field(&mut out, "Diagnostic-Code", &code);
        }
        if let Some(ms) = r.last_attempt_ms {
            push_field(&mut out, "Last-Attempt-Date", &date(ms));
        }
    }
    out
}
