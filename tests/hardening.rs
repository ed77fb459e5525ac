//! Findings of the hardening review, each with the test that failed on the
//! code before its fix: a node stays up across restarts and page-cache
//! turnover, finishes work its clients walked away from, and holds every
//! bound a client, a peer or an upstream could push against.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use std::time::Duration;

use common::*;
use peerpi_testkit::{demo_graph, Fault};

/// What "answers within a second" allows; a deadlocked node never answers.
const PAGE_ANSWER_LIMIT: Duration = Duration::from_secs(1);

async fn page_status_within(node: &TestNode, project: &str, limit: Duration) -> u16 {
    let request = client()
        .get(node.url(&format!("/simple/{project}/")))
        .header("accept", JSON)
        .send();
    let response = tokio::time::timeout(limit, request)
        .await
        .unwrap_or_else(|_| panic!("no answer for {project}'s page within {limit:?}"))
        .expect("page request");
    response.status().as_u16()
}

/// The node's health answers too: a deadlock blocks every runtime worker.
async fn assert_healthy(node: &TestNode) {
    let health = tokio::time::timeout(PAGE_ANSWER_LIMIT, client().get(node.url("/healthz")).send())
        .await
        .expect("/healthz answers within a second")
        .expect("healthz request");
    assert_eq!(health.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_answers_a_cached_page_from_its_catalog() {
    let upstream = fake_index(demo_graph()).await;
    let node = start_node(&upstream, |_| {}).await;
    assert_eq!(
        page_status_within(&node, "alpha", Duration::from_secs(10)).await,
        200
    );
    node.node.flush().unwrap();

    upstream.stop();
    let node = restart(node, &upstream, |_| {}).await;
    // Fresh in the catalog, not in memory: served without upstream.
    assert_eq!(
        page_status_within(&node, "alpha", PAGE_ANSWER_LIMIT).await,
        200
    );
    assert_eq!(
        page_status_within(&node, "alpha", PAGE_ANSWER_LIMIT).await,
        200
    );
    assert_healthy(&node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_serves_an_expired_page_stale_when_upstream_is_down() {
    let upstream = fake_index(demo_graph()).await;
    let node = start_node(&upstream, |_| {}).await;
    assert_eq!(
        page_status_within(&node, "alpha", Duration::from_secs(10)).await,
        200
    );
    node.node.flush().unwrap();

    upstream.stop();
    let node = restart(node, &upstream, |c| c.page_ttl = Duration::ZERO).await;
    let response = tokio::time::timeout(
        Duration::from_secs(5),
        client()
            .get(node.url("/simple/alpha/"))
            .header("accept", JSON)
            .send(),
    )
    .await
    .expect("an answer within the upstream timeout")
    .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-peerpi-cache"], "stale");
    assert_healthy(&node).await;
}

/// The in-memory page map holds nothing here (its byte budget is zero), so
/// every request takes the path a restart or a full map takes: the catalog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_evicted_from_memory_are_read_back_from_the_catalog() {
    let upstream = fake_index(demo_graph()).await;
    let node = start_node(&upstream, |c| c.page_memory = 0).await;
    for project in ["alpha", "beta", "gamma", "alpha", "beta"] {
        assert_eq!(
            page_status_within(&node, project, Duration::from_secs(10)).await,
            200
        );
    }
    assert_eq!(
        upstream.state.count("/simple/alpha/"),
        1,
        "within the TTL the catalog answered, not upstream"
    );
    upstream.stop();
    for project in ["gamma", "alpha"] {
        assert_eq!(
            page_status_within(&node, project, PAGE_ANSWER_LIMIT).await,
            200
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_refresh_completes_after_its_client_gave_up() {
    let upstream = fake_index(demo_graph()).await;
    let delay = Duration::from_millis(600);
    upstream.state.set_fault("/simple/", Fault::Delay(delay));
    let node = start_node(&upstream, |_| {}).await;

    let gave_up = client()
        .get(node.url("/simple/alpha/"))
        .timeout(Duration::from_millis(100))
        .send()
        .await;
    assert!(gave_up.is_err(), "the client left before upstream answered");
    let stored = eventually(delay * 5, || {
        node.node.store().page("alpha").ok().flatten().is_some()
    })
    .await;
    assert!(stored, "the refresh ran to its end without a client");

    upstream.stop();
    assert_eq!(
        page_status_within(&node, "alpha", PAGE_ANSWER_LIMIT).await,
        200
    );
    assert_eq!(upstream.state.count("/simple/alpha/"), 1);
}

/// A server that labels a `.tar.gz` with `Content-Encoding: gzip` must not
/// have it decoded: the digest is over the bytes as listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_labelled_gzip_are_stored_as_sent_not_decoded() {
    let upstream = fake_index(demo_graph()).await;
    upstream.state.set_fault("/files/gamma", Fault::LabelGzip);
    let node = start_node(&upstream, |_| {}).await;
    let url = file_url(&node, "gamma", "gamma-0.1.tar.gz").await;
    let response = client().get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let body = response.bytes().await.expect("a complete body");
    assert_is_upstream_file(&upstream, "gamma-0.1.tar.gz", &body);
    assert_eq!(
        metric(&node, "peerpi_verification_failures_total", "").await,
        0.0
    );
}

/// Credentials in the upstream URL reach neither clients nor headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_credentials_never_reach_a_response() {
    const SECRET: &str = "s3cret-token";
    let upstream = fake_index(demo_graph()).await;
    let with_credentials = format!("http://ci-user:{SECRET}@{}/simple/", upstream.addr);
    let node = start_node(&upstream, |c| {
        c.upstream.base = with_credentials.parse().unwrap();
        c.page_ttl = Duration::ZERO;
    })
    .await;
    assert_eq!(
        page_status_within(&node, "alpha", Duration::from_secs(10)).await,
        200
    );
    upstream.state.set_fault("/", Fault::Status(503));

    let stale = client()
        .get(node.url("/simple/alpha/"))
        .send()
        .await
        .unwrap();
    assert_eq!(stale.headers()["x-peerpi-cache"], "stale");
    let reason = stale.headers()["x-peerpi-stale-reason"].to_str().unwrap();
    assert!(
        reason.contains("503") && !reason.contains(SECRET),
        "{reason}"
    );

    upstream.stop();
    let failed = client()
        .get(node.url("/simple/not-cached/"))
        .send()
        .await
        .unwrap();
    assert_eq!(failed.status(), 502);
    let body = failed.text().await.unwrap();
    assert!(
        body.contains("upstream") && !body.contains(SECRET),
        "{body}"
    );
    assert!(!body.contains("ci-user"), "{body}");
}

/// A page may not send the node to fetch from this machine or its private
/// networks under another name than the configured upstream's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_urls_on_local_hosts_other_than_upstream_are_refused() {
    let upstream = fake_index(demo_graph()).await;
    // Same server, reached under a name that is not the upstream's host.
    upstream
        .state
        .set_file_base(Some(format!("http://localhost:{}", upstream.addr.port())));
    let node = start_node(&upstream, |_| {}).await;
    let url = file_url(&node, "beta", "beta-1.0-py3-none-any.whl").await;
    let response = client().get(&url).send().await.unwrap();
    assert_eq!(response.status(), 502);
    let body = response.text().await.unwrap();
    assert!(body.contains("refusing file URL"), "{body}");
    assert_eq!(upstream.state.count_prefix("/files/"), 0, "nothing fetched");
}
