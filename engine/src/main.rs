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
    /// Envelope and content of one message.
    Show {
        /// Queue id (14 hex digits, as in "queued as ...").
        id: String,
        #[command(flatten)]
        common: Common,
    },
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
    // Log lines are handed to a background thread: a core never blocks on
    // a slow stderr (the buffer is bounded; lines beyond it are dropped and
    // counted rather than stalling mail). The guard flushes at exit.
    let (writer, _flush_guard) = tracing_appender::non_blocking(std::io::stderr());
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
            action: QueueAction::Show { id, common },
        } => {
            let config = load(&common, Overrides::default())?;
            tern_engine::queue_cmd::show(&config.data_dir, &id, &mut stdout)
        }
        Command::CheckConfig { common } => {
            let config = load(&common, Overrides::default())?;
            println!("{config:#?}");
            Ok(())
        }
    }
}
