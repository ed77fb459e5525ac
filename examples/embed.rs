//! peerpi as a library: a node inside your own Rust program, serving the
//! Simple API on a port of your choosing (here without peers; see
//! `crates/peerpi/src/serve.rs` for the swarm).
//!
//! ```sh
//! cargo run --example embed -- http://127.0.0.1:8000/simple/ 127.0.0.1:7600 /tmp/embedded-node
//! pip install --index-url http://127.0.0.1:7600/simple/ requests
//! ```

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use peerpi_node::{Node, NodeConfig};
use peerpi_upstream::UpstreamConfig;

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [upstream, listen, data_dir] = args.as_slice() else {
        bail!("usage: embed UPSTREAM_SIMPLE_URL LISTEN_ADDR DATA_DIR");
    };
    let upstream = url::Url::parse(upstream).context("UPSTREAM_SIMPLE_URL")?;

    let mut config = NodeConfig::new(PathBuf::from(data_dir), UpstreamConfig::new(upstream));
    config.cache_size = 1 << 30;
    let (node, report) = Node::open(config)?;
    eprintln!("store ready: {report:?}");

    let listener = tokio::net::TcpListener::bind(listen.as_str())
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    // The line a caller waits for before sending requests.
    println!("serving http://{}/simple/", listener.local_addr()?);
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    axum::serve(listener, node.router())
        .with_graceful_shutdown(stop)
        .await?;
    node.flush()?;
    Ok(())
}
