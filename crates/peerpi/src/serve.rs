//! `peerpi serve`: open the node, serve HTTP until SIGINT/SIGTERM, let
//! in-flight responses finish (up to the shutdown timeout), flush the catalog.

use anyhow::{Context, Result};
use peerpi_node::{Node, NodeConfig};
use peerpi_upstream::UpstreamConfig;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::ServeConfig;

pub async fn run(config: ServeConfig) -> Result<()> {
    let mut upstream = UpstreamConfig::new(config.upstream.clone());
    upstream.page_timeout = config.upstream_timeout;
    let mut node_config = NodeConfig::new(config.data_dir.clone(), upstream);
    node_config.cache_size = config.cache_size;
    node_config.page_ttl = config.page_ttl;
    node_config.page_max_age = config.page_max_age;
    let (node, report) = Node::open(node_config)?;
    info!(?report, data_dir = %config.data_dir.display(), "store ready");

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
        upstream = %config.upstream,
        upstream_from = %config.upstream_source,
        "listening on http://{addr}/simple/"
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        let _ = stop_tx.send(true);
    });
    let mut graceful_rx = stop_rx.clone();
    // Small responses (pages, 304s) should not wait for Nagle's algorithm.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp: &mut tokio::net::TcpStream| {
        let _ = tcp.set_nodelay(true);
    });
    let server = axum::serve(listener, node.router()).with_graceful_shutdown(async move {
        let _ = graceful_rx.wait_for(|stop| *stop).await;
        info!("shutting down: no new connections, finishing in-flight responses");
    });
    let mut deadline_rx = stop_rx;
    let timeout = config.shutdown_timeout;
    tokio::select! {
        result = server => result.context("the HTTP server failed")?,
        _ = async {
            let _ = deadline_rx.wait_for(|stop| *stop).await;
            tokio::time::sleep(timeout).await;
        } => warn!(?timeout, "in-flight responses did not finish in time; closing them"),
    }
    node.flush()?;
    info!("catalog flushed; bye");
    Ok(())
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
