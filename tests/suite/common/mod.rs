//! Shared helpers for the integration tests: the in-process ones of
//! `peerpi_node::testing` (a fake upstream, nodes on ephemeral loopback
//! ports, HTTP helpers), and the real `peerpi` binary for tests that need a
//! process to kill.

pub mod python;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use peerpi_node::testing::*;

/// `peerpi tuf init --repo REPO --keys keys --bins BINS`, run in `dir`.
pub fn tuf_init(dir: &Path, repo: &str, bins: &str) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_peerpi"))
        .current_dir(dir)
        .args([
            "tuf", "init", "--repo", repo, "--keys", "keys", "--bins", bins,
        ])
        .output()
        .expect("peerpi runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The real `peerpi serve` as a child process.
pub struct NodeProcess {
    pub child: Child,
    pub addr: SocketAddr,
}

/// A loopback port free now, below the kernel's ephemeral range: a port
/// taken from that range and released could be handed to any socket bound
/// to port 0 before the node binds it (the node's own swarm listener did
/// that once, and the node could not listen).
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_from = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000u32, ephemeral_from.max(10_001));
    let span = high - low;
    // Spread over the range by process, so that test binaries run one
    // after another do not start on the same ports.
    let start = std::process::id().wrapping_mul(7919) % span;
    for _ in 0..span {
        let port = low + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        let port = u16::try_from(port).expect("ports are under 65536");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port below {high}");
}

impl NodeProcess {
    pub async fn start(upstream: &str, data_dir: &Path, extra: &[&str]) -> Self {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        Self::start_at(addr, upstream, data_dir, extra).await
    }

    /// Starts on `addr` (to restart a node where clients expect it). Its log
    /// goes to `peerpi-<port>.log` in the system temp directory.
    pub async fn start_at(
        addr: SocketAddr,
        upstream: &str,
        data_dir: &Path,
        extra: &[&str],
    ) -> Self {
        Self::start_wrapped(&[], addr, upstream, data_dir, extra).await
    }

    /// Starts a node with no `--upstream` (a `--trust tuf` node takes its
    /// pages and files from the signer).
    pub async fn start_without_upstream(data_dir: &Path, extra: &[&str]) -> Self {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        Self::spawn(&[], addr, None, data_dir, extra, &[]).await
    }

    /// Starts a node with nothing configured but `env` (added to this
    /// process's environment, from which pip's and uv's index variables
    /// are removed): it finds its upstream as a new user's node would.
    pub async fn start_unconfigured(data_dir: &Path, env: &[(&str, &str)]) -> Self {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        Self::spawn(&[], addr, None, data_dir, &[], env).await
    }

    /// Starts the binary through `wrapper` (a command and its arguments that
    /// run what follows them, e.g. `prlimit --nofile=1024:1024 --`).
    pub async fn start_wrapped(
        wrapper: &[&str],
        addr: SocketAddr,
        upstream: &str,
        data_dir: &Path,
        extra: &[&str],
    ) -> Self {
        Self::spawn(wrapper, addr, Some(upstream), data_dir, extra, &[]).await
    }

    async fn spawn(
        wrapper: &[&str],
        addr: SocketAddr,
        upstream: Option<&str>,
        data_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let log =
            std::fs::File::create(std::env::temp_dir().join(format!("peerpi-{}.log", addr.port())))
                .expect("log file");
        let binary = env!("CARGO_BIN_EXE_peerpi");
        let mut command = match wrapper {
            [] => Command::new(binary),
            [program, args @ ..] => {
                let mut c = Command::new(program);
                c.args(args).arg(binary);
                c
            }
        };
        command.arg("serve");
        if let Some(upstream) = upstream {
            command.args(["--upstream", upstream]);
        }
        let child = command
            .args(["--listen", &addr.to_string()])
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .args(loopback_p2p_defaults(extra))
            .env_remove("PEERPI_CONFIG")
            .env_remove("PIP_INDEX_URL")
            .env_remove("PIP_CONFIG_FILE")
            .env_remove("UV_DEFAULT_INDEX")
            .env_remove("UV_INDEX_URL")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn peerpi");
        let node = Self { child, addr };
        let health = format!("http://{addr}/healthz");
        let start = Instant::now();
        loop {
            if let Ok(r) = client().get(&health).send().await {
                if r.status() == 200 {
                    break;
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "peerpi did not become healthy"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        node
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// SIGTERM, then waits (up to 30 s) for a clean exit.
    pub async fn stop_gracefully(&mut self) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(sent.is_ok_and(|s| s.success()), "SIGTERM sent");
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                assert!(status.success(), "clean exit: {status:?}");
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "exits after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Keeps a node process's swarm on loopback: ephemeral ports, no mDNS
/// multicast, unless the test chose otherwise.
fn loopback_p2p_defaults(extra: &[&str]) -> Vec<&'static str> {
    let mut args = vec!["--no-mdns"];
    if !extra.contains(&"--p2p-listen") {
        args.extend(["--p2p-listen", "/ip4/127.0.0.1/tcp/0"]);
    }
    if !extra.contains(&"--bulk-listen") {
        args.extend(["--bulk-listen", "127.0.0.1:0"]);
    }
    args
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A node process's loopback TCP swarm address, with `/p2p/<id>`.
pub async fn p2p_addr_of(node: &NodeProcess) -> String {
    let text = get_text(node.url("/peers")).await;
    let peers: serde_json::Value = serde_json::from_str(&text).expect("/peers JSON");
    let id = peers["peer_id"].as_str().expect("peer_id");
    let addr = peers["listen"]
        .as_array()
        .expect("listen")
        .iter()
        .filter_map(|a| a.as_str())
        .find(|a| a.starts_with("/ip4/127.0.0.1/tcp/"))
        .expect("a loopback TCP address");
    if addr.contains("/p2p/") {
        addr.to_string()
    } else {
        format!("{addr}/p2p/{id}")
    }
}

/// Waits (up to 20 s) until `node` has a connected peer; false if it never does.
pub async fn connected_within_20s(node: &NodeProcess) -> bool {
    eventually_async(Duration::from_secs(20), || async {
        get_text(node.url("/peers"))
            .await
            .contains("\"connected\":true")
    })
    .await
}

/// `program` on PATH.
pub fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}
