//! Test support for peerpi: a fake upstream index that builds real wheels and
//! sdists deterministically, serves PEP 503 and PEP 691 pages and PEP 658
//! metadata files, counts requests per path and injects faults. Used by the
//! tests, the testnet and the benchmarks; it is not part of the product.

pub mod dist;
pub mod index_tuf;
pub mod repo_server;
pub mod server;

pub use dist::{sdist, synthetic, wheel, DistSpec, FakeFile};
pub use server::{FakeIndex, Fault, IndexState};

/// Set by `.ci/run`, which installs every test prerequisite: a test that
/// finds one missing then fails instead of passing without running.
pub const REQUIRE_PREREQUISITES: &str = "PEERPI_REQUIRE_PREREQUISITES";

/// A test cannot run here for want of `what`: outside CI it says so and
/// returns (the caller skips); in CI it fails, naming what is missing.
#[track_caller]
pub fn missing_prerequisite(what: &str) {
    assert!(
        std::env::var_os(REQUIRE_PREREQUISITES).is_none(),
        "{what}, and {REQUIRE_PREREQUISITES} is set: CI installs every prerequisite, so this test must run"
    );
    eprintln!("skipped: {what}");
}

/// The Python with python-tuf the TUF interop tests run
/// (`PEERPI_TEST_PYTHON`, else `python3`); fails naming the fix when it
/// lacks python-tuf (CI installs it).
pub fn python() -> String {
    let python = std::env::var("PEERPI_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let probe = std::process::Command::new(&python)
        .args(["-c", "import tuf.ngclient, cryptography"])
        .output();
    match probe {
        Ok(probe) if probe.status.success() => python,
        Ok(probe) => panic!(
            "{python} lacks python-tuf: run `{python} -m pip install tuf cryptography` \
             (or set PEERPI_TEST_PYTHON): {}",
            String::from_utf8_lossy(&probe.stderr)
        ),
        Err(e) => panic!("{python}: {e}"),
    }
}

/// One of the testkit's python-tuf scripts (`make_repo.py`,
/// `ngclient_download.py`).
pub fn python_script(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("python")
        .join(name)
}

/// Downloads `target` with python-tuf's own client (`ngclient`), trusting
/// `root`, into `work`: the verified bytes, or python's error output. Runs
/// on a blocking thread, so the repository may be served on the caller's
/// runtime.
pub async fn ngclient_download(
    metadata_url: &str,
    targets_url: &str,
    root: &std::path::Path,
    target: &str,
    work: &std::path::Path,
) -> Result<Vec<u8>, String> {
    let args = [
        metadata_url.to_string(),
        targets_url.to_string(),
        root.display().to_string(),
        target.to_string(),
        work.display().to_string(),
    ];
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python())
            .arg(python_script("ngclient_download.py"))
            .args(&args)
            .output()
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    let path = String::from_utf8_lossy(&output.stdout).trim().to_string();
    std::fs::read(&path).map_err(|e| format!("{path}: {e}"))
}

/// A small dependency graph that exercises what resolvers look at:
/// `alpha` needs `beta>=1.0`, `gamma` and `delta`; beta 2.0 is yanked;
/// gamma has only an sdist; delta 2.0 requires a Python that does not exist yet (a lower
/// bound: uv ignores most upper bounds of Requires-Python by design).
/// A correct install yields alpha 1.0, beta 1.0, gamma 0.1 and delta 1.0.
pub fn demo_graph() -> Vec<FakeFile> {
    vec![
        wheel(
            &DistSpec::new("alpha", "1.0")
                .requires("beta>=1.0")
                .requires("gamma")
                .requires("delta"),
        ),
        wheel(&DistSpec::new("beta", "1.0")),
        wheel(&DistSpec::new("beta", "2.0").yanked("broken release")),
        sdist(&DistSpec::new("gamma", "0.1")),
        wheel(&DistSpec::new("delta", "1.0").requires_python(">=3")),
        wheel(&DistSpec::new("delta", "2.0").requires_python(">=99")),
    ]
}
