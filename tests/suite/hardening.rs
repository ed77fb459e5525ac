//! Findings of the hardening review, each with the test that failed on the
//! code before its fix: a node stays up across restarts and page-cache
//! turnover, finishes work its clients walked away from, and holds every
//! bound a client, a peer or an upstream could push against.

use crate::common;

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

/// A node that cached alpha's page, restarted (with `tweak`) while its
/// upstream is down.
async fn restarted_with_upstream_down(
    tweak: impl FnOnce(&mut peerpi_node::NodeConfig),
) -> TestNode {
    let upstream = fake_index(demo_graph()).await;
    let node = start_node(&upstream, |_| {}).await;
    assert_eq!(
        page_status_within(&node, "alpha", Duration::from_secs(10)).await,
        200
    );
    node.node.flush().unwrap();
    upstream.stop();
    restart(node, &upstream, tweak).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_answers_a_cached_page_from_its_catalog() {
    let node = restarted_with_upstream_down(|_| {}).await;
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
    let node = restarted_with_upstream_down(|c| c.page_ttl = Duration::ZERO).await;
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
    // A refresh cancelled with its client never stores the page, so the
    // bound only has to outlast a loaded CI machine (5 x the delay once
    // did not, with the whole suite running beside it).
    let stored = eventually(Duration::from_secs(20), || {
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
    upstream
        .state
        .set_fault("/files/beta-1.0", Fault::WrongBytes);
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
    assert!(
        head.to_ascii_lowercase().contains("content-length"),
        "{head}"
    );
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
    // Read to the end: the file is then stored (a Range on a miss is ignored).
    get_bytes(&url).await;
    assert_eq!(node.node.store().blob_count(), 1);

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

/// A peer of the test's: a swarm node that already holds `filename`
/// (fetched from upstream) and serves it on the libp2p stream.
async fn holder(
    upstream: &peerpi_testkit::FakeIndex,
    project: &str,
    filename: &str,
    tweak: impl FnOnce(&mut peerpi_swarm::SwarmConfig),
) -> TestNode {
    let a = peer_node(upstream, &[], |c| {
        c.bulk_listen = None;
        tweak(c);
    })
    .await;
    get_bytes(&file_url(&a, project, filename).await).await;
    assert_eq!(a.node.store().blob_count(), 1, "{filename} held");
    a
}

fn suspended(node: &TestNode, peer: &TestNode) -> bool {
    let id = peer.node.swarm().unwrap().local_peer_id();
    node.node
        .swarm()
        .unwrap()
        .peer_info(&id)
        .is_some_and(|p| p.blocked && p.blocked_until.is_some())
}

/// A peer that sends a byte every 50 ms is never silent for a stream
/// timeout: the minimum rate (256 KiB/s after a 3 s grace) ends it, and
/// upstream completes the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dripping_peer_is_given_up_at_the_minimum_rate() {
    const BIG: &str = "big-1.0.tar.gz";
    let upstream = fake_index(vec![peerpi_testkit::synthetic("big", BIG, 1 << 20, 5)]).await;
    let a = holder(&upstream, "big", BIG, |c| {
        c.adversary = Some(peerpi_swarm::Adversary::Drip)
    })
    .await;
    let b = peer_node(&upstream, &[p2p_addr(&a)], |_| {}).await;
    let url = file_url(&b, "big", BIG).await;
    let body = tokio::time::timeout(Duration::from_secs(20), get_bytes(&url))
        .await
        .expect("the file arrives once the dripping peer is given up");
    assert_is_upstream_file(&upstream, BIG, &body);
    assert!(suspended(&b, &a), "the dripping peer is suspended");
    assert_eq!(
        upstream.state.count(&format!("/files/{BIG}")),
        2,
        "A's and B's"
    );
}

/// With no size listed, a peer announcing more than the cap (16 GiB for a
/// file) is blocked for good before a byte is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_claiming_a_huge_size_for_an_unsized_file_is_blocked() {
    let upstream = fake_index(demo_graph()).await;
    upstream.state.set_html_only(true); // no sizes listed
    let wheel = "beta-1.0-py3-none-any.whl";
    let a = holder(&upstream, "beta", wheel, |c| {
        c.adversary = Some(peerpi_swarm::Adversary::HugeSize)
    })
    .await;
    let b = peer_node(&upstream, &[p2p_addr(&a)], |_| {}).await;
    let body = get_bytes(&file_url(&b, "beta", wheel).await).await;
    assert_is_upstream_file(&upstream, wheel, &body);
    assert!(blocked_for_good(&b, &a), "a size over the cap is a lie");
}

/// When the peer lies and upstream is down, the client gets a clean 502 (no
/// response head was sent while the peer's bytes were held back), not a
/// 200 that ends short.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_source_fails_the_client_gets_502_not_a_short_200() {
    let upstream = fake_index(demo_graph()).await;
    let wheel = "beta-1.0-py3-none-any.whl";
    let a = holder(&upstream, "beta", wheel, |c| {
        c.adversary = Some(peerpi_swarm::Adversary::WrongBytes)
    })
    .await;
    let b = peer_node(&upstream, &[p2p_addr(&a)], |_| {}).await;
    let url = file_url(&b, "beta", wheel).await;
    upstream.stop();
    let response = client().get(&url).send().await.unwrap();
    assert_eq!(response.status(), 502);
    let body = response.text().await.unwrap();
    assert!(body.contains("upstream"), "{body}");
    assert!(blocked_for_good(&b, &a));
}

/// A 16 MiB wheel from an honest peer that uploads at 1 MiB/s takes 16 s,
/// longer than pip's read timeout (10 s here): past the hold-back (1 s
/// here) the node streams the peer's bytes as they arrive, so pip installs
/// it (the code before held every byte back and pip timed out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pip_installs_a_large_wheel_from_a_slow_honest_peer() {
    const WHEEL_BYTES: u64 = 16 << 20;
    let spec = peerpi_testkit::DistSpec::new("heavy", "1.0").padded(WHEEL_BYTES);
    let upstream = fake_index(vec![peerpi_testkit::wheel(&spec)]).await;
    let wheel = "heavy-1.0-py3-none-any.whl";
    let a = holder(&upstream, "heavy", wheel, |c| {
        c.upload_limit = Some(1 << 20)
    })
    .await;
    let b = peer_node_with(
        &upstream,
        &[p2p_addr(&a)],
        |c| c.peer_hold_back = Duration::from_secs(1),
        |_| {},
    )
    .await;
    let venv = tempfile::tempdir().unwrap();
    let bin = common::python::pip_venv(venv.path()).await;
    common::python::pip_install(&bin, &b.simple_url(), &["--timeout", "10", "heavy"]).await;
    assert_eq!(
        upstream.state.count(&format!("/files/{wheel}")),
        1,
        "only A went upstream; B's copy came from the slow peer"
    );
    assert!(metric(&b, "peerpi_blob_hits_total", "source=\"peer\"").await >= 1.0);
}

/// A tmpfs this test mounts (as root), unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let output = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !output.status.success() {
            return Err(String::from_utf8_lossy(&output.stderr).trim().to_string());
        }
        Ok(Self { dir })
    }

    /// As `mount`; where it cannot, the missing prerequisite is reported
    /// (which fails the test where prerequisites are required, as in CI).
    fn mount_or_report(size: &str) -> Option<Self> {
        match Self::mount(size) {
            Ok(disk) => Some(disk),
            Err(reason) => {
                peerpi_testkit::missing_prerequisite(&format!(
                    "cannot mount a tmpfs here ({reason})"
                ));
                None
            }
        }
    }

    /// Fills the disk with a file until it is full; returns the file.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.dir.path().join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let block = vec![0x5au8; 256 << 10];
        while file.write_all(&block).is_ok() {}
        while file.write_all(&block[..4096]).is_ok() {}
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .args(["-l"])
            .arg(self.dir.path())
            .status();
    }
}

/// A node whose disk is full asks a peer for a file: the peer's bytes
/// cannot be written, which is this node's trouble: a 503 naming its store,
/// no upstream request for bytes it could not keep either, and the peer
/// not blamed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_during_a_peer_fetch_is_a_503_naming_the_store_and_asks_nobody_upstream() {
    let Some(disk) = SmallDisk::mount_or_report("32m") else {
        return;
    };
    let upstream = fake_index(demo_graph()).await;
    upstream.state.add(peerpi_testkit::synthetic(
        "big",
        "big-1.0.tar.gz",
        1 << 20,
        3,
    ));
    let holder = peer_node(&upstream, &[], |_| {}).await;
    let held = file_url(&holder, "big", "big-1.0.tar.gz").await;
    get_bytes(&held).await;
    let data = std::sync::Arc::new(tempfile::tempdir_in(disk.dir.path()).unwrap());
    let full = peer_node_in(&upstream, data, &[p2p_addr(&holder)], |_| {}, |_| {}).await;
    assert!(eventually(Duration::from_secs(10), || connected(&full) > 0).await);
    let wanted = file_url(&full, "big", "big-1.0.tar.gz").await;
    full.node.flush().unwrap();
    upstream.state.reset_counts();

    let _filler = disk.fill();
    let refused = client().get(&wanted).send().await.unwrap();
    assert_eq!(refused.status(), 503);
    let why = refused.text().await.unwrap();
    assert!(why.contains("store cannot write"), "{why}");
    assert_eq!(
        upstream.state.count("/files/big-1.0.tar.gz"),
        0,
        "the index is not asked for bytes the disk cannot hold"
    );
    let holder_id = holder.node.swarm().unwrap().local_peer_id();
    let seen = full.node.swarm().unwrap().peer_info(&holder_id).unwrap();
    assert!(!seen.blocked, "the peer is neither blocked nor suspended");
}

async fn health(node: &TestNode) -> (u16, String) {
    let response = client().get(node.url("/healthz")).send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// The store fills its disk: the node keeps serving what it holds, says it
/// is degraded, and recovers on its own once space returns, having lost
/// nothing it had committed (the code before answered 500 to every page
/// until restarted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_degrades_the_node_which_recovers_when_space_returns() {
    let Some(disk) = SmallDisk::mount_or_report("48m") else {
        return;
    };
    let upstream = fake_index(demo_graph()).await;
    let data = std::sync::Arc::new(tempfile::tempdir_in(disk.dir.path()).unwrap());
    let node = start_node_in(&upstream, data.clone(), |_| {}).await;
    let wheel = "beta-1.0-py3-none-any.whl";
    let wheel_url = file_url(&node, "beta", wheel).await;
    // A file larger than what the filled disk leaves, listed before.
    upstream.state.add(peerpi_testkit::synthetic(
        "big",
        "big-1.0.tar.gz",
        256 << 10,
        3,
    ));
    let unheld = file_url(&node, "big", "big-1.0.tar.gz").await;
    assert_is_upstream_file(&upstream, wheel, &get_bytes(&wheel_url).await);
    node.node.flush().unwrap();
    assert_eq!(health(&node).await.0, 200);

    let filler = disk.fill();
    // New pages need catalog writes; sled reports a full disk on a write
    // or on its next flush.
    let mut degraded = false;
    for project in ["gamma", "delta", "alpha"].iter().cycle().take(60) {
        let _ = client()
            .get(node.url(&format!("/simple/{project}/")))
            .send()
            .await;
        let _ = node.node.flush();
        if health(&node).await.0 == 503 {
            degraded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(degraded, "the node reports that it cannot write");
    let (_, why) = health(&node).await;
    assert!(why.contains("degraded"), "{why}");

    // What it holds is still served.
    let held = client().get(&wheel_url).send().await.unwrap();
    assert_eq!(held.status(), 200);
    assert_is_upstream_file(&upstream, wheel, &held.bytes().await.unwrap());
    assert_eq!(
        page_status_within(&node, "beta", PAGE_ANSWER_LIMIT).await,
        200
    );
    // A file it does not hold cannot be stored: 503 naming the store (it
    // was a 502 blaming the upstream for the disk's failure), and the index
    // is not asked for bytes that would be thrown away (it was).
    let refused = client().get(&unheld).send().await.unwrap();
    assert_eq!(refused.status(), 503);
    let why = refused.text().await.unwrap();
    assert!(why.contains("store cannot write"), "{why}");
    assert_eq!(
        upstream.state.count("/files/big-1.0.tar.gz"),
        0,
        "no upstream request for a listed file the disk cannot hold"
    );

    std::fs::remove_file(filler).unwrap();
    let mut recovered = false;
    for _ in 0..100 {
        if health(&node).await.0 == 200 {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "healthy again once the disk has room");
    let url = file_url(&node, "gamma", "gamma-0.1.tar.gz").await;
    assert_is_upstream_file(&upstream, "gamma-0.1.tar.gz", &get_bytes(&url).await);
    node.node.flush().unwrap();

    // Nothing committed was lost: after a restart both files are local.
    let node = restart(node, &upstream, |_| {}).await;
    for filename in [wheel, "gamma-0.1.tar.gz"] {
        let sha = upstream.state.file(filename).unwrap().sha256;
        let digest = peerpi_core::Sha256Digest::from_hex(&sha).unwrap();
        assert!(
            node.node.store().get(&digest).unwrap().is_some(),
            "{filename} kept"
        );
    }
    assert_eq!(node.node.store().blob_count(), 2);
}

/// A peer that broke off before sending a byte is no suspect when the next
/// peer's bytes fail verification: the liar alone sent them, so it is
/// blocked for good at once (the code before counted both, only suspended
/// them, and with upstream down never found out who lied).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_sent_nothing_does_not_shield_the_liar_after_it() {
    const BIG: &str = "big-1.0.tar.gz";
    let upstream = fake_index(vec![peerpi_testkit::synthetic("big", BIG, 2 << 20, 17)]).await;
    // B asks the empty-handed peer first (same region), the forger next.
    let empty = holder(&upstream, "big", BIG, |c| {
        c.adversary = Some(peerpi_swarm::Adversary::EmptyBody);
        c.region = Some("here".into());
    })
    .await;
    let forger = holder(&upstream, "big", BIG, |c| {
        c.adversary = Some(peerpi_swarm::Adversary::WrongBytes);
        c.region = Some("there".into());
    })
    .await;
    let b = peer_node(&upstream, &[p2p_addr(&empty), p2p_addr(&forger)], |c| {
        c.region = Some("here".into())
    })
    .await;
    let swarm = b.node.swarm().unwrap().clone();
    let ids = [&empty, &forger].map(|n| n.node.swarm().unwrap().local_peer_id());
    assert!(
        eventually(Duration::from_secs(10), || ids
            .iter()
            .all(|id| swarm.peer_info(id).is_some_and(|p| p.region.is_some())))
        .await,
        "regions learnt through identify"
    );
    let url = file_url(&b, "big", BIG).await;
    upstream.stop();
    let response = client().get(&url).send().await.unwrap();
    assert_eq!(response.status(), 502, "no honest source is left");
    assert!(
        blocked_for_good(&b, &forger),
        "the liar is blocked for good"
    );
    assert!(
        suspended(&b, &empty),
        "the peer that broke off is only suspended"
    );
}

/// A peer that takes bulk-channel tickets and never redeems them holds this
/// node's stream permits only until the tickets expire (the stream timeout,
/// 2 s here); a pruning timer gives them back even when no new ticket is
/// issued (the code before pruned only when issuing, which needs a permit:
/// in a two-node swarm the peer was refused for good).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unredeemed_tickets_give_back_their_permits_when_they_expire() {
    const PER_PEER_STREAMS: usize = 8;
    const BIG: &str = "big-1.0.tar.gz";
    let upstream = fake_index(vec![peerpi_testkit::synthetic("big", BIG, 3 << 20, 23)]).await;
    let a = peer_node(&upstream, &[], |_| {}).await;
    get_bytes(&file_url(&a, "big", BIG).await).await;
    let b = peer_node(&upstream, &[p2p_addr(&a)], |_| {}).await;
    assert!(eventually(Duration::from_secs(10), || connected(&b) >= 1).await);
    let a_id = a.node.swarm().unwrap().local_peer_id();
    let sha = upstream.state.file(BIG).unwrap().sha256;
    let digest = peerpi_core::Sha256Digest::from_hex(&sha).unwrap();
    let swarm = b.node.swarm().unwrap().clone();
    for i in 0..PER_PEER_STREAMS {
        assert!(
            swarm.take_ticket_and_walk_away(a_id, digest).await.unwrap(),
            "ticket {i}"
        );
    }
    assert!(
        !swarm.take_ticket_and_walk_away(a_id, digest).await.unwrap(),
        "every permit is held by an unredeemed ticket: BUSY"
    );

    tokio::time::sleep(Duration::from_secs(4)).await;
    let body = get_bytes(&file_url(&b, "big", BIG).await).await;
    assert_is_upstream_file(&upstream, BIG, &body);
    assert_eq!(
        upstream.state.count(&format!("/files/{BIG}")),
        1,
        "B's copy came from A"
    );
}

/// Eviction removes the record, then the file; a request between the two
/// found the record and failed to open the file (503 "just evicted" twice
/// in the soak run). A missing file is now a miss: fetched again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_whose_file_vanished_is_fetched_again_not_refused() {
    let upstream = fake_index(demo_graph()).await;
    let node = start_node(&upstream, |_| {}).await;
    let wheel = "beta-1.0-py3-none-any.whl";
    let url = file_url(&node, "beta", wheel).await;
    get_bytes(&url).await;
    let sha = upstream.state.file(wheel).unwrap().sha256;
    let digest = peerpi_core::Sha256Digest::from_hex(&sha).unwrap();
    std::fs::remove_file(node.node.store().blob_path(&digest)).unwrap();

    let response = client().get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_is_upstream_file(&upstream, wheel, &response.bytes().await.unwrap());
    assert_eq!(upstream.state.count(&format!("/files/{wheel}")), 2);
    assert_eq!(
        node.node.store().blob_count(),
        1,
        "stored again, one record"
    );
}

/// The files pip and uv fetch to install alpha from the demo graph, with
/// their core-metadata files.
fn alpha_closure(upstream: &peerpi_testkit::FakeIndex) -> Vec<peerpi_testkit::FakeFile> {
    [
        "alpha-1.0-py3-none-any.whl",
        "beta-1.0-py3-none-any.whl",
        "gamma-0.1.tar.gz",
        "delta-1.0-py3-none-any.whl",
    ]
    .iter()
    .map(|f| upstream.state.file(f).expect("a demo file"))
    .collect()
}

/// A swarm member that holds (and announces) every file of `files`, then
/// serves them as `adversary` does.
async fn hostile_holder(
    upstream: &peerpi_testkit::FakeIndex,
    files: &[peerpi_testkit::FakeFile],
    adversary: peerpi_swarm::Adversary,
) -> TestNode {
    let node = peer_node(upstream, &[], |c| {
        c.bulk_listen = None;
        c.adversary = Some(adversary);
    })
    .await;
    for f in files {
        let url = file_url(&node, &f.project, &f.filename).await;
        get_bytes(&url).await;
        get_bytes(format!("{url}.metadata")).await;
    }
    node
}

/// A node with the product's peer settings (not the tests' shorter ones),
/// joined to `members`.
async fn honest_node(upstream: &peerpi_testkit::FakeIndex, members: &[&TestNode]) -> TestNode {
    let defaults = peerpi_node::NodeConfig::new(
        std::path::PathBuf::new(),
        peerpi_upstream::UpstreamConfig::new(upstream.simple_url().parse().unwrap()),
    );
    let bootstrap: Vec<_> = members.iter().map(|m| p2p_addr(m)).collect();
    let node = peer_node_with(
        upstream,
        &bootstrap,
        |c| {
            c.peer_deadline = defaults.peer_deadline;
            c.peer_hold_back = defaults.peer_hold_back;
        },
        |c| {
            c.stream_timeout =
                peerpi_swarm::SwarmConfig::new(std::path::PathBuf::new()).stream_timeout
        },
    )
    .await;
    let want = members.len() as u64;
    assert!(
        eventually(Duration::from_secs(20), || connected(&node) >= want).await,
        "joined every member"
    );
    node
}

/// Eight providers that each answer "not found" after 9.5 s held a client
/// 75 s without a response head. Whatever the peers do, the client's
/// response starts within the hold-back (5 s) plus the upstream's answer,
/// and the late peers are suspended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_answering_late_cannot_hold_a_client_past_the_hold_back() {
    let upstream = fake_index(demo_graph()).await;
    let files = alpha_closure(&upstream);
    let beta = &files[1];
    let mut members = Vec::new();
    for _ in 0..8 {
        members.push(
            hostile_holder(
                &upstream,
                &files[1..2],
                peerpi_swarm::Adversary::SlowNotFound,
            )
            .await,
        );
    }
    let b = honest_node(&upstream, &members.iter().collect::<Vec<_>>()).await;
    let url = file_url(&b, "beta", &beta.filename).await;
    let started = std::time::Instant::now();
    let response = tokio::time::timeout(Duration::from_secs(30), client().get(&url).send())
        .await
        .expect("a response head")
        .unwrap();
    let head_after = started.elapsed();
    assert_eq!(response.status(), 200);
    assert!(
        head_after < Duration::from_secs(8),
        "the head came after {head_after:?}, not within the 5 s hold-back and an upstream answer"
    );
    assert_is_upstream_file(&upstream, &beta.filename, &response.bytes().await.unwrap());
    assert!(
        members.iter().any(|m| suspended(&b, m)),
        "the peer that answered late is suspended"
    );
}

/// A provider slow to answer (it answers "not found" after 9.5 s, as a
/// stalled or overloaded peer would) is listed first, in the client's
/// region: the node asks the next provider once the hedge delay (50 ms
/// before any answer) has passed, and the file comes from that peer within
/// moments (73 ms measured). Before, the client waited the peer deadline (2 s,
/// measured 2.02 s) on the slow one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_slow_to_answer_is_hedged_by_the_next() {
    let upstream = fake_index(demo_graph()).await;
    let beta = alpha_closure(&upstream)[1].clone();
    let in_region = |region: &'static str, slow: bool| {
        move |c: &mut peerpi_swarm::SwarmConfig| {
            c.bulk_listen = None;
            c.region = Some(region.into());
            if slow {
                c.adversary = Some(peerpi_swarm::Adversary::SlowNotFound);
            }
        }
    };
    let slow = peer_node(&upstream, &[], in_region("here", true)).await;
    let honest = peer_node(&upstream, &[], in_region("there", false)).await;
    for holder in [&slow, &honest] {
        get_bytes(&file_url(holder, "beta", &beta.filename).await).await;
    }
    let defaults = peerpi_node::NodeConfig::new(
        std::path::PathBuf::new(),
        peerpi_upstream::UpstreamConfig::new(upstream.simple_url().parse().unwrap()),
    );
    let b = peer_node_with(
        &upstream,
        &[p2p_addr(&slow), p2p_addr(&honest)],
        |c| {
            c.peer_deadline = defaults.peer_deadline;
            c.peer_hold_back = defaults.peer_hold_back;
        },
        |c| c.region = Some("here".into()),
    )
    .await;
    // B orders providers by region once it knows them: the slow one first.
    let knows_regions = || {
        [&slow, &honest].iter().all(|peer| {
            let id = peer.node.swarm().unwrap().local_peer_id();
            b.node
                .swarm()
                .unwrap()
                .peer_info(&id)
                .is_some_and(|p| p.region.is_some() && p.connected)
        })
    };
    assert!(eventually(Duration::from_secs(20), knows_regions).await);
    let url = file_url(&b, "beta", &beta.filename).await;
    let started = std::time::Instant::now();
    let body = get_bytes(&url).await;
    let took = started.elapsed();
    eprintln!("the file came after {took:?}");
    assert_is_upstream_file(&upstream, &beta.filename, &body);
    // Without the hedge it waited the peer deadline (2 s) on the slow one.
    assert!(
        took < Duration::from_secs(1),
        "the download waited on the slow provider: {took:?}"
    );
    assert!(metric(&b, "peerpi_blob_bytes_total", "source=\"peer\"").await > 0.0);
    assert!(metric(&b, "peerpi_peer_hedges_total", "").await >= 1.0);
}

/// Peers claiming to be fetching every file (intents they never fulfil,
/// answered "pending") held a client up to 2 minutes: now at most the
/// hold-back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_intents_cannot_hold_a_client_past_the_hold_back() {
    let upstream = fake_index(demo_graph()).await;
    let files = alpha_closure(&upstream);
    let beta = &files[1];
    let faker = peer_node(&upstream, &[], |c| {
        c.adversary = Some(peerpi_swarm::Adversary::Pending)
    })
    .await;
    let digest: peerpi_core::Sha256Digest = beta.sha256.parse().unwrap();
    let _intent = faker.node.swarm().unwrap().intend(digest);
    let b = honest_node(&upstream, &[&faker]).await;
    let url = file_url(&b, "beta", &beta.filename).await;
    let started = std::time::Instant::now();
    let body = tokio::time::timeout(Duration::from_secs(30), get_bytes(&url))
        .await
        .expect("the file");
    let took = started.elapsed();
    assert_is_upstream_file(&upstream, &beta.filename, &body);
    assert!(took < Duration::from_secs(8), "took {took:?}");
    assert!(suspended(&b, &faker), "pending past the client's deadline");
}

/// Two peers sending the right bytes below the minimum rate: their bytes
/// were released to the client after the hold-back, then both were given
/// up and the client's response was cut although the node fetched the file
/// upstream. Now upstream continues the same response from where the peers
/// stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_started_by_failing_peers_is_finished_from_upstream() {
    const BIG: &str = "big-1.0.tar.gz";
    let upstream = fake_index(vec![peerpi_testkit::synthetic("big", BIG, 2 << 20, 5)]).await;
    let big = upstream.state.file(BIG).unwrap();
    let mut drippers = Vec::new();
    for _ in 0..2 {
        let node = peer_node(&upstream, &[], |c| {
            c.bulk_listen = None;
            c.upload_limit = Some(128 << 10); // half the minimum rate
        })
        .await;
        get_bytes(&file_url(&node, "big", BIG).await).await;
        drippers.push(node);
    }
    let bootstrap: Vec<_> = drippers.iter().map(p2p_addr).collect();
    let b = peer_node_with(
        &upstream,
        &bootstrap,
        |c| c.peer_hold_back = Duration::from_millis(500),
        |_| {},
    )
    .await;
    assert!(eventually(Duration::from_secs(20), || connected(&b) >= 2).await);
    let peer_bytes = || metric(&b, "peerpi_blob_bytes_total", "source=\"peer\"");
    let url = file_url(&b, "big", BIG).await;
    let response = client().get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let body = tokio::time::timeout(Duration::from_secs(30), response.bytes())
        .await
        .expect("the body ends")
        .expect("the whole body, not a cut response");
    assert_is_upstream_file(&upstream, &big.filename, &body);
    assert!(
        peer_bytes().await > 0.0,
        "the response began with peer bytes"
    );
    assert!(
        drippers.iter().any(|d| suspended(&b, d)),
        "the slow peer is suspended"
    );
}

/// A peer that lies only in the last byte, after its other bytes were
/// released: the client's response goes on with the verified file from
/// upstream (the bytes it already had were right), and the liar is blocked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_liar_cannot_cut_a_clients_response() {
    const WHEEL_BYTES: u64 = 4 << 20;
    let spec = peerpi_testkit::DistSpec::new("heavy", "1.0").padded(WHEEL_BYTES);
    let upstream = fake_index(vec![peerpi_testkit::wheel(&spec)]).await;
    let wheel = "heavy-1.0-py3-none-any.whl";
    let liar = holder(&upstream, "heavy", wheel, |c| {
        c.adversary = Some(peerpi_swarm::Adversary::LastByteWrong);
        c.upload_limit = Some(1 << 20);
    })
    .await;
    let b = peer_node_with(
        &upstream,
        &[p2p_addr(&liar)],
        |c| c.peer_hold_back = Duration::from_millis(500),
        |_| {},
    )
    .await;
    let url = file_url(&b, "heavy", wheel).await;
    let body = tokio::time::timeout(Duration::from_secs(30), get_bytes(&url))
        .await
        .expect("the whole file");
    assert_is_upstream_file(&upstream, wheel, &body);
    assert!(blocked_for_good(&b, &liar));
}

/// A hostile upstream's file URL (on the upstream's own host) redirects to
/// another service on this machine: the redirect is refused, not followed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_to_this_machine_is_refused_at_every_hop() {
    let secret = fake_index(vec![]).await; // an internal service
    let upstream = fake_index(demo_graph()).await;
    upstream.state.set_fault(
        "/files/beta-1.0",
        Fault::Redirect(format!("http://127.0.0.1:{}/simple/", secret.addr.port())),
    );
    upstream.state.set_fault(
        "/simple/gamma/",
        Fault::Redirect(format!("http://127.0.0.1:{}/simple/", secret.addr.port())),
    );
    let node = start_node(&upstream, |_| {}).await;
    let url = file_url(&node, "beta", "beta-1.0-py3-none-any.whl").await;
    let response = client().get(&url).send().await.unwrap();
    assert_eq!(response.status(), 502);
    let body = response.text().await.unwrap();
    assert!(body.contains("refusing a redirect"), "{body}");
    let page = client()
        .get(node.url("/simple/gamma/"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 502);
    assert_eq!(
        secret.state.count_prefix("/"),
        0,
        "the internal service saw nothing"
    );
}

/// Under eight hostile swarm members, each with another trick (late "not
/// found", fake intents, a stall, a drip, wrong bytes, a truncation, a
/// huge size, a lie in the last byte), real pip and uv installs through
/// honest nodes succeed with the clients' default timeouts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pip_and_uv_install_among_eight_hostile_swarm_members() {
    use peerpi_swarm::Adversary::*;
    let upstream = fake_index(demo_graph()).await;
    let files = alpha_closure(&upstream);
    let mut members = Vec::new();
    for adversary in [
        SlowNotFound,
        Stall,
        Drip,
        WrongBytes,
        Truncate,
        HugeSize,
        LastByteWrong,
    ] {
        members.push(hostile_holder(&upstream, &files, adversary).await);
    }
    // The eighth holds nothing but claims to be fetching every file.
    let faker = peer_node(&upstream, &[], |c| c.adversary = Some(Pending)).await;
    let mut intents = Vec::new();
    for f in &files {
        let swarm = faker.node.swarm().unwrap();
        intents.push(swarm.intend(f.sha256.parse().unwrap()));
        if let Some(metadata) = &f.metadata {
            intents.push(swarm.intend(sha256_hex(metadata).parse().unwrap()));
        }
    }
    members.push(faker);
    let all: Vec<&TestNode> = members.iter().collect();

    let b = honest_node(&upstream, &all).await;
    let venv = tempfile::tempdir().unwrap();
    let bin = common::python::pip_venv(venv.path()).await;
    common::python::pip_install(&bin, &b.simple_url(), &["alpha"]).await;
    assert_eq!(
        common::python::installed(&bin).await,
        common::python::expected()
    );
    assert!(
        met_hostile_peers(&b, &members).await,
        "pip's node never met them"
    );

    let c = honest_node(&upstream, &all).await;
    let uv_dir = tempfile::tempdir().unwrap();
    let uv_bin =
        common::python::uv_install(&uv_dir.path().join("env"), &c.simple_url(), &["alpha"]).await;
    assert_eq!(
        common::python::installed(&uv_bin).await,
        common::python::expected()
    );
    assert!(
        met_hostile_peers(&c, &members).await,
        "uv's node never met them"
    );
}

/// Whether `node` dealt with any of `members`: a transfer from one, bytes
/// that failed verification, or one of them blocked or suspended now.
async fn met_hostile_peers(node: &TestNode, members: &[TestNode]) -> bool {
    metric(node, "peerpi_peer_transfers_total", "").await > 0.0
        || metric(
            node,
            "peerpi_verification_failures_total",
            "source=\"peer\"",
        )
        .await
            > 0.0
        || members
            .iter()
            .any(|m| blocked_for_good(node, m) || suspended(node, m))
}

/// A large but legal page (200,000 files from an HTML-only index) took
/// quadratic time on the runtime threads, and `/healthz` went unanswered
/// meanwhile: now it is parsed, indexed and rendered in linear time off
/// them, and the node answers throughout. (Linear: about 8 s in a debug
/// build here; quadratic: 26 s at half the files, so some 100 s.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_page_is_served_while_the_node_answers_throughout() {
    const FILES: usize = 200_000;
    let one_byte = bytes::Bytes::from_static(b"x");
    let files: Vec<peerpi_testkit::FakeFile> = (0..FILES)
        .map(|i| peerpi_testkit::FakeFile {
            project: "huge".into(),
            filename: format!("huge-{i}.0-py3-none-any.whl"),
            content: peerpi_testkit::dist::Content::Bytes(one_byte.clone()),
            sha256: sha256_hex(&one_byte),
            len: 1,
            requires_python: None,
            yanked: None,
            metadata: None,
        })
        .collect();
    let upstream = fake_index(files).await;
    upstream.state.set_html_only(true); // no versions listed: derived here
    let node = start_node(&upstream, |_| {}).await;
    let url = node.url("/simple/huge/");
    let page = tokio::spawn(async move {
        let response = client()
            .get(url)
            .header("accept", JSON)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.bytes().await.unwrap()
    });
    let started = std::time::Instant::now();
    while !page.is_finished() {
        assert_healthy(&node).await;
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the page did not arrive in a minute"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let body: serde_json::Value = serde_json::from_slice(&page.await.unwrap()).unwrap();
    // (Versions are derived for every page, but API 1.0, which a page
    // without sizes is served as, does not list them.)
    assert_eq!(body["files"].as_array().unwrap().len(), FILES);
}
