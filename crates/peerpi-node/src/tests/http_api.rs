//! The HTTP front against a fake upstream: negotiation, redirects, caching
//! headers and revalidation, file ranges, HEAD, metadata files, bad input.

use std::time::Duration;

use crate::testing::*;
use peerpi_testkit::{demo_graph, wheel, DistSpec};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_negotiate_json_and_html_with_every_client_field() {
    let upstream = fake_index(demo_graph()).await;
    let node = start_node(&upstream, |_| {}).await;
    let c = client();

    let pip_accept = "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, text/html; q=0.01";
    let r = c
        .get(node.url("/simple/beta/"))
        .header("accept", pip_accept)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], JSON);
    assert_eq!(r.headers()["x-peerpi-cache"], "miss");
    let page: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    let files = page["files"].as_array().unwrap();
    assert_eq!(files.len(), 2);
    let yanked = files
        .iter()
        .find(|f| f["filename"] == "beta-2.0-py3-none-any.whl")
        .unwrap();
    assert_eq!(yanked["yanked"], "broken release");
    let metadata_hash = yanked["core-metadata"]["sha256"].as_str().unwrap();
    assert_eq!(yanked["dist-info-metadata"]["sha256"], metadata_hash);
    let sha = yanked["hashes"]["sha256"].as_str().unwrap();
    assert_eq!(
        yanked["url"],
        format!("../../files/{sha}/beta-2.0-py3-none-any.whl")
    );
    assert!(yanked["size"].as_u64().unwrap() > 0);
    assert_eq!(page["versions"], serde_json::json!(["1.0", "2.0"]));
    assert_eq!(page["meta"]["api-version"], "1.1");

    // Second request: from cache, and HTML when asked (here by ?format=).
    let r = c
        .get(node.url("/simple/beta/?format=text/html"))
        .header("accept", JSON)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-peerpi-cache"], "hit");
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = r.text().await.unwrap();
    assert!(html.contains("data-yanked=\"broken release\""), "{html}");
    assert!(html.contains(&format!(
        "data-dist-info-metadata=\"sha256={metadata_hash}\""
    )));
    assert!(html.contains(&format!("data-core-metadata=\"sha256={metadata_hash}\"")));
    assert_eq!(
        upstream.state.count("/simple/beta/"),
        1,
        "served from cache the second time"
    );

    // requires-python is escaped in HTML.
    let html = get_text(node.url("/simple/delta/")).await;
    assert!(html.contains("data-requires-python=\"&gt;=99\""), "{html}");

    // Nothing acceptable: 406 with a message.
    let r = c
        .get(node.url("/simple/beta/"))
        .header("accept", "image/png")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 406);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("application/vnd.pypi.simple.v1+json"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn html_only_upstream_is_understood() {
    let upstream = fake_index(demo_graph()).await;
    upstream.state.set_html_only(true);
    let node = start_node(&upstream, |_| {}).await;
    let page = json_page(&node, "beta").await;
    let files = page["files"].as_array().unwrap();
    assert_eq!(files.len(), 2);
    let yanked = files
        .iter()
        .find(|f| f["filename"] == "beta-2.0-py3-none-any.whl")
        .unwrap();
    assert_eq!(yanked["yanked"], "broken release");
    assert!(
        yanked["core-metadata"]["sha256"].is_string(),
        "dist-info-metadata attribute understood"
    );
    // Sizes are unknown from HTML: JSON is served as API 1.0, without PEP 700 fields.
    assert_eq!(page["meta"]["api-version"], "1.0");
    let url = file_url(&node, "beta", "beta-1.0-py3-none-any.whl").await;
    let body = get_bytes(url).await;
    assert_is_upstream_file(&upstream, "beta-1.0-py3-none-any.whl", &body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etags_give_304_and_pages_revalidate_upstream_after_ttl() {
    let upstream = fake_index(demo_graph()).await;
    let node = start_node(&upstream, |c| c.page_ttl = Duration::from_millis(200)).await;
    let c = client();
    let r = c
        .get(node.url("/simple/alpha/"))
        .header("accept", JSON)
        .send()
        .await
        .unwrap();
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    assert!(
        etag.starts_with('"') && !etag.starts_with("W/"),
        "strong ETag: {etag}"
    );
    assert_eq!(r.headers()["cache-control"], "max-age=60");
    let r = c
        .get(node.url("/simple/alpha/"))
        .header("accept", JSON)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    assert_eq!(r.headers()["etag"], etag.as_str());

    // After the TTL the node revalidates with If-None-Match and gets a 304 upstream.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = c
        .get(node.url("/simple/alpha/"))
        .header("accept", JSON)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-peerpi-cache"], "revalidated");
    assert_eq!(r.headers()["etag"], etag.as_str(), "content unchanged");
    assert_eq!(upstream.state.count("/simple/alpha/"), 2);
    assert_eq!(
        metric(
            &node,
            "peerpi_upstream_requests_total",
            "outcome=\"not_modified\""
        )
        .await,
        1.0
    );

    // A new upload upstream shows after the next revalidation.
    upstream.state.add(wheel(&DistSpec::new("alpha", "1.1")));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = c
        .get(node.url("/simple/alpha/"))
        .header("accept", JSON)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-peerpi-cache"], "miss");
    assert_ne!(r.headers()["etag"], etag.as_str());
    let page: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(page["files"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_is_offered_with_its_own_etag() {
    let upstream = fake_index(demo_graph()).await;
    let node = start_node(&upstream, |_| {}).await;
    // reqwest here has gzip decoding off for explicit headers; read the raw body.
    let c = client();
    let plain = c.get(node.url("/simple/beta/")).send().await.unwrap();
    let plain_etag = plain.headers()["etag"].clone();
    let plain_body = plain.bytes().await.unwrap();
    let gz = c
        .get(node.url("/simple/beta/"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(gz.headers()["content-encoding"], "gzip");
    assert_ne!(gz.headers()["etag"], plain_etag);
    let gz_body = gz.bytes().await.unwrap();
    let mut decoded = Vec::new();
    std::io::Read::read_to_end(&mut flate2_decoder(&gz_body), &mut decoded).unwrap();
    assert_eq!(decoded, plain_body);
    let none = c
        .get(node.url("/simple/beta/"))
        .header("accept-encoding", "gzip;q=0")
        .send()
        .await
        .unwrap();
    assert!(none.headers().get("content-encoding").is_none());
}

fn flate2_decoder(bytes: &[u8]) -> impl std::io::Read + '_ {
    flate2::read::GzDecoder::new(bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_are_normalised_by_redirect_and_unknown_projects_are_negatively_cached() {
    let upstream = fake_index(demo_graph()).await;
    let node = start_node(&upstream, |_| {}).await;
    let c = client();
    let r = c
        .get(node.url("/simple/Alpha_/?format=json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "trailing separator is not a valid name");
    let r = c
        .get(node.url("/simple/ALPHA/?format=json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 301);
    assert_eq!(r.headers()["location"], "/simple/alpha/?format=json");
    let r = c.get(node.url("/simple/alpha")).send().await.unwrap();
    assert_eq!(r.status(), 301);
    assert_eq!(r.headers()["location"], "/simple/alpha/");

    for _ in 0..3 {
        let r = c
            .get(node.url("/simple/no-such-thing/"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        assert!(r.text().await.unwrap().contains("not found upstream"));
    }
    assert_eq!(
        upstream.state.count("/simple/no-such-thing/"),
        1,
        "404 cached"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_support_ranges_head_and_conditional_requests() {
    let upstream = fake_index(demo_graph()).await;
    let node = start_node(&upstream, |_| {}).await;
    let c = client();
    let url = file_url(&node, "alpha", "alpha-1.0-py3-none-any.whl").await;
    let whole = upstream
        .state
        .file("alpha-1.0-py3-none-any.whl")
        .unwrap()
        .bytes();
    let len = whole.len() as u64;

    // HEAD before the file is stored answers from the listing and fetches nothing.
    let r = c.head(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], len.to_string().as_str());
    assert_eq!(upstream.state.count_prefix("/files/"), 0);

    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["accept-ranges"], "bytes");
    assert_eq!(r.headers()["x-peerpi-source"], "miss");
    assert!(r.headers()["cache-control"]
        .to_str()
        .unwrap()
        .contains("immutable"));
    assert_eq!(r.bytes().await.unwrap(), whole);

    let r = c
        .get(&url)
        .header("range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes 10-19/{len}").as_str()
    );
    assert_eq!(r.headers()["x-peerpi-source"], "local");
    assert_eq!(r.bytes().await.unwrap(), whole.slice(10..20));

    let r = c
        .get(&url)
        .header("range", "bytes=-7")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap(), whole.slice(whole.len() - 7..));

    let r = c
        .get(&url)
        .header("range", format!("bytes={}-", len - 3))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap(), whole.slice(whole.len() - 3..));

    let r = c
        .get(&url)
        .header("range", format!("bytes={len}-"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 416);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes */{len}").as_str()
    );

    for bogus in ["bytes=abc", "bytes=5-2", "bytes=--1", "bytes=1-2,,"] {
        let r = c.get(&url).header("range", bogus).send().await.unwrap();
        assert_eq!(r.status(), 416, "{bogus}");
        assert!(!r.text().await.unwrap().is_empty(), "message for {bogus}");
    }
    let r = c
        .get(&url)
        .header("range", "pages=1-2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "unknown range units are ignored");

    let etag = format!("\"sha256-{}\"", sha256_hex(&whole));
    let r = c
        .get(&url)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);

    let r = c.head(&url).send().await.unwrap();
    assert_eq!(r.headers()["x-peerpi-source"], "local");
    assert_eq!(
        upstream.state.count_prefix("/files/"),
        1,
        "one download in all"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_metadata_files_are_served_and_verified() {
    let upstream = fake_index(demo_graph()).await;
    let node = start_node(&upstream, |_| {}).await;
    let url = format!(
        "{}.metadata",
        file_url(&node, "alpha", "alpha-1.0-py3-none-any.whl").await
    );
    let body = get_bytes(&url).await;
    let expected = upstream
        .state
        .file("alpha-1.0-py3-none-any.whl")
        .unwrap()
        .metadata
        .unwrap();
    assert_eq!(body, expected);
    assert!(String::from_utf8_lossy(&body).contains("Requires-Dist: beta>=1.0"));
    assert_eq!(
        upstream
            .state
            .count("/files/alpha-1.0-py3-none-any.whl.metadata"),
        1
    );
    assert_eq!(
        upstream.state.count("/files/alpha-1.0-py3-none-any.whl"),
        0,
        "only the metadata was fetched"
    );
    // The sdist has no metadata file: a clear 404.
    let sdist = format!(
        "{}.metadata",
        file_url(&node, "gamma", "gamma-0.1.tar.gz").await
    );
    let r = client().get(&sdist).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.text().await.unwrap().contains("no core metadata"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_4xx_with_a_message() {
    let upstream = fake_index(demo_graph()).await;
    let node = start_node(&upstream, |_| {}).await;
    let c = client();
    let long = "a".repeat(500);
    let sha = "0".repeat(64);
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (b"/simple/../".to_vec(), 400),
        (b"/simple/..%2F..%2Fetc/".to_vec(), 400),
        (b"/simple/a%2Fb/".to_vec(), 400),
        (format!("/simple/{long}/").into_bytes(), 400),
        (b"/simple/%FF%FE/".to_vec(), 400),
        (b"/simple/a%00b/".to_vec(), 400),
        (b"/files/not-a-digest/x.whl".to_vec(), 400),
        (format!("/files/{sha}/..").into_bytes(), 400),
        (format!("/files/{sha}/..%2Fx.whl").into_bytes(), 400),
        (format!("/files/{sha}/%FF.whl").into_bytes(), 400),
        (
            format!("/files/{sha}/x-1.0-py3-none-any.whl").into_bytes(),
            404,
        ),
        (
            format!("/files/{sha}/x-1.0-py3-none-any.whl.metadata").into_bytes(),
            404,
        ),
        (b"/nowhere".to_vec(), 404),
    ];
    for (path, status) in cases {
        let (got, body) = raw_get(node.addr, &path, "").await;
        let shown = String::from_utf8_lossy(&path);
        assert_eq!(got, status, "{shown}: {body}");
        assert!(body.trim().len() > 5, "{shown} has a message: {body:?}");
    }
    // A raw non-ASCII byte in the request line is not a valid HTTP request:
    // hyper refuses it with a bare 400 before any route (and message) runs.
    let (got, _) = raw_get(node.addr, b"/simple/\xff/", "").await;
    assert_eq!(got, 400);
    // The node is still healthy.
    assert_eq!(
        c.get(node.url("/healthz")).send().await.unwrap().status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_sources_routes_and_cache_size() {
    let upstream = fake_index(demo_graph()).await;
    let node = start_node(&upstream, |_| {}).await;
    let url = file_url(&node, "beta", "beta-1.0-py3-none-any.whl").await;
    let len = upstream
        .state
        .file("beta-1.0-py3-none-any.whl")
        .unwrap()
        .len as f64;
    get_bytes(&url).await;
    get_bytes(&url).await;
    for (name, labels, expected) in [
        ("peerpi_blob_hits_total", "source=\"upstream\"", 1.0),
        ("peerpi_blob_hits_total", "source=\"local\"", 1.0),
        ("peerpi_blob_bytes_total", "source=\"upstream\"", len),
        ("peerpi_blob_bytes_total", "source=\"local\"", len),
        (
            "peerpi_upstream_requests_total",
            "kind=\"file\",outcome=\"ok\"",
            1.0,
        ),
        (
            "peerpi_upstream_requests_total",
            "kind=\"page\",outcome=\"ok\"",
            1.0,
        ),
        (
            "peerpi_http_requests_total",
            "route=\"/files/{sha256}/{filename}\",status=\"200\"",
            2.0,
        ),
    ] {
        assert_eq!(
            metric(&node, name, labels).await,
            expected,
            "{name}{{{labels}}}"
        );
    }
    assert_eq!(metric(&node, "peerpi_cache_size_bytes", "").await, len);
}

/// PEP 792: a project's status reaches clients in both forms as the index
/// says it, and a project the index quarantines lists no files, not even
/// from the copy cached before or while the index is down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn project_status_passes_through_and_quarantine_hides_every_file() {
    let upstream = fake_index(demo_graph()).await;
    upstream
        .state
        .set_status("beta", "archived", Some("no more releases"));
    let node = start_node(&upstream, |c| c.page_ttl = Duration::from_millis(200)).await;
    let beta = json_page(&node, "beta").await;
    assert_eq!(beta["meta"]["api-version"], "1.4");
    assert_eq!(beta["project-status"]["status"], "archived");
    assert_eq!(beta["project-status"]["reason"], "no more releases");
    assert!(
        !beta["files"].as_array().unwrap().is_empty(),
        "archived files stay"
    );
    let html = get_text(node.url("/simple/beta/")).await;
    assert!(
        html.contains(r#"<meta name="pypi:project-status" content="archived">"#),
        "{html}"
    );
    assert!(html.contains(r#"<meta name="pypi:project-status-reason" content="no more releases">"#));
    assert!(html.contains(r#"<meta name="pypi:repository-version" content="1.4">"#));

    // Cached with its files, then quarantined upstream.
    assert!(!json_page(&node, "delta").await["files"]
        .as_array()
        .unwrap()
        .is_empty());
    upstream
        .state
        .set_status("delta", "quarantined", Some("malware"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let delta = json_page(&node, "delta").await;
    assert_eq!(delta["project-status"]["status"], "quarantined");
    assert!(delta["files"].as_array().unwrap().is_empty(), "{delta}");
    let html = get_text(node.url("/simple/delta/")).await;
    assert!(!html.contains("<a "), "{html}");
    // The index goes away: the stale copy is the quarantined one.
    upstream.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stale = json_page(&node, "delta").await;
    assert!(stale["files"].as_array().unwrap().is_empty(), "{stale}");
}

/// The trustless gateway view: a held blob by its CID as a raw block and
/// as a CAR, each verifiable against the CID; everything else refused with
/// the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trustless_gateway_serves_held_blobs_as_raw_blocks_and_cars() {
    let upstream = fake_index(demo_graph()).await;
    let node = start_node(&upstream, |_| {}).await;
    let wheel = "beta-1.0-py3-none-any.whl";
    let body = get_bytes(file_url(&node, "beta", wheel).await).await;
    let digest: peerpi_core::Sha256Digest = sha256_hex(&body).parse().unwrap();
    let cid = digest.cid();
    let c = client();
    let url = node.url(&format!("/ipfs/{cid}"));

    let raw = c
        .get(&url)
        .header("accept", "application/vnd.ipld.raw")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 200);
    assert_eq!(raw.headers()["content-type"], "application/vnd.ipld.raw");
    assert_eq!(raw.headers()["etag"], format!("\"{cid}.raw\"").as_str());
    let block = raw.bytes().await.unwrap();
    assert_eq!(
        sha256_hex(&block),
        digest.to_hex(),
        "the block is what its CID names"
    );

    let car = c.get(format!("{url}?format=car")).send().await.unwrap();
    assert_eq!(car.status(), 200);
    assert!(car.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/vnd.ipld.car"));
    let car = car.bytes().await.unwrap();
    let varint = |bytes: &[u8]| {
        let (mut n, mut i) = (0u64, 0usize);
        loop {
            n |= u64::from(bytes[i] & 0x7f) << (7 * i);
            i += 1;
            if bytes[i - 1] & 0x80 == 0 {
                return (n as usize, i);
            }
        }
    };
    let (header_len, at) = varint(&car);
    let section = &car[at + header_len..];
    let (section_len, at) = varint(section);
    let cid_bytes = cid.to_bytes();
    assert_eq!(section_len, cid_bytes.len() + body.len());
    assert_eq!(&section[at..at + cid_bytes.len()], cid_bytes.as_slice());
    assert_eq!(&section[at + cid_bytes.len()..], &body[..]);

    for (path, accept, status) in [
        (format!("/ipfs/{cid}"), "text/html", 406),
        (
            format!("/ipfs/{cid}/sub/path"),
            "application/vnd.ipld.raw",
            400,
        ),
        (
            "/ipfs/not-a-cid".to_string(),
            "application/vnd.ipld.raw",
            400,
        ),
        (
            "/ipfs/QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG".to_string(),
            "application/vnd.ipld.raw",
            501,
        ),
        (
            format!(
                "/ipfs/{}",
                peerpi_core::Sha256Digest::from_bytes([9; 32]).cid()
            ),
            "application/vnd.ipld.raw",
            404,
        ),
    ] {
        let r = c
            .get(node.url(&path))
            .header("accept", accept)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{path}");
        assert!(!r.text().await.unwrap().is_empty(), "{path}: a message");
    }
}
