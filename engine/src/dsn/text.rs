//! The human-readable part: recipients grouped by action, each with our
//! explanation and the next hop's reply, in US-ASCII.

use super::fields::{ascii_text, push_wrapped};
use super::{Action, Notice, RecipientReport};

/// The human-readable part: recipients grouped by action, each with our
/// explanation and the next hop's reply.
pub(super) fn text_part(notice: &Notice) -> Vec<u8> {
    let mut out = Vec::new();
    let intro = format!(
        "This is the mail delivery system at {}.",
        ascii_text(notice.reporting_mta)
    );
    push_wrapped(&mut out, "", "", &intro);
    let groups = [
        (
            Action::Failed,
            "Your message could not be delivered to the recipients below. \
             This is final: it will not be retried.",
        ),
        (
            Action::Delayed,
            "Your message has not been delivered yet to the recipients below. \
             Delivery is still being retried; you do not need to send it again.",
        ),
    ];
    for (action, heading) in groups {
        if !notice.recipients.iter().any(|r| r.action == action) {
            continue;
        }
        out.extend_from_slice(b"\r\n");
        push_wrapped(&mut out, "", "", heading);
        for r in notice.recipients.iter().filter(|r| r.action == action) {
            out.extend_from_slice(b"\r\n");
            push_recipient_text(&mut out, r);
        }
    }
    out.extend_from_slice(b"\r\n");
    let attached = if notice.original.len() <= notice.return_content_bytes_max {
        "The original message is attached."
    } else {
        "The header section of the original message is attached."
    };
    push_wrapped(&mut out, "", "", attached);
    out
}

fn push_recipient_text(out: &mut Vec<u8>, r: &RecipientReport) {
    let line = format!(
        "<{}>: {} ({})",
        ascii_text(r.recipient),
        ascii_text(r.explanation),
        r.status
    );
    push_wrapped(out, "", "    ", &line);
    if let Some(reply) = r.diagnostic {
        let who = r.remote_mta.map_or("The remote server".into(), ascii_text);
        let said = format!("{who} said: {}", ascii_text(&reply.to_string()));
        push_wrapped(out, "    ", "    ", &said);
    }
}
