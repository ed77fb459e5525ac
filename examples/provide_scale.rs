//! Scale check for announcing: a node that provides N CIDs (default 100,000)
//! to PEERS other nodes (default 1) on loopback. One round of announcements
//! is what every re-provide interval costs, so this prints, for one round:
//! the time, the CPU seconds, the bytes that crossed loopback (the network
//! traffic of all the DHT walks and ADD_PROVIDER messages, both directions
//! counted once), and the process RSS before and after.
//!
//! Run: `cargo run --release --example provide_scale -- [N] [PER_SECOND] [PEERS]`
//! (PER_SECOND 0, the default, announces as fast as the swarm accepts; the
//! node itself paces re-providing at 50 per second). Loopback bytes are read
//! from /proc/net/dev, so other loopback traffic on the machine adds to them.

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

/// Bytes received on the loopback interface so far (each loopback byte is
/// sent and received once, so this is the traffic).
fn loopback_bytes() -> u64 {
    std::fs::read_to_string("/proc/net/dev")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.trim_start().starts_with("lo:"))
                .and_then(|l| l.split_once(':')?.1.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
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
    config.bulk_listen = None;
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
    let peers: usize = std::env::args()
        .nth(3)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(1);
    let pause = (per_second > 0).then(|| Duration::from_secs(1) / per_second);
    let dir_a = tempfile::tempdir()?;
    let mut others = Vec::new();
    let mut bootstrap = Vec::new();
    for _ in 0..peers {
        let dir = tempfile::tempdir()?;
        let peer = node(dir.path(), bootstrap.clone()).await?;
        if bootstrap.is_empty() {
            bootstrap = peer.listen_addrs();
        }
        others.push((dir, peer));
    }
    let a = node(dir_a.path(), bootstrap).await?;
    while a
        .counters()
        .connected_peers
        .load(std::sync::atomic::Ordering::Relaxed)
        == 0
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Let identify and Kademlia fill the routing tables.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_before = rss_mib();
    let cpu_before = cpu_seconds();
    let traffic_before = loopback_bytes();
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
    let elapsed = started.elapsed().as_secs_f64();
    // Let the DHT walks that the announcements started finish.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let cpu = cpu_seconds() - cpu_before;
    let traffic = loopback_bytes() - traffic_before;
    println!(
        "provided {n} CIDs to {peers} peer(s) in {elapsed:.1} s: {cpu:.1} CPU s (all nodes, one process), \
         {:.1} MiB over loopback ({:.0} bytes per CID); RSS {rss_before:.1} -> {:.1} MiB",
        traffic as f64 / f64::from(1 << 20),
        traffic as f64 / f64::from(n),
        rss_mib()
    );
    Ok(())
}
