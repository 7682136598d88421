//! `engram`: serve the embedded node; run the demo, pruning jobs or the
//! evaluation against one.

mod cluster;
mod demo;
mod embed;
mod eval;
mod eval_report;
mod eval_rerank;
mod ingest;
mod prune;
mod telemetry;
mod token;

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

use engram_core::config::{EngramConfig, Role};
use engram_meta::ClusterAccess;

#[derive(Parser)]
#[command(
    name = "engram",
    version,
    about = "Engram: a visual memory that classifies by nearest-neighbour votes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve: the embedded single node (default), or a cluster coordinator
    /// or worker (`--role`).
    Serve {
        /// TOML config file; `ENGRAM_*` variables override it (e.g. ENGRAM_SERVER__LISTEN).
        #[arg(long, default_value = "config/embedded.toml")]
        config: PathBuf,
        /// embedded | coordinator | worker (overrides `cluster.role`).
        #[arg(long)]
        role: Option<String>,
        /// Address to listen on (overrides the config).
        #[arg(long)]
        listen: Option<String>,
        /// Data directory (overrides the config).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Start a coordinator or worker without a cluster secret: anyone
        /// who reaches its internal port can then change the cluster. Only
        /// for a network nobody else can reach.
        #[arg(long)]
        insecure: bool,
    },
    /// Build a visual memory from Fashion-MNIST through the API of a running
    /// server, and show what it decides.
    Demo(demo::DemoArgs),
    /// Embed image Parquet from object storage into embedding Parquet, one
    /// part of N per process (for Kubernetes Jobs, Spark, Ray); no server.
    Embed(embed::EmbedArgs),
    /// Ingest Parquet files (embeddings or images) from object storage into
    /// a collection, as a job on a running server.
    Ingest(ingest::IngestArgs),
    /// Score every item of a collection against the rest of the memory and
    /// prune (dry run, hard or soft), as a job on a running server.
    Prune(prune::PruneArgs),
    /// Reproduce the paper's experiments in kind on Fashion-MNIST through a
    /// running server; writes docs/evaluation.md.
    Eval(eval::EvalArgs),
    /// Mint a token limited to some collections and a lifetime, signed with
    /// the servers' token signing key; prints it. No server is called.
    Token(token::TokenArgs),
}

fn main() -> anyhow::Result<()> {
    let command = Cli::parse().command;
    if let Command::Serve {
        config,
        role,
        listen,
        data_dir,
        insecure,
    } = command
    {
        let config = node_config(&config, role, listen, data_dir)?;
        let role = match config.cluster.role {
            Role::Embedded => "engram",
            Role::Coordinator => "engram-coordinator",
            Role::Worker => "engram-worker",
        };
        // Held to the end of `serve`: its drop flushes queued spans.
        let _telemetry = telemetry::init(Some((&config.telemetry, role)))?;
        return serve(config, insecure);
    }
    let _telemetry = telemetry::init(None)?;
    match command {
        Command::Serve { .. } => unreachable!("served above"),
        Command::Demo(args) => demo::run(args),
        Command::Prune(args) => prune::run(args),
        Command::Ingest(args) => ingest::run(args),
        Command::Embed(args) => embed::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Token(args) => token::run(args),
    }
}

/// The config file with the command line's overrides, validated.
fn node_config(
    config_path: &std::path::Path,
    role: Option<String>,
    listen: Option<String>,
    data_dir: Option<PathBuf>,
) -> anyhow::Result<EngramConfig> {
    let mut config = engram_cli::config::load(config_path)?;
    if let Some(role) = role {
        config.cluster.role = serde_json::from_value(serde_json::Value::String(role.clone()))
            .map_err(|_| {
                anyhow::anyhow!("--role must be embedded, coordinator or worker, not {role:?}")
            })?;
        config
            .validate()
            .map_err(|e| anyhow::anyhow!("invalid config {}: {e}", config_path.display()))?;
    }
    if let Some(listen) = listen {
        config.server.listen = listen;
    }
    if let Some(data_dir) = data_dir {
        config.server.data_dir = data_dir;
    }
    Ok(config)
}

fn serve(config: EngramConfig, insecure: bool) -> anyhow::Result<()> {
    let addr: SocketAddr =
        config.server.listen.parse().with_context(|| {
            format!("listen address {:?} is not host:port", config.server.listen)
        })?;
    check_cluster_secret(&config, insecure)?;
    check_internal_tls(&config, insecure)?;
    // Certificates are read now: a bad one fails the start, naming the file.
    let public_tls = engram_meta::tls::public_server_config(&config.security.tls)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match config.cluster.role {
        Role::Embedded => {}
        Role::Coordinator => {
            let access = ClusterAccess::from_config(&config.security)?
                .with_source_address(config.cluster.source_address);
            return runtime.block_on(cluster::serve_coordinator(config, addr, public_tls, access));
        }
        Role::Worker => {
            let access = ClusterAccess::from_config(&config.security)?
                .with_source_address(config.cluster.source_address);
            return runtime.block_on(cluster::serve_worker(config, access));
        }
    }
    runtime.block_on(async move {
        let engram = tokio::task::spawn_blocking(move || engram_coordinator::Engram::open(config))
            .await?
            .map_err(|e| anyhow::anyhow!("cannot start: {e}"))?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let bound = listener.local_addr()?;
        tracing::info!(addr = %bound, data_dir = %engram.data_dir().display(), "engram serving");
        // One machine-readable line, so scripts and tests using port 0 learn the port.
        println!("engram listening on {bound}");
        engram_coordinator::serve(engram, listener, public_tls, shutdown_signal()).await?;
        tracing::info!("engram stopped");
        Ok(())
    })
}

/// A coordinator or worker without a cluster secret would take Raft
/// commands, writes and segment files from anyone who reaches its internal
/// port: it starts only when told `--insecure`, and says so.
fn check_cluster_secret(config: &EngramConfig, insecure: bool) -> anyhow::Result<()> {
    if config.cluster.role == Role::Embedded || config.security.cluster_secret.is_some() {
        return Ok(());
    }
    let role = match config.cluster.role {
        Role::Coordinator => "coordinator",
        _ => "worker",
    };
    if insecure {
        tracing::warn!(
            role,
            "serving without a cluster secret (--insecure): anyone who reaches the internal port can change the cluster"
        );
        return Ok(());
    }
    anyhow::bail!(
        "refusing to start a {role} without a cluster secret: anyone who reaches its internal port \
         could rewrite the cluster; set [security] cluster_secret or ENGRAM_SECURITY__CLUSTER_SECRET \
         (the same on every node, at least 16 bytes, e.g. `openssl rand -hex 32`), or pass --insecure \
         on a network nobody else can reach"
    )
}

/// A coordinator with HTTPS on its public port but none between peers
/// would send the cluster secret, writes and segment files in the clear:
/// `tls.cert` in a cluster role needs `tls.ca`, unless `--insecure`.
fn check_internal_tls(config: &EngramConfig, insecure: bool) -> anyhow::Result<()> {
    let tls = &config.security.tls;
    if config.cluster.role == Role::Embedded || !tls.enabled() || tls.ca.is_some() {
        return Ok(());
    }
    if insecure {
        tracing::warn!(
            "serving internal traffic without TLS (--insecure): security.tls.cert is set but security.tls.ca is not"
        );
        return Ok(());
    }
    anyhow::bail!(
        "refusing to start with TLS on the public port only: internal traffic (the cluster secret, \
         writes, segment files) would cross the network in the clear; set [security.tls] ca \
         (ENGRAM_SECURITY__TLS__CA, the CA that signed every node's certificate) for mutual TLS \
         between peers, or pass --insecure on a network nobody else can reach"
    )
}

pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return ctrl_c.await,
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
}
