//! The user-space router between regions: reads IPv4 packets from the TUN
//! device that policy routing sends inter-region traffic to, and writes each
//! back after the one-way delay of its region pair (half the configured
//! round trip), no faster than the pair's rate: a FIFO link per direction,
//! modelled as propagation delay plus serialization time. A full link queue
//! drops the packet, as a router would. It stops by itself after its
//! lifetime.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tun::Tun;

use crate::net::{INDEX_OCTET, TUN};

/// A packet and when it reached the router.
type Queued = (Instant, Vec<u8>);

/// Packets queued per direction between two regions at most.
const QUEUE_PACKETS: usize = 4096;

#[derive(Debug, Clone, Args)]
pub struct RouterArgs {
    #[arg(long)]
    pub cross_rtt_ms: f64,
    #[arg(long)]
    pub index_rtt_ms: f64,
    #[arg(long)]
    pub cross_mbit: f64,
    #[arg(long)]
    pub index_mbit: f64,
    #[arg(long)]
    pub lifetime_s: u64,
    /// Bytes carried per region pair, as JSON rewritten every second.
    #[arg(long)]
    pub stats: Option<std::path::PathBuf>,
}

/// Bytes carried per (source, destination) second octet.
type Carried = Arc<std::sync::Mutex<HashMap<(u8, u8), u64>>>;

impl RouterArgs {
    /// One-way delay and rate (bytes/s; 0: unlimited) from region octet
    /// `src` to `dst`.
    fn link(&self, src: u8, dst: u8) -> (Duration, f64) {
        let (rtt_ms, mbit) = if src == INDEX_OCTET || dst == INDEX_OCTET {
            (self.index_rtt_ms, self.index_mbit)
        } else {
            (self.cross_rtt_ms, self.cross_mbit)
        };
        (
            Duration::from_secs_f64(rtt_ms.max(0.0) / 2000.0),
            mbit.max(0.0) * 1_000_000.0 / 8.0,
        )
    }
}

pub fn run(args: &RouterArgs) -> Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(async {
            let lifetime = Duration::from_secs(args.lifetime_s);
            match tokio::time::timeout(lifetime, route(args)).await {
                Ok(result) => result,
                Err(_) => {
                    eprintln!("router: lifetime of {lifetime:?} over; stopping");
                    Ok(())
                }
            }
        })
}

async fn route(args: &RouterArgs) -> Result<()> {
    let tun = Arc::new(
        Tun::builder()
            .name(TUN)
            .up()
            .build()
            .context("creating the TUN device")?
            .pop()
            .context("no TUN device made")?,
    );
    eprintln!("router: {TUN} up; {args:?}");
    let carried = Carried::default();
    if let Some(path) = args.stats.clone() {
        tokio::spawn(write_stats(path, carried.clone()));
    }
    let mut links: HashMap<(u8, u8), mpsc::Sender<Queued>> = HashMap::new();
    let mut buf = vec![0u8; 65_536];
    loop {
        let n = tun.recv(&mut buf).await.context("reading the TUN device")?;
        let packet = &buf[..n];
        // IPv4 only: version nibble 4, source at 12..16, destination at 16..20.
        if n < 20 || packet[0] >> 4 != 4 {
            continue;
        }
        let (src, dst) = (packet[13], packet[17]);
        let sender = links.entry((src, dst)).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(QUEUE_PACKETS);
            let (delay, rate) = args.link(src, dst);
            let counter = carried.clone();
            tokio::spawn(link(tun.clone(), rx, delay, rate, move |len| {
                if let Ok(mut carried) = counter.lock() {
                    *carried.entry((src, dst)).or_default() += len as u64;
                }
            }));
            tx
        });
        // A full queue drops the packet (TCP backs off, as on a real link).
        let _ = sender.try_send((Instant::now(), packet.to_vec()));
    }
}

/// One direction between two regions: each packet leaves after `delay`
/// from its arrival, and not before the previous one has been serialized
/// at `rate`.
async fn link(
    tun: Arc<Tun>,
    mut rx: mpsc::Receiver<Queued>,
    delay: Duration,
    rate: f64,
    count: impl Fn(usize),
) {
    let mut link_free = Instant::now();
    while let Some((arrived, packet)) = rx.recv().await {
        let leave = (arrived + delay).max(link_free);
        if rate > 0.0 {
            link_free = leave + Duration::from_secs_f64(packet.len() as f64 / rate);
        }
        wait_until(leave).await;
        match tun.send(&packet).await {
            Ok(_) => count(packet.len()),
            Err(e) => eprintln!("router: writing a packet: {e}"),
        }
    }
}

/// Rewrites `path` every second with the bytes carried so far:
/// `{"pairs": [{"from": 1, "to": 2, "bytes": N}, ...]}` (second octets; 250
/// is the index).
async fn write_stats(path: std::path::PathBuf, carried: Carried) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let pairs: Vec<serde_json::Value> = match carried.lock() {
            Ok(carried) => carried
                .iter()
                .map(|((from, to), bytes)| serde_json::json!({"from": from, "to": to, "bytes": bytes}))
                .collect(),
            Err(_) => continue,
        };
        let tmp = path.with_extension("tmp");
        let body = serde_json::json!({ "pairs": pairs }).to_string();
        if std::fs::write(&tmp, body).is_ok() {
            let _ = std::fs::rename(&tmp, &path);
        }
    }
}

/// Tokio's timer has millisecond ticks and rounds up, which would add up to
/// a millisecond per hop: sleep to just before `deadline`, then yield until
/// it passes.
async fn wait_until(deadline: Instant) {
    const TIMER_SLACK: Duration = Duration::from_micros(1500);
    if let Some(early) = deadline.checked_sub(TIMER_SLACK) {
        tokio::time::sleep_until(early).await;
    }
    while Instant::now() < deadline {
        tokio::task::yield_now().await;
    }
}
