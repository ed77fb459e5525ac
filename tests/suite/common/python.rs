//! Driving real Python clients: virtual environments, pip and uv, and what
//! they installed.

use std::path::{Path, PathBuf};

use tokio::process::Command;

pub const EXPECTED: [(&str, &str); 4] = [
    ("alpha", "1.0"),
    ("beta", "1.0"),
    ("delta", "1.0"),
    ("gamma", "0.1"),
];

pub fn python() -> String {
    std::env::var("PEERPI_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Runs a command with a clean client environment; panics with its output on failure.
pub async fn run(cmd: &mut Command, what: &str) -> String {
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

pub async fn try_run(cmd: &mut Command) -> (bool, String) {
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

pub async fn pip_venv(dir: &Path) -> PathBuf {
    run(
        Command::new(python()).args(["-m", "venv"]).arg(dir),
        "python3 -m venv",
    )
    .await;
    dir.join("bin")
}

/// The installed distributions of the venv at `bin/..`, by name.
pub async fn installed(bin: &Path) -> Vec<(String, String)> {
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

pub fn expected() -> Vec<(String, String)> {
    EXPECTED
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

pub async fn pip_install(bin: &Path, index: &str, args: &[&str]) {
    run(
        Command::new(bin.join("pip"))
            .args(["install", "--no-cache-dir", "--index-url", index])
            .args(args),
        "pip install",
    )
    .await;
}

/// A venv at `env_dir` made by uv, with `packages` installed by `uv pip
/// install` from `index` (its own cache under `env_dir`, no user config);
/// returns the venv's `bin`.
pub async fn uv_install(env_dir: &Path, index: &str, packages: &[&str]) -> PathBuf {
    let cache = env_dir.with_extension("uv-cache");
    run(
        Command::new("uv")
            .args(["venv", "--quiet", "--python", &python()])
            .arg(env_dir)
            .env("UV_CACHE_DIR", &cache)
            .env("UV_NO_CONFIG", "1"),
        "uv venv",
    )
    .await;
    run(
        Command::new("uv")
            .args(["pip", "install", "--python"])
            .arg(env_dir.join("bin/python"))
            .args(["--default-index", index])
            .args(packages)
            .env("UV_CACHE_DIR", &cache)
            .env("UV_NO_CONFIG", "1"),
        "uv pip install",
    )
    .await;
    env_dir.join("bin")
}
