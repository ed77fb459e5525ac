//! A signer node (`peerpi serve --signer`), as an operator runs it: the
//! real binary, its swarm on loopback, pip installing through it. The pages
//! it fetched become signed TUF targets, served at `/tuf/`, and a TUF client
//! verifies that the signed bytes are exactly the PEP 691 page the node
//! serves.

use crate::common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::python::*;
use common::*;
use peerpi_testkit::demo_graph;
use peerpi_trust::{Client, HttpFetcher, Limits, MetadataDir};
use url::Url;

#[tokio::test]
async fn pages_a_signer_fetched_are_signed_and_verify_as_the_served_json() {
    let upstream = fake_index(demo_graph()).await;
    let dir = tempfile::tempdir().unwrap();
    tuf_init(dir.path(), "data/tuf", "256");
    let keys = dir.path().join("keys");
    let node = NodeProcess::start(
        &upstream.simple_url(),
        &dir.path().join("data"),
        &[
            "--signer",
            keys.to_str().unwrap(),
            "--sign-interval",
            "200ms",
        ],
    )
    .await;
    let venv = dir.path().join("venv");
    let bin = pip_venv(&venv).await;
    pip_install(&bin, &node.url("/simple/"), &["alpha"]).await;

    let store = dir.path().join("client");
    std::fs::create_dir_all(&store).unwrap();
    std::fs::copy(
        dir.path().join("data/tuf/metadata/1.root.json"),
        store.join("root.json"),
    )
    .unwrap();
    let metadata_url = Url::parse(&node.url("/tuf/metadata/")).unwrap();
    let targets_url = Url::parse(&node.url("/tuf/targets/")).unwrap();
    let mut client = Client::new(
        MetadataDir::new(&store),
        HttpFetcher::new(Duration::from_secs(10)).unwrap(),
        &metadata_url,
        Limits::default(),
    )
    .unwrap();
    // Signed within the cadence (200 ms); bounded wait.
    let started = Instant::now();
    let info = loop {
        client.refresh().await.unwrap();
        if let Some(info) = client.lookup("simple/alpha/index.json").await.unwrap() {
            break info;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "alpha's page was never signed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let file = client
        .download(&info, &targets_url, &dir.path().join("out"))
        .await
        .unwrap();
    let signed = std::fs::read(file).unwrap();
    let served = get_json_page(node.url("/simple/alpha/")).await;
    assert_eq!(
        signed,
        served.as_ref(),
        "the signed page is the JSON page the node serves"
    );
    // The signer keeps the signed bytes as a blob (announced on the swarm),
    // so peers can fetch the page by its digest from it.
    let digest = sha256_hex(&signed);
    let blob = get_bytes(node.url(&format!("/files/{digest}/alpha.index.json"))).await;
    assert_eq!(blob.as_ref(), signed.as_slice());
    // Every project pip needed was signed (alpha's dependencies too).
    for project in expected().iter().map(|(name, _)| name) {
        let target = format!("simple/{project}/index.json");
        assert!(client.lookup(&target).await.unwrap().is_some(), "{target}");
    }
    // A project never fetched is not a target.
    assert!(client
        .lookup("simple/never-fetched/index.json")
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn the_tuf_route_serves_only_repository_files() {
    let upstream = fake_index(demo_graph()).await;
    let dir = tempfile::tempdir().unwrap();
    tuf_init(dir.path(), "data/tuf", "16");
    std::fs::write(dir.path().join("data/secret.txt"), b"not for peers").unwrap();
    let keys = dir.path().join("keys");
    let node = NodeProcess::start(
        &upstream.simple_url(),
        &dir.path().join("data"),
        &["--signer", keys.to_str().unwrap()],
    )
    .await;
    let ok = client()
        .get(node.url("/tuf/metadata/timestamp.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.headers()["cache-control"], "no-cache");
    let versioned = client()
        .get(node.url("/tuf/metadata/1.root.json"))
        .send()
        .await
        .unwrap();
    assert!(versioned.headers()["cache-control"]
        .to_str()
        .unwrap()
        .contains("immutable"));
    for path in [
        "/tuf/../secret.txt",
        "/tuf/metadata/../../secret.txt",
        "/tuf/keys/online.pk8",
        "/tuf/.signer.lock",
    ] {
        let (status, _) = raw_get(node.addr, path.as_bytes(), "").await;
        assert_eq!(status, 404, "{path}");
    }
}

#[tokio::test]
async fn a_signer_without_a_repository_refuses_to_start_and_says_how_to_make_one() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_peerpi"))
        .args([
            "serve",
            "--upstream",
            "http://127.0.0.1:9/simple/",
            "--no-p2p",
            "--listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .arg("--signer")
        .arg(dir.path().join("keys"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("peerpi tuf init"), "{stderr}");
}
