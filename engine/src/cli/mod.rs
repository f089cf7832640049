//! The `tern` command line: `serve`, the queue tools (read the data
//! directory), and the route and shadow commands (talk to the running
//! server's admin listener).
//!
//! # Layout
//!
//! ```text
//! mod.rs     the commands and flags (clap), and what each runs
//! queue.rs   tern queue list/show/shadow/safety-net over the read-only inspector
//! history.rs each recipient's last reply and final outcome, from the status records
//! remote.rs  requests to the admin listener, with the admin token
//! ops.rs     tern queue summary/flush/hold/release/bounce/delete, tern destination, tern resubmit
//! user.rs    tern user add/remove/list: the SMTP AUTH users file
//! ```

pub mod history;
mod ops;
pub mod queue;
mod remote;
mod tls;
mod user;

use std::io::Write;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{Checked, Config, Overrides, Shown};
use remote::admin_call;

/// The `tern` command.
#[derive(Parser)]
#[command(name = "tern", version, about = "tern: a durable SMTP relay")]
pub struct Cli {
    /// Log line format: logfmt (key=value, quoted where needed) or json
    /// (one object per line).
    #[arg(long, global = true, value_enum, default_value_t = crate::logging::Format::Logfmt)]
    pub log_format: crate::logging::Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone, Default)]
struct Common {
    /// TOML config file (strict: unknown keys are errors; relative paths in
    /// it are relative to its directory).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory (default ./tern-data).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay.
    Serve {
        #[command(flatten)]
        common: Common,
        /// SMTP listen address (default 127.0.0.1:2525).
        #[arg(long)]
        listen: Option<String>,
        /// Cores (executors) to run (default: all).
        #[arg(long)]
        cores: Option<usize>,
        /// Smarthost HOST:PORT for delivery.
        #[arg(long)]
        relay_to: Option<String>,
        /// Admin (metrics) listen address, or "off" (default 127.0.0.1:8025).
        #[arg(long)]
        admin_listen: Option<String>,
        /// What this node is: "relay" (default) or "front-end" (a stateless
        /// proxy before relays; server.role).
        #[arg(long)]
        role: Option<String>,
        /// A back end of the front end, HOST:PORT[,PRIORITY] (lower first;
        /// repeatable): the pool "backends", the default route.
        #[arg(long = "backend", value_name = "HOST:PORT[,PRIO]")]
        backends: Vec<String>,
    },
    /// Inspect the queue (reads the data directory; safe while running).
    Queue {
        #[command(subcommand)]
        action: QueueAction,
    },
    /// Re-point routes of the running server (through its admin listener).
    Route {
        #[command(subcommand)]
        action: RouteAction,
    },
    /// Shadow redundancy of the running server (through its admin listener).
    Shadow {
        #[command(subcommand)]
        action: ShadowAction,
    },
    /// Suspend and resume destinations of the running server.
    Destination {
        #[command(subcommand)]
        action: ops::DestinationAction,
    },
    /// Safety Net resubmission requests of the running server.
    Resubmit {
        #[command(subcommand)]
        action: ops::ResubmitAction,
    },
    /// SMTP AUTH users (the users file; the server reads it at start-up).
    User {
        #[command(subcommand)]
        action: user::UserAction,
    },
    /// TLS certificates of this node.
    Tls {
        #[command(subcommand)]
        action: tls::TlsAction,
    },
    /// Reload the running server's config file (as SIGHUP): pools, routes,
    /// relay rules, limits, log level, certificates.
    Reload {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Show (no LEVEL) or set the running server's log level.
    LogLevel {
        /// A level (error, warn, info, debug, trace) or TARGET=LEVEL list.
        level: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Check a config file (every problem at once) and print the effective
    /// configuration as TOML, `# default` marking default values.
    CheckConfig {
        #[command(flatten)]
        common: Common,
        /// Print only the keys whose value is not the default.
        #[arg(long)]
        diff: bool,
    },
}

#[derive(Subcommand)]
enum QueueAction {
    /// One line per queued message.
    List {
        #[command(flatten)]
        common: Common,
    },
    #[command(flatten)]
    Operate(ops::QueueOp),
    /// Shadow copies held here for peers (their primary's node and id).
    Shadow {
        #[command(flatten)]
        common: Common,
    },
    /// Handled messages still kept in the Safety Net.
    SafetyNet {
        #[command(flatten)]
        common: Common,
    },
    /// Envelope and content of one message.
    Show {
        /// Queue id (20 hex digits, as in "queued as ..."; the older 14-digit form is accepted).
        id: String,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(clap::Args, Clone, Default)]
struct AdminArgs {
    /// TOML config file (its server.admin_listen, data_dir and
    /// admin_token_file are used).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Admin address of the running server (default: from the config, else
    /// 127.0.0.1:8025).
    #[arg(long)]
    admin: Option<String>,
    /// Data directory whose admin-token file is sent (default: the config's).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// File holding the admin token (instead of DATA_DIR/admin-token).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Print the API's JSON answer.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum ShadowAction {
    /// This node, its peers (database ids, last heartbeat, copies held for
    /// each) and the shadow counters.
    Status {
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Subcommand)]
enum RouteAction {
    /// Route PATTERN (domain, *.domain or *) to pool POOL, on every core, now.
    Set {
        /// Domain, *.domain or *.
        pattern: String,
        /// A pool named in the config ([pools.NAME]).
        pool: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Remove the run-time override of PATTERN (back to the config).
    Clear {
        /// Domain, *.domain or *.
        pattern: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Print the routes in force.
    List {
        #[command(flatten)]
        admin: AdminArgs,
    },
}

fn load(common: &Common, o: Overrides) -> anyhow::Result<Config> {
    check(common, o).map(|c| c.config)
}

/// The config of `common` (`--config`, `--data-dir`) and `o`, with its
/// warnings; an error lists every problem.
fn check(common: &Common, o: Overrides) -> anyhow::Result<Checked> {
    let o = Overrides {
        data_dir: common.data_dir.clone(),
        ..o
    };
    Config::check(common.config.as_deref(), &o).map_err(|problems| {
        let file = match &common.config {
            Some(p) => format!(" in {}", p.display()),
            None => String::new(),
        };
        let count = match problems.len() {
            1 => "1 problem".to_string(),
            n => format!("{n} problems"),
        };
        anyhow::anyhow!(
            "invalid configuration{file} ({count}):\n  {}",
            problems.join("\n  ")
        )
    })
}

/// `tern check-config`: the warnings on stderr, the effective config
/// (or with `diff` only what differs from the defaults) on `out`.
fn check_config(common: &Common, diff: bool, out: &mut impl std::io::Write) -> anyhow::Result<()> {
    let checked = check(common, Overrides::default())?;
    for w in &checked.warnings {
        eprintln!("warning: {w}");
    }
    let shown = if diff { Shown::Changed } else { Shown::All };
    let text = checked
        .to_toml(shown)
        .map_err(|e| anyhow::anyhow!("cannot write the configuration as TOML: {e}"))?;
    out.write_all(text.as_bytes())?;
    Ok(())
}

/// `tern queue ...`: reads the data directory named by the config.
fn run_queue(action: QueueAction, out: &mut impl std::io::Write) -> anyhow::Result<()> {
    let data_dir = |common: &Common| -> anyhow::Result<PathBuf> {
        let dir = load(common, Overrides::default())?.data_dir;
        crate::layout::check_readable(&dir)?;
        Ok(dir)
    };
    match action {
        QueueAction::List { common } => queue::list(&data_dir(&common)?, out),
        QueueAction::Shadow { common } => queue::list_shadow(&data_dir(&common)?, out),
        QueueAction::SafetyNet { common } => queue::list_safety_net(&data_dir(&common)?, out),
        QueueAction::Show { id, common } => queue::show(&data_dir(&common)?, &id, out),
        QueueAction::Operate(op) => ops::queue(op, out),
    }
}

/// Runs one command. Output goes through one buffer; a reader that
/// stopped reading (`tern queue list | head`) ends the command quietly,
/// successfully: what it wanted was printed.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
    let result = run_command(cli, &mut stdout).and_then(|()| Ok(stdout.flush()?));
    match result {
        Err(e) if is_broken_pipe(&e) => Ok(()),
        other => other,
    }
}

/// Was `e` a write to a pipe whose reader is gone?
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn run_command(cli: Cli, stdout: &mut impl Write) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve {
            common,
            listen,
            cores,
            relay_to,
            admin_listen,
            role,
            backends,
        } => {
            let overrides = Overrides {
                listen,
                cores,
                relay_to,
                admin_listen,
                role,
                backends,
                ..Default::default()
            };
            let checked = check(&common, overrides.clone())?;
            for w in &checked.warnings {
                tracing::warn!("config: {w}");
            }
            let source = crate::server::reload::Source {
                path: common.config.clone(),
                overrides: Overrides {
                    data_dir: common.data_dir.clone(),
                    ..overrides
                },
            };
            crate::server::serve(checked.config, source)
        }
        Command::Queue { action } => run_queue(action, stdout),
        Command::Route { action } => match action {
            RouteAction::Set {
                pattern,
                pool,
                admin,
            } => admin_call(&admin, "PUT", &format!("/routes/{pattern}"), &pool, stdout),
            RouteAction::Clear { pattern, admin } => {
                admin_call(&admin, "DELETE", &format!("/routes/{pattern}"), "", stdout)
            }
            RouteAction::List { admin } => admin_call(&admin, "GET", "/routes", "", stdout),
        },
        Command::Shadow {
            action: ShadowAction::Status { admin },
        } => admin_call(&admin, "GET", "/shadow", "", stdout),
        Command::Reload { admin } => admin_call(&admin, "POST", "/reload", "", stdout),
        Command::LogLevel { level, admin } => match level {
            Some(l) => admin_call(&admin, "PUT", "/log-level", &l, stdout),
            None => admin_call(&admin, "GET", "/log-level", "", stdout),
        },
        Command::Destination { action } => ops::destination(action, stdout),
        Command::Resubmit { action } => ops::resubmit(action, stdout),
        Command::User { action } => user::run(action, stdout),
        Command::Tls { action } => tls::run(action, stdout),
        Command::CheckConfig { common, diff } => check_config(&common, diff, stdout),
    }
}
