//! `tern serve`: one pinned glommio executor per core, a signal thread and
//! the admin thread.
//!
//! # Layout
//!
//! ```text
//! mod.rs   serve: checks the data directory, starts the cores, signals, admin
//! core.rs  one core: opens its shard, builds its rooms, serves, stops them in order
//! reload.rs  SIGHUP / POST /reload: read the config again, apply what may change
//! exclusive.rs  one tern per address and data directory (probe bind, lock file)
//! ```

pub mod core;
pub mod exclusive;
pub mod front;
pub mod reload;

use std::sync::Arc;

use glommio::{LocalExecutorBuilder, Placement, PoolPlacement};

use crate::cluster::DatabaseId;
use crate::config::Config;
use crate::metrics::CoreMetrics;
use crate::shadow::ShadowShared;
use crate::stop::StopFlag;
use core::NodeState;

/// io_uring registered memory per executor. glommio's default (10 MiB)
/// exceeds the common 8 MiB RLIMIT_MEMLOCK; the log does not use
/// registered buffers, so 1 MiB is plenty.
const IO_MEMORY_BYTES: usize = 1 << 20;

/// File descriptors kept for everything but SMTP sessions (the logs,
/// delivery and shadow connections, DNS, the admin listener): of the
/// process limit, this fraction ...
const FD_RESERVE_DIVISOR: u64 = 8;
/// ... and at least this many (at most half the limit).
const FD_RESERVE_MIN: u64 = 512;

/// Raises the soft file descriptor limit to the hard one and keeps a
/// reserve out of the SMTP sessions' reach: when `cores x
/// smtp.connections_per_core_max` would not leave it, the per-core limit
/// is lowered (logged). So a flood of connections is refused with 421
/// before the process runs out of descriptors for its log and delivery.
fn budget_fds(config: &mut Config) {
    // SAFETY: plain syscalls on a local struct.
    let limit = unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return;
        }
        if r.rlim_cur < r.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: r.rlim_max,
                rlim_max: r.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                r.rlim_cur = r.rlim_max;
            }
        }
        r.rlim_cur
    };
    let (reserve, per_core) = fd_split(limit, config.cores);
    let asked = config.smtp.connections_per_core_max;
    if asked > per_core {
        tracing::warn!(
            nofile = limit,
            reserve,
            asked,
            per_core,
            "smtp.connections_per_core_max lowered to fit the file descriptor limit (raise it with ulimit -n / LimitNOFILE)"
        );
        config.smtp.connections_per_core_max = per_core;
    }
}

/// Of `limit` descriptors: the reserve, and what each of `cores` may
/// give its SMTP sessions.
fn fd_split(limit: u64, cores: usize) -> (u64, usize) {
    let reserve = (limit / FD_RESERVE_DIVISOR)
        .max(FD_RESERVE_MIN)
        .min(limit / 2);
    let per_core = (limit.saturating_sub(reserve) / cores.max(1) as u64).max(1) as usize;
    (reserve, per_core)
}

/// The sessions per core the descriptor limit allows now (a reload keeps
/// `smtp.connections_per_core_max` within it).
fn fd_budget_per_core(config: &Config) -> usize {
    // SAFETY: a plain syscall on a local struct.
    let mut r: libc::rlimit = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return usize::MAX;
    }
    fd_split(r.rlim_cur, config.cores).1
}

/// Runs the server until SIGTERM/SIGINT; returns after a clean shutdown.
/// `source`: where the config came from (a reload reads it again).
pub fn serve(mut config: Config, source: reload::Source) -> anyhow::Result<()> {
    budget_fds(&mut config);
    if let Err(e) = crate::logging::apply_configured(&config.log_level) {
        tracing::error!(error = %e, "server.log_level not applied");
    }
    // First: a bad users file stops the start before anything is touched.
    let users =
        crate::auth::load_users(&config).map_err(|e| anyhow::anyhow!("auth.users_file: {e}"))?;
    // The data directory is checked before the lock file goes into it.
    crate::layout::check_writable(&config.data_dir)?;
    let _claim = exclusive::claim(&config)?;
    let database_id = open_data_dir(&config)?;
    let tls = crate::tls::Tls::start(&config)?;
    if let Some(certs) = &tls.certs {
        crate::tls::reload::watch(certs, config.tls.reload_check_interval)?;
    }
    let mta_sts = crate::mta_sts::MtaSts::start(&config, tls.webpki_client());
    let ops = crate::ops::Ops::open(&config)?;
    // Requests still running at the last stop go on (queued for the
    // cores, which take them once started).
    ops.restart_requests();
    let config = Arc::new(config);
    let live = Arc::new(crate::reload::Live::new(config.clone()));
    let node = NodeState {
        live: live.clone(),
        frontend: Arc::default(),
        stop: Arc::default(),
        per_ip: Arc::default(),
        routes: Arc::default(),
        shadow: Arc::new(ShadowShared::new(database_id)),
        users,
        tls,
        mta_sts,
        ops,
        pressure: Arc::new(crate::pressure::Pressure::new(
            config.pressure.clone(),
            config.data_dir.clone(),
            config.cores,
        )),
    };
    let metrics: Vec<Arc<CoreMetrics>> = (0..config.cores).map(|_| Arc::default()).collect();
    let reloader = Arc::new(reload::Reloader {
        source,
        live: live.clone(),
        tls: node.tls.clone(),
    });
    spawn_signal_thread(node.stop.clone(), reloader.clone())?;
    let admin = match config.admin_listen {
        Some(addr) => Some(crate::admin::spawn(crate::admin::Admin {
            addr,
            stop: node.stop.clone(),
            routes: node.routes.clone(),
            shadow: node.shadow.clone(),
            cores: metrics.clone(),
            config: config.clone(),
            tls: node.tls.stats.clone(),
            mta_sts: node.mta_sts.clone(),
            ops: node.ops.clone(),
            pressure: node.pressure.clone(),
            live: live.clone(),
            frontend: node.frontend.clone(),
            reload: Box::new(move |why| reloader.reload(why)),
        })?),
        None => None,
    };
    tracing::info!(listen = %config.listen, cores = config.cores, data_dir = %config.data_dir.display(), "starting");
    let failed = run_cores(&config, &node, &metrics);
    node.stop.set();
    if let Some(admin) = admin {
        let _ = admin.join();
    }
    node.ops.save_if_dirty();
    if let Some(store) = node.pressure.failed() {
        // Never run on half-alive: exit non-zero for the supervisor.
        anyhow::bail!(
            "the message store failed ({store}); stopped so a supervisor restarts tern (everything answered 250 is durable)"
        );
    }
    match failed {
        Some(e) => Err(e),
        None => {
            tracing::info!("stopped cleanly");
            Ok(())
        }
    }
}

/// Checks the data directory against the config and loads (or creates)
/// the transport database id.
fn open_data_dir(config: &Config) -> anyhow::Result<DatabaseId> {
    tern_storage::log::create_dir_durably(&config.data_dir)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", config.data_dir.display()))?;
    let shards = crate::layout::existing_shards(&config.data_dir);
    if shards > config.cores {
        // The extra shards' logs would be served by nobody: their queued
        // messages never delivered, their shadows never told.
        anyhow::bail!(
            "{} holds {shards} shards (shard-0 .. shard-{}) but cores is {}: start with --cores {shards} or more (or cores = 0)",
            config.data_dir.display(),
            shards - 1,
            config.cores
        );
    }
    let (database_id, created) = crate::cluster::load_or_create(&config.data_dir)?;
    let c = &config.cluster;
    tracing::info!(%database_id, created, node_id = %c.node_id, site = %c.site,
        peers = c.peers.len(), shadow_redundancy = c.shadow_redundancy,
        "transport database");
    let round = c.shadow_heartbeat_frequency + c.shadow_timeout * 3;
    if c.shadow_redundancy && !c.peers.is_empty() && c.shadow_resubmit_time_span < round {
        // One slow heartbeat round (up to three waits of shadow_timeout)
        // of a live primary could then look like an outage.
        tracing::warn!(
            span = ?c.shadow_resubmit_time_span, round = ?round,
            "cluster.shadow_resubmit_time_span is shorter than a heartbeat round: a slow but live primary may be taken over"
        );
    }
    Ok(database_id)
}

/// Runs one pinned executor per core until every core stopped; the first
/// failure (a core that fails stops the others).
fn run_cores(
    config: &Arc<Config>,
    node: &NodeState,
    metrics: &[Arc<CoreMetrics>],
) -> Option<anyhow::Error> {
    // Executors are pinned to the CPUs this process may use (its affinity
    // mask: `taskset -c 1 tern serve` puts a second node on CPU 1), in
    // order; more cores than CPUs wrap around.
    let mut handles = Vec::new();
    for shard in 0..config.cores {
        let (config, state, metrics) = (config.clone(), node.clone(), metrics[shard].clone());
        let cpu = core_cpu(shard);
        let spawned = LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name(&format!("tern-core-{shard}"))
            .io_memory(IO_MEMORY_BYTES)
            .ring_depth(256)
            .blocking_thread_pool_placement(PoolPlacement::Unbound(1))
            .spawn(move || async move { core::run(shard, cpu, config, state, metrics).await });
        match spawned {
            Ok(h) => handles.push(h),
            Err(e) => {
                node.stop.set();
                handles.clear();
                return Some(std::io::Error::from(e).into());
            }
        }
    }
    let mut failed = None;
    for (shard, h) in handles.into_iter().enumerate() {
        let e = match h.join() {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => {
                tracing::error!(shard, error = %e, "core failed");
                e
            }
            Err(e) => anyhow::anyhow!("core {shard} panicked: {e}"),
        };
        node.stop.set();
        failed.get_or_insert(e);
    }
    failed
}

/// SIGTERM/SIGINT: graceful shutdown (a second one: exit at once, what
/// was answered 250 is durable already). SIGHUP: reload the config file
/// and the TLS certificates.
fn spawn_signal_thread(stop: Arc<StopFlag>, reloader: Arc<reload::Reloader>) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    std::thread::Builder::new()
        .name("tern-signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if sig == SIGHUP {
                    // Problems are logged by the reload; the node goes on.
                    let _ = reloader.reload("SIGHUP");
                } else if !stop.is_set() {
                    tracing::info!(
                        signal = sig,
                        "shutting down: no new connections; finishing transactions in flight"
                    );
                    stop.set();
                } else {
                    // Straight to stderr: `exit` does not wait for the
                    // log thread, which may still hold this and earlier
                    // lines.
                    eprintln!("tern: second signal ({sig}): exiting immediately (everything answered 250 is durable)");
                    std::process::exit(130);
                }
            }
        })?;
    Ok(())
}

/// The CPU core `shard`'s executor is pinned to: the process's allowed
/// CPUs in order, wrapping around. Called before the executors start (a
/// pinned thread's own mask is its one CPU).
pub fn core_cpu(shard: usize) -> usize {
    let cpus = allowed_cpus();
    cpus[shard % cpus.len()]
}

/// The CPUs this process may run on (`sched_getaffinity`), ascending;
/// all CPUs if the mask cannot be read.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: `set` is a plain bitmask owned here, sized as the kernel
    // expects; sched_getaffinity only writes into it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    let all = || (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect();
    if rc != 0 {
        return all();
    }
    let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `i` is below CPU_SETSIZE, the mask's size.
        .filter(|&i| unsafe { libc::CPU_ISSET(i, &set) })
        .collect();
    if cpus.is_empty() {
        all()
    } else {
        cpus
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn allowed_cpus_is_the_affinity_mask() {
        let cpus = super::allowed_cpus();
        assert!(!cpus.is_empty());
        assert!(cpus.windows(2).all(|w| w[0] < w[1]));
    }
}
