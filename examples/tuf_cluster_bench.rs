//! TUF cluster benchmarks (issue 9): page latency in `--trust tuf` against
//! `--trust index` (warm and cold), TUF metadata a node downloads, and the
//! time from a new upstream release to a page that lists it, with the
//! release binaries and the fake index on loopback.
//!
//! ```sh
//! cargo build --release && cargo run --release --example tuf_cluster_bench
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)] // a harness fails loudly

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use peerpi_testkit::server::{FakeIndex, IndexState};
use peerpi_testkit::{demo_graph, wheel, DistSpec};

const PROJECTS: usize = 40;

struct Proc {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(Path::parent).unwrap().join("peerpi")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start(dir: &Path, args: &[&str]) -> Proc {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let child = Command::new(binary())
        .arg("serve")
        .args([
            "--listen",
            &addr.to_string(),
            "--no-mdns",
            "--p2p-listen",
            "/ip4/127.0.0.1/tcp/0",
        ])
        .args(["--bulk-listen", &format!("127.0.0.1:{}", free_port())])
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("peerpi starts (cargo build --release first)");
    // Owned at once, so that a node that never comes up is killed and reaped.
    let node = Proc { child, addr };
    let client = reqwest::Client::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        if let Ok(r) = client.get(format!("http://{addr}/healthz")).send().await {
            if r.status() == 200 {
                return node;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("node did not start: {args:?}");
}

async fn get_ms(client: &reqwest::Client, url: &str) -> f64 {
    let started = Instant::now();
    let response = client
        .get(url)
        .header("Accept", "application/vnd.pypi.simple.v1+json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{url}");
    response.bytes().await.unwrap();
    started.elapsed().as_secs_f64() * 1e3
}

fn percentile(mut values: Vec<f64>, p: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    values[((values.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let mut files = demo_graph();
    for i in 0..PROJECTS {
        files.push(wheel(&DistSpec::new(&format!("bench{i}"), "1.0")));
    }
    let state = IndexState::new(files);
    let upstream = FakeIndex::start(state.clone()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(binary())
        .current_dir(dir.path())
        .args(["tuf", "init", "--repo", "signer/tuf", "--keys", "keys"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let keys = dir.path().join("keys");
    let root = dir.path().join("signer/tuf/metadata/1.root.json");
    let simple = upstream.simple_url();
    // Short page TTLs so that a new release is picked up by revalidation
    // within the run; the sign interval is the default (10 s).
    let signer = start(
        &dir.path().join("signer"),
        &[
            "--upstream",
            &simple,
            "--signer",
            keys.to_str().unwrap(),
            "--page-ttl",
            "2s",
        ],
    )
    .await;
    let tuf_url = format!("http://{}/tuf/", signer.addr);
    let tuf = start(
        &dir.path().join("tuf"),
        &[
            "--trust",
            "tuf",
            "--tuf-root",
            root.to_str().unwrap(),
            "--tuf-url",
            &tuf_url,
            "--page-ttl",
            "2s",
        ],
    )
    .await;
    let index = start(
        &dir.path().join("index"),
        &["--upstream", &simple, "--page-ttl", "2s"],
    )
    .await;
    let client = reqwest::Client::new();

    println!("| measure | index mode | tuf mode |\n|---|---|---|");
    // Cold, project never seen by anyone: the tuf node asks the signer,
    // which fetches, then signs at its next tick (every 10 s).
    let mut cold_index = Vec::new();
    let mut cold_tuf = Vec::new();
    for i in 0..5 {
        cold_index.push(get_ms(&client, &format!("http://{}/simple/bench{i}/", index.addr)).await);
        cold_tuf.push(
            get_ms(
                &client,
                &format!("http://{}/simple/bench{}/", tuf.addr, i + 20),
            )
            .await,
        );
    }
    println!(
        "| cold page, project new to the cluster, median of 5 (ms) | {:.1} | {:.0} |",
        percentile(cold_index.clone(), 0.5),
        percentile(cold_tuf, 0.5)
    );
    // Cold for the node, already signed: the signer fetched bench0..4 when
    // asked through its own /simple/.
    for i in 5..15 {
        get_ms(&client, &format!("http://{}/simple/bench{i}/", signer.addr)).await;
    }
    tokio::time::sleep(Duration::from_secs(11)).await;
    let mut cold_signed = Vec::new();
    let mut cold_index2 = Vec::new();
    for i in 5..15 {
        cold_signed.push(get_ms(&client, &format!("http://{}/simple/bench{i}/", tuf.addr)).await);
        cold_index2.push(get_ms(&client, &format!("http://{}/simple/bench{i}/", index.addr)).await);
    }
    println!(
        "| cold page, already signed, median of 10 (ms) | {:.2} | {:.2} |",
        percentile(cold_index2, 0.5),
        percentile(cold_signed, 0.5)
    );
    // Warm: in memory on both.
    for (name, addr) in [("index", index.addr), ("tuf", tuf.addr)] {
        let _ = name;
        get_ms(&client, &format!("http://{addr}/simple/bench5/")).await;
    }
    let mut warm = [Vec::new(), Vec::new()];
    for _ in 0..500 {
        for (slot, addr) in [(0, index.addr), (1, tuf.addr)] {
            warm[slot].push(get_ms(&client, &format!("http://{addr}/simple/bench5/")).await);
        }
    }
    println!(
        "| warm page, 500 sequential GETs, p50 / p99 (ms) | {:.3} / {:.3} | {:.3} / {:.3} |",
        percentile(warm[0].clone(), 0.5),
        percentile(warm[0].clone(), 0.99),
        percentile(warm[1].clone(), 0.5),
        percentile(warm[1].clone(), 0.99)
    );

    // A new release upstream: how long until each node's page lists it.
    state.add(wheel(&DistSpec::new("bench5", "2.0")));
    let released = Instant::now();
    let mut seen = [None, None];
    while released.elapsed() < Duration::from_secs(120) && seen.iter().any(Option::is_none) {
        for (slot, addr) in [(0, index.addr), (1, tuf.addr)] {
            if seen[slot].is_none() {
                let page = client
                    .get(format!("http://{addr}/simple/bench5/"))
                    .send()
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap();
                if page.contains("bench5-2.0") {
                    seen[slot] = Some(released.elapsed().as_secs_f64());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "| new release to a page that lists it, page TTL 2 s, sign interval 10 s (s) | {:.1} | {:.1} |",
        seen[0].unwrap_or(f64::NAN),
        seen[1].unwrap_or(f64::NAN)
    );

    // TUF metadata the tuf node fetched: its metrics count refreshes; the
    // bytes are the files' sizes in the signer's repository.
    let metrics = client
        .get(format!("http://{}/metrics", tuf.addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let refreshes: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("peerpi_tuf_refresh_total"))
        .collect();
    println!("\ntuf node refreshes: {refreshes:?}");
    let metadata = dir.path().join("signer/tuf/metadata");
    let newest = |suffix: &str| -> u64 {
        std::fs::read_dir(&metadata)
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(suffix))
            .map(|e| e.metadata().unwrap().len())
            .max()
            .unwrap_or(0)
    };
    println!(
        "sizes: timestamp {} B, snapshot {} B, targets {} B (`tuf init`'s default bins)",
        newest("timestamp.json"),
        newest(".snapshot.json"),
        newest(".targets.json")
    );
}
