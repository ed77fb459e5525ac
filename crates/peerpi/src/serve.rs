//! `peerpi serve`: open the node, serve HTTP until SIGINT/SIGTERM, let
//! in-flight responses finish (up to the shutdown timeout), flush the catalog.

use anyhow::{Context, Result};
use clap::Args;
use peerpi_node::Node;
use tokio::sync::watch;
use tracing::{info, warn};

use peerpi_swarm::SwarmHandle;

use crate::config::args::{CommonArgs, ServeOptions};
use crate::config::{self, EnvLookup, P2pConfig, ServeConfig};

/// `peerpi serve`'s (and `doctor`'s) command line.
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    #[command(flatten)]
    pub options: ServeOptions,
}

impl ServeArgs {
    /// Flags and variables over the file over the defaults, validated.
    pub fn resolve(&self, env: EnvLookup<'_>) -> Result<ServeConfig> {
        config::resolve_serve(&self.common, &self.options, env)
    }
}

pub async fn run(config: ServeConfig) -> Result<()> {
    raise_open_file_limit();
    let node_config = config.node.clone();
    if let Some(trust) = &node_config.trust {
        info!(mode = ?trust.mode, signer = %trust.url, "pages are verified against TUF metadata");
    }
    let (store, report) = Node::open_store(&node_config)?;
    info!(?report, data_dir = %node_config.data_dir.display(), "store ready");
    let swarm = match &config.p2p {
        Some(p2p) => Some(start_swarm(p2p, store.clone()).await?),
        None => {
            info!("peer-to-peer is off (--no-p2p)");
            None
        }
    };
    let node = Node::new(node_config, store, swarm)?;

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| {
            format!(
            "cannot listen on {}: is another server using it? Choose another address with --listen",
            config.listen
        )
        })?;
    let addr = listener.local_addr()?;
    info!(
        upstream = %peerpi_upstream::redacted(config.upstream().as_str()),
        upstream_from = %config.upstream_source,
        "listening on http://{addr}/simple/"
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        let _ = stop_tx.send(true);
    });
    let mut graceful_rx = stop_rx.clone();
    let server = peerpi_http::serve(listener, node.router(), config.http_limits, async move {
        let _ = graceful_rx.wait_for(|stop| *stop).await;
        info!("shutting down: no new connections, finishing in-flight responses");
    });
    let mut deadline_rx = stop_rx;
    let timeout = config.shutdown_timeout;
    tokio::select! {
        () = server => {}
        _ = async {
            let _ = deadline_rx.wait_for(|stop| *stop).await;
            tokio::time::sleep(timeout).await;
        } => warn!(?timeout, "in-flight responses did not finish in time; closing them"),
    }
    node.flush()?;
    info!("catalog flushed; bye");
    Ok(())
}

/// Every connection, blob and temp file is a descriptor: the soft limit
/// (often 1,024) is raised to the hard one so that the connection caps, not
/// the descriptor limit, decide when connections are refused.
fn raise_open_file_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => info!(limit, "open file limit"),
        Err(e) => warn!("cannot raise the open file limit: {e}"),
    }
}

async fn start_swarm(
    p2p: &P2pConfig,
    store: std::sync::Arc<peerpi_store::Store>,
) -> Result<SwarmHandle> {
    let mut swarm_config = p2p.swarm.clone();
    if let Some(path) = &p2p.swarm_key {
        let key = peerpi_swarm::read_swarm_key(path)?;
        info!(fingerprint = %key.fingerprint(), "private swarm: only nodes with this key connect");
        swarm_config.swarm_key = Some(key);
    }
    let swarm = SwarmHandle::start(swarm_config, store)
        .await
        .context("cannot start the peer-to-peer swarm (choose other addresses with --p2p-listen and --bulk-listen, or run with --no-p2p)")?;
    info!(peer_id = %swarm.local_peer_id(), region = ?p2p.swarm.region, "peer-to-peer on");
    Ok(swarm)
}

async fn wait_for_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            warn!("cannot listen for SIGINT: {e}");
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                warn!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
