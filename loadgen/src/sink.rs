//! `tern-loadgen sink`: an SMTP server (any RFC 5321 client: it runs
//! `tern_smtp::server::Session`) that answers 250 to every message and
//! discards it after verifying its stamp ([`crate::stamp`]): per run,
//! received, distinct, duplicated and lost sequence numbers, bad stamps,
//! and end-to-end latency (hdrhistogram). Fault injection for testing
//! relays: failure replies at a given command or at the end of data,
//! delayed replies, connections dropped mid-DATA.
//!
//! Thread-per-core like the tern server: one glommio executor per core,
//! each with its own SO_REUSEPORT listener and its own counters (no locks
//! on the per-message path), merged into one report at the end.
//!
//! # Layout
//!
//! ```text
//! sink.rs        flags, executors, stop conditions, report output
//! sink_conn.rs   one core: listener and the connection loop
//! sink_stats.rs  counters, stamp verification, the report (text and JSON)
//! sink_seqs.rs   sequence sets (lost, duplicated) and the --expect tracker
//! sink_fault.rs  fault decisions and the command splitter
//! sink_tls.rs    TLS and AUTH flags, the server certificate, the STARTTLS/AUTH hooks
//! ```

#[path = "sink_conn.rs"]
mod sink_conn;
#[path = "sink_fault.rs"]
pub mod sink_fault;
#[path = "sink_seqs.rs"]
pub mod sink_seqs;
#[path = "sink_stats.rs"]
pub mod sink_stats;
#[path = "sink_tls.rs"]
pub mod sink_tls;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement};
use tern_smtp::server::ServerConfig;

use sink_conn::{CoreSetup, Secure, Shared};
use sink_fault::{FailOn, FaultConfig, Faults};
use sink_seqs::ExpectTracker;
use sink_stats::{CoreStats, Report};

/// io_uring registered memory per executor (RLIMIT_MEMLOCK is often
/// 8 MiB; the sink registers no buffers).
const IO_MEMORY_BYTES: usize = 512 << 10;

/// Exit status when `--expect N` was not met before `--timeout`.
pub const EXIT_EXPECT_UNMET: i32 = 3;

/// Arguments of `sink`.
#[derive(clap::Args, Debug, Clone)]
pub struct SinkArgs {
    /// Address to listen on (every core binds it, with SO_REUSEPORT).
    #[arg(long, default_value = "127.0.0.1:2526")]
    pub listen: SocketAddr,
    /// Executors (threads), each with its own listener.
    #[arg(long, default_value_t = 1)]
    pub cores: usize,
    /// Largest message accepted (advertised with SIZE), e.g. 64MiB.
    #[arg(long, default_value = "64MiB", value_parser = parse_size)]
    pub size_max: usize,
    /// Exit when N distinct messages of one run arrived (or at --timeout):
    /// print the report, exit 0 if N arrived, 3 otherwise. Sequence
    /// numbers below N that did not arrive count as lost.
    #[arg(long, value_name = "N")]
    pub expect: Option<u64>,
    /// With --expect: give up after this long (e.g. 60s, 5m).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Stop after this long even without --expect.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Also write the report as JSON to FILE (schema: `sink_stats::Report`).
    #[arg(long, value_name = "FILE")]
    pub json: Option<std::path::PathBuf>,
    /// No progress display and no "listening" line.
    #[arg(long)]
    pub quiet: bool,
    /// Probability (0..1) of a failure reply: at the end of data, or at
    /// the command named by --fail-on.
    #[arg(long, value_name = "P")]
    pub fail_rate: Option<f64>,
    /// Code of the injected failure reply: 4xx (temporary, "451 4.3.0
    /// Injected failure") or 5xx (permanent, e.g. 554 5.3.0).
    #[arg(long, default_value_t = 451)]
    pub fail_code: u16,
    /// Fail this command instead of the end of data: ehlo (and helo),
    /// mail, rcpt, data, dot (end of data). Always, unless --fail-rate.
    #[arg(long, value_enum, value_name = "COMMAND")]
    pub fail_on: Option<FailOn>,
    /// Delay every reply (greeting included) by this long, e.g. 10ms.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub delay: Option<Duration>,
    /// Probability (0..1) of closing the connection mid-DATA: after the
    /// 354, read part of the data, then close without replying.
    #[arg(long, value_name = "P", default_value_t = 0.0)]
    pub drop_rate: f64,
    /// Seed of the fault decisions (each core derives its own), for
    /// reproducible runs; random when absent.
    #[arg(long)]
    pub seed: Option<u64>,
    /// TLS and AUTH: --starttls, --tls, --tls-cert, --tls-key, --auth-any.
    #[command(flatten)]
    pub tls: sink_tls::SinkTlsArgs,
}

fn parse_size(s: &str) -> Result<usize, String> {
    if s.contains(',') || s.contains(':') {
        return Err(format!("one size expected, not {s:?}"));
    }
    let sizes: crate::size::Sizes = s.parse()?;
    Ok(sizes.pick(0))
}

static SIGNALLED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    if SIGNALLED.swap(true, Ordering::SeqCst) {
        // A second signal: leave at once.
        unsafe { libc::_exit(130) };
    }
}

fn install_signals() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only touches an atomic and calls _exit, both
    // async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

/// Runs `sink`.
pub fn main(args: SinkArgs) -> anyhow::Result<()> {
    let faults = FaultConfig::new(
        args.fail_rate,
        args.fail_on,
        args.fail_code,
        args.delay,
        args.drop_rate,
    )?;
    anyhow::ensure!(args.cores >= 1, "--cores must be at least 1");
    let seed = args.seed.unwrap_or_else(rand::random);
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        expect: args.expect.map(ExpectTracker::new),
    });
    install_signals();
    let tls = sink_tls::SinkTls::from_args(&args.tls)?;
    let smtp = smtp_config(&args, &faults, tls.as_ref().map(|t| t.mode));
    let secure = Secure {
        smtp: smtp_config(&args, &faults, None),
        tls,
        auth_any: args.tls.auth_any,
    };
    let cores = start_cores(&args, &smtp, &secure, &faults, seed, &shared)?;
    if !args.quiet {
        eprintln!(
            "tern-loadgen sink: listening on {} ({} cores)",
            cores.listen, args.cores
        );
    }
    let started = Instant::now();
    let expect_met = wait_for_stop(&args, &shared, &cores.lives, started);
    shared.stop.store(true, Ordering::SeqCst);
    let mut total = CoreStats::default();
    for (core, h) in cores.handles.into_iter().enumerate() {
        match h.join() {
            Ok(stats) => total.merge(stats),
            Err(e) => anyhow::bail!("sink: core {core} failed: {e}"),
        }
    }
    total.start = Some(started);
    let report = Report::with_expect(&total, args.expect);
    print!("{}", report.text());
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json + "\n")
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    }
    if let Some(n) = args.expect {
        if !expect_met {
            use std::io::Write;
            eprintln!("tern-loadgen sink: expected {n} messages of one run: not met");
            let _ = std::io::stdout().flush();
            std::process::exit(EXIT_EXPECT_UNMET);
        }
    }
    Ok(())
}

/// The SMTP session settings every core uses: STARTTLS in EHLO on plain
/// connections with `--starttls` (`tls`), AUTH PLAIN with `--auth-any`.
fn smtp_config(args: &SinkArgs, faults: &FaultConfig, tls: Option<sink_tls::Mode>) -> ServerConfig {
    let mut extra_ehlo = Vec::new();
    if tls == Some(sink_tls::Mode::StartTls) {
        extra_ehlo.push("STARTTLS".to_owned());
    }
    if args.tls.auth_any {
        extra_ehlo.push("AUTH PLAIN".to_owned());
    }
    ServerConfig {
        hostname: "tern-loadgen-sink".into(),
        message_bytes_max: args.size_max,
        recipients_max: 1000,
        // Injected failure replies count as session errors: with fault
        // injection they must not end the session with 421.
        junk_commands_max: tern_smtp::limits::JUNK_COMMANDS_MAX_DEFAULT,
        errors_max: if faults.fail_rate > 0.0 {
            u32::MAX
        } else {
            100
        },
        extra_ehlo,
        shadow_ehlo: None,
        proxy: false,
    }
}

/// The running cores.
struct Cores {
    handles: Vec<ExecutorJoinHandle<CoreStats>>,
    /// Each core's message count, for the progress display.
    lives: Vec<Arc<AtomicU64>>,
    /// The address they all listen on (core 0's port when given port 0).
    listen: SocketAddr,
}

/// Starts one executor per core, each once the previous one is bound.
fn start_cores(
    args: &SinkArgs,
    smtp: &ServerConfig,
    secure: &Secure,
    faults: &FaultConfig,
    seed: u64,
    shared: &Arc<Shared>,
) -> anyhow::Result<Cores> {
    let mut handles = Vec::new();
    let mut lives = Vec::new();
    let mut listen = args.listen;
    for core in 0..args.cores {
        let (tx, rx) = std::sync::mpsc::channel();
        let live = Arc::new(AtomicU64::new(0));
        lives.push(live.clone());
        let setup = CoreSetup {
            core,
            listen,
            smtp: smtp.clone(),
            secure: secure.clone(),
            faults: Faults::new(faults.clone(), seed, core),
            shared: shared.clone(),
            live,
            bound: tx,
        };
        let handle = LocalExecutorBuilder::new(Placement::Unbound)
            .name(&format!("sink-{core}"))
            .io_memory(IO_MEMORY_BYTES)
            .ring_depth(256)
            .spawn(move || sink_conn::run(setup))
            .map_err(std::io::Error::from)?;
        handles.push(handle);
        match rx.recv() {
            Ok(Ok(addr)) => listen = addr, // port 0: the others share core 0's port
            Ok(Err(e)) => {
                shared.stop.store(true, Ordering::SeqCst);
                anyhow::bail!("sink: {e}");
            }
            Err(_) => anyhow::bail!("sink: core {core} failed to start"),
        }
    }
    Ok(Cores {
        handles,
        lives,
        listen,
    })
}

/// Waits for a stop condition (`--expect` met, a signal, `--duration`,
/// `--timeout` with `--expect`), showing progress on a terminal. Returns
/// whether `--expect` was met.
fn wait_for_stop(
    args: &SinkArgs,
    shared: &Shared,
    lives: &[Arc<AtomicU64>],
    started: Instant,
) -> bool {
    let progress = (!args.quiet && std::io::stderr().is_terminal()).then(|| {
        let p = indicatif::ProgressBar::new_spinner();
        p.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {elapsed} {msg}")
                .expect("valid template"),
        );
        p
    });
    let (mut last_n, mut last_t) = (0u64, Instant::now());
    let expect_met = loop {
        std::thread::sleep(Duration::from_millis(10));
        let met = shared
            .expect
            .as_ref()
            .is_some_and(|e| e.reached.load(Ordering::SeqCst));
        if met
            || SIGNALLED.load(Ordering::SeqCst)
            || args.duration.is_some_and(|d| started.elapsed() >= d)
            || (args.expect.is_some() && started.elapsed() >= args.timeout)
        {
            break met;
        }
        if let Some(p) = &progress {
            if last_t.elapsed() >= Duration::from_millis(250) {
                let n: u64 = lives.iter().map(|l| l.load(Ordering::Relaxed)).sum();
                let rate = (n - last_n) as f64 / last_t.elapsed().as_secs_f64();
                p.set_message(format!("{n} messages, {rate:.0} msg/s"));
                p.tick();
                (last_n, last_t) = (n, Instant::now());
            }
        }
    };
    if let Some(p) = progress {
        p.finish_and_clear();
    }
    expect_met
}
