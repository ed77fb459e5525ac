//! Damage on a node's own disk is found by re-hashing, not blamed on peers:
//! `peerpi verify` on a stopped node, and the background scrub of a running
//! one, remove a blob whose bytes no longer match its digest, and the next
//! request fetches it again, verified.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use peerpi_core::Sha256Digest;

/// Overwrites the first bytes of `digest`'s blob file under `data_dir`.
fn damage(data_dir: &Path, digest: &str) -> PathBuf {
    let cid = Sha256Digest::from_hex(digest).unwrap().cid().to_string();
    let path = data_dir
        .join("blobs")
        .join(&cid[cid.len() - 2..])
        .join(&cid);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[0] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_removes_a_blob_damaged_on_disk_and_the_node_fetches_it_again() {
    let upstream = fake_index(peerpi_testkit::demo_graph()).await;
    let file = upstream.state.files()[0].clone();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("node");
    let mut node = NodeProcess::start(&upstream.simple_url(), &data, &["--no-p2p"]).await;
    let url = file_url_at(&node.url(""), &file.project, &file.filename).await;
    assert_is_upstream_file(&upstream, &file.filename, &get_bytes(&url).await);
    node.stop_gracefully().await;
    let damaged = damage(&data, &file.sha256);

    let verify = || {
        Command::new(env!("CARGO_BIN_EXE_peerpi"))
            .args(["verify", "--data-dir"])
            .arg(&data)
            .env_remove("PEERPI_CONFIG")
            .output()
            .unwrap()
    };
    let out = verify();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stdout.contains("1 damaged and removed"), "{stdout}");
    assert!(stderr.contains(&file.sha256), "names the blob: {stderr}");
    assert!(!damaged.exists());
    let again = verify();
    assert!(again.status.success(), "a clean store verifies");
    assert!(String::from_utf8_lossy(&again.stdout).contains("0 damaged"));

    let downloads = upstream.state.count_prefix("/files/");
    let node = NodeProcess::start(&upstream.simple_url(), &data, &["--no-p2p"]).await;
    let url = file_url_at(&node.url(""), &file.project, &file.filename).await;
    assert_is_upstream_file(&upstream, &file.filename, &get_bytes(&url).await);
    assert_eq!(
        upstream.state.count_prefix("/files/"),
        downloads + 1,
        "fetched again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_background_scrub_finds_damage_while_the_node_runs() {
    let upstream = fake_index(peerpi_testkit::demo_graph()).await;
    let file = upstream.state.files()[0].clone();
    let node = peer_node_with(
        &upstream,
        &[],
        |c| {
            c.scrub = peerpi_node::scrub::ScrubConfig {
                rate: 1 << 30,
                first: Duration::from_millis(500),
                every: Duration::from_millis(200),
            };
        },
        |_| {},
    )
    .await;
    let url = file_url(&node, &file.project, &file.filename).await;
    assert_is_upstream_file(&upstream, &file.filename, &get_bytes(&url).await);
    let scrubbed = || async { metric(&node, "peerpi_scrubbed_bytes_total", "").await };
    assert!(
        eventually_async(Duration::from_secs(20), || async {
            scrubbed().await >= file.len as f64
        })
        .await,
        "the scrub checks the intact blob"
    );
    let damaged = damage(node.dir.path(), &file.sha256);
    assert!(
        eventually_async(Duration::from_secs(20), || async {
            metric(&node, "peerpi_scrub_damaged_blobs_total", "").await >= 1.0
        })
        .await,
        "the scrub finds the damage"
    );
    assert!(!damaged.exists());
    let downloads = upstream.state.count_prefix("/files/");
    assert_is_upstream_file(&upstream, &file.filename, &get_bytes(&url).await);
    assert_eq!(upstream.state.count_prefix("/files/"), downloads + 1);
}
