//! `tern-loadgen send`: drives one or more SMTP targets and measures.
//!
//! # Model
//!
//! * Closed loop (default): `--concurrency C` connections, each sending
//!   messages back to back, `--per-conn K` per connection (0 = unlimited)
//!   then QUIT and reconnect.
//! * Open loop (`--rate R`): message `k` is due at `start + k / R`; a free
//!   connection (at most C) takes it when due, and its transaction latency
//!   is measured from that scheduled time (wrk2: a stalled server cannot
//!   hide its stall by slowing the sender down).
//! * Bounded by `--messages N` and/or `--duration D`.
//! * Failover: a connection whose target is no longer in the best priority
//!   group up QUITs between transactions (checked about once a second) and
//!   reconnects, so traffic comes back to a recovered better group even with
//!   `--per-conn 0`. When every target has been down for longer than
//!   `--timeout`, the run stops: the messages not sent count as
//!   connection errors, and `send` exits non-zero.
//!
//! Every message is `X-Tern-Loadgen`-stamped (see [`crate::stamp`]) with the
//! run id, a sequence number unique across cores (an atomic counter), the
//! send time and the body checksum. Bodies are prebuilt once per size.
//!
//! # Why its own SMTP client
//!
//! tern's outbound transactions go through the sans-IO
//! `tern_smtp::transaction::Transaction` (delivery, shadow links). The
//! sender keeps its own client beside it (it still uses `tern_smtp::client`
//! for EHLO/HELO, DATA, RSET, QUIT and the capabilities) because a load
//! generator needs what that state machine does not give:
//!
//! * **Across transactions.** `Transaction` is one transaction. In the
//!   closed loop with PIPELINING the sender writes the next message's
//!   MAIL/RCPT/DATA in the same write as the previous message's content
//!   and dot (RFC 2920 3.1), one round trip per message, and accounts a
//!   connection error against both messages in flight.
//! * **Per-phase latency.** Each reply is timed as it is read (mail,
//!   rcpt, data, eod; connect, banner and EHLO on the connection), which
//!   `Transaction` cannot tell from outside: which reply it awaits is
//!   private.
//! * **No copy of the content.** `Transaction::new` dot-stuffs the
//!   content into a buffer of its own, per message, and frames BDAT in
//!   1 MiB chunks. The sender's bodies are built once per size, need no
//!   stuffing (no line starts with a dot, every line ends in CRLF) and are
//!   shared by every message; only the header section is per message, in
//!   a recycled buffer. Replies are read in place into a fixed buffer,
//!   their text copied out only for EHLO and for failures. Not
//!   allocation-free: a pipelined transaction still allocates its vector
//!   of RCPT reply codes.
//! * **Any server, including broken ones.** What a misbehaving server
//!   does ends up in the counts, not in an error of the client: a reply
//!   line needs only three digits and an LF (`ReplyParser` also wants
//!   CRLF, a code in 200..599 and the same code on every line of a
//!   multi-line reply), a refused EHLO falls back to HELO, a 421 fails
//!   the message temporarily and the connection is dropped, and a
//!   malformed or missing reply costs the messages in flight as
//!   connection errors before the worker reconnects.
//!
//! # Layout
//!
//! ```text
//! send.rs              arguments, executors, progress, report output
//! send_plan.rs         the run plan the cores share: tickets, open-loop schedule, abort
//! send_worker.rs       one executor: its workers (connections) and the ticker
//! send_conn.rs         one connection: connect, greeting, EHLO/HELO, TLS, replies, QUIT, failover
//! send_tls.rs          TLS flags, per-core client config (session cache), any-cert verifier, the stream
//! send_auth.rs         --auth: AUTH PLAIN once per connection
//! send_transaction.rs  one message: stamped header, pipelined/lock-step/BDAT transaction, accounting
//! send_watchdog.rs     the per-core watchdog behind --timeout
//! send_target.rs       targets, priorities, failover, backoff
//! send_stats.rs        histograms, reply counts, JSON/text report
//! send_plot.rs         .hgrm percentile files and the SVG
//! ```

#[path = "send_auth.rs"]
pub mod send_auth;
#[path = "send_conn.rs"]
mod send_conn;
#[path = "send_plan.rs"]
pub mod send_plan;
#[path = "send_plot.rs"]
pub mod send_plot;
#[path = "send_stats.rs"]
pub mod send_stats;
#[path = "send_target.rs"]
pub mod send_target;
#[path = "send_tls.rs"]
pub mod send_tls;
#[path = "send_transaction.rs"]
mod send_transaction;
#[path = "send_watchdog.rs"]
mod send_watchdog;
#[path = "send_worker.rs"]
pub mod send_worker;

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement};

use crate::size::Sizes;
use send_plan::Plan;
use send_stats::{CoreStats, Live, RunInfo};
use send_target::{Health, Target};

/// Arguments of `send`.
#[derive(clap::Args, Debug, Clone)]
pub struct SendArgs {
    /// Target `HOST:PORT[,PRIORITY]` (repeatable). Lower priority values are
    /// preferred; when every target of a group is down, the next group is
    /// used; down targets are retried after a backoff.
    #[arg(long = "target", required = true, value_name = "HOST:PORT[,PRIO]")]
    pub targets: Vec<Target>,
    /// Connections (closed loop), or the maximum in use (open loop).
    #[arg(long, default_value_t = 10)]
    pub concurrency: usize,
    /// Messages per connection before QUIT and reconnect (0 = unlimited).
    #[arg(long, default_value_t = 100)]
    pub per_conn: u64,
    /// Open loop: messages per second on a fixed schedule.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Stop after this many messages.
    #[arg(long)]
    pub messages: Option<u64>,
    /// Stop after this long (e.g. "30s", "2m").
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Message size: "4096", "16KiB" or a distribution "1KiB:60,16KiB:30,1MiB:10".
    #[arg(long, default_value = "4096")]
    pub size: Sizes,
    /// Recipients per message.
    #[arg(long, default_value_t = 1)]
    pub rcpts: usize,
    /// Envelope sender.
    #[arg(long, default_value = "loadgen@example.com")]
    pub from: String,
    /// Recipient pattern; the placeholder "{ n }" written without spaces is
    /// replaced by the recipient index (0..rcpts), as in the default.
    #[arg(long, default_value = "rcpt{n}@example.net")]
    pub to: String,
    /// Use BDAT (RFC 3030) when the server offers CHUNKING, else DATA.
    #[arg(long)]
    pub bdat: bool,
    /// Do not pipeline MAIL/RCPT/DATA even when the server offers PIPELINING.
    #[arg(long)]
    pub no_pipelining: bool,
    /// Executors (one thread pinned per core); connections are split over them.
    #[arg(long, default_value_t = 1)]
    pub cores: usize,
    /// Run id in hex (default: random).
    #[arg(long, value_parser = parse_hex)]
    pub run_id: Option<u64>,
    /// Timeout for connect and for each read/write.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Name sent in EHLO.
    #[arg(long, default_value = "tern-loadgen.invalid")]
    pub helo: String,
    /// Write the JSON report here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the sequence numbers of the messages the target accepted
    /// (final 250, every recipient accepted) here: a line `run <hex>`, then
    /// one number per line, ascending (for checking a relay delivered every
    /// acknowledged message: the sink sees `Subject: tern-loadgen <run> #<seq>`).
    #[arg(long)]
    pub acked: Option<PathBuf>,
    /// Write `<phase>.hgrm` percentile distributions and `send.svg` here.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// No live progress.
    #[arg(long)]
    pub quiet: bool,
    /// TLS: --starttls, --tls, --tls-verify, --tls-ca, --tls-sni, --tls-no-resume.
    #[command(flatten)]
    pub tls: send_tls::TlsArgs,
    /// AUTH PLAIN with these credentials once per connection, after EHLO
    /// (after TLS when TLS is used); a reply other than 235 is a
    /// connection error.
    #[arg(long, value_name = "USER:PASS")]
    pub auth: Option<send_auth::Credentials>,
}

fn parse_hex(s: &str) -> Result<u64, String> {
    u64::from_str_radix(s.trim_start_matches("0x"), 16).map_err(|e| format!("{s:?}: {e}"))
}

fn no_newlines(s: &str) -> String {
    s.replace(['\r', '\n'], "")
}

/// Runs `send`.
pub fn main(args: SendArgs) -> anyhow::Result<()> {
    check_args(&args)?;
    let run = args.run_id.unwrap_or_else(rand::random);
    let cores = args.cores.min(args.concurrency);
    let plan = Arc::new(plan_of(&args, run, cores)?);
    println!("run {run:016x}");
    let handles = spawn_cores(&plan, cores, args.concurrency)?;
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let progress = (!args.quiet && std::io::stderr().is_terminal()).then(|| {
        let (plan, done, messages) = (plan.clone(), done.clone(), args.messages);
        std::thread::spawn(move || progress(&plan, &done, messages))
    });
    let mut total = CoreStats::new(plan.addrs.len());
    let mut panicked = None;
    for (core, h) in handles.into_iter().enumerate() {
        match h.join() {
            Ok(s) => total.merge(s),
            Err(e) => panicked = Some(format!("core {core} failed: {e}")),
        }
    }
    // Until the last connection finished (not until the executors exited).
    let seconds = total.elapsed.as_secs_f64();
    done.store(true, Ordering::Relaxed);
    if let Some(p) = progress {
        let _ = p.join();
    }
    if let Some(p) = panicked {
        anyhow::bail!(p);
    }
    // Every target down for longer than --timeout: the messages never
    // taken count as connection errors.
    let aborted = plan.aborted.load(Ordering::Relaxed);
    let untaken = if aborted { plan.untaken() } else { 0 };
    total.conn_errors += untaken;
    let targets: Vec<(String, u32)> = args
        .targets
        .iter()
        .map(|t| (t.addr.clone(), t.priority))
        .collect();
    let info = RunInfo {
        run,
        seconds,
        targets: &targets,
        rate: args.rate,
    };
    write_reports(&args, &total, &info)?;
    verdict(&args, &total, aborted, untaken)
}

/// The checks clap cannot make.
fn check_args(args: &SendArgs) -> anyhow::Result<()> {
    if args.messages.is_none() && args.duration.is_none() {
        anyhow::bail!("give --messages N and/or --duration D");
    }
    if args.concurrency == 0 || args.cores == 0 || args.rcpts == 0 {
        anyhow::bail!("--concurrency, --cores and --rcpts must be at least 1");
    }
    if args.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        anyhow::bail!("--rate must be positive");
    }
    Ok(())
}

/// The plan of run `run` on `cores` executors (targets resolved).
fn plan_of(args: &SendArgs, run: u64, cores: usize) -> anyhow::Result<Plan> {
    let addrs = args
        .targets
        .iter()
        .map(Target::resolve)
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Plan {
        run,
        addrs,
        priorities: args.targets.iter().map(|t| t.priority).collect(),
        health: args.targets.iter().map(|_| Health::default()).collect(),
        next: AtomicU64::new(0),
        messages: args.messages,
        duration: args.duration,
        rate: args.rate,
        start: Instant::now(),
        per_conn: args.per_conn,
        pipelining: !args.no_pipelining,
        bdat: args.bdat,
        timeout: args.timeout,
        helo: no_newlines(&args.helo),
        record_acked: args.acked.is_some(),
        from: no_newlines(&args.from),
        rcpts: (0..args.rcpts)
            .map(|n| no_newlines(&args.to.replace("{n}", &n.to_string())))
            .collect(),
        sizes: args.size.clone(),
        live: (0..cores).map(|_| Live::default()).collect(),
        down_since_us: AtomicU64::new(send_plan::NOT_DOWN),
        aborted: std::sync::atomic::AtomicBool::new(false),
        tls: send_tls::TlsPlan::from_args(&args.tls, &args.targets)?,
        auth: args.auth.clone(),
    })
}

/// Starts one executor per core (pinned), `concurrency` connections split
/// over them.
fn spawn_cores(
    plan: &Arc<Plan>,
    cores: usize,
    concurrency: usize,
) -> anyhow::Result<Vec<ExecutorJoinHandle<CoreStats>>> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut handles = Vec::new();
    let mut first_id = 0;
    for core in 0..cores {
        let conns = concurrency / cores + usize::from(core < concurrency % cores);
        let plan = plan.clone();
        let h = LocalExecutorBuilder::new(Placement::Fixed(core % cpus))
            .name(&format!("loadgen-{core}"))
            .io_memory(512 << 10)
            .ring_depth(256)
            .spawn(move || async move { send_worker::run(plan, core, conns, first_id).await })
            .map_err(std::io::Error::from)?;
        first_id += conns;
        handles.push(h);
    }
    Ok(handles)
}

/// The text report on stdout, and the `--json`, `--acked` and `--plot`
/// files.
fn write_reports(args: &SendArgs, total: &CoreStats, info: &RunInfo<'_>) -> anyhow::Result<()> {
    let run = info.run;
    print!("{}", send_stats::text_report(total, info));
    if let Some(path) = &args.json {
        let j = send_stats::json_report(total, info);
        std::fs::write(path, serde_json::to_vec_pretty(&j)?)
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    }
    if let Some(path) = &args.acked {
        let mut seqs = total.acked.clone().unwrap_or_default();
        seqs.sort_unstable();
        let mut out = format!("run {run:016x}\n");
        for s in seqs {
            out.push_str(&s.to_string());
            out.push('\n');
        }
        std::fs::write(path, out)
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    }
    if let Some(dir) = &args.plot {
        send_plot::write_plot(dir, total, &format!("tern-loadgen run {run:016x}"))
            .map_err(|e| anyhow::anyhow!("writing plots to {}: {e}", dir.display()))?;
    }
    Ok(())
}

/// The exit status: an error when the run was aborted, a message failed,
/// or none was sent.
fn verdict(args: &SendArgs, total: &CoreStats, aborted: bool, untaken: u64) -> anyhow::Result<()> {
    if aborted {
        anyhow::bail!(
            "run stopped: every target was down for longer than --timeout ({}); \
             {} of {} messages failed ({} conn_errors, {untaken} of them never attempted)",
            humantime::format_duration(args.timeout),
            total.failed(),
            total.failed() + total.ok,
            total.conn_errors
        );
    }
    if total.failed() > 0 {
        anyhow::bail!(
            "{} of {} messages failed ({} temp_fail, {} perm_fail, {} conn_errors)",
            total.failed(),
            total.failed() + total.ok,
            total.temp_fail,
            total.perm_fail,
            total.conn_errors
        );
    }
    if total.ok == 0 {
        anyhow::bail!("no message was sent");
    }
    Ok(())
}

/// Live progress on stderr, shown once the run has lasted a second.
fn progress(plan: &Plan, done: &std::sync::atomic::AtomicBool, messages: Option<u64>) {
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    let tick = Duration::from_millis(200);
    while plan.start.elapsed() < Duration::from_secs(1) {
        if done.load(Ordering::Relaxed) {
            return;
        }
        std::thread::sleep(tick);
    }
    let bar = match (messages, plan.duration) {
        (Some(n), _) => ProgressBar::new(n),
        (None, Some(d)) => ProgressBar::new(d.as_secs().max(1)),
        (None, None) => ProgressBar::new_spinner(),
    };
    bar.set_draw_target(ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let mut last = (Instant::now(), 0u64);
    while !done.load(Ordering::Relaxed) {
        std::thread::sleep(tick);
        let (mut ok, mut failed, mut p50, mut p99) = (0, 0, 0, 0);
        for l in &plan.live {
            ok += l.ok.load(Ordering::Relaxed);
            failed += l.failed.load(Ordering::Relaxed);
            p50 = p50.max(l.p50_us.load(Ordering::Relaxed));
            p99 = p99.max(l.p99_us.load(Ordering::Relaxed));
        }
        let now = Instant::now();
        let rate = (ok + failed).saturating_sub(last.1) as f64 / (now - last.0).as_secs_f64();
        last = (now, ok + failed);
        if messages.is_some() {
            bar.set_position(ok + failed);
        } else {
            bar.set_position(plan.start.elapsed().as_secs());
        }
        bar.set_message(format!(
            "{rate:.0} msg/s, {failed} errors, p50 {:.2} ms, p99 {:.2} ms",
            p50 as f64 / 1000.0,
            p99 as f64 / 1000.0
        ));
    }
    bar.finish_and_clear();
}
