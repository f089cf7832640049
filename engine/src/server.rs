//! `tern serve`: one pinned glommio executor per core, a signal thread and
//! the admin (metrics) thread.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use glommio::{LocalExecutorBuilder, Placement, PoolPlacement};

use crate::config::Config;
use crate::core::{self, Shared};
use crate::metrics::CoreMetrics;

/// io_uring registered memory per executor. glommio's default (10 MiB)
/// exceeds the common 8 MiB RLIMIT_MEMLOCK; the log does not use
/// registered buffers, so 1 MiB is plenty.
const IO_MEMORY_BYTES: usize = 1 << 20;

/// Runs the server until SIGTERM/SIGINT; returns after a clean shutdown.
pub fn serve(config: Config) -> anyhow::Result<()> {
    tern_storage::log::create_dir_durably(&config.data_dir)?;
    let shards = existing_shards(&config.data_dir);
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
    let cluster = &config.cluster;
    tracing::info!(%database_id, created, node_id = %cluster.node_id, site = %cluster.site,
        peers = cluster.peers.len(), shadow_redundancy = cluster.shadow_redundancy,
        "transport database");
    let c = &config.cluster;
    let round = c.shadow_heartbeat_frequency + c.shadow_timeout * 3;
    if c.shadow_redundancy && !c.peers.is_empty() && c.shadow_resubmit_time_span < round {
        // One slow heartbeat round (up to three waits of shadow_timeout)
        // of a live primary could then look like an outage.
        tracing::warn!(
            span = ?c.shadow_resubmit_time_span, round = ?round,
            "cluster.shadow_resubmit_time_span is shorter than a heartbeat round: a slow but live primary may be taken over"
        );
    }
    let config = Arc::new(config);
    let shared = Arc::new(Shared::default());
    let _ = shared.database_id.set(database_id);
    let metrics: Vec<Arc<CoreMetrics>> = (0..config.cores).map(|_| Arc::default()).collect();
    spawn_signal_thread(shared.clone())?;
    let admin = match config.admin_listen {
        Some(addr) => Some(crate::admin::spawn(
            addr,
            shared.clone(),
            metrics.clone(),
            config.clone(),
        )?),
        None => None,
    };
    // Executors are pinned to the CPUs this process may use (its affinity
    // mask: `taskset -c 1 tern serve` puts a second node on CPU 1), in
    // order; more cores than CPUs wrap around.
    tracing::info!(listen = %config.listen, cores = config.cores, data_dir = %config.data_dir.display(), "starting");
    let mut handles = Vec::new();
    for shard in 0..config.cores {
        let (config, shared, metrics) = (config.clone(), shared.clone(), metrics[shard].clone());
        let cpu = core_cpu(shard);
        let handle = LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name(&format!("tern-core-{shard}"))
            .io_memory(IO_MEMORY_BYTES)
            .ring_depth(256)
            .blocking_thread_pool_placement(PoolPlacement::Unbound(1))
            .spawn(move || async move { core::run(shard, cpu, config, shared, metrics).await })
            .map_err(std::io::Error::from)?;
        handles.push(handle);
    }
    let mut failed = None;
    for (shard, h) in handles.into_iter().enumerate() {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(shard, error = %e, "core failed");
                shared.stop.store(true, Ordering::SeqCst);
                failed.get_or_insert(e);
            }
            Err(e) => {
                shared.stop.store(true, Ordering::SeqCst);
                failed.get_or_insert(anyhow::anyhow!("core {shard} panicked: {e}"));
            }
        }
    }
    shared.stop.store(true, Ordering::SeqCst);
    if let Some(admin) = admin {
        let _ = admin.join();
    }
    match failed {
        Some(e) => Err(e),
        None => {
            tracing::info!("stopped cleanly");
            Ok(())
        }
    }
}

fn spawn_signal_thread(shared: Arc<Shared>) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])?;
    std::thread::Builder::new()
        .name("tern-signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                tracing::info!(
                    signal = sig,
                    "shutting down: no new connections; finishing transactions in flight"
                );
                shared.stop.store(true, Ordering::SeqCst);
            }
            // A second signal while shutting down: exit at once (what was
            // answered 250 is durable already).
            if let Some(sig) = signals.forever().next() {
                tracing::warn!(signal = sig, "second signal: exiting immediately");
                std::process::exit(130);
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

/// Binds a core's SMTP listener: `SO_REUSEPORT` (every core binds
/// the same address, as glommio's own `bind` does) and, with
/// `incoming_cpu`, `SO_INCOMING_CPU` = the core's CPU, so the group gives
/// this listener the connections whose packets arrive on that CPU (Linux
/// 6.2 and later; older kernels ignore it for the choice). Over loopback
/// that is the CPU the client connected from; with a multi-queue NIC, the
/// CPU that takes the receive queue's interrupts.
pub fn bind_listener(
    addr: std::net::SocketAddr,
    incoming_cpu: Option<usize>,
) -> std::io::Result<glommio::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    use std::os::fd::{FromRawFd, IntoRawFd};
    let sk = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sk.set_reuse_port(true)?;
    if let Some(cpu) = incoming_cpu {
        sk.set_cpu_affinity(cpu)?;
    }
    sk.bind(&addr.into())?;
    sk.listen(1024)?;
    // SAFETY: the fd is a bound, listening TCP socket that we own and
    // hand over.
    Ok(unsafe { glommio::net::TcpListener::from_raw_fd(sk.into_raw_fd()) })
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

/// One more than the highest `shard-N` directory in `data_dir` (0 when
/// there is none or the directory cannot be read).
pub fn existing_shards(data_dir: &std::path::Path) -> usize {
    std::fs::read_dir(data_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix("shard-")
                .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))?
                .parse::<usize>()
                .ok()
        })
        .map(|n| n + 1)
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn allowed_cpus_is_the_affinity_mask() {
        let cpus = super::allowed_cpus();
        assert!(!cpus.is_empty());
        assert!(cpus.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn existing_shards_counts_shard_directories_only() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(super::existing_shards(dir.path()), 0);
        for name in [
            "shard-0",
            "shard-2",
            "shard-+7",
            "shard-",
            "shard-x1",
            "database-id",
        ] {
            std::fs::create_dir(dir.path().join(name)).unwrap();
        }
        assert_eq!(
            super::existing_shards(dir.path()),
            3,
            "shard-2 is the highest"
        );
        assert_eq!(super::existing_shards(&dir.path().join("missing")), 0);
    }
}
