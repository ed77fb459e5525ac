//! End to end with the real clients: pip and uv install a small dependency
//! graph into fresh virtual environments through a node (wheels, an
//! sdist-only project, a yanked version, a Requires-Python filter, PEP 658
//! metadata), pip with `--require-hashes`, and installs during an outage.
//!
//! Needs `python3` (with venv) and `uv` on PATH: `python3 -m pip install uv`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use tokio::process::Command;

const EXPECTED: [(&str, &str); 4] = [
    ("alpha", "1.0"),
    ("beta", "1.0"),
    ("delta", "1.0"),
    ("gamma", "0.1"),
];

fn python() -> String {
    std::env::var("PEERPI_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Runs a command with a clean client environment; panics with its output on failure.
async fn run(cmd: &mut Command, what: &str) -> String {
    let output = cmd
        .env_remove("PIP_INDEX_URL")
        .env_remove("PIP_EXTRA_INDEX_URL")
        .env_remove("UV_INDEX_URL")
        .env_remove("UV_DEFAULT_INDEX")
        .env_remove("UV_EXTRA_INDEX_URL")
        .env("PIP_CONFIG_FILE", "/dev/null")
        .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
        .env("PIP_NO_INPUT", "1")
        .env("UV_NO_CONFIG", "1")
        .env("UV_PYTHON_DOWNLOADS", "never")
        .kill_on_drop(true)
        .output()
        .await
        .unwrap_or_else(|e| {
            panic!("{what}: cannot run ({e}); install python3 and uv (`python3 -m pip install uv`)")
        });
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{what} failed:\n{stdout}\n{stderr}"
    );
    stdout
}

async fn try_run(cmd: &mut Command) -> (bool, String) {
    let output = cmd
        .env("PIP_CONFIG_FILE", "/dev/null")
        .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
        .env_remove("PIP_INDEX_URL")
        .kill_on_drop(true)
        .output()
        .await
        .expect("run");
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

async fn pip_venv(dir: &Path) -> std::path::PathBuf {
    run(
        Command::new(python()).args(["-m", "venv"]).arg(dir),
        "python3 -m venv",
    )
    .await;
    dir.join("bin")
}

/// The installed distributions of the venv at `bin/..`, by name.
async fn installed(bin: &Path) -> Vec<(String, String)> {
    let script = "import importlib.metadata as m, json; print(json.dumps(sorted((d.metadata['Name'].lower(), d.version) for d in m.distributions())))";
    let out = run(
        Command::new(bin.join("python")).args(["-c", script]),
        "list distributions",
    )
    .await;
    let list: Vec<(String, String)> = serde_json::from_str(out.trim()).expect("JSON list");
    list.into_iter()
        .filter(|(n, _)| EXPECTED.iter().any(|(e, _)| e == n))
        .collect()
}

fn expected() -> Vec<(String, String)> {
    EXPECTED
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

async fn pip_install(bin: &Path, index: &str, args: &[&str]) {
    run(
        Command::new(bin.join("pip"))
            .args(["install", "--no-cache-dir", "--index-url", index])
            .args(args),
        "pip install",
    )
    .await;
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
    let cache = tempfile::tempdir().unwrap();
    let env_dir = venv.path().join("env");
    run(
        Command::new("uv")
            .args(["venv", "--quiet", "--python", &python()])
            .arg(&env_dir)
            .env("UV_CACHE_DIR", cache.path()),
        "uv venv",
    )
    .await;
    run(
        Command::new("uv")
            .args(["pip", "install", "--python"])
            .arg(env_dir.join("bin/python"))
            .args(["--default-index", &node.simple_url(), "alpha"])
            .env("UV_CACHE_DIR", cache.path()),
        "uv pip install",
    )
    .await;
    assert_eq!(installed(&env_dir.join("bin")).await, expected());
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
