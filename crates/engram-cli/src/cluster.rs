//! `engram serve --role coordinator|worker`: the two cluster processes.

use anyhow::Context;
use std::net::SocketAddr;

use engram_coordinator::cluster::ClusterBackend;
use engram_core::config::EngramConfig;
use engram_meta::ClusterAccess;
use engram_meta::serve::{InternalLimits, ServeStats};
use engram_worker::{Membership, WorkerNode};
use std::sync::Arc;
use std::time::Duration;

use crate::shutdown_signal;

async fn bind(addr: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))
}

/// Public API on `server.listen`, Raft and worker-facing RPC on
/// `cluster.internal_listen`.
pub async fn serve_coordinator(
    config: EngramConfig,
    public: SocketAddr,
    public_tls: Option<engram_meta::tls::ServerTls>,
    access: ClusterAccess,
) -> anyhow::Result<()> {
    let internal = bind(&config.cluster.internal_listen).await?;
    let data_dir = config.server.data_dir.clone();
    fs_err::create_dir_all(&data_dir)?;
    let internal_tls = access.server_tls();
    let cluster = ClusterBackend::start(&config.cluster, access, &data_dir)
        .await
        .map_err(|e| anyhow::anyhow!("cannot start the raft node: {e}"))?;
    let limits = InternalLimits::from_config(&config, engram_meta::rpc::MAX_RAFT_BODY);
    let internal_app = cluster.internal_router(limits);
    let internal_addr = internal.local_addr()?;
    let head_timeout = Duration::from_millis(config.limits.head_timeout_ms);
    let internal_stats = cluster.internal_listener();
    let internal_task = tokio::spawn(async move {
        let served = engram_meta::serve::serve(
            internal,
            internal_app,
            head_timeout,
            internal_stats,
            internal_tls,
            std::future::pending(),
        );
        if let Err(e) = served.await {
            tracing::error!(error = %e, "internal server stopped");
        }
    });
    let detector = cluster.spawn_failure_detector();
    let engram = tokio::task::spawn_blocking(move || {
        engram_coordinator::Engram::open_coordinator(config, cluster)
    })
    .await?
    .map_err(|e| anyhow::anyhow!("cannot start: {e}"))?;
    let listener = bind(&public.to_string()).await?;
    let bound = listener.local_addr()?;
    tracing::info!(addr = %bound, internal = %internal_addr, "engram coordinator serving");
    println!("engram listening on {bound}");
    engram_coordinator::serve(engram, listener, public_tls, shutdown_signal()).await?;
    detector.abort();
    internal_task.abort();
    tracing::info!("engram coordinator stopped");
    Ok(())
}

/// Internal RPC on `cluster.internal_listen`; heartbeats to every coordinator.
pub async fn serve_worker(config: EngramConfig, access: ClusterAccess) -> anyhow::Result<()> {
    let listener = bind(&config.cluster.internal_listen).await?;
    let data_dir = config.server.data_dir.clone();
    fs_err::create_dir_all(&data_dir)?;
    let lock_path = data_dir.join("LOCK");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("cannot open {}", lock_path.display()))?;
    lock.try_lock().map_err(|_| {
        anyhow::anyhow!(
            "data directory {} is in use by another Engram process",
            data_dir.display()
        )
    })?;
    let bound = listener.local_addr()?;
    let advertised = match &config.cluster.advertise {
        Some(a) => a.clone(),
        None => bound.to_string(),
    };
    let membership = Membership {
        id: config.cluster.node_id,
        addr: advertised.clone(),
        coordinators: config
            .cluster
            .coordinators
            .iter()
            .map(|p| p.addr.clone())
            .collect(),
        access,
        catch_up: config.cluster.catch_up,
        transfer_chunk_bytes: (config.cluster.transfer_chunk_kib * 1024) as usize,
        transfer_max_bytes_per_s: config.cluster.transfer_max_mib_per_s << 20,
    };
    let tls = membership.access.server_tls();
    let node = WorkerNode::new(
        membership,
        &data_dir,
        config.index.clone(),
        config.storage.clone(),
        engram_worker::SegmentCache::new(engram_worker::SegmentCache::budget_for(
            config.cache.budget_mb,
        )),
    )
    .map_err(|e| anyhow::anyhow!("cannot start the worker: {e}"))?;
    let agent = tokio::spawn(node.clone().run_agent());
    // The agent is what keeps this worker in the cluster (heartbeats,
    // catch-ups). Should it ever end (a panic in one of its loops), a
    // process that still serves but is failed over for good helps nobody:
    // exit, so that the supervisor restarts it.
    let agent = tokio::spawn(async move {
        let ended = agent.await;
        tracing::error!(
            ?ended,
            "the worker agent ended; exiting so that the process is restarted"
        );
        std::process::exit(70);
    });
    let compaction = (config.index.compaction_interval_s > 0).then(|| {
        tokio::spawn(node.clone().run_compaction(
            std::time::Duration::from_secs(config.index.compaction_interval_s),
            config.index.compact_deleted_fraction,
        ))
    });
    tracing::info!(worker = node.id(), addr = %advertised, "engram worker serving");
    println!("engram worker listening on {bound}");
    // The listener's own counters (cut-offs, failed handshakes), exported
    // at the worker's /metrics.
    let stats = Arc::new(ServeStats::default());
    let limits = InternalLimits::from_config(&config, engram_worker::wire::MAX_INTERNAL_BODY);
    engram_meta::serve::serve(
        listener,
        engram_worker::server::router(node, limits, stats.clone()),
        Duration::from_millis(config.limits.head_timeout_ms),
        stats,
        tls,
        shutdown_signal(),
    )
    .await?;
    agent.abort();
    if let Some(task) = compaction {
        task.abort();
    }
    drop(lock);
    tracing::info!("engram worker stopped");
    Ok(())
}
