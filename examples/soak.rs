//! Soak run (a benchmark, not a test): three real `peerpi serve` processes
//! in one swarm on loopback, a fake upstream, and one hostile peer that
//! changes identity and trick every two minutes (wrong bytes, truncation,
//! stalls, drips, huge size claims, empty bodies). For the whole run:
//!
//! * workers fetch pages, core-metadata files and files as pip and uv do,
//!   at random nodes, some of them walking away mid-download, and check
//!   every complete body against the index's sha256;
//! * every 30 s a real client (pip or uv, in turn) installs the demo graph
//!   into a fresh virtual environment through a random node;
//! * every minute 300 idle connections are opened to one node's HTTP front
//!   and bulk channel and held for 15 s;
//! * every 15 s each node's RSS and open file descriptors are sampled.
//!
//! It prints a Markdown summary (the figures in BENCHMARKS.md come from it).
//!
//! Run: `cargo build --release && cargo run --release --example soak -- [MINUTES]`
//! (default 30). Needs python3 with venv and uv on PATH.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a harness: a failed setup ends the run loudly

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use peerpi_node::{Node, NodeConfig};
use peerpi_swarm::{Adversary, SwarmConfig, SwarmHandle};
use peerpi_testkit::{demo_graph, wheel, DistSpec, FakeFile, FakeIndex, IndexState};
use peerpi_upstream::UpstreamConfig;
use sha2::{Digest, Sha256};

const NODES: usize = 3;
const WORKERS: usize = 4;
const JSON: &str = "application/vnd.pypi.simple.v1+json";
const TRICKS: [Adversary; 6] = [
    Adversary::WrongBytes,
    Adversary::Truncate,
    Adversary::Stall,
    Adversary::Drip,
    Adversary::HugeSize,
    Adversary::EmptyBody,
];

#[derive(Default)]
struct Counts {
    /// Failed requests by what went wrong.
    reasons: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
    requests: AtomicU64,
    failed: AtomicU64,
    corrupted: AtomicU64,
    abandoned: AtomicU64,
    bytes: AtomicU64,
    installs: AtomicU64,
    failed_installs: AtomicU64,
    floods: AtomicU64,
}

struct NodeProc {
    child: Child,
    addr: SocketAddr,
    bulk_port: u16,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The release `peerpi` binary next to this example's own directory.
fn peerpi_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("own path");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    dir.join("peerpi")
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .no_gzip()
        .build()
        .expect("client")
}

async fn wait_healthy(addr: SocketAddr) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if let Ok(r) = client().get(format!("http://{addr}/healthz")).send().await {
            if r.status() == 200 {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("node {addr} did not come up");
}

async fn start_node(upstream: &str, dir: &Path, bootstrap: Option<&str>, i: usize) -> NodeProc {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let bulk_port = free_port();
    let log = std::fs::File::create(dir.join(format!("node{i}.log"))).expect("log");
    let mut cmd = Command::new(peerpi_binary());
    cmd.args([
        "serve",
        "--upstream",
        upstream,
        "--listen",
        &addr.to_string(),
    ])
    .arg("--data-dir")
    .arg(dir.join(format!("node{i}")))
    .args(["--no-mdns", "--p2p-listen", "/ip4/127.0.0.1/tcp/0"])
    .args(["--bulk-listen", &format!("127.0.0.1:{bulk_port}")])
    .args(["--cache-size", "48MiB", "--page-ttl", "5s"])
    .args(["--region", if i == 0 { "a" } else { "b" }])
    .stdout(Stdio::null())
    .stderr(log);
    if let Some(b) = bootstrap {
        cmd.args(["--bootstrap", b]);
    }
    let child = cmd
        .spawn()
        .expect("peerpi starts (cargo build --release first)");
    wait_healthy(addr).await;
    NodeProc {
        child,
        addr,
        bulk_port,
    }
}

async fn p2p_addr(node: &NodeProc) -> String {
    let body = client()
        .get(format!("http://{}/peers", node.addr))
        .send()
        .await
        .expect("peers")
        .bytes()
        .await
        .expect("peers body");
    let peers: serde_json::Value = serde_json::from_slice(&body).expect("peers JSON");
    peers["listen"][0]
        .as_str()
        .expect("a listen address")
        .to_string()
}

/// The package set: the demo graph plus 40 projects with wheels from 20 KB
/// to 6 MB.
fn packages() -> Vec<FakeFile> {
    let mut files = demo_graph();
    for i in 0..40u64 {
        let size = 20_000 + (i * i * 3_700) % 6_000_000;
        files.push(wheel(
            &DistSpec::new(&format!("soak{i}"), "1.0").padded(size),
        ));
    }
    files
}

fn status_of(pid: u32) -> (f64, usize) {
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    (rss, fds)
}

/// A hostile peer in this process, holding every soak file, lying with `trick`.
async fn hostile(
    upstream: &FakeIndex,
    bootstrap: &str,
    trick: Adversary,
) -> (Node, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("dir");
    let config = NodeConfig::new(
        dir.path().to_path_buf(),
        UpstreamConfig::new(upstream.simple_url().parse().expect("url")),
    );
    let (store, _) = Node::open_store(&config).expect("hostile store");
    let mut swarm_config = SwarmConfig::new(dir.path().to_path_buf());
    swarm_config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().expect("addr")];
    swarm_config.bootstrap = vec![bootstrap.parse().expect("bootstrap")];
    swarm_config.mdns = false;
    swarm_config.adversary = Some(trick);
    swarm_config.bulk_listen = Some("127.0.0.1:0".parse().expect("addr"));
    swarm_config.region = Some("b".into());
    let swarm = SwarmHandle::start(swarm_config, store.clone())
        .await
        .expect("hostile swarm");
    let node = Node::new(config, store, Some(swarm)).expect("hostile node");
    for f in upstream.state.files() {
        if let Ok(name) = peerpi_core::ProjectName::new(&f.project) {
            let _ = node.project_page(&name).await;
        }
        let digest = peerpi_core::Sha256Digest::from_hex(&f.sha256).expect("sha");
        if let Ok(peerpi_node::BlobBody::Fetching { mut stream, .. }) = node.blob(&digest).await {
            use futures_util::StreamExt;
            while stream.next().await.is_some() {}
        }
    }
    (node, dir)
}

impl Counts {
    fn fail(&self, reason: impl Into<String>) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut reasons = self.reasons.lock().unwrap_or_else(|p| p.into_inner());
        *reasons.entry(reason.into()).or_default() += 1;
    }
}

async fn worker(
    nodes: Arc<Vec<SocketAddr>>,
    files: Arc<Vec<FakeFile>>,
    counts: Arc<Counts>,
    until: Instant,
    seed: u64,
) {
    let mut rng = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let http = client();
    while Instant::now() < until {
        let node = nodes[(next() % nodes.len() as u64) as usize];
        let file = &files[(next() % files.len() as u64) as usize];
        counts.requests.fetch_add(1, Ordering::Relaxed);
        let page = http
            .get(format!("http://{node}/simple/{}/", file.project))
            .header("accept", JSON)
            .send()
            .await;
        let page = match page {
            Ok(p) if p.status() == 200 => p,
            Ok(p) => {
                counts.fail(format!("page {}", p.status()));
                continue;
            }
            Err(e) => {
                counts.fail(format!("page: {e}"));
                continue;
            }
        };
        let page: serde_json::Value = match page
            .bytes()
            .await
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        {
            Ok(p) => p,
            Err(e) => {
                counts.fail(format!("page body: {e}"));
                continue;
            }
        };
        let Some(listed) = page["files"]
            .as_array()
            .and_then(|fs| fs.iter().find(|f| f["filename"] == file.filename.as_str()))
        else {
            counts.fail("file not listed");
            continue;
        };
        let relative = listed["url"].as_str().unwrap_or_default();
        let base = format!("http://{node}/simple/{}/", file.project);
        let Ok(url) = url::Url::parse(&base).and_then(|b| b.join(relative)) else {
            counts.fail("bad file URL");
            continue;
        };
        let has_metadata = listed["core-metadata"].is_object();
        let metadata = has_metadata && next() % 10 == 0;
        let target = if metadata {
            format!("{url}.metadata")
        } else {
            url.to_string()
        };
        counts.requests.fetch_add(1, Ordering::Relaxed);
        let mut response = match http.get(&target).send().await {
            Ok(r) if r.status() == 200 => r,
            Ok(r) => {
                let status = r.status();
                let text = r.text().await.unwrap_or_default();
                counts.fail(format!(
                    "file {status}: {}",
                    text.trim().chars().take(80).collect::<String>()
                ));
                continue;
            }
            Err(e) => {
                counts.fail(format!("file: {e}"));
                continue;
            }
        };
        let walk_away = next() % 10 == 0;
        let mut hasher = Sha256::new();
        let mut complete = true;
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    counts
                        .bytes
                        .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    hasher.update(&chunk);
                    if walk_away {
                        counts.abandoned.fetch_add(1, Ordering::Relaxed);
                        complete = false;
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    counts.fail(format!("file body cut: {e}"));
                    complete = false;
                    break;
                }
            }
        }
        if complete && !metadata && hex::encode(hasher.finalize()) != file.sha256 {
            counts.corrupted.fetch_add(1, Ordering::Relaxed);
        }
        // Mixed traffic, not a stress test: CI jobs pause between requests.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn install(node: SocketAddr, use_uv: bool) -> bool {
    let dir = tempfile::tempdir().expect("venv dir");
    let index = format!("http://{node}/simple/");
    let venv = dir.path().join("venv");
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status();
    if !made.is_ok_and(|s| s.success()) {
        return false;
    }
    let mut cmd = if use_uv {
        let mut c = Command::new("uv");
        c.args(["pip", "install", "--no-cache", "--python"])
            .arg(venv.join("bin/python"))
            .args(["--index-url", &index, "alpha", "soak3", "soak7"]);
        c
    } else {
        let mut c = Command::new(venv.join("bin/pip"));
        c.args([
            "install",
            "--no-cache-dir",
            "--index-url",
            &index,
            "alpha",
            "soak3",
            "soak7",
        ]);
        c
    };
    cmd.env("PIP_CONFIG_FILE", "/dev/null")
        .env("UV_NO_CONFIG", "1")
        .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    tokio::task::spawn_blocking(move || cmd.status().is_ok_and(|s| s.success()))
        .await
        .unwrap_or(false)
}

async fn flood(node: &NodeProc) {
    let mut held = Vec::new();
    for port in [node.addr.port(), node.bulk_port] {
        for _ in 0..300 {
            if let Ok(s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                held.push(s);
            }
        }
    }
    tokio::time::sleep(Duration::from_secs(15)).await;
}

#[tokio::main]
async fn main() {
    let minutes: u64 = std::env::args()
        .nth(1)
        .and_then(|m| m.parse().ok())
        .unwrap_or(30);
    let files = packages();
    let upstream = FakeIndex::start(IndexState::new(files.clone()))
        .await
        .expect("fake index");
    let work = tempfile::tempdir().expect("work dir");
    let first = start_node(&upstream.simple_url(), work.path(), None, 0).await;
    let bootstrap = p2p_addr(&first).await;
    let mut nodes = vec![first];
    for i in 1..NODES {
        nodes.push(start_node(&upstream.simple_url(), work.path(), Some(&bootstrap), i).await);
    }
    let addrs = Arc::new(nodes.iter().map(|n| n.addr).collect::<Vec<_>>());
    let counts = Arc::new(Counts::default());
    let started = Instant::now();
    let until = started + Duration::from_secs(minutes * 60);
    let files = Arc::new(files);
    let workers: Vec<_> = (0..WORKERS as u64)
        .map(|seed| {
            tokio::spawn(worker(
                addrs.clone(),
                files.clone(),
                counts.clone(),
                until,
                seed + 1,
            ))
        })
        .collect();

    let mut samples: Vec<(u64, Vec<(f64, usize)>)> = Vec::new();
    let mut trick = 0usize;
    let mut hostile_node = Some(hostile(&upstream, &bootstrap, TRICKS[trick]).await);
    let mut last = [Instant::now(); 3]; // install, flood, new hostile
    let mut tick = 0u64;
    while Instant::now() < until {
        if tick % 15 == 0 {
            let sample = nodes.iter().map(|n| status_of(n.child.id())).collect();
            samples.push((started.elapsed().as_secs(), sample));
        }
        if last[0].elapsed() >= Duration::from_secs(30) {
            last[0] = Instant::now();
            let node = addrs[(tick as usize / 30) % NODES];
            counts.installs.fetch_add(1, Ordering::Relaxed);
            if !install(node, tick % 60 < 30).await {
                counts.failed_installs.fetch_add(1, Ordering::Relaxed);
                eprintln!(
                    "install through {node} failed at {} s",
                    started.elapsed().as_secs()
                );
            }
        }
        if last[1].elapsed() >= Duration::from_secs(60) {
            last[1] = Instant::now();
            counts.floods.fetch_add(1, Ordering::Relaxed);
            let target = &nodes[(tick as usize / 60) % NODES];
            flood(target).await;
        }
        if last[2].elapsed() >= Duration::from_secs(120) {
            last[2] = Instant::now();
            trick = (trick + 1) % TRICKS.len();
            drop(hostile_node.take());
            hostile_node = Some(hostile(&upstream, &bootstrap, TRICKS[trick]).await);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        tick = started.elapsed().as_secs();
    }
    for w in workers {
        let _ = w.await;
    }
    let sample = nodes.iter().map(|n| status_of(n.child.id())).collect();
    samples.push((started.elapsed().as_secs(), sample));

    println!("## Soak: {minutes} min, {NODES} nodes, 1 hostile peer\n");
    let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
    println!(
        "requests {}, failed {}, corrupted {}, walked away {}, bytes {} MiB; installs {} ({} failed); floods {}\n",
        c(&counts.requests),
        c(&counts.failed),
        c(&counts.corrupted),
        c(&counts.abandoned),
        c(&counts.bytes) >> 20,
        c(&counts.installs),
        c(&counts.failed_installs),
        c(&counts.floods),
    );
    for (reason, n) in counts
        .reasons
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
    {
        println!("- failed: {n} × {reason}");
    }
    println!();
    println!(
        "| t (s) | {} |",
        (0..NODES)
            .map(|i| format!("node{i} RSS MiB / fds"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    println!("|---|{}", "---|".repeat(NODES));
    let step = (samples.len() / 12).max(1);
    for (i, (t, per_node)) in samples.iter().enumerate() {
        if i % step == 0 || i == samples.len() - 1 {
            let cells: Vec<String> = per_node
                .iter()
                .map(|(rss, fds)| format!("{rss:.0} / {fds}"))
                .collect();
            println!("| {t} | {} |", cells.join(" | "));
        }
    }
    println!(
        "\nupstream file requests: {}",
        upstream.state.count_prefix("/files/")
    );
    for mut n in nodes {
        let _ = n.child.kill();
        let _ = n.child.wait();
    }
}
