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

/// An HTTP/1.0 client (or nginx in front of a node, which speaks HTTP/1.0
/// to backends by default) cannot tell a body cut short from a complete one
/// when no length was announced: it must never get unverified bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_1_0_client_never_receives_unverified_bytes_of_unknown_length() {
    let upstream = fake_index(demo_graph()).await;
    upstream.state.set_html_only(true); // no sizes listed
    upstream.state.set_unknown_length(true); // none announced
    upstream.state.set_fault("/files/beta-1.0", Fault::WrongBytes);
    let node = start_node(&upstream, |_| {}).await;
    let url = file_url(&node, "beta", "beta-1.0-py3-none-any.whl").await;
    let path = url::Url::parse(&url).unwrap().path().to_string();

    let (status, head, _) = raw_request(node.addr, &path, "HTTP/1.0").await;
    assert_eq!(status, 502, "{head}");

    // A good file of unknown length still reaches an HTTP/1.0 client whole.
    let url = file_url(&node, "delta", "delta-1.0-py3-none-any.whl").await;
    let path = url::Url::parse(&url).unwrap().path().to_string();
    let (status, head, body) = raw_request(node.addr, &path, "HTTP/1.0").await;
    assert_eq!(status, 200, "{head}");
    assert!(head.to_ascii_lowercase().contains("content-length"), "{head}");
    assert_is_upstream_file(&upstream, "delta-1.0-py3-none-any.whl", &body);
}

/// Sends one request with `version` and reads the whole response.
async fn raw_request(
    addr: std::net::SocketAddr,
    path: &str,
    version: &str,
) -> (u16, String, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} {version}\r\nHost: {addr}\r\n{}\r\n", "");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .expect("response in time")
        .ok();
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head, response[split + 4..].to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_header_with_too_many_ranges_is_refused_before_parsing() {
    const MAX_RANGES: usize = 8;
    let upstream = fake_index(demo_graph()).await;
    let node = start_node(&upstream, |_| {}).await;
    let url = file_url(&node, "beta", "beta-1.0-py3-none-any.whl").await;
    assert_eq!(client().get(&url).send().await.unwrap().status(), 200);

    let few: Vec<String> = (0..MAX_RANGES).map(|i| format!("{i}-{i}")).collect();
    let ok = client()
        .get(&url)
        .header("range", format!("bytes={}", few.join(",")))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200, "up to the limit: served (whole file)");

    let many: Vec<String> = (0..MAX_RANGES + 1).map(|i| format!("{i}-{i}")).collect();
    let refused = client()
        .get(&url)
        .header("range", format!("bytes={}", many.join(",")))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 416);
    assert!(refused.text().await.unwrap().contains("at most 8 ranges"));
}
