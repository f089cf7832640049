//! The process's log: its format (logfmt or JSON lines), its writer (the
//! log thread, fed in batches by the cores: [`crate::logbuf`]) and its
//! level, which can be changed while the node runs (admin `PUT
//! /log-level`, `tern log-level`, `server.log_level` on reload).
//!
//! # Formats
//!
//! - `logfmt` (the default): `ts=... level=info target=... msg=accepted
//!   id=... client=...`, one line per event; a value with a space, `=`
//!   or `"` is quoted (`reply="250 2.0.0 Ok"`), so every line parses as
//!   logfmt.
//! - `json`: one JSON object per line with the same fields at the top
//!   level (`timestamp`, `level`, `target`, `message` and the event's own
//!   fields).
//!
//! # Level
//!
//! An `EnvFilter` directive (`info`, `debug`, `tern_engine::delivery=debug`,
//! ...). At start: `RUST_LOG` if set, else `info`; a config's
//! `server.log_level` applies at start and at each reload unless
//! `RUST_LOG` is set (the environment wins, so a debugging session is not
//! undone by a reload).

use std::sync::{Mutex, OnceLock};

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

/// `--log-format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// `key=value` pairs, values quoted where needed.
    #[default]
    Logfmt,
    /// One JSON object per line.
    Json,
}

/// Why a level could not be set.
#[derive(Debug, thiserror::Error)]
pub enum LevelError {
    /// Not a filter directive.
    #[error("{given:?} is not a log level or filter directive ({why}); use e.g. info, debug, warn or tern_engine::delivery=debug")]
    Invalid {
        /// What was given.
        given: String,
        /// The parser's complaint.
        why: String,
    },
    /// Logging was not set up by [`init`] (a test harness, say).
    #[error("the log level cannot be changed in this process")]
    NotInstalled,
}

struct Level {
    handle: reload::Handle<EnvFilter, Registry>,
    /// The directive in force, as given.
    current: Mutex<String>,
    /// `RUST_LOG` was set: the config's level does not apply.
    from_env: bool,
}

static LEVEL: OnceLock<Level> = OnceLock::new();

/// Sets up the process's log. Returns the guard that flushes the log
/// thread at exit (keep it alive in `main`).
pub fn init(format: Format) -> tracing_appender::non_blocking::WorkerGuard {
    // Log lines are handed to a background thread: a core never blocks on
    // a slow stderr (the buffer is bounded; lines beyond it are dropped and
    // counted rather than stalling mail). The guard flushes at exit. The
    // thread writes every line it has queued, then flushes: buffered, that
    // is one write(2) per batch instead of one per line (one line per
    // accepted message; measured: the log thread took 14% of a node's CPU
    // at 6 000 msgs/s with a write per line). A line waits for nothing:
    // the flush comes as soon as the queue is empty. A core's own lines
    // reach that thread in batches (`logbuf`: one hand-off per 10 ms or
    // 32 KiB instead of a wake-up per line).
    let stderr = std::io::BufWriter::with_capacity(64 << 10, std::io::stderr());
    let (writer, guard) = tracing_appender::non_blocking(stderr);
    let writer = crate::logbuf::install(writer);
    let env = std::env::var("RUST_LOG").ok().filter(|s| !s.is_empty());
    let directive = env.clone().unwrap_or_else(|| "info".into());
    let filter = EnvFilter::try_new(&directive).unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        Format::Logfmt => registry
            .with(tracing_logfmt::builder().layer().with_writer(writer))
            .init(),
        Format::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(false)
                    .with_writer(writer),
            )
            .init(),
    }
    let _ = LEVEL.set(Level {
        handle,
        current: Mutex::new(directive),
        from_env: env.is_some(),
    });
    guard
}

const LEVELS: &[&str] = &["off", "error", "warn", "info", "debug", "trace"];

/// Checks a level or filter directive without applying it: each
/// comma-separated part is a level (`debug`) or `TARGET=LEVEL`. (A bare
/// word that is not a level would be a target filter that silences
/// everything else: a typo such as `debgu` is refused instead.)
pub fn parse(directive: &str) -> Result<EnvFilter, LevelError> {
    let invalid = |why: String| LevelError::Invalid {
        given: directive.to_owned(),
        why,
    };
    let d = directive.trim();
    if d.is_empty() {
        return Err(invalid("empty".into()));
    }
    for part in d.split(',') {
        let level = part.rsplit_once('=').map_or(part, |(_, l)| l).trim();
        if !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return Err(invalid(format!(
                "{level:?} is not one of {}",
                LEVELS.join(", ")
            )));
        }
    }
    EnvFilter::try_new(d).map_err(|e| invalid(e.to_string()))
}

/// Sets the level now (the admin API).
pub fn set_level(directive: &str) -> Result<(), LevelError> {
    let filter = parse(directive)?;
    let level = LEVEL.get().ok_or(LevelError::NotInstalled)?;
    level
        .handle
        .reload(filter)
        .map_err(|_| LevelError::NotInstalled)?;
    *level.current.lock().unwrap_or_else(|e| e.into_inner()) = directive.trim().to_owned();
    Ok(())
}

/// Applies the config's `server.log_level` (at start and reload), unless
/// `RUST_LOG` chose the level. True when it was applied.
pub fn apply_configured(directive: &str) -> Result<bool, LevelError> {
    match LEVEL.get() {
        Some(l) if l.from_env => Ok(false),
        Some(_) => set_level(directive).map(|()| true),
        None => Ok(false),
    }
}

/// The directive in force (`None`: logging not set up by [`init`]).
pub fn level() -> Option<String> {
    LEVEL
        .get()
        .map(|l| l.current.lock().unwrap_or_else(|e| e.into_inner()).clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directives_are_checked() {
        assert!(parse("debug").is_ok());
        assert!(parse("tern_engine::delivery=debug,info").is_ok());
        for bad in ["debgu", "", "tern_engine=loud", "info,x=y"] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains("not a log level"), "{bad}: {e}");
        }
    }
}
