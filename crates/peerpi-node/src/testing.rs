//! Test support, shared by this crate's tests and the workspace's suite
//! (feature `testing`): a fake upstream index, nodes run in this process on
//! ephemeral loopback ports (with a swarm on 127.0.0.1 when asked, mDNS
//! off), served by the same HTTP server as `peerpi serve`, and HTTP helpers.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test support fails loudly by design

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use peerpi_testkit::{FakeFile, FakeIndex, IndexState};
use peerpi_upstream::UpstreamConfig;
use sha2::{Digest, Sha256};

use crate::{Node, NodeConfig};

pub struct TestNode {
    pub addr: SocketAddr,
    pub node: Node,
    pub dir: std::sync::Arc<tempfile::TempDir>,
    task: tokio::task::JoinHandle<()>,
}

impl TestNode {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn simple_url(&self) -> String {
        self.url("/simple/")
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn fake_index(files: Vec<FakeFile>) -> FakeIndex {
    FakeIndex::start(IndexState::new(files))
        .await
        .expect("fake index starts")
}

pub fn node_config(upstream: &FakeIndex, dir: &Path) -> NodeConfig {
    let mut upstream_config =
        UpstreamConfig::new(upstream.simple_url().parse().expect("valid URL"));
    upstream_config.page_timeout = Duration::from_secs(3);
    upstream_config.read_timeout = Duration::from_secs(3);
    NodeConfig::new(dir.to_path_buf(), upstream_config)
}

/// A node in this process, serving on an ephemeral loopback port.
pub async fn start_node(upstream: &FakeIndex, tweak: impl FnOnce(&mut NodeConfig)) -> TestNode {
    let dir = std::sync::Arc::new(tempfile::tempdir().expect("temp dir"));
    start_node_in(upstream, dir, tweak).await
}

/// Stops `node` (its HTTP server and its handle on the store) and starts a
/// new one on the same data directory, as a restart would.
pub async fn restart(
    node: TestNode,
    upstream: &FakeIndex,
    tweak: impl FnOnce(&mut NodeConfig),
) -> TestNode {
    let dir = node.dir.clone();
    drop(node);
    start_node_in(upstream, dir, tweak).await
}

/// A node in this process on `dir`, serving on an ephemeral loopback port.
/// Waits (up to 10 s) for a previous node on `dir` to let go of its catalog.
pub async fn start_node_in(
    upstream: &FakeIndex,
    dir: std::sync::Arc<tempfile::TempDir>,
    tweak: impl FnOnce(&mut NodeConfig),
) -> TestNode {
    launch(upstream, dir, tweak, None).await
}

/// Opens the store, starts the swarm (if configured) on it, then the node,
/// as `peerpi serve` does.
async fn launch(
    upstream: &FakeIndex,
    dir: std::sync::Arc<tempfile::TempDir>,
    tweak: impl FnOnce(&mut NodeConfig),
    swarm: Option<peerpi_swarm::SwarmConfig>,
) -> TestNode {
    let mut config = node_config(upstream, dir.path());
    tweak(&mut config);
    let start = Instant::now();
    let store = loop {
        match Node::open_store(&config) {
            Ok((store, _)) => break store,
            Err(e) => {
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "store opens: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let swarm = match swarm {
        Some(swarm_config) => Some(
            peerpi_swarm::SwarmHandle::start(swarm_config, store.clone())
                .await
                .expect("swarm starts"),
        ),
        None => None,
    };
    let node = Node::new(config, store, swarm).expect("node");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let router = node.router();
    // The same server, with the same bounds, as `peerpi serve`.
    let task = tokio::spawn(peerpi_http::serve(
        listener,
        router,
        peerpi_http::Limits::default(),
        std::future::pending(),
    ));
    TestNode {
        addr,
        node,
        dir,
        task,
    }
}

/// A node in this process with a swarm on 127.0.0.1 (no mDNS).
pub async fn peer_node(
    upstream: &FakeIndex,
    bootstrap: &[peerpi_swarm::Multiaddr],
    tweak: impl FnOnce(&mut peerpi_swarm::SwarmConfig),
) -> TestNode {
    peer_node_with(upstream, bootstrap, |_| {}, tweak).await
}

/// A node with a swarm on 127.0.0.1 (no mDNS), its node configuration
/// changed by `node_tweak` too.
pub async fn peer_node_with(
    upstream: &FakeIndex,
    bootstrap: &[peerpi_swarm::Multiaddr],
    node_tweak: impl FnOnce(&mut NodeConfig),
    tweak: impl FnOnce(&mut peerpi_swarm::SwarmConfig),
) -> TestNode {
    let dir = std::sync::Arc::new(tempfile::tempdir().expect("temp dir"));
    peer_node_in(upstream, dir, bootstrap, node_tweak, tweak).await
}

/// As [`peer_node_with`], on the data directory `dir`.
pub async fn peer_node_in(
    upstream: &FakeIndex,
    dir: std::sync::Arc<tempfile::TempDir>,
    bootstrap: &[peerpi_swarm::Multiaddr],
    node_tweak: impl FnOnce(&mut NodeConfig),
    tweak: impl FnOnce(&mut peerpi_swarm::SwarmConfig),
) -> TestNode {
    let mut config = peerpi_swarm::SwarmConfig::new(dir.path().to_path_buf());
    config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    config.bootstrap = bootstrap.to_vec();
    config.mdns = false;
    config.stream_timeout = Duration::from_secs(2);
    config.bulk_listen = Some("127.0.0.1:0".parse().unwrap());
    tweak(&mut config);
    let node = launch(
        upstream,
        dir,
        |c| {
            c.peer_deadline = Duration::from_secs(3);
            node_tweak(c);
        },
        Some(config),
    )
    .await;
    let swarm = node.node.swarm().expect("a swarm").clone();
    assert!(eventually(Duration::from_secs(5), || !swarm.listen_addrs().is_empty()).await);
    node
}

/// Whether `node` blocked `peer` for good (it sent bad bytes).
pub fn blocked_for_good(node: &TestNode, peer: &TestNode) -> bool {
    let id = peer.node.swarm().unwrap().local_peer_id();
    node.node
        .swarm()
        .unwrap()
        .peer_info(&id)
        .is_some_and(|p| p.blocked && p.blocked_until.is_none())
}

/// Keeps `bytes` in the node's store as a blob under their SHA-256, and
/// announces it (what a node does with bytes it verified; a test's liar
/// does it with bytes it tampered with).
pub async fn keep_bytes(node: &TestNode, bytes: Vec<u8>) {
    node.node.blobs().clone().keep_blob(bytes).await;
}

/// Peers the node's swarm is connected to.
pub fn connected(node: &TestNode) -> u64 {
    node.node
        .swarm()
        .unwrap()
        .counters()
        .connected_peers
        .load(std::sync::atomic::Ordering::Relaxed)
}

pub fn p2p_addr(node: &TestNode) -> peerpi_swarm::Multiaddr {
    node.node.swarm().unwrap().listen_addrs()[0].clone()
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none())
        .no_gzip()
        .build()
        .expect("client")
}

pub const JSON: &str = "application/vnd.pypi.simple.v1+json";

/// GETs `url` and returns the whole body (panics on a transport error).
pub async fn get_bytes(url: impl reqwest::IntoUrl) -> bytes::Bytes {
    client()
        .get(url)
        .send()
        .await
        .expect("request")
        .bytes()
        .await
        .expect("body")
}

/// GETs `url` as PEP 691 JSON; the body of a 200 (panics otherwise).
pub async fn get_json_page(url: impl reqwest::IntoUrl) -> bytes::Bytes {
    client()
        .get(url)
        .header("Accept", JSON)
        .send()
        .await
        .expect("request")
        .error_for_status()
        .expect("200")
        .bytes()
        .await
        .expect("body")
}

/// GETs `url` and returns the body as text (panics on a transport error).
pub async fn get_text(url: impl reqwest::IntoUrl) -> String {
    client()
        .get(url)
        .send()
        .await
        .expect("request")
        .text()
        .await
        .expect("body")
}

/// The node URL of `filename` as listed on `project`'s JSON page at `base`
/// (`http://host:port`), resolved from the page's relative URL.
pub async fn file_url_at(base: &str, project: &str, filename: &str) -> String {
    let page_url = format!("{base}/simple/{project}/");
    let response = client()
        .get(&page_url)
        .header("accept", JSON)
        .send()
        .await
        .expect("page request");
    assert_eq!(response.status(), 200, "page {project}");
    let page: serde_json::Value =
        serde_json::from_slice(&response.bytes().await.expect("page body")).expect("JSON page");
    let file = page["files"]
        .as_array()
        .expect("files")
        .iter()
        .find(|f| f["filename"] == filename)
        .unwrap_or_else(|| panic!("{filename} listed on {project}"))
        .clone();
    url::Url::parse(&page_url)
        .expect("url")
        .join(file["url"].as_str().expect("url"))
        .expect("join")
        .to_string()
}

/// Fetches a project page as JSON and returns it parsed.
pub async fn json_page(node: &TestNode, project: &str) -> serde_json::Value {
    let response = client()
        .get(node.url(&format!("/simple/{project}/")))
        .header("accept", JSON)
        .send()
        .await
        .expect("page request");
    assert_eq!(response.status(), 200, "page {project}");
    serde_json::from_slice(&response.bytes().await.expect("page body")).expect("JSON page")
}

/// The node URL of a file listed on a page, resolved from the page's relative URL.
pub async fn file_url(node: &TestNode, project: &str, filename: &str) -> String {
    file_url_at(&format!("http://{}", node.addr), project, filename).await
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Asserts that `body` is exactly the file `filename` of the fake index.
#[track_caller]
pub fn assert_is_upstream_file(upstream: &FakeIndex, filename: &str, body: &[u8]) {
    let expected = upstream
        .state
        .file(filename)
        .expect("a file of the fake index");
    assert_eq!(sha256_hex(body), expected.sha256, "{filename}");
}

/// Reads a counter (summing all series whose labels contain `labels`) from `/metrics`.
pub async fn metric(node: &TestNode, name: &str, labels: &str) -> f64 {
    metric_at(&node.url("/metrics"), name, labels).await
}

/// As [`metric`], from the metrics at `metrics_url` (a node process's).
pub async fn metric_at(metrics_url: &str, name: &str, labels: &str) -> f64 {
    let text = client()
        .get(metrics_url)
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Polls until `check` holds, for at most `limit`.
/// Like [`eventually`] for checks that await (a metric read over HTTP).
pub async fn eventually_async<F: std::future::Future<Output = bool>>(
    limit: Duration,
    mut check: impl FnMut() -> F,
) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    check().await
}

pub async fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check()
}

pub fn temp_files(data_dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(data_dir.join("tmp"))
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default()
}

/// Sends `GET <path>` byte for byte (no client-side URL normalisation) and
/// returns the status and body.
pub async fn raw_get(addr: SocketAddr, path: &[u8], extra_headers: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut request = b"GET ".to_vec();
    request.extend_from_slice(path);
    request.extend_from_slice(
        format!(" HTTP/1.1\r\nHost: {addr}\r\n{extra_headers}Connection: close\r\n\r\n").as_bytes(),
    );
    stream.write_all(&request).await.expect("write");
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .expect("response in time")
        .expect("read");
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Runs a command that is expected to exit (a node refusing to start) and
/// returns its exit code and stderr; a command still running after `within`
/// is killed and the test fails, so a start that is not refused cannot hang
/// the suite.
pub fn exit_within(command: &mut Command, within: Duration) -> (Option<i32>, String) {
    let (code, _, stderr) = output_within(command, within);
    (code, stderr)
}

/// [`exit_within`], with stdout too: (exit code, stdout, stderr).
pub fn output_within(command: &mut Command, within: Duration) -> (Option<i32>, String, String) {
    let stdout_file = tempfile::NamedTempFile::new().unwrap();
    let stderr_file = tempfile::NamedTempFile::new().unwrap();
    let mut child = command
        .stdout(stdout_file.reopen().unwrap())
        .stderr(stderr_file.reopen().unwrap())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > within {
            let _ = child.kill();
            let _ = child.wait();
            panic!("still running after {within:?}; it was expected to exit");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let read = |file: &tempfile::NamedTempFile| std::fs::read_to_string(file.path()).unwrap();
    (status.code(), read(&stdout_file), read(&stderr_file))
}
