//! Scale check for announcing: a node that provides N CIDs (default 100,000)
//! to a second node on loopback, at an unthrottled rate. Prints the time and
//! CPU for one full round of announcements and the process RSS before and
//! after, so the cost of holding and re-providing a large store is known.
//!
//! Run: `cargo run --release --example provide_scale -- [N] [PER_SECOND]`
//! (PER_SECOND 0, the default, announces as fast as the swarm accepts).

use std::time::{Duration, Instant};

use peerpi_core::Sha256Digest;
use peerpi_store::Store;
use peerpi_swarm::{SwarmConfig, SwarmHandle};

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

fn cpu_seconds() -> f64 {
    // utime + stime from /proc/self/stat, in clock ticks (100 per second on Linux).
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let after = s.rsplit_once(')')?.1;
            let fields: Vec<&str> = after.split_whitespace().collect();
            Some(
                (fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?)
                    / 100.0,
            )
        })
        .unwrap_or(0.0)
}

async fn node(
    dir: &std::path::Path,
    bootstrap: Vec<peerpi_swarm::Multiaddr>,
) -> anyhow::Result<SwarmHandle> {
    let (store, _) = Store::open(dir, 1 << 30)?;
    let mut config = SwarmConfig::new(dir.to_path_buf());
    config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse()?];
    config.bootstrap = bootstrap;
    config.mdns = false;
    let swarm = SwarmHandle::start(config, std::sync::Arc::new(store)).await?;
    while swarm.listen_addrs().is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(swarm)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: u32 = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(100_000);
    let per_second: u32 = std::env::args()
        .nth(2)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(0);
    let pause = (per_second > 0).then(|| Duration::from_secs(1) / per_second);
    let dirs = (tempfile::tempdir()?, tempfile::tempdir()?);
    let b = node(dirs.1.path(), vec![]).await?;
    let a = node(dirs.0.path(), b.listen_addrs()).await?;
    while a
        .counters()
        .connected_peers
        .load(std::sync::atomic::Ordering::Relaxed)
        == 0
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let rss_before = rss_mib();
    let cpu_before = cpu_seconds();
    let started = Instant::now();
    for i in 0..n {
        let mut bytes = [0u8; 32];
        bytes[..4].copy_from_slice(&i.to_be_bytes());
        a.provide(Sha256Digest::from_bytes(bytes)).await?;
        if let Some(p) = pause {
            tokio::time::sleep(p).await;
        }
    }
    while a
        .counters()
        .provided_keys
        .load(std::sync::atomic::Ordering::Relaxed)
        < u64::from(n)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let the DHT walks that the announcements started finish.
    tokio::time::sleep(Duration::from_secs(10)).await;
    println!(
        "provided {n} CIDs in {:.1} s, {:.1} CPU s (both nodes, one process); RSS {rss_before:.1} -> {:.1} MiB",
        started.elapsed().as_secs_f64(),
        cpu_seconds() - cpu_before,
        rss_mib()
    );
    Ok(())
}
