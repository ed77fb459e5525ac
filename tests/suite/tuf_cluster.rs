//! A cluster under TUF, as operators run it: one signer node and nodes in
//! `--trust tuf` mode, real binaries with their swarms on loopback, real pip
//! and uv. Once the signer has signed a dependency graph, the upstream index
//! goes away and the other nodes still install it: pages and files from
//! peers and the signer, every page checked against its signed digest.

use crate::common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::python::*;
use common::*;
use peerpi_testkit::{demo_graph, FakeIndex};

struct Cluster {
    dir: tempfile::TempDir,
    signer: NodeProcess,
    /// The signer's swarm address, kept so that nodes started after the
    /// signer stopped still name it (and find it gone).
    signer_p2p: String,
}

impl Cluster {
    async fn start(upstream: &str) -> Self {
        Self::start_signing_every(upstream, "200ms").await
    }

    async fn start_signing_every(upstream: &str, interval: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        tuf_init(dir.path(), "signer/tuf", "256");
        let keys = dir.path().join("keys");
        let signer = NodeProcess::start(
            upstream,
            &dir.path().join("signer"),
            &[
                "--signer",
                keys.to_str().unwrap(),
                "--sign-interval",
                interval,
                "--page-ttl",
                "1s",
            ],
        )
        .await;
        let signer_p2p = p2p_addr_of(&signer).await;
        Cluster {
            dir,
            signer,
            signer_p2p,
        }
    }

    fn root(&self) -> String {
        self.dir
            .path()
            .join("signer/tuf/metadata/1.root.json")
            .display()
            .to_string()
    }

    /// The TUF settings of an in-process node in `tuf` mode, refreshing at
    /// most every `refresh`.
    fn trust_config(&self, refresh: Duration) -> peerpi_node::trust::TrustConfig {
        peerpi_node::trust::TrustConfig {
            mode: peerpi_node::trust::TrustMode::Tuf,
            root: self.root().into(),
            url: url::Url::parse(&self.signer.url("/tuf/")).unwrap(),
            refresh,
            wait: Duration::from_secs(30),
        }
    }

    /// A node in `--trust tuf` mode, bootstrapped to the signer.
    async fn tuf_node(&self, name: &str) -> NodeProcess {
        self.tuf_node_with(name, &[]).await
    }

    async fn tuf_node_with(&self, name: &str, extra: &[&str]) -> NodeProcess {
        let bootstrap = self.signer_p2p.clone();
        let tuf_url = self.signer.url("/tuf/");
        let root = self.root();
        let args = [
            "--trust",
            "tuf",
            "--tuf-root",
            &root,
            "--tuf-url",
            &tuf_url,
            "--bootstrap",
            &bootstrap,
        ];
        let args: Vec<&str> = args.iter().copied().chain(extra.iter().copied()).collect();
        NodeProcess::start_without_upstream(&self.dir.path().join(name), &args).await
    }

    /// A cluster whose signer signed two demo projects whose pages fall in
    /// different bins of its 256, so that a node can hold the bin of one
    /// and not of the other.
    async fn with_two_bins_signed(upstream: &FakeIndex) -> (Self, &'static str, &'static str) {
        let bin = |project: &str| {
            let target = format!("simple/{project}/index.json");
            peerpi_trust::paths::path_digest(&target)[..2].to_string()
        };
        let projects = ["alpha", "beta", "gamma", "delta"];
        let (first, second) = projects
            .iter()
            .flat_map(|a| projects.iter().map(move |b| (*a, *b)))
            .find(|(a, b)| bin(a) != bin(b))
            .expect("two demo projects in different bins");
        let cluster = Cluster::start(&upstream.simple_url()).await;
        for project in [first, second] {
            get_text(cluster.signer.url(&format!("/simple/{project}/"))).await;
        }
        cluster
            .wait_signed(&[first.to_string(), second.to_string()])
            .await;
        (cluster, first, second)
    }

    /// Waits (bounded) until the signer has signed the pages of `projects`.
    async fn wait_signed(&self, projects: &[String]) {
        let store = self.dir.path().join("watcher");
        std::fs::create_dir_all(&store).unwrap();
        std::fs::copy(self.root(), store.join("root.json")).unwrap();
        let mut watcher = peerpi_trust::Client::new(
            peerpi_trust::MetadataDir::new(&store),
            peerpi_trust::HttpFetcher::new(Duration::from_secs(10)).unwrap(),
            &url::Url::parse(&self.signer.url("/tuf/metadata/")).unwrap(),
            peerpi_trust::Limits::default(),
        )
        .unwrap();
        let started = Instant::now();
        'wait: loop {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the signer never signed {projects:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
            watcher.refresh().await.unwrap();
            for project in projects {
                let target = format!("simple/{project}/index.json");
                if watcher.lookup(&target).await.unwrap().is_none() {
                    continue 'wait;
                }
            }
            return;
        }
    }
}

#[tokio::test]
async fn tuf_nodes_install_from_the_cluster_after_the_index_is_gone() {
    let upstream = fake_index(demo_graph()).await;
    let cluster = Cluster::start(&upstream.simple_url()).await;
    // The signer fetches (and signs) the graph as a normal node would.
    let warm = pip_venv(&cluster.dir.path().join("warm")).await;
    pip_install(&warm, &cluster.signer.url("/simple/"), &["alpha"]).await;
    let projects: Vec<String> = expected().into_iter().map(|(name, _)| name).collect();
    cluster.wait_signed(&projects).await;

    let a = cluster.tuf_node("a").await;
    let b = cluster.tuf_node("b").await;
    let c = cluster.tuf_node("c").await;
    upstream.stop();

    let venv_a = pip_venv(&cluster.dir.path().join("venv-a")).await;
    pip_install(&venv_a, &a.url("/simple/"), &["alpha"]).await;
    assert_eq!(installed(&venv_a).await, expected());

    let venv_b = pip_venv(&cluster.dir.path().join("venv-b")).await;
    let started = Instant::now();
    pip_install(&venv_b, &b.url("/simple/"), &["alpha"]).await;
    let b_took = started.elapsed();
    assert_eq!(installed(&venv_b).await, expected());

    let venv_c = cluster.dir.path().join("venv-c");
    uv_install(&venv_c, &c.url("/simple/"), &["alpha"]).await;
    assert_eq!(installed(&venv_c.join("bin")).await, expected());

    // The page B serves is byte for byte the one the signer signed.
    let served = get_json_page(b.url("/simple/alpha/")).await;
    assert_eq!(
        served,
        get_json_page(cluster.signer.url("/simple/alpha/")).await
    );
    eprintln!("B installed the graph with the index down in {b_took:?}");
    // B's TUF state is visible to its operator.
    let metrics = get_text(b.url("/metrics")).await;
    let value = |name: &str| series(&metrics, name);
    assert!(value("peerpi_tuf_refresh_total{outcome=\"ok\"}") >= 1.0);
    // The snapshot, named by its hash in the timestamp, came over the swarm.
    assert!(value("peerpi_tuf_metadata_bytes_total{source=\"peer\"}") > 0.0);
    assert!(value("peerpi_tuf_metadata_bytes_total{source=\"signer\"}") > 0.0);

    let timestamp_left = value("peerpi_tuf_expires_seconds{role=\"timestamp\"}");
    assert!(
        timestamp_left > 3_600.0 && timestamp_left <= 86_400.0,
        "{timestamp_left}"
    );
}

/// The value of the series `name` (with its labels) in a metrics page.
fn series(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in the metrics:\n{metrics}"))
}

#[tokio::test]
async fn a_cold_project_is_answered_once_the_signer_signed_it() {
    let upstream = fake_index(demo_graph()).await;
    let cluster = Cluster::start(&upstream.simple_url()).await;
    let b = cluster.tuf_node("b").await;
    // Nobody asked for it before: B asks the signer and waits for its
    // signature (sign interval 200 ms; B polls every 250 ms).
    let started = Instant::now();
    let page = client()
        .get(b.url("/simple/alpha/"))
        .header("Accept", "application/vnd.pypi.simple.v1+json")
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(page.status(), 200, "{}", page.text().await.unwrap());
    assert!(took < Duration::from_secs(30));
    eprintln!("cold project through a tuf node: {took:?}");
    // A project upstream does not have is a 404, not a wait.
    let missing = client()
        .get(b.url("/simple/no-such-project/"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

/// A new upstream release reaches a `tuf` node: the node's revalidations
/// tell the signer the project is in use, the signer revalidates and signs
/// the changed page. (Before, a project only `tuf` nodes asked for was never
/// fetched again by the signer, and new releases never appeared.)
#[tokio::test]
async fn a_new_upstream_release_reaches_a_tuf_node() {
    let upstream = fake_index(demo_graph()).await;
    let cluster = Cluster::start(&upstream.simple_url()).await;
    let b = cluster.tuf_node_with("b", &["--page-ttl", "1s"]).await;
    let first = get_text(b.url("/simple/alpha/")).await;
    assert!(first.contains("alpha-1.0"), "{first}");
    upstream
        .state
        .add(peerpi_testkit::wheel(&peerpi_testkit::DistSpec::new(
            "alpha", "2.0",
        )));
    let started = Instant::now();
    loop {
        let page = get_text(b.url("/simple/alpha/")).await;
        if page.contains("alpha-2.0") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the new release never reached the tuf node"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A signer that signs every 10 minutes still answers a cold project at
/// once: a project new to it is signed within a second (the tuf node waits
/// at most 30 s, so without that it would get a 503).
#[tokio::test]
async fn a_cold_project_is_signed_at_once_not_at_the_next_tick() {
    let upstream = fake_index(demo_graph()).await;
    let cluster = Cluster::start_signing_every(&upstream.simple_url(), "10m").await;
    let b = cluster.tuf_node("b").await;
    let page = client().get(b.url("/simple/gamma/")).send().await.unwrap();
    assert_eq!(page.status(), 200, "{}", page.text().await.unwrap());
}

#[tokio::test]
async fn a_restarted_tuf_node_keeps_its_trust_state() {
    let upstream = fake_index(demo_graph()).await;
    let cluster = Cluster::start(&upstream.simple_url()).await;
    let mut b = cluster.tuf_node("b").await;
    let ok = client().get(b.url("/simple/alpha/")).send().await.unwrap();
    assert_eq!(ok.status(), 200, "{}", ok.text().await.unwrap());
    b.stop_gracefully().await;
    let stored = cluster.dir.path().join("b/tuf-client/timestamp.json");
    let version = |bytes: &[u8]| {
        let value: serde_json::Value = serde_json::from_slice(bytes).unwrap();
        value["signed"]["version"].as_u64().unwrap()
    };
    let old_timestamp = std::fs::read(&stored).unwrap();
    let before = version(&old_timestamp);
    assert!(before > 1, "B trusted the timestamp that signs alpha");
    // The signer signs on while B is down.
    let more = client()
        .get(cluster.signer.url("/simple/beta/"))
        .send()
        .await
        .unwrap();
    assert_eq!(more.status(), 200);
    let mut b = cluster.tuf_node("b").await;
    let page = client().get(b.url("/simple/beta/")).send().await.unwrap();
    assert_eq!(page.status(), 200, "{}", page.text().await.unwrap());
    let after = version(&std::fs::read(&stored).unwrap());
    assert!(
        after > before,
        "versions only move forward across a restart: {before} -> {after}"
    );
    // The root B trusts is the installed one, kept in its own directory.
    assert!(cluster.dir.path().join("b/tuf-client/root.json").exists());
    // What an operator sees.
    let status = Command::new(env!("CARGO_BIN_EXE_peerpi"))
        .args(["tuf", "status", "--data-dir"])
        .arg(cluster.dir.path().join("b"))
        .args(["--tuf-url", &cluster.signer.url("/tuf/")])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(text.contains(&format!("timestamp  v{after}")), "{text}");
    assert!(text.contains("bins cached: 2"), "{text}");
    assert!(text.contains("answers"), "{text}");

    // The metadata directory rolled back by hand (an old timestamp put
    // back) is found at the next start, which refuses with the fix.
    b.stop_gracefully().await;
    std::fs::write(&stored, &old_timestamp).unwrap();
    let stderr = tuf_start_refused(
        Path::new(&cluster.root()),
        &cluster.signer.url("/tuf/"),
        &cluster.dir.path().join("b"),
    );
    assert!(
        stderr.contains("rolled back: this node trusted timestamp version")
            && stderr.contains(&format!("the directory holds version {before}.")),
        "{stderr}"
    );
}

/// A peer that holds the snapshot and a signed page but serves other bytes
/// for them (what an old version or a tampered file looks like by digest):
/// refused, the peer blocked for good at the first lie (the snapshot, which
/// B needs first), the snapshot and the page taken from the signer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_serving_a_tampered_snapshot_or_page_is_refused_and_blocked() {
    let upstream = fake_index(demo_graph()).await;
    let cluster = Cluster::start(&upstream.simple_url()).await;
    let signer_simple = cluster.signer.url("/simple/");
    let trust = cluster.trust_config(Duration::from_secs(10));
    let under_tuf = |c: &mut peerpi_node::NodeConfig| {
        c.upstream.base = signer_simple.parse().unwrap();
        c.trust = Some(trust.clone());
    };
    let signer_addr: peerpi_swarm::Multiaddr = p2p_addr_of(&cluster.signer).await.parse().unwrap();
    // The liar shares B's region and the signer does not, so B asks the
    // liar first for every blob: the snapshot, then the page.
    let liar = peer_node_with(&upstream, &[signer_addr], under_tuf, |s| {
        s.adversary = Some(peerpi_swarm::Adversary::WrongBytes);
        s.region = Some("here".into());
    })
    .await;
    // The liar verifies and stores the page like anyone (it lies only when serving).
    let honest_copy = client()
        .get(liar.url("/simple/alpha/"))
        .send()
        .await
        .unwrap();
    assert_eq!(honest_copy.status(), 200);
    let b = peer_node_with(&upstream, &[p2p_addr(&liar)], under_tuf, |s| {
        s.region = Some("here".into())
    })
    .await;
    let served = get_json_page(b.url("/simple/alpha/")).await;
    let signed = get_json_page(cluster.signer.url("/simple/alpha/")).await;
    assert_eq!(served, signed);
    assert!(blocked_for_good(&b, &liar), "the liar is blocked for good");
}

/// Freeze: once the metadata a node trusts has expired (here: the node's
/// clock floor is moved 400 days ahead, as if the signer had been down that
/// long), a `tuf` node refuses pages, even cached ones, with the reason; a
/// `tuf-or-index` node falls back to the index.
#[tokio::test]
async fn expired_metadata_refuses_pages_in_tuf_mode_and_falls_back_in_tuf_or_index() {
    let upstream = fake_index(demo_graph()).await;
    let cluster = Cluster::start(&upstream.simple_url()).await;
    let mut b = cluster.tuf_node("b").await;
    let ok = client().get(b.url("/simple/alpha/")).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    b.stop_gracefully().await;
    let later = jiff::Timestamp::now().as_second() + 400 * 86_400;
    std::fs::write(
        cluster.dir.path().join("b/tuf-client/clock"),
        later.to_string(),
    )
    .unwrap();
    let b = cluster.tuf_node("b").await;
    let refused = client().get(b.url("/simple/alpha/")).send().await.unwrap();
    assert_eq!(refused.status(), 503);
    let body = refused.text().await.unwrap();
    assert!(
        body.contains("expired") && body.contains("signer"),
        "{body}"
    );

    // The same state in tuf-or-index mode: the index answers instead.
    let dir = cluster.dir.path().join("d");
    std::fs::create_dir_all(dir.join("tuf-client")).unwrap();
    for file in [
        "root.json",
        "timestamp.json",
        "snapshot.json",
        "targets.json",
        "clock",
    ] {
        std::fs::copy(
            cluster.dir.path().join("b/tuf-client").join(file),
            dir.join("tuf-client").join(file),
        )
        .unwrap();
    }
    let root = cluster.root();
    let tuf_url = cluster.signer.url("/tuf/");
    let d = NodeProcess::start(
        &upstream.simple_url(),
        &dir,
        &[
            "--trust",
            "tuf-or-index",
            "--tuf-root",
            &root,
            "--tuf-url",
            &tuf_url,
        ],
    )
    .await;
    let fallback = client().get(d.url("/simple/alpha/")).send().await.unwrap();
    assert_eq!(fallback.status(), 200);
}

#[test]
fn a_node_refuses_to_start_with_a_root_that_is_not_one() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root.json");
    std::fs::write(&root, br#"{"signed": {}, "signatures": []}"#).unwrap();
    let stderr = tuf_start_refused(&root, "http://127.0.0.1:9/tuf/", &dir.path().join("data"));
    assert!(stderr.contains("not a usable TUF root"), "{stderr}");
}

/// Starts `peerpi serve --trust tuf` and expects it to refuse (exit 1
/// within 30 s); returns its stderr.
fn tuf_start_refused(root: &Path, tuf_url: &str, data_dir: &Path) -> String {
    let (code, stderr) = exit_within(
        Command::new(env!("CARGO_BIN_EXE_peerpi"))
            .args([
                "serve",
                "--trust",
                "tuf",
                "--no-p2p",
                "--listen",
                "127.0.0.1:0",
            ])
            .arg("--tuf-root")
            .arg(root)
            .args(["--tuf-url", tuf_url])
            .arg("--data-dir")
            .arg(data_dir),
        Duration::from_secs(30),
    );
    assert_eq!(code, Some(1), "{stderr}");
    stderr
}

/// A signer that stops answering (stopped: connections open, no byte
/// back, as a dripping one) cost every page request the refresh's whole
/// timeout. A request now waits at most 2 s for a due refresh, and cached,
/// unexpired pages are served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_signer_holds_no_page_request_past_the_refresh_bound() {
    let upstream = fake_index(demo_graph()).await;
    let cluster = Cluster::start(&upstream.simple_url()).await;
    get_text(cluster.signer.url("/simple/alpha/")).await; // the signer signs what it fetched
    cluster.wait_signed(&["alpha".to_string()]).await;
    let a = cluster.tuf_node("a").await;
    let page = a.url("/simple/alpha/");
    assert!(get_text(&page).await.contains("alpha-1.0"));
    let pid = cluster.signer.child.id().to_string();
    let stop = |signal: &str| {
        let status = Command::new("kill").args([signal, &pid]).status().unwrap();
        assert!(status.success(), "kill {signal}");
    };
    stop("-STOP");
    // The next refresh is due after the 10 s interval.
    tokio::time::sleep(Duration::from_secs(11)).await;
    for _ in 0..3 {
        let started = Instant::now();
        let response = tokio::time::timeout(Duration::from_secs(30), client().get(&page).send())
            .await
            .expect("an answer")
            .unwrap();
        let took = started.elapsed();
        assert_eq!(response.status(), 200);
        assert!(took < Duration::from_secs(5), "the request waited {took:?}");
    }
    stop("-CONT");
}

/// The signer down, and a node whose metadata is fresh but that never
/// fetched the bin a project is signed in: the 503 names that cause (it
/// said the metadata was stale, refused "until the signer publishes fresh
/// metadata"), and the project it verified before is still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_signer_down_a_bin_never_fetched_is_named_as_the_cause() {
    let upstream = fake_index(demo_graph()).await;
    let (mut cluster, known, unknown) = Cluster::with_two_bins_signed(&upstream).await;
    let a = cluster.tuf_node("a").await;
    let known_page = a.url(&format!("/simple/{known}/"));
    assert_eq!(
        client().get(&known_page).send().await.unwrap().status(),
        200
    );
    cluster.signer.child.kill().unwrap();
    cluster.signer.child.wait().unwrap();

    let response = tokio::time::timeout(
        Duration::from_secs(30),
        client().get(a.url(&format!("/simple/{unknown}/"))).send(),
    )
    .await
    .expect("an answer")
    .unwrap();
    assert_eq!(response.status(), 503);
    let body = response.text().await.unwrap();
    assert!(
        body.contains("could not be fetched") && body.contains("has not expired"),
        "the 503 should name the missing metadata: {body}"
    );
    assert!(!body.contains("fresh metadata"), "not stale: {body}");
    assert_eq!(
        client().get(&known_page).send().await.unwrap().status(),
        200
    );
}

/// Bins travel like the snapshot: the snapshot lists their digests, so a
/// node takes a bin from any peer that holds it. With the signer gone, a
/// node that never fetched a project's bin serves the project from peers
/// alone, bin and page (it answered 503: bins came only from the signer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_signer_down_a_bin_and_its_page_come_from_peers() {
    let upstream = fake_index(demo_graph()).await;
    let (mut cluster, first, second) = Cluster::with_two_bins_signed(&upstream).await;
    let a = cluster.tuf_node("a").await;
    let a_addr = p2p_addr_of(&a).await;
    let b = cluster.tuf_node_with("b", &["--bootstrap", &a_addr]).await;
    // B trusts the metadata (and holds the first project's bin); A holds
    // the second's bin and page.
    let page = |node: &NodeProcess, project: &str| node.url(&format!("/simple/{project}/"));
    assert_eq!(
        client().get(page(&b, first)).send().await.unwrap().status(),
        200
    );
    assert_eq!(
        client()
            .get(page(&a, second))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    cluster.signer.child.kill().unwrap();
    cluster.signer.child.wait().unwrap();

    // A's announcements of what it just stored may take a moment to reach
    // B: asked again, bounded.
    let served = eventually_async(Duration::from_secs(30), || async {
        let response = client().get(page(&b, second)).send().await.unwrap();
        response.status() == 200
    })
    .await;
    let body = client().get(page(&b, second)).send().await.unwrap();
    assert!(
        served,
        "B never served {second}: {}",
        body.text().await.unwrap()
    );
}

/// The signer is no single point of failure: once it has stopped, nodes
/// that never reached it (started cold, with only the installed root)
/// install a set from peers alone: the timestamp (handed from node to
/// node, the newest that verifies), snapshot, targets, bins, pages and
/// files. Before, a cold node answered 503 for every project: the
/// timestamp came from the signer only. Once the metadata expires, the 503
/// names that cause and the signer's absence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_signer_stopped_cold_tuf_nodes_install_from_peers_alone() {
    let upstream = fake_index(demo_graph()).await;
    let mut cluster = Cluster::start(&upstream.simple_url()).await;
    let a = cluster.tuf_node("a").await;
    let venv_a = pip_venv(&cluster.dir.path().join("venv-a")).await;
    pip_install(&venv_a, &a.url("/simple/"), &["alpha"]).await;
    assert_eq!(installed(&venv_a).await, expected());
    cluster.signer.child.kill().unwrap();
    cluster.signer.child.wait().unwrap();
    upstream.stop();

    let a_addr = p2p_addr_of(&a).await;
    let b = cluster.tuf_node_with("b", &["--bootstrap", &a_addr]).await;
    let b_addr = p2p_addr_of(&b).await;
    let mut c = cluster
        .tuf_node_with("c", &["--bootstrap", &a_addr, "--bootstrap", &b_addr])
        .await;
    // A's announcements reach the newcomers' routing tables within
    // moments; the first install is retried, bounded, until they have.
    let venv_b = cluster.dir.path().join("venv-b");
    let page_b = b.url("/simple/alpha/");
    let reachable = eventually_async(Duration::from_secs(30), || async {
        client().get(&page_b).send().await.unwrap().status() == 200
    })
    .await;
    let refused = client().get(&page_b).send().await.unwrap();
    assert!(reachable, "B: {}", refused.text().await.unwrap());
    uv_install(&venv_b, &b.url("/simple/"), &["alpha"]).await;
    assert_eq!(installed(&venv_b.join("bin")).await, expected());
    let venv_c = pip_venv(&cluster.dir.path().join("venv-c")).await;
    pip_install(&venv_c, &c.url("/simple/"), &["alpha"]).await;
    assert_eq!(installed(&venv_c).await, expected());

    // Every byte of metadata came from peers: the signer is gone.
    let metrics = get_text(b.url("/metrics")).await;
    let value = |name: &str| series(&metrics, name);
    assert!(value("peerpi_tuf_refresh_total{outcome=\"from_peers\"}") >= 1.0);
    assert_eq!(value("peerpi_tuf_timestamp_from_peers"), 1.0);
    assert!(value("peerpi_tuf_metadata_bytes_total{source=\"peer\"}") > 0.0);
    assert!(
        !metrics.contains("peerpi_tuf_metadata_bytes_total{source=\"signer\"}"),
        "{metrics}"
    );
    let status = get_text(b.url("/")).await;
    assert!(
        status.contains("the signer cannot be reached") && status.contains("the newest peers hold"),
        "{status}"
    );

    // Two days on (the timestamp lives one), C's metadata has expired:
    // the refusal names the expiry and the unreachable signer.
    c.stop_gracefully().await;
    let later = jiff::Timestamp::now().as_second() + 2 * 86_400;
    std::fs::write(
        cluster.dir.path().join("c/tuf-client/clock"),
        later.to_string(),
    )
    .unwrap();
    let c = cluster
        .tuf_node_with("c", &["--bootstrap", &a_addr, "--bootstrap", &b_addr])
        .await;
    let refused = client().get(c.url("/simple/alpha/")).send().await.unwrap();
    assert_eq!(refused.status(), 503);
    let body = refused.text().await.unwrap();
    assert!(
        body.contains("expired") && body.contains("cannot be reached"),
        "{body}"
    );
}

/// Metadata is refreshed when a page needs it, not on every burst of
/// requests: cache hits within the page TTL use the metadata trusted now
/// (a node refreshed every 10 s while it served pages, which with a batch
/// signed every 10 s meant a new snapshot each time: 254 MB an hour); a
/// page revalidated after its TTL, or a project not known yet, refreshes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_hits_do_not_refresh_the_metadata_a_revalidation_does() {
    let upstream = fake_index(demo_graph()).await;
    let cluster = Cluster::start(&upstream.simple_url()).await;
    let signer_simple = cluster.signer.url("/simple/");
    let trust = cluster.trust_config(Duration::from_millis(100));
    let node = start_node(&upstream, |c| {
        c.upstream.base = signer_simple.parse().unwrap();
        c.trust = Some(trust.clone());
        c.page_ttl = Duration::from_secs(3);
    })
    .await;
    let refreshes = || metric(&node, "peerpi_tuf_refresh_total", "outcome=");
    let page = node.url("/simple/alpha/");
    assert_eq!(client().get(&page).send().await.unwrap().status(), 200);
    let after_first = refreshes().await;
    assert!(after_first >= 1.0);
    // 2 s of hits, 20 of them, each well past the 100 ms minimum interval.
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(client().get(&page).send().await.unwrap().status(), 200);
    }
    assert_eq!(
        refreshes().await,
        after_first,
        "hits refreshed the metadata"
    );
    // Past the page TTL, the page is revalidated on metadata refreshed
    // after it was verified.
    tokio::time::sleep(Duration::from_millis(3_100)).await;
    assert_eq!(client().get(&page).send().await.unwrap().status(), 200);
    assert!(
        eventually_async(Duration::from_secs(5), || async {
            refreshes().await > after_first
        })
        .await,
        "a revalidation past the page TTL did not refresh"
    );
}
