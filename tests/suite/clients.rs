//! End to end with the real clients: pip and uv install a small dependency
//! graph into fresh virtual environments through a node (wheels, an
//! sdist-only project, a yanked version, a Requires-Python filter, PEP 658
//! metadata), pip with `--require-hashes`, and installs during an outage.
//!
//! Needs `python3` (with venv) and `uv` on PATH: `python3 -m pip install uv`.

use crate::common;

use std::time::Duration;

use common::python::*;
use common::*;
use tokio::process::Command;

/// A node started with nothing configured mirrors the index pip itself
/// uses, asked of the local Python's pip: here the fake index, made that
/// pip's default through the venv's own `pip.conf` (a file only pip reads).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_nothing_configured_mirrors_the_index_pip_uses() {
    let upstream = fake_index(peerpi_testkit::demo_graph()).await;
    let dir = tempfile::tempdir().unwrap();
    let bin = pip_venv(&dir.path().join("venv")).await;
    std::fs::write(
        dir.path().join("venv/pip.conf"),
        format!("[global]\nindex-url = {}\n", upstream.simple_url()),
    )
    .unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let python = bin.join("python");
    let node = NodeProcess::start_unconfigured(
        &dir.path().join("data"),
        &[
            ("PEERPI_PYTHON", python.to_str().unwrap()),
            ("HOME", home.to_str().unwrap()),
            ("XDG_CONFIG_HOME", home.to_str().unwrap()),
        ],
    )
    .await;
    pip_install(&bin, &node.url("/simple/"), &["alpha"]).await;
    assert_eq!(installed(&bin).await, expected());
    assert!(
        upstream.state.count_prefix("/files/") > 0,
        "the files came from the fake index"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pip_installs_a_dependency_graph_through_the_node() {
    let upstream = fake_index(peerpi_testkit::demo_graph()).await;
    let node = start_node(&upstream, |_| {}).await;
    let venv = tempfile::tempdir().unwrap();
    let bin = pip_venv(venv.path()).await;
    pip_install(&bin, &node.simple_url(), &["alpha"]).await;
    assert_eq!(installed(&bin).await, expected());
    let version = run(
        Command::new(bin.join("python")).args([
            "-c",
            "import alpha, gamma; print(alpha.__version__, gamma.__version__)",
        ]),
        "import",
    )
    .await;
    assert_eq!(version.trim(), "1.0 0.1");
    // pip read PEP 658 metadata through the node instead of downloading candidates.
    assert!(upstream.state.count_prefix("/files/") > 0);
    assert!(
        upstream
            .state
            .count("/files/alpha-1.0-py3-none-any.whl.metadata")
            == 1
    );
    assert_eq!(
        upstream.state.count("/files/beta-2.0-py3-none-any.whl"),
        0,
        "the yanked version was not fetched"
    );
    assert_eq!(
        upstream.state.count("/files/delta-2.0-py3-none-any.whl"),
        0,
        "the Requires-Python filter held"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uv_installs_a_dependency_graph_through_the_node() {
    let upstream = fake_index(peerpi_testkit::demo_graph()).await;
    let node = start_node(&upstream, |_| {}).await;
    let venv = tempfile::tempdir().unwrap();
    let bin = uv_install(&venv.path().join("env"), &node.simple_url(), &["alpha"]).await;
    assert_eq!(installed(&bin).await, expected());
    assert_eq!(
        upstream.state.count("/files/beta-2.0-py3-none-any.whl"),
        0,
        "the yanked version was not fetched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pip_require_hashes_accepts_pinned_hashes_and_refuses_wrong_ones() {
    let upstream = fake_index(peerpi_testkit::demo_graph()).await;
    let node = start_node(&upstream, |_| {}).await;
    let pins: Vec<String> = [
        ("alpha", "1.0", "alpha-1.0-py3-none-any.whl"),
        ("beta", "1.0", "beta-1.0-py3-none-any.whl"),
        ("gamma", "0.1", "gamma-0.1.tar.gz"),
        ("delta", "1.0", "delta-1.0-py3-none-any.whl"),
    ]
    .iter()
    .map(|(n, v, f)| {
        format!(
            "{n}=={v} --hash=sha256:{}",
            upstream.state.file(f).unwrap().sha256
        )
    })
    .collect();
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.txt");
    std::fs::write(&good, pins.join("\n") + "\n").unwrap();
    let bin = pip_venv(&dir.path().join("venv")).await;
    pip_install(
        &bin,
        &node.simple_url(),
        &["--require-hashes", "-r", good.to_str().unwrap()],
    )
    .await;
    assert_eq!(installed(&bin).await, expected());

    let bad = dir.path().join("bad.txt");
    let mut bad_pins = pins.clone();
    bad_pins[1] = format!("beta==1.0 --hash=sha256:{}", "0".repeat(64));
    std::fs::write(&bad, bad_pins.join("\n") + "\n").unwrap();
    let bin2 = pip_venv(&dir.path().join("venv2")).await;
    let (ok, output) = try_run(
        Command::new(bin2.join("pip"))
            .args([
                "install",
                "--no-cache-dir",
                "--index-url",
                &node.simple_url(),
                "--require-hashes",
                "-r",
            ])
            .arg(&bad),
    )
    .await;
    assert!(!ok, "a wrong pinned hash must fail:\n{output}");
    assert!(
        output.contains("HASHES") || output.contains("hash"),
        "{output}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_project_still_installs_during_an_upstream_outage() {
    let upstream = fake_index(peerpi_testkit::demo_graph()).await;
    let node = start_node(&upstream, |c| c.page_ttl = Duration::from_millis(50)).await;
    let first = tempfile::tempdir().unwrap();
    let bin = pip_venv(first.path()).await;
    pip_install(&bin, &node.simple_url(), &["alpha"]).await;

    upstream.stop();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = tempfile::tempdir().unwrap();
    let bin = pip_venv(second.path()).await;
    pip_install(&bin, &node.simple_url(), &["alpha"]).await;
    assert_eq!(installed(&bin).await, expected());
    assert!(
        metric(
            &node,
            "peerpi_upstream_requests_total",
            "kind=\"page\",outcome=\"error\""
        )
        .await
            >= 1.0
    );

    let (ok, output) = try_run(Command::new(bin.join("pip")).args([
        "install",
        "--no-cache-dir",
        "--index-url",
        &node.simple_url(),
        "not-cached",
    ]))
    .await;
    assert!(!ok);
    assert!(
        output.contains("502") || output.contains("No matching distribution"),
        "{output}"
    );
}

/// The configuration users run: the real process with its swarm on. It
/// cached a project, stopped cleanly, and comes back while upstream is down:
/// its first page answer comes from the catalog within a second (the code
/// before the fix deadlocked here), and pip installs the whole graph.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_process_serves_pip_with_upstream_down() {
    let upstream = fake_index(peerpi_testkit::demo_graph()).await;
    let data = tempfile::tempdir().unwrap();
    let mut node = NodeProcess::start(&upstream.simple_url(), data.path(), &[]).await;
    let first = tempfile::tempdir().unwrap();
    let bin = pip_venv(first.path()).await;
    pip_install(&bin, &node.url("/simple/"), &["alpha"]).await;

    let addr = node.addr;
    node.stop_gracefully().await;
    drop(node);
    upstream.stop();
    let node = NodeProcess::start_at(addr, &upstream.simple_url(), data.path(), &[]).await;
    let started = std::time::Instant::now();
    let page = tokio::time::timeout(
        Duration::from_secs(5),
        client().get(node.url("/simple/alpha/")).send(),
    )
    .await
    .expect("the restarted node answers a cached page")
    .unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "answered in {:?}",
        started.elapsed()
    );

    let second = tempfile::tempdir().unwrap();
    let bin = pip_venv(second.path()).await;
    pip_install(&bin, &node.url("/simple/"), &["alpha"]).await;
    assert_eq!(installed(&bin).await, expected());
}
