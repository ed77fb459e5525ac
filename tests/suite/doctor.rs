//! `peerpi doctor` against real processes: a healthy node with a peer is
//! all `ok`; an unreachable upstream, a port held by another program and a
//! broken swarm key each fail with the fix, and the exit status says so.

use crate::common;

use std::process::Command;
use std::time::Duration;

use common::*;

fn doctor(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let (code, stdout, stderr) = output_within(
        Command::new(env!("CARGO_BIN_EXE_peerpi"))
            .arg("doctor")
            .args(args)
            .env_remove("PEERPI_CONFIG")
            .env_remove("PIP_INDEX_URL")
            .env_remove("UV_DEFAULT_INDEX")
            .env_remove("UV_INDEX_URL")
            .env("HOME", "/nonexistent")
            .envs(env.iter().copied()),
        Duration::from_secs(60),
    );
    (code, format!("{stdout}{stderr}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_node_with_a_peer_is_all_ok() {
    let upstream = fake_index(peerpi_testkit::demo_graph()).await;
    let dir = tempfile::tempdir().unwrap();
    let a = NodeProcess::start(&upstream.simple_url(), &dir.path().join("a"), &[]).await;
    let a_addr = p2p_addr_of(&a).await;
    let b_dir = dir.path().join("b");
    let b = NodeProcess::start(&upstream.simple_url(), &b_dir, &["--bootstrap", &a_addr]).await;
    let connected = connected_within_20s(&b).await;
    assert!(connected, "B connects to A");
    let listen = b.url("").trim_start_matches("http://").to_string();
    let (code, out) = doctor(
        &[
            "--upstream",
            &upstream.simple_url(),
            "--listen",
            &listen,
            "--data-dir",
            b_dir.to_str().unwrap(),
            "--no-mdns",
        ],
        &[("PIP_INDEX_URL", &b.url("/simple/"))],
    );
    assert_eq!(code, Some(0), "{out}");
    for line in [
        "ok   upstream",
        &format!("{} answers", upstream.simple_url()),
        "ok   data dir",
        &format!("a peerpi node answers on {listen}"),
        "1 connected in regions (none)",
        "ok   clock",
        "use this node (PIP_INDEX_URL)",
    ] {
        assert!(out.contains(line), "{line:?} in:\n{out}");
    }
    assert!(!out.contains("FAIL") && !out.contains("warn"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_failure_is_named_with_its_fix() {
    let upstream = fake_index(peerpi_testkit::demo_graph()).await;
    // Another program on the port the node would use: the fake index.
    let taken = upstream.simple_url();
    let taken = taken
        .trim_start_matches("http://")
        .trim_end_matches("/simple/");
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("swarm.key");
    std::fs::write(&key, "not a swarm key").unwrap();
    let (code, out) = doctor(
        &[
            "--upstream",
            &format!("http://127.0.0.1:{}/simple/", free_port()),
            "--listen",
            taken,
            "--data-dir",
            dir.path().join("data").to_str().unwrap(),
            "--swarm-key",
            key.to_str().unwrap(),
            "--p2p-listen",
            "/ip4/127.0.0.1/tcp/0",
            "--no-mdns",
        ],
        &[("PIP_INDEX_URL", "http://192.0.2.1/simple/")],
    );
    assert_eq!(code, Some(1), "{out}");
    for expected in [
        "FAIL upstream",
        "fix: check the URL, DNS, proxy and firewall",
        &format!("FAIL listen       {taken} is taken by another program"),
        "FAIL swarm key",
        "fix: make one with `peerpi keygen --swarm-key FILE`",
        "warn pip/uv       set elsewhere: PIP_INDEX_URL = http://192.0.2.1/simple/",
        "3 check(s) failed",
    ] {
        assert!(out.contains(expected), "{expected:?} in:\n{out}");
    }
}
