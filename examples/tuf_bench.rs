//! TUF benchmarks (issue 8): signer throughput, metadata bytes a client
//! downloads, and client time per lookup, on a 16,384-bin repository
//! served over loopback HTTP.
//!
//! ```sh
//! cargo run --release --example tuf_bench
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::path::Path;
use std::time::{Duration, Instant};

use peerpi_testkit::repo_server::RepoServer;
use peerpi_trust::keys::SigningKey;
use peerpi_trust::signer::{InitOptions, Keys, Lifetimes, NewTarget, Repository};
use peerpi_trust::{Client, HttpFetcher, Limits, MetadataDir};
use sha2::{Digest, Sha256};
use url::Url;

const BINS: u32 = 16_384;

fn target(n: usize) -> NewTarget {
    let path = format!("simple/project-{n}/index.json");
    NewTarget {
        sha256: Sha256::digest(path.as_bytes()).into(),
        length: 1_000 + n as u64,
        path,
    }
}

/// Bytes of the files behind the request paths the server logged.
fn bytes_of(root: &Path, requests: &[String]) -> u64 {
    requests
        .iter()
        .filter_map(|p| std::fs::metadata(root.join(p)).ok())
        .map(|m| m.len())
        .sum()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let repo_dir = dir.path().join("repo");
    let keys_dir = dir.path().join("keys");
    let started = Instant::now();
    Repository::init(
        &repo_dir,
        &keys_dir,
        &InitOptions {
            bins: BINS,
            ..InitOptions::default()
        },
    )
    .expect("init");
    println!(
        "init, {BINS} bins: {:.2} s",
        started.elapsed().as_secs_f64()
    );
    let keys = Keys {
        online: Some(SigningKey::load(&keys_dir.join("online.pk8")).expect("online key")),
        ..Keys::default()
    };

    println!("\n| targets per batch | batches | median s per batch | targets/s |");
    println!("|---|---|---|---|");
    let mut next = 0;
    for (batch, runs) in [(1usize, 9usize), (100, 5), (10_000, 3)] {
        let mut seconds = Vec::new();
        for _ in 0..runs {
            let targets: Vec<NewTarget> = (next..next + batch).map(target).collect();
            next += batch;
            let repo = Repository::open(&repo_dir).expect("open");
            let started = Instant::now();
            repo.add(&targets, &keys, Lifetimes::default())
                .expect("add");
            seconds.push(started.elapsed().as_secs_f64());
        }
        let m = median(seconds);
        println!("| {batch} | {runs} | {m:.3} | {:.0} |", batch as f64 / m);
    }

    let server = RepoServer::start(&repo_dir).await.expect("server");
    let metadata_url = Url::parse(&server.url("metadata/")).expect("url");
    let store = dir.path().join("client");
    std::fs::create_dir_all(&store).expect("client dir");
    std::fs::copy(
        repo_dir.join("metadata/1.root.json"),
        store.join("root.json"),
    )
    .expect("root");
    let new_client = || {
        Client::new(
            MetadataDir::new(&store),
            HttpFetcher::new(Duration::from_secs(30)).expect("http"),
            &metadata_url,
            Limits::default(),
        )
        .expect("client")
    };

    server.take_requests();
    let started = Instant::now();
    let mut client = new_client();
    client.refresh().await.expect("refresh");
    let refreshed = started.elapsed();
    client
        .lookup(&target(7).path)
        .await
        .expect("lookup")
        .expect("found");
    let cold = started.elapsed();
    let requests = server.take_requests();
    println!(
        "\ncold start (refresh + one lookup): {} requests, {} bytes of metadata, {:.1} ms ({:.1} ms refresh)",
        requests.len(),
        bytes_of(&repo_dir, &requests),
        cold.as_secs_f64() * 1e3,
        refreshed.as_secs_f64() * 1e3,
    );
    for r in &requests {
        println!(
            "  {r} ({} bytes)",
            bytes_of(&repo_dir, std::slice::from_ref(r))
        );
    }

    // A new lookup in another bin: one bin fetched and verified.
    let started = Instant::now();
    client
        .lookup(&target(8).path)
        .await
        .expect("lookup")
        .expect("found");
    let one_bin = started.elapsed();
    let requests = server.take_requests();
    println!(
        "lookup needing one new bin: {} request(s), {} bytes, {:.2} ms",
        requests.len(),
        bytes_of(&repo_dir, &requests),
        one_bin.as_secs_f64() * 1e3
    );

    // Warm lookups: every role on the path already verified in memory.
    let rounds = 100_000;
    let started = Instant::now();
    for _ in 0..rounds {
        client
            .lookup(&target(7).path)
            .await
            .expect("lookup")
            .expect("found");
    }
    println!(
        "warm lookup: {:.2} µs each ({rounds} lookups)",
        started.elapsed().as_secs_f64() * 1e6 / f64::from(rounds)
    );

    // Refresh after one more batch of one target (a restarted client).
    let repo = Repository::open(&repo_dir).expect("open");
    repo.add(&[target(next)], &keys, Lifetimes::default())
        .expect("add");
    drop(repo);
    server.take_requests();
    let started = Instant::now();
    let mut client = new_client();
    client.refresh().await.expect("refresh");
    let took = started.elapsed();
    let requests = server.take_requests();
    println!(
        "refresh after one added target (stored metadata, new process): {} requests, {} bytes, {:.1} ms",
        requests.len(),
        bytes_of(&repo_dir, &requests),
        took.as_secs_f64() * 1e3
    );
    for r in &requests {
        println!("  {r}");
    }
}
