//! `peerpi prefetch` against real nodes and the fake index: a `pylock.toml`,
//! a `uv.lock` and a hashed requirements file warm node A; node B then
//! installs the graph with pip taking no file from upstream (all from A); a
//! re-run fetches nothing; what cannot be prefetched fails with its reason
//! and a non-zero exit; on a terminal a progress bar is drawn.

use crate::common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::python::*;
use common::*;
use peerpi_testkit::FakeFile;

fn file_of(files: &[FakeFile], filename: &str) -> FakeFile {
    files
        .iter()
        .find(|f| f.filename == filename)
        .unwrap()
        .clone()
}

fn prefetch(node: &NodeProcess, args: &[&str]) -> (Option<i32>, String, String) {
    output_within(
        Command::new(env!("CARGO_BIN_EXE_peerpi"))
            .arg("prefetch")
            .args(["--listen", node.url("").trim_start_matches("http://")])
            .args(args)
            .env_remove("PEERPI_CONFIG"),
        Duration::from_secs(120),
    )
}

fn write_inputs(dir: &Path, files: &[FakeFile]) -> Vec<String> {
    let alpha = file_of(files, "alpha-1.0-py3-none-any.whl");
    let gamma = files.iter().find(|f| f.project == "gamma").unwrap();
    let beta = file_of(files, "beta-1.0-py3-none-any.whl");
    let delta = file_of(files, "delta-1.0-py3-none-any.whl");
    let pylock = dir.join("pylock.toml");
    std::fs::write(
        &pylock,
        format!(
            "lock-version = \"1.0\"\ncreated-by = \"test\"\n\
             [[packages]]\nname = \"alpha\"\nversion = \"1.0\"\n\
             wheels = [{{ url = \"https://files.invalid/{}\", hashes = {{ sha256 = \"{}\" }} }}]\n\
             [[packages]]\nname = \"gamma\"\nversion = \"0.1\"\n\
             sdist = {{ url = \"https://files.invalid/{}\", hashes = {{ sha256 = \"{}\" }} }}\n",
            alpha.filename, alpha.sha256, gamma.filename, gamma.sha256
        ),
    )
    .unwrap();
    let uv = dir.join("uv.lock");
    std::fs::write(
        &uv,
        format!(
            "version = 1\n[[package]]\nname = \"beta\"\nversion = \"1.0\"\n\
             source = {{ registry = \"http://index.invalid/simple\" }}\n\
             wheels = [{{ url = \"http://index.invalid/{}\", hash = \"sha256:{}\" }}]\n",
            beta.filename, beta.sha256
        ),
    )
    .unwrap();
    std::fs::write(dir.join("more.txt"), "beta>=1  # newest not yanked: 1.0\n").unwrap();
    let requirements = dir.join("requirements.txt");
    std::fs::write(
        &requirements,
        format!(
            "-r more.txt\ndelta==1.0 \\\n    --hash=sha256:{}\n",
            delta.sha256
        ),
    )
    .unwrap();
    [pylock, uv, requirements]
        .iter()
        .map(|p| p.display().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lockfiles_warm_a_node_and_a_peer_installs_from_it() {
    let upstream = fake_index(peerpi_testkit::demo_graph()).await;
    let files = upstream.state.files();
    let dir = tempfile::tempdir().unwrap();
    let a = NodeProcess::start(&upstream.simple_url(), &dir.path().join("a"), &[]).await;
    let inputs = write_inputs(dir.path(), &files);
    let args: Vec<&str> = inputs.iter().map(String::as_str).collect();

    let (code, out, err) = prefetch(&a, &args);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("prefetch: 4 files"), "{out}");
    assert!(out.contains("fetched       4"), "{out}");
    assert!(out.contains("from upstream"), "{out}");
    // Not a terminal: one plain line per file.
    assert_eq!(
        err.lines().filter(|l| l.starts_with('[')).count(),
        4,
        "{err}"
    );
    for name in [
        "alpha-1.0-py3-none-any.whl",
        "beta-1.0-py3-none-any.whl",
        "delta-1.0-py3-none-any.whl",
    ] {
        let file = file_of(&files, name);
        let url = file_url_at(&a.url(""), &file.project, name).await;
        let head = client().head(&url).send().await.unwrap();
        assert_eq!(head.headers()["x-peerpi-source"], "local", "{name} is on A");
    }

    // A re-run finds everything in place.
    let (code, out, err) = prefetch(&a, &args);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("already here  4") && out.contains("fetched       0"),
        "{out}"
    );

    // B installs the graph: every file from A, none from upstream.
    let a_addr = p2p_addr_of(&a).await;
    let b = NodeProcess::start(
        &upstream.simple_url(),
        &dir.path().join("b"),
        &["--bootstrap", &a_addr],
    )
    .await;
    let connected = connected_within_20s(&b).await;
    assert!(connected);
    let downloads = upstream.state.count_prefix("/files/");
    let venv = pip_venv(&dir.path().join("venv")).await;
    pip_install(&venv, &b.url("/simple/"), &["alpha"]).await;
    assert_eq!(installed(&venv).await, expected());
    assert_eq!(
        upstream.state.count_prefix("/files/"),
        downloads,
        "B took every file from A"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_cannot_be_prefetched_fails_with_its_reason() {
    let upstream = fake_index(peerpi_testkit::demo_graph()).await;
    let dir = tempfile::tempdir().unwrap();
    let a = NodeProcess::start(&upstream.simple_url(), &dir.path().join("a"), &["--no-p2p"]).await;
    let requirements = dir.path().join("requirements.txt");
    std::fs::write(
        &requirements,
        format!(
            "delta==1.0 --hash=sha256:{}\nnosuchproject\nbeta==1.0\n",
            "0".repeat(64)
        ),
    )
    .unwrap();
    let (code, out, err) = prefetch(&a, &[requirements.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        out.contains("no file of delta has the hashes given"),
        "{out}"
    );
    assert!(
        out.contains("nosuchproject: the node answered 404"),
        "{out}"
    );
    assert!(out.contains("fetched       1"), "beta still fetched: {out}");
    assert!(err.contains("2 item(s) could not be prefetched"), "{err}");

    let (code, out, _) = prefetch(&a, &["--dry-run", "alpha"]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("alpha-1.0-py3-none-any.whl") && out.contains("dry run"),
        "{out}"
    );
}

/// On a terminal (a pseudo-terminal made by `script`), a progress bar with
/// bytes, rate and ETA is drawn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_gets_a_progress_bar() {
    let Some(script) = which("script") else {
        peerpi_testkit::missing_prerequisite(
            "`script` (util-linux) is not installed: no pseudo-terminal to test in",
        );
        return;
    };
    let upstream = fake_index(peerpi_testkit::demo_graph()).await;
    let dir = tempfile::tempdir().unwrap();
    let a = NodeProcess::start(&upstream.simple_url(), &dir.path().join("a"), &["--no-p2p"]).await;
    let command = format!(
        "{} prefetch --listen {} alpha beta gamma delta",
        env!("CARGO_BIN_EXE_peerpi"),
        a.url("").trim_start_matches("http://")
    );
    let (code, out, err) = output_within(
        Command::new(script)
            .args(["-q", "-e", "-c", &command, "/dev/null"])
            .env_remove("PEERPI_CONFIG")
            .env("TERM", "xterm"),
        Duration::from_secs(120),
    );
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("eta") && out.contains("files"),
        "a bar was drawn: {out:?}"
    );
    assert!(
        !out.contains("[1/"),
        "no plain log lines on a terminal: {out:?}"
    );
    assert!(out.contains("fetched       4"), "{out}");
}
