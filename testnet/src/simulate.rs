//! `testnet simulate`: toward internet scale, many Kademlia nodes in one
//! process over libp2p's in-memory transport (noise and yamux as on the
//! wire, the provider-record settings peerpi uses). It measures what a
//! provider lookup costs (peers asked, rounds, time to the first provider),
//! what an announcement costs, and how many provider records a node holds;
//! from those it projects provider-record memory and re-provide traffic per
//! node as each node's blob count grows. The transport has no latency, so
//! wall time here is CPU time; lookup latency on a real network is
//! projected as rounds times a round trip.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use futures_util::StreamExt;
use libp2p::core::transport::{MemoryTransport, Transport};
use libp2p::core::upgrade::Version;
use libp2p::kad::{self, store::MemoryStore, QueryResult, RecordKey};
use libp2p::{identity, noise, yamux, Multiaddr, PeerId, Swarm};
use plotters::prelude::*;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::scenario::Rng;

#[derive(Debug, Clone, Args)]
pub struct SimulateArgs {
    /// Nodes in the simulated swarm.
    #[arg(long, default_value_t = 1000)]
    pub nodes: usize,
    /// Nodes that each announce one blob.
    #[arg(long, default_value_t = 200)]
    pub providers: usize,
    /// Provider lookups from random nodes for announced blobs.
    #[arg(long, default_value_t = 500)]
    pub lookups: usize,
    /// Seed of the random choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Round trip used to project lookup latency, in milliseconds.
    #[arg(long, default_value_t = 60.0)]
    pub rtt_ms: f64,
    /// Provider records without addresses (peerpi before it advertised its
    /// listen addresses): shows what that costs lookups.
    #[arg(long)]
    pub no_external_addrs: bool,
    /// Where simulation.md, simulation.json and the plot go.
    #[arg(long, default_value = "/tmp/peerpi-simulation")]
    pub out: PathBuf,
}

/// Re-provide interval of a peerpi node, in hours.
const REPROVIDE_INTERVAL_H: f64 = peerpi_swarm::REPROVIDE_INTERVAL.as_secs() as f64 / 3600.0;
/// Bytes a remote provider record costs in peerpi's store, with up to four
/// addresses (peerpi-swarm's `providers` module).
const RECORD_BYTES: f64 = 300.0;
/// Remote provider records a peerpi node keeps at most.
const MAX_REMOTE_RECORDS: f64 = peerpi_swarm::MAX_REMOTE_RECORDS as f64;
/// Bytes on the wire per Kademlia request and response, about (a peer
/// record with addresses, framing, noise and yamux overhead).
const MESSAGE_BYTES: f64 = 600.0;

enum Command {
    Provide(RecordKey, oneshot::Sender<kad::QueryStats>),
    Lookup(RecordKey, oneshot::Sender<Lookup>),
    Bootstrap(oneshot::Sender<()>),
    /// Provider records held for these keys.
    Records(Vec<RecordKey>, oneshot::Sender<usize>),
}

#[derive(Debug, Clone, Serialize)]
struct Lookup {
    found: bool,
    first_provider_ms: f64,
    /// Peers asked when the first provider was named (0: from the local
    /// store).
    requests_to_first: u32,
    requests: u32,
    successes: u32,
    total_ms: f64,
}

#[derive(Debug, Default, Serialize)]
struct Figures {
    nodes: usize,
    providers: usize,
    lookups: Vec<Lookup>,
    provide_requests: Vec<u32>,
    records_per_node: Vec<usize>,
    setup_s: f64,
}

fn node_swarm(key: identity::Keypair) -> Result<Swarm<kad::Behaviour<MemoryStore>>> {
    Ok(libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_other_transport(|key| {
            Ok(MemoryTransport::default()
                .upgrade(Version::V1)
                .authenticate(noise::Config::new(key)?)
                .multiplex(yamux::Config::default())
                .boxed())
        })?
        .with_behaviour(|key| {
            let peer_id = key.public().to_peer_id();
            let store = MemoryStore::new(peer_id);
            let config = peerpi_swarm::kademlia_config();
            let mut kad = kad::Behaviour::with_config(peer_id, store, config);
            kad.set_mode(Some(kad::Mode::Server));
            kad
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(3600)))
        .build())
}

/// One node's event loop: commands in, query results out.
async fn drive(
    mut swarm: Swarm<kad::Behaviour<MemoryStore>>,
    mut commands: mpsc::Receiver<Command>,
) {
    let mut provides: HashMap<kad::QueryId, oneshot::Sender<kad::QueryStats>> = HashMap::new();
    type Running = (Instant, Option<(f64, u32)>, oneshot::Sender<Lookup>);
    let mut lookups: HashMap<kad::QueryId, Running> = HashMap::new();
    let mut bootstraps: HashMap<kad::QueryId, oneshot::Sender<()>> = HashMap::new();
    loop {
        tokio::select! {
            command = commands.recv() => match command {
                None => return,
                Some(Command::Provide(key, tx)) => match swarm.behaviour_mut().start_providing(key) {
                    Ok(id) => { provides.insert(id, tx); }
                    Err(_) => drop(tx),
                },
                Some(Command::Lookup(key, tx)) => {
                    let id = swarm.behaviour_mut().get_providers(key);
                    lookups.insert(id, (Instant::now(), None, tx));
                }
                Some(Command::Bootstrap(tx)) => match swarm.behaviour_mut().bootstrap() {
                    Ok(id) => { bootstraps.insert(id, tx); }
                    Err(_) => drop(tx),
                },
                Some(Command::Records(keys, tx)) => {
                    use kad::store::RecordStore;
                    let store = swarm.behaviour_mut().store_mut();
                    let _ = tx.send(keys.iter().map(|k| store.providers(k).len()).sum());
                }
            },
            event = swarm.select_next_some() => {
                let libp2p::swarm::SwarmEvent::Behaviour(kad::Event::OutboundQueryProgressed { id, result, stats, step }) = event else {
                    continue;
                };
                match result {
                    QueryResult::StartProviding(_) if step.last => {
                        if let Some(tx) = provides.remove(&id) { let _ = tx.send(stats); }
                    }
                    QueryResult::GetProviders(result) => {
                        if let Some((started, first, _)) = lookups.get_mut(&id) {
                            let found = matches!(result, Ok(kad::GetProvidersOk::FoundProviders { ref providers, .. }) if !providers.is_empty());
                            if found && first.is_none() {
                                *first = Some((started.elapsed().as_secs_f64() * 1000.0, stats.num_requests()));
                            }
                        }
                        if step.last {
                            if let Some((started, first, tx)) = lookups.remove(&id) {
                                let _ = tx.send(Lookup {
                                    found: first.is_some(),
                                    first_provider_ms: first.map_or(0.0, |f| f.0),
                                    requests_to_first: first.map_or(0, |f| f.1),
                                    requests: stats.num_requests(),
                                    successes: stats.num_successes(),
                                    total_ms: started.elapsed().as_secs_f64() * 1000.0,
                                });
                            }
                        }
                    }
                    QueryResult::Bootstrap(_) if step.last => {
                        if let Some(tx) = bootstraps.remove(&id) { let _ = tx.send(()); }
                    }
                    _ => {}
                }
            }
        }
    }
}

/// Awaits a reply, bounded: a node that does not answer within `limit`
/// counts as no answer.
async fn reply<T>(rx: oneshot::Receiver<T>, limit: Duration) -> Option<T> {
    tokio::time::timeout(limit, rx).await.ok()?.ok()
}

pub fn run(args: &SimulateArgs) -> Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(simulate(args))
}

async fn simulate(args: &SimulateArgs) -> Result<()> {
    let started = Instant::now();
    let n = args.nodes.max(2);
    let mut rng = Rng(args.seed.max(1));
    let mut handles = Vec::with_capacity(n);
    let mut ids: Vec<(PeerId, Multiaddr)> = Vec::with_capacity(n);
    for i in 0..n {
        let key = identity::Keypair::generate_ed25519();
        let id = key.public().to_peer_id();
        let mut swarm = node_swarm(key)?;
        let addr: Multiaddr = format!("/memory/{}", 1_000_000 + i as u64).parse()?;
        swarm.listen_on(addr.clone())?;
        // As a peerpi node does with its listen addresses: provider records
        // carry external addresses, and a record without any is only
        // answered by peers that have the provider in their routing table.
        if !args.no_external_addrs {
            swarm.add_external_address(addr.clone());
        }
        // Each node knows the first node and three earlier random ones, as
        // runners that bootstrap from a seed list.
        for _ in 0..3 {
            if i > 0 {
                let (peer, a) = &ids[rng.below(i)];
                swarm.behaviour_mut().add_address(peer, a.clone());
            }
        }
        if i > 0 {
            swarm
                .behaviour_mut()
                .add_address(&ids[0].0, ids[0].1.clone());
        }
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(drive(swarm, rx));
        handles.push(tx);
        ids.push((id, addr));
    }
    // Bootstrap in batches so that routing tables fill as in a real join,
    // then once more for every node, as Kademlia's periodic bootstrap does
    // (nodes that joined early know little of those that came later).
    let rounds: Vec<usize> = (1..n).chain(0..n).collect();
    for batch in rounds.chunks(50) {
        let mut waits = Vec::new();
        for &i in batch {
            let (tx, rx) = oneshot::channel();
            handles[i]
                .send(Command::Bootstrap(tx))
                .await
                .context("node stopped")?;
            waits.push(rx);
        }
        for rx in waits {
            let _ = reply(rx, Duration::from_secs(60)).await;
        }
    }
    eprintln!(
        "simulate: {n} nodes up and bootstrapped in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let mut figures = Figures {
        nodes: n,
        providers: args.providers.min(n),
        setup_s: started.elapsed().as_secs_f64(),
        ..Figures::default()
    };
    let mut keys = Vec::new();
    let mut waits = Vec::new();
    for p in 0..figures.providers {
        let key = RecordKey::new(&format!("blob-{p}-{}", args.seed));
        let node = rng.below(n);
        let (tx, rx) = oneshot::channel();
        handles[node]
            .send(Command::Provide(key.clone(), tx))
            .await?;
        waits.push(rx);
        keys.push(key);
    }
    for rx in waits {
        if let Some(stats) = reply(rx, Duration::from_secs(60)).await {
            figures.provide_requests.push(stats.num_requests());
        }
    }
    eprintln!(
        "simulate: {} blobs announced",
        figures.provide_requests.len()
    );
    for chunk in (0..args.lookups).collect::<Vec<_>>().chunks(25) {
        let mut waits = Vec::new();
        for _ in chunk {
            let key = keys[rng.below(keys.len())].clone();
            let (tx, rx) = oneshot::channel();
            handles[rng.below(n)].send(Command::Lookup(key, tx)).await?;
            waits.push(rx);
        }
        for rx in waits {
            if let Some(lookup) = reply(rx, Duration::from_secs(60)).await {
                figures.lookups.push(lookup);
            }
        }
    }
    for handle in &handles {
        let (tx, rx) = oneshot::channel();
        handle.send(Command::Records(keys.clone(), tx)).await?;
        if let Some(count) = reply(rx, Duration::from_secs(10)).await {
            figures.records_per_node.push(count);
        }
    }
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(
        args.out.join("simulation.json"),
        serde_json::to_string_pretty(&figures)?,
    )?;
    plot_requests(&figures, &args.out.join("lookup-requests.svg"))?;
    let md = markdown(&figures, args);
    std::fs::write(args.out.join("simulation.md"), &md)?;
    print!("{md}");
    Ok(())
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, count) = values.fold((0.0, 0usize), |(s, c), v| (s + v, c + 1));
    if count == 0 {
        0.0
    } else {
        sum / count as f64
    }
}

fn markdown(f: &Figures, args: &SimulateArgs) -> String {
    let q = |v: Vec<f64>, p: f64| crate::results::quantile(&v, p);
    let requests: Vec<f64> = f.lookups.iter().map(|l| f64::from(l.requests)).collect();
    let found = f.lookups.iter().filter(|l| l.found).count();
    // The query keeps alpha = 3 requests in flight: the first provider is
    // at least (requests so far / 3) round trips away.
    let to_first: Vec<f64> = f
        .lookups
        .iter()
        .filter(|l| l.found)
        .map(|l| f64::from(l.requests_to_first))
        .collect();
    let rounds: Vec<f64> = to_first.iter().map(|r| (r / 3.0).ceil()).collect();
    let first_ms: Vec<f64> = f
        .lookups
        .iter()
        .filter(|l| l.found)
        .map(|l| l.first_provider_ms)
        .collect();
    let provide = mean(f.provide_requests.iter().map(|r| f64::from(*r)));
    let records = mean(f.records_per_node.iter().map(|r| *r as f64));
    let per_blob_records = if f.providers == 0 {
        0.0
    } else {
        records * f.nodes as f64 / f.providers as f64
    };
    let mut md = format!(
        "# Simulation: {} Kademlia nodes in one process\n\n\
         `testnet simulate --nodes {} --providers {} --lookups {} --seed {}{}` \
         (libp2p's in-memory transport with noise and yamux, peerpi's Kademlia settings; \
         setup {:.0} s on this machine).\n\n\
         | measure | value |\n|---|---|\n\
         | lookups that found the provider | {} of {} |\n\
         | peers asked per lookup, p50 / p95 / max | {:.0} / {:.0} / {:.0} |\n\
         | peers asked before the first provider, p50 / p95 | {:.0} / {:.0} |\n\
         | round trips to the first provider (3 requests in flight), p50 / p95 | {:.0} / {:.0} |\n\
         | time to the first provider in process, p50 / p95 | {:.1} ms / {:.1} ms |\n\
         | projected first-provider latency at {} ms RTT (round trips x RTT), p50 / p95 | {:.0} ms / {:.0} ms |\n\
         | peers asked per announcement (mean) | {:.1} |\n\
         | provider records stored per announced blob, cluster-wide | {:.1} |\n\n",
        f.nodes,
        args.nodes,
        args.providers,
        args.lookups,
        args.seed,
        if args.no_external_addrs {
            " --no-external-addrs"
        } else {
            ""
        },
        f.setup_s,
        found,
        f.lookups.len(),
        q(requests.clone(), 0.5),
        q(requests.clone(), 0.95),
        q(requests.clone(), 1.0),
        q(to_first.clone(), 0.5),
        q(to_first, 0.95),
        q(rounds.clone(), 0.5),
        q(rounds.clone(), 0.95),
        q(first_ms.clone(), 0.5),
        q(first_ms.clone(), 0.95),
        args.rtt_ms,
        q(rounds.clone(), 0.5) * args.rtt_ms,
        q(rounds, 0.95) * args.rtt_ms,
        provide,
        per_blob_records,
    );
    md.push_str(
        "Projection per node, every node holding the same number of blobs (each blob's record \
         stored on about the replication factor's worth of peers, as measured above; re-provided \
         every 12 h; one request and response about 600 bytes):\n\n\
         | blobs per node | provider records held | record memory | fits peerpi's cap (262,144 records) | re-provide messages per hour | re-provide traffic per hour |\n\
         |---|---|---|---|---|---|\n",
    );
    for blobs in [1_000.0, 10_000.0, 100_000.0] {
        let held = blobs * per_blob_records;
        let messages = blobs * (provide + per_blob_records) / REPROVIDE_INTERVAL_H;
        md.push_str(&format!(
            "| {blobs:.0} | {held:.0} | {:.0} MB | {} | {messages:.0} | {:.1} MB |\n",
            held * RECORD_BYTES / 1e6,
            if held <= MAX_REMOTE_RECORDS {
                "yes"
            } else {
                "no: records beyond it are dropped"
            },
            messages * MESSAGE_BYTES * 2.0 / 1e6,
        ));
    }
    md.push_str(
        "\n![peers asked per lookup](lookup-requests.svg)\n\n\
         Where it stops scaling: a lookup asks a few dozen peers and names the first provider \
         after a few round trips, growing with the logarithm of the swarm; \
         but every node stores records for about 20 peers' worth of blobs, so record memory and \
         re-provide traffic grow with the blobs each node holds, not with the swarm. At 100,000 \
         blobs per node the records no longer fit the store's cap and lookups start to miss. \
         What would change it: announce per project or per release instead of per file (one \
         record for a wheel set), re-provide only what peers asked for recently, or let each \
         region keep one tracker of its holders and use the DHT only between regions.\n",
    );
    md
}

fn plot_requests(f: &Figures, path: &std::path::Path) -> Result<()> {
    let root = SVGBackend::new(path, (900, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut counts: std::collections::BTreeMap<u32, usize> = std::collections::BTreeMap::new();
    for l in &f.lookups {
        *counts.entry(l.requests).or_default() += 1;
    }
    let max_x = counts.keys().max().copied().unwrap_or(1) + 1;
    let max_y = counts.values().max().copied().unwrap_or(1) + 1;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("Peers asked per provider lookup, {} nodes", f.nodes),
            ("sans-serif", 22),
        )
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d(0u32..max_x, 0usize..max_y)?;
    chart
        .configure_mesh()
        .x_desc("peers asked")
        .y_desc("lookups")
        .draw()?;
    chart.draw_series(
        counts
            .iter()
            .map(|(x, y)| Rectangle::new([(*x, 0), (*x + 1, *y)], RGBColor(31, 119, 180).filled())),
    )?;
    root.present()?;
    Ok(())
}
