//! One core, as its executor runs it: opens the core's log shard, binds
//! its listener, builds the core's rooms (inbound, delivery, the two
//! sides of shadow redundancy), serves until shutdown, then stops them
//! in order (sessions within `shutdown_grace`, delivery with what is left
//! of it, the log last).

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::auth::Users;
use crate::config::Config;
use crate::delivery::route::RouteOverrides;
use crate::delivery::{self, Delivery};
use crate::inbound::listener::{accept_loop, bind_listener, PerIp};
use crate::inbound::{self, Inbound};
use crate::metrics::CoreMetrics;
use crate::shadow::heartbeat::{self, Heartbeat};
use crate::shadow::primary::Primary;
use crate::shadow::replica::Replica;
use crate::shadow::ShadowShared;
use crate::shard::Shard;
use crate::stop::{Shutdown, StopFlag};

/// What every core shares (each piece owned by its room; none is on the
/// per-message path but the shadow state while shadowing).
#[derive(Clone)]
pub struct NodeState {
    /// Set by SIGTERM/SIGINT.
    pub stop: Arc<StopFlag>,
    /// Open connections per client address.
    pub per_ip: Arc<PerIp>,
    /// Run-time route overrides (admin).
    pub routes: Arc<RouteOverrides>,
    /// Shadow redundancy state.
    pub shadow: Arc<ShadowShared>,
    /// The SMTP AUTH users (`auth.users_file`, loaded at start-up); `None`:
    /// AUTH is not offered.
    pub users: Option<Arc<Users>>,
    /// Certificates and TLS configs (inbound, outbound, shadow link).
    pub tls: Arc<crate::tls::Tls>,
    /// MTA-STS policies for MX delivery.
    pub mta_sts: Arc<crate::mta_sts::MtaSts>,
    /// Operator state and each core's request channel.
    pub ops: Arc<crate::ops::Ops>,
    /// Back pressure and the failed state.
    pub pressure: Arc<crate::pressure::Pressure>,
    /// The config in force (SIGHUP, `tern reload`).
    pub live: Arc<crate::reload::Live>,
    /// The front end's counters (a front end only).
    pub frontend: Arc<crate::frontend::stats::Stats>,
}

/// A core's rooms, built by [`run`].
struct Rooms {
    shard: Rc<Shard>,
    inbound: Rc<Inbound>,
    delivery: Rc<Delivery>,
}

/// Runs core `shard` (pinned to `cpu`) until shutdown.
pub async fn run(
    shard: usize,
    cpu: usize,
    config: Arc<Config>,
    node: NodeState,
    metrics: Arc<CoreMetrics>,
) -> anyhow::Result<()> {
    if config.role == crate::config::Role::FrontEnd {
        return super::front::run(shard, cpu, config, node, metrics).await;
    }
    let id = shard as u16;
    let c = &config;
    let shard = Shard::open(
        &c.data_dir,
        node.shadow.database_id.as_bytes(),
        id,
        c.io,
        c.storage.clone(),
        c.delivery.recent_cache_bytes,
    );
    let shard = Rc::new(shard.await.map_err(|e| open_failed(&e, c, id))?);
    let incoming_cpu = config.incoming_cpu.then_some(cpu);
    let listener = bind_listener(config.listen, incoming_cpu)?;
    let implicit = match config.tls.implicit_listen {
        Some(addr) if node.tls.offers_tls() => Some(bind_listener(addr, incoming_cpu)?),
        Some(addr) => anyhow::bail!(
            "tls.implicit_listen = {addr} needs a certificate: set tls.certificates or tls.self_signed = true"
        ),
        None => None,
    };
    // (Start-up probes wait for this line from every core.)
    tracing::info!(
        shard = id,
        cpu,
        incoming_cpu = config.incoming_cpu,
        "listener bound"
    );
    let shutdown = Rc::new(Shutdown::default());
    let watcher = watch(
        shard.clone(),
        node.clone(),
        shutdown.clone(),
        metrics.clone(),
    );
    glommio::spawn_local(watcher).detach();
    let batching = crate::logbuf::batch_this_thread();
    glommio::spawn_local(crate::logbuf::flusher()).detach();
    let rooms = build(shard, &config, &node, &metrics, &shutdown)?;
    match &implicit {
        Some(tls_listener) => {
            futures_lite::future::zip(
                accept_loop(&rooms.inbound, &listener, false),
                accept_loop(&rooms.inbound, tls_listener, true),
            )
            .await;
        }
        None => accept_loop(&rooms.inbound, &listener, false).await,
    }
    drop(listener);
    drop(implicit);
    stop(rooms, &config, &metrics).await?;
    drop(batching);
    tracing::info!(shard = id, "core stopped");
    Ok(())
}

/// A shard that cannot be opened, named with what to do; a full file
/// system with what each core needs.
fn open_failed(e: &anyhow::Error, c: &Config, id: u16) -> anyhow::Error {
    let dir = crate::layout::shard_dir(&c.data_dir, usize::from(id));
    let text = format!("{e:#}");
    if text.contains("No space left") || text.contains("os error 28") {
        let segment = c.storage.segment_bytes_max;
        let free = crate::pressure::probe::disk(&c.data_dir).map_or_else(
            |_| "unknown".into(),
            |(free, _)| crate::config::ByteSize(free).to_string(),
        );
        return anyhow::anyhow!(
            "no space left on the file system of {}: each core preallocates {} per log segment (storage.segment_size) and keeps the next one ready, so {} cores need at least {} free; {} is free. Free space, lower storage.segment_size or use fewer cores",
            dir.display(),
            crate::config::ByteSize(segment),
            c.cores,
            crate::config::ByteSize(segment * 2 * c.cores as u64),
            free
        );
    }
    anyhow::anyhow!(
        "cannot open the log of core {id} in {}: {text}",
        dir.display()
    )
}

/// Builds the core's rooms: the two sides of shadow redundancy, inbound,
/// delivery (rebuilding its queue), and on core 0 the heartbeat.
fn build(
    shard: Rc<Shard>,
    config: &Arc<Config>,
    node: &NodeState,
    metrics: &Arc<CoreMetrics>,
    shutdown: &Rc<Shutdown>,
) -> anyhow::Result<Rooms> {
    let (s, c, m) = (&node.shadow, config, metrics);
    let primary = Rc::new(Primary::new(
        shard.clone(),
        c.clone(),
        s.clone(),
        m.clone(),
        node.tls.clone(),
    ));
    let replica = Rc::new(Replica::new(shard.clone(), c.clone(), s.clone(), m.clone()));
    let inbound = Rc::new(Inbound::new(inbound::Parts {
        live: node.live.clone(),
        shard: shard.clone(),
        primary: primary.clone(),
        replica: replica.clone(),
        metrics: m.clone(),
        shutdown: shutdown.clone(),
        per_ip: node.per_ip.clone(),
        tls: node.tls.clone(),
        users: node.users.clone(),
        pressure: node.pressure.clone(),
    }));
    let delivery = Delivery::start(delivery::Parts {
        config: c.clone(),
        shard: shard.clone(),
        primary: primary.clone(),
        replica,
        metrics: m.clone(),
        routes: node.routes.clone(),
        live: node.live.clone(),
        tls: node.tls.clone(),
        mta_sts: node.mta_sts.clone(),
        ops: node.ops.clone(),
        pressure: node.pressure.clone(),
    })?;
    if shard.id == 0 && primary.shadowing() {
        let hb = Heartbeat {
            config: c.clone(),
            shared: s.clone(),
            metrics: m.clone(),
            shutdown: shutdown.clone(),
            tls: node.tls.clone(),
        };
        glommio::spawn_local(heartbeat::run(hb)).detach();
    }
    Ok(Rooms {
        shard,
        inbound,
        delivery,
    })
}

/// Stops a core's rooms in order: sessions get `shutdown_grace`, delivery
/// what is left of it (at least 1 s) to finish the transactions it is in
/// and record every outcome, then the log is closed.
async fn stop(rooms: Rooms, config: &Config, metrics: &CoreMetrics) -> anyhow::Result<()> {
    let deadline = Instant::now() + config.shutdown_grace;
    let open = || rooms.inbound.open_sessions();
    while open() > 0 && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(20)).await;
    }
    if open() > 0 {
        tracing::warn!(
            shard = rooms.shard.id,
            open = open(),
            "grace period over; closing sessions mid-transaction (none was answered 250)"
        );
    }
    let left = deadline.saturating_duration_since(Instant::now());
    rooms.delivery.stop(left.max(Duration::from_secs(1))).await;
    rooms.shard.log.clone().close().await?;
    metrics.set_log_stats(&rooms.shard.log.stats());
    Ok(())
}

/// Publishes log stats, turns the process-wide stop flag into this
/// core's shutdown signal, and stops the node when this core's log failed
/// for good (after a failed fdatasync nothing more may be acknowledged:
/// the node says so, stops, and exits non-zero for its supervisor).
async fn watch(
    shard: Rc<Shard>,
    node: NodeState,
    shutdown: Rc<Shutdown>,
    metrics: Arc<CoreMetrics>,
) {
    let mut ticks = 0u32;
    while !shutdown.is_set() {
        glommio::timer::sleep(Duration::from_millis(50)).await;
        if let Some(e) = shard.log.failure() {
            if metrics
                .log_failed
                .swap(1, std::sync::atomic::Ordering::Relaxed)
                == 0
            {
                node.pressure.fail(usize::from(shard.id), &e);
                node.stop.set();
            }
        }
        if node.stop.is_set() {
            shutdown.trigger();
        }
        ticks += 1;
        if ticks.is_multiple_of(20) {
            metrics.set_log_stats(&shard.log.stats());
        }
    }
}
