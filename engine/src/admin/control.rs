//! `GET /log-level`, `PUT /log-level` (body: a level or filter
//! directive, `tern log-level`), `POST /reload` (`tern reload`: the same
//! as SIGHUP).

use super::http::{Answer, Req};
use super::Admin;

/// The log filter in force.
pub(super) fn log_level() -> Answer {
    match crate::logging::level() {
        Some(l) => Answer::text(200, format!("{l}\n")),
        None => Answer::error(503, "the log level is not known in this process"),
    }
}

/// Sets the log filter now (until the next reload or restart).
pub(super) fn set_log_level(req: &Req) -> Answer {
    let level = req.body.trim();
    match crate::logging::set_level(level) {
        Ok(()) => {
            tracing::info!(level, who = %req.who, "log level changed at run time");
            Answer::text(200, format!("log level: {level}\n"))
        }
        Err(e @ crate::logging::LevelError::Invalid { .. }) => Answer::error(400, e.to_string()),
        Err(e) => Answer::error(503, e.to_string()),
    }
}

/// Reloads the config file now.
pub(super) fn reload(a: &Admin, req: &Req) -> Answer {
    match (a.reload)(&format!("admin request by {}", req.who)) {
        Ok(text) => Answer::text(200, text),
        Err(problems) => Answer::error(400, problems),
    }
}
