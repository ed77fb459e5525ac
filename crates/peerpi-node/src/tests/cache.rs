//! The pull-through cache under concurrency and faults: single flight,
//! streaming before the download ends, bad bytes never released or stored,
//! stale pages during outages, eviction under the cap.

use std::time::Duration;

use crate::testing::*;
use peerpi_core::Sha256Digest;
use peerpi_testkit::{demo_graph, synthetic, Fault};

const BIG: &str = "big-1.0.tar.gz";

fn big_file(len: u64) -> Vec<peerpi_testkit::FakeFile> {
    vec![synthetic("big", BIG, len, 42)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_for_one_cold_blob_share_one_download() {
    let upstream = fake_index(big_file(2 << 20)).await;
    // Slow enough that every request arrives while the download runs.
    upstream.state.set_fault(
        "/files/",
        Fault::Slow {
            chunk: 64 * 1024,
            delay: Duration::from_millis(10),
        },
    );
    let node = start_node(&upstream, |_| {}).await;
    let url = file_url(&node, "big", BIG).await;
    let expected = upstream.state.file(BIG).unwrap().sha256;
    let c = client();
    let requests = (0..200).map(|_| {
        let c = c.clone();
        let url = url.clone();
        tokio::spawn(async move { c.get(&url).send().await.unwrap().bytes().await.unwrap() })
    });
    let bodies = futures_util::future::join_all(requests).await;
    assert_eq!(bodies.len(), 200);
    for body in bodies {
        let body = body.unwrap();
        assert_eq!(body.len(), 2 << 20);
        assert_eq!(sha256_hex(&body), expected);
    }
    assert_eq!(
        upstream.state.count(&format!("/files/{BIG}")),
        1,
        "exactly one upstream fetch"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_for_one_cold_page_share_one_upstream_request() {
    let upstream = fake_index(demo_graph()).await;
    upstream.state.set_fault(
        "/simple/",
        Fault::Slow {
            chunk: 1,
            delay: Duration::ZERO,
        },
    );
    let node = start_node(&upstream, |_| {}).await;
    let requests = (0..50).map(|_| {
        let c = client();
        let url = node.url("/simple/alpha/");
        tokio::spawn(async move { c.get(&url).send().await.unwrap().status() })
    });
    for status in futures_util::future::join_all(requests).await {
        assert_eq!(status.unwrap(), 200);
    }
    assert_eq!(upstream.state.count("/simple/alpha/"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_download_reaches_the_client_before_it_ends() {
    let upstream = fake_index(big_file(256 * 1024)).await;
    // 64 chunks, 50 ms apart: about 3 s upstream.
    upstream.state.set_fault(
        "/files/",
        Fault::Slow {
            chunk: 4096,
            delay: Duration::from_millis(50),
        },
    );
    let node = start_node(&upstream, |_| {}).await;
    let url = file_url(&node, "big", BIG).await;
    let digest = Sha256Digest::from_hex(&upstream.state.file(BIG).unwrap().sha256).unwrap();
    let mut response = client().get(&url).send().await.unwrap();
    let first = response.chunk().await.unwrap().expect("a first chunk");
    assert!(!first.is_empty());
    assert!(
        node.node.store().get(&digest).unwrap().is_none(),
        "the client had bytes while the download was still running"
    );
    let mut total = first.len();
    while let Some(chunk) = response.chunk().await.unwrap() {
        total += chunk.len();
    }
    assert_eq!(total, 256 * 1024);
    assert!(node.node.store().get(&digest).unwrap().is_some());
}

async fn assert_bad_upstream_bytes_are_never_released(fault: Fault) {
    let upstream = fake_index(big_file(300_000)).await;
    upstream.state.set_fault("/files/", fault.clone());
    let node = start_node(&upstream, |_| {}).await;
    let url = file_url(&node, "big", BIG).await;
    let expected = upstream.state.file(BIG).unwrap();
    let digest = Sha256Digest::from_hex(&expected.sha256).unwrap();

    // Either the failure is known before the response starts (502 with a
    // message) or the response is cut short: never a complete body.
    let response = client().get(&url).send().await.unwrap();
    if response.status() == 502 {
        assert!(response.text().await.unwrap().contains("upstream"));
    } else {
        assert_eq!(response.status(), 200);
        if let Ok(b) = response.bytes().await {
            assert!(
                (b.len() as u64) < expected.len,
                "{fault:?}: a complete body of {} bytes was released",
                b.len()
            );
        }
    }
    assert!(
        eventually(Duration::from_secs(5), || temp_files(node.dir.path())
            .is_empty())
        .await,
        "temp file removed"
    );
    assert!(
        node.node.store().get(&digest).unwrap().is_none(),
        "nothing stored"
    );
    assert_eq!(node.node.store().total_bytes(), 0);

    // Upstream heals: the next request fetches again and succeeds.
    upstream.state.clear_faults();
    let body = get_bytes(&url).await;
    assert_eq!(sha256_hex(&body), expected.sha256);
    assert_eq!(upstream.state.count(&format!("/files/{BIG}")), 2);
    assert!(node.node.store().get(&digest).unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_bytes_from_upstream_cut_the_response_and_store_nothing() {
    assert_bad_upstream_bytes_are_never_released(Fault::WrongBytes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_upstream_body_cuts_the_response_and_stores_nothing() {
    assert_bad_upstream_bytes_are_never_released(Fault::Truncate { after: 100_000 }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_bytes_are_counted_as_verification_failures() {
    let upstream = fake_index(big_file(10_000)).await;
    upstream.state.set_fault("/files/", Fault::WrongBytes);
    let node = start_node(&upstream, |_| {}).await;
    let url = file_url(&node, "big", BIG).await;
    let _ = client().get(&url).send().await.unwrap().bytes().await;
    assert!(
        eventually(Duration::from_secs(5), || temp_files(node.dir.path())
            .is_empty())
        .await
    );
    for (name, labels) in [
        ("peerpi_verification_failures_total", "source=\"upstream\""),
        ("peerpi_upstream_requests_total", "outcome=\"bad_digest\""),
    ] {
        assert_eq!(metric(&node, name, labels).await, 1.0, "{name}{{{labels}}}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_an_outage_cached_pages_are_served_stale_and_uncached_ones_get_502() {
    let upstream = fake_index(demo_graph()).await;
    let node = start_node(&upstream, |c| c.page_ttl = Duration::from_millis(100)).await;
    let url = file_url(&node, "beta", "beta-1.0-py3-none-any.whl").await;
    get_bytes(&url).await;
    tokio::time::sleep(Duration::from_millis(150)).await;

    upstream.state.set_fault("/", Fault::Status(503));
    let r = client()
        .get(node.url("/simple/beta/"))
        .header("accept", JSON)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-peerpi-cache"], "stale");
    assert!(r.headers()["x-peerpi-stale-reason"]
        .to_str()
        .unwrap()
        .contains("503"));
    let r = client().get(&url).send().await.unwrap();
    assert_eq!(
        r.status(),
        200,
        "the stored file is served during the outage"
    );

    let r = client()
        .get(node.url("/simple/gamma/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let message = r.text().await.unwrap();
    assert!(
        message.contains("gamma") && message.contains("not cached") && message.contains("503"),
        "{message}"
    );

    // A hanging upstream is bounded by the page timeout.
    upstream.state.set_fault("/", Fault::Hang);
    let r = client()
        .get(node.url("/simple/delta/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert!(r.text().await.unwrap().contains("timed out"));

    // And a stopped upstream (connection refused) too.
    upstream.stop();
    let r = client()
        .get(node.url("/simple/alpha/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert!(r.text().await.unwrap().contains("cannot reach upstream"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_keeps_the_store_under_its_cap() {
    let files: Vec<_> = (0..6)
        .map(|i| synthetic("many", &format!("many-1.{i}.tar.gz"), 10_000, i))
        .collect();
    let upstream = fake_index(files).await;
    let cap = 35_000;
    let node = start_node(&upstream, |c| c.cache_size = cap).await;
    for i in 0..6 {
        let url = file_url(&node, "many", &format!("many-1.{i}.tar.gz")).await;
        let body = get_bytes(&url).await;
        assert_eq!(body.len(), 10_000);
        assert!(
            node.node.store().total_bytes() <= cap,
            "after file {i}: {}",
            node.node.store().total_bytes()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(node.node.store().blob_count(), 3);
    assert!(metric(&node, "peerpi_cache_size_bytes", "").await <= cap as f64);
    // The oldest was evicted: asking again goes upstream again.
    let url = file_url(&node, "many", "many-1.0.tar.gz").await;
    get_bytes(&url).await;
    assert_eq!(
        upstream.state.count("/files/many-1.0.tar.gz"),
        2,
        "{:?}",
        upstream.state.count_prefix("/files/")
    );
    // The newest was kept.
    let url = file_url(&node, "many", "many-1.5.tar.gz").await;
    get_bytes(&url).await;
    assert_eq!(upstream.state.count("/files/many-1.5.tar.gz"), 1);
}
