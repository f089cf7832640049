//! The `tern` command.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use tern_engine::config::{Config, Overrides};

#[derive(Parser)]
#[command(name = "tern", version, about = "tern: a durable SMTP relay")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone, Default)]
struct Common {
    /// TOML config file (strict: unknown keys are errors).
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
    /// Validate a config file and print the resolved settings.
    CheckConfig {
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Subcommand)]
enum QueueAction {
    /// One line per queued message.
    List {
        #[command(flatten)]
        common: Common,
    },
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
        /// Queue id (14 hex digits, as in "queued as ...").
        id: String,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(clap::Args, Clone, Default)]
struct AdminArgs {
    /// TOML config file (its server.admin_listen is used).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Admin address of the running server (default: from the config, else
    /// 127.0.0.1:8025).
    #[arg(long)]
    admin: Option<String>,
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

fn admin_url(a: &AdminArgs) -> anyhow::Result<String> {
    let addr = match &a.admin {
        Some(addr) => addr.clone(),
        None => {
            let common = Common {
                config: a.config.clone(),
                data_dir: None,
            };
            load(&common, Overrides::default())?
                .admin_listen
                .ok_or_else(|| {
                    anyhow::anyhow!("the admin listener is off in this config; pass --admin")
                })?
                .to_string()
        }
    };
    Ok(format!("http://{addr}"))
}

/// One admin request; prints the body, fails on a non-2xx answer.
fn admin_call(method: &str, url: &str, body: &str) -> anyhow::Result<()> {
    let agent = ureq::AgentBuilder::new()
        .timeout(std::time::Duration::from_secs(10))
        .build();
    match agent.request(method, url).send_string(body) {
        Ok(r) => {
            print!("{}", r.into_string()?);
            Ok(())
        }
        Err(ureq::Error::Status(code, r)) => {
            anyhow::bail!("{code}: {}", r.into_string().unwrap_or_default().trim())
        }
        Err(e) => anyhow::bail!("cannot reach the admin listener at {url}: {e}"),
    }
}

fn load(common: &Common, o: Overrides) -> anyhow::Result<Config> {
    let o = Overrides {
        data_dir: common.data_dir.clone(),
        ..o
    };
    Config::load(common.config.as_deref(), &o)
        .map_err(|problems| anyhow::anyhow!("invalid configuration:\n  {}", problems.join("\n  ")))
}

fn main() -> anyhow::Result<()> {
    // glibc's defaults give freed memory back to the kernel eagerly (trim
    // above 128 KiB, mmap for blocks above 128 KiB, adapting), so a core
    // that frees and reallocates its batch buffers faults fresh zeroed
    // pages in again: clear_page under malloc's page faults was 1.5% of a
    // node's CPU samples at 5 000 msgs/s, 0.4% with these settings. Memory
    // a core has used stays with the process up to these bounds.
    // (Per malloc arena: each core's thread gets its own.)
    // SAFETY: mallopt only sets allocator parameters; called before any
    // other thread exists.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
    }
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
    let (writer, _flush_guard) = tracing_appender::non_blocking(stderr);
    let writer = tern_engine::logbuf::install(writer);
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(writer)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let mut stdout = std::io::stdout().lock();
    match cli.command {
        Command::Serve {
            common,
            listen,
            cores,
            relay_to,
            admin_listen,
        } => {
            let overrides = Overrides {
                listen,
                cores,
                relay_to,
                admin_listen,
                ..Default::default()
            };
            tern_engine::server::serve(load(&common, overrides)?)
        }
        Command::Queue {
            action: QueueAction::List { common },
        } => {
            let config = load(&common, Overrides::default())?;
            tern_engine::queue_cmd::list(&config.data_dir, &mut stdout)
        }
        Command::Queue {
            action: QueueAction::Shadow { common },
        } => {
            let config = load(&common, Overrides::default())?;
            tern_engine::queue_cmd::list_shadow(&config.data_dir, &mut stdout)
        }
        Command::Queue {
            action: QueueAction::SafetyNet { common },
        } => {
            let config = load(&common, Overrides::default())?;
            tern_engine::queue_cmd::list_safety_net(&config.data_dir, &mut stdout)
        }
        Command::Queue {
            action: QueueAction::Show { id, common },
        } => {
            let config = load(&common, Overrides::default())?;
            tern_engine::queue_cmd::show(&config.data_dir, &id, &mut stdout)
        }
        Command::Route { action } => match action {
            RouteAction::Set {
                pattern,
                pool,
                admin,
            } => admin_call(
                "PUT",
                &format!("{}/routes/{pattern}", admin_url(&admin)?),
                &pool,
            ),
            RouteAction::Clear { pattern, admin } => admin_call(
                "DELETE",
                &format!("{}/routes/{pattern}", admin_url(&admin)?),
                "",
            ),
            RouteAction::List { admin } => {
                admin_call("GET", &format!("{}/routes", admin_url(&admin)?), "")
            }
        },
        Command::Shadow {
            action: ShadowAction::Status { admin },
        } => admin_call("GET", &format!("{}/shadow", admin_url(&admin)?), ""),
        Command::CheckConfig { common } => {
            let config = load(&common, Overrides::default())?;
            println!("{config:#?}");
            Ok(())
        }
    }
}
