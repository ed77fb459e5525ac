//! The real `peerpi` process: killed with SIGKILL mid-download it comes back
//! with no partial blob and a consistent catalog; on SIGTERM it lets an
//! in-flight download finish and exits cleanly.

use crate::common;

use std::process::Command;
use std::time::Duration;

use common::*;
use peerpi_testkit::{synthetic, Fault};

const BIG: &str = "big-1.0.tar.gz";
const LEN: u64 = 4 << 20;

async fn slow_index() -> peerpi_testkit::FakeIndex {
    let upstream = fake_index(vec![synthetic("big", BIG, LEN, 9)]).await;
    // 64 chunks of 64 KiB, 40 ms apart: about 2.5 s.
    upstream.state.set_fault(
        "/files/",
        Fault::Slow {
            chunk: 64 * 1024,
            delay: Duration::from_millis(40),
        },
    );
    upstream
}

async fn file_url_of(node: &NodeProcess, project: &str, filename: &str) -> String {
    file_url_at(&format!("http://{}", node.addr), project, filename).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_download_leaves_no_partial_blob() {
    let upstream = slow_index().await;
    let data = tempfile::tempdir().unwrap();
    let expected = upstream.state.file(BIG).unwrap().sha256;

    let mut node = NodeProcess::start(&upstream.simple_url(), data.path(), &[]).await;
    let url = file_url_of(&node, "big", BIG).await;
    let mut response = client().get(&url).send().await.unwrap();
    let mut received = response.chunk().await.unwrap().map_or(0, |c| c.len());
    while received < 256 * 1024 {
        received += response.chunk().await.unwrap().map_or(0, |c| c.len());
    }
    assert!(
        !temp_files(data.path()).is_empty(),
        "a download in progress has a temp file"
    );
    node.child.kill().unwrap(); // SIGKILL
    node.child.wait().unwrap();
    let rest = async {
        let mut total = received;
        while let Ok(Some(c)) = response.chunk().await {
            total += c.len();
        }
        total
    }
    .await;
    assert!(
        (rest as u64) < LEN,
        "the killed node did not hand out a complete file"
    );
    let addr = node.addr;
    drop(node);

    let node = NodeProcess::start_at(addr, &upstream.simple_url(), data.path(), &[]).await;
    assert!(
        temp_files(data.path()).is_empty(),
        "leftover temp files removed on start"
    );
    // As pip would, read the page first (the catalog may have lost its last
    // half second of page writes to the SIGKILL; that is allowed, an
    // inconsistency is not).
    assert_eq!(file_url_of(&node, "big", BIG).await, url);
    let head = client().head(&url).send().await.unwrap();
    assert_eq!(
        head.headers()["x-peerpi-source"],
        "miss",
        "nothing partial was stored"
    );
    let metrics = get_text(node.url("/metrics")).await;
    assert!(
        metrics.lines().any(|l| l == "peerpi_cache_blobs 0"),
        "{metrics}"
    );

    upstream.state.clear_faults();
    let body = get_bytes(&url).await;
    assert_eq!(sha256_hex(&body), expected);
    let head = client().head(&url).send().await.unwrap();
    assert_eq!(head.headers()["x-peerpi-source"], "local");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_responses_then_exits() {
    let upstream = slow_index().await;
    let data = tempfile::tempdir().unwrap();
    let expected = upstream.state.file(BIG).unwrap().sha256;
    let mut node = NodeProcess::start(
        &upstream.simple_url(),
        data.path(),
        &["--shutdown-timeout", "20s"],
    )
    .await;
    let url = file_url_of(&node, "big", BIG).await;
    let mut response = client().get(&url).send().await.unwrap();
    let mut body = Vec::new();
    body.extend_from_slice(&response.chunk().await.unwrap().unwrap());

    let pid = node.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    while let Some(c) = response.chunk().await.unwrap() {
        body.extend_from_slice(&c);
    }
    assert_eq!(
        sha256_hex(&body),
        expected,
        "the in-flight download completed"
    );
    let status = node.child.wait().unwrap();
    assert!(status.success(), "clean exit: {status:?}");
    assert!(
        client().get(node.url("/healthz")).send().await.is_err(),
        "no longer accepting"
    );

    // The catalog was flushed: a restart serves the file locally.
    let addr = node.addr;
    drop(node);
    let node = NodeProcess::start_at(addr, &upstream.simple_url(), data.path(), &[]).await;
    let head = client().head(&url).send().await.unwrap();
    assert_eq!(head.headers()["x-peerpi-source"], "local");
    drop(node);
}

#[test]
fn missing_upstream_is_a_clear_cli_error() {
    // Nothing configured and no Python with pip to ask.
    let data = tempfile::tempdir().unwrap();
    let (code, stderr) = exit_within(
        Command::new(env!("CARGO_BIN_EXE_peerpi"))
            .args(["serve", "--data-dir"])
            .arg(data.path())
            .env_clear()
            .env("HOME", data.path())
            .env("PEERPI_PYTHON", data.path().join("no-python")),
        Duration::from_secs(30),
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("no upstream index is configured")
            && stderr.contains("--upstream")
            && stderr.contains("no-python"),
        "{stderr}"
    );
}

#[test]
fn env_prints_exports_for_pip_and_uv() {
    let output = Command::new(env!("CARGO_BIN_EXE_peerpi"))
        .args(["env", "--listen", "127.0.0.1:9999"])
        .env_remove("PEERPI_CONFIG")
        .env_remove("PEERPI_LISTEN")
        .output()
        .unwrap();
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("export PIP_INDEX_URL=http://127.0.0.1:9999/simple/"),
        "{stdout}"
    );
    assert!(
        stdout.contains("export UV_DEFAULT_INDEX=http://127.0.0.1:9999/simple/"),
        "{stdout}"
    );
}

#[test]
fn a_taken_bulk_port_is_a_clear_cli_error() {
    let data = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let bulk = taken.local_addr().unwrap().to_string();
    let output = Command::new(env!("CARGO_BIN_EXE_peerpi"))
        .args([
            "serve",
            "--upstream",
            "http://127.0.0.1:9/simple/",
            "--no-mdns",
        ])
        .args(["--listen", &format!("127.0.0.1:{}", common::free_port())])
        .args([
            "--p2p-listen",
            "/ip4/127.0.0.1/tcp/0",
            "--bulk-listen",
            &bulk,
        ])
        .arg("--data-dir")
        .arg(data.path())
        .env_remove("PEERPI_CONFIG")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&bulk)
            && stderr.contains("bulk channel")
            && stderr.contains("--bulk-listen"),
        "{stderr}"
    );
}

/// With the usual limit of 1,024 open files, 1,100 idle connections to the
/// bulk port (no ticket is needed to connect) used every descriptor and the
/// HTTP front stopped answering, `/healthz` included. The bulk channel now
/// has its own cap (256) and the front answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_to_the_bulk_port_do_not_starve_the_front() {
    const IDLE: usize = 1100;
    const OPEN_FILES: &str = "--nofile=1024:1024";
    rlimit::increase_nofile_limit(8192).unwrap();
    let upstream = fake_index(peerpi_testkit::demo_graph()).await;
    let data = tempfile::tempdir().unwrap();
    let bulk = format!("127.0.0.1:{}", free_port());
    let addr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let node = NodeProcess::start_wrapped(
        &["prlimit", OPEN_FILES, "--"],
        addr,
        &upstream.simple_url(),
        data.path(),
        &["--bulk-listen", &bulk],
    )
    .await;
    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        match tokio::net::TcpStream::connect(&bulk).await {
            Ok(s) => idle.push(s),
            Err(e) => panic!("connect {}: {e}", idle.len()),
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for path in ["/healthz", "/simple/alpha/"] {
        let answer =
            tokio::time::timeout(Duration::from_secs(3), client().get(node.url(path)).send())
                .await
                .unwrap_or_else(|_| panic!("{path} answered within 3 s"))
                .unwrap();
        assert_eq!(answer.status(), 200, "{path}");
    }
    drop(idle);
}

/// Settings come from `PEERPI_*` variables as from flags, the `no-`
/// switches included: a node started with nothing but variables takes its
/// upstream from them and runs without a swarm when told so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn variables_configure_a_node_like_flags() {
    let upstream = fake_index(peerpi_testkit::demo_graph()).await;
    let dir = tempfile::tempdir().unwrap();
    let simple = upstream.simple_url();
    let node = NodeProcess::start_unconfigured(
        dir.path(),
        &[
            ("PEERPI_UPSTREAM", simple.as_str()),
            ("PEERPI_NO_P2P", "1"),
            ("PEERPI_PAGE_MAX_AGE", "7s"),
        ],
    )
    .await;
    let peers = client().get(node.url("/peers")).send().await.unwrap();
    assert_eq!(peers.status(), 404, "no swarm");
    assert!(peers.text().await.unwrap().contains("peer-to-peer is off"));
    let page = client()
        .get(node.url("/simple/alpha/"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let cache_control = page.headers()["cache-control"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(cache_control.contains("max-age=7"), "{cache_control}");
}
