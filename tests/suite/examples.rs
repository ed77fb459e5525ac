//! The deployment examples in `examples/` are checked as far as this machine
//! allows: the systemd unit with `systemd-analyze verify`, every YAML file
//! parsed and every `peerpi` command line in them parsed and resolved by the
//! real CLI, the Grafana dashboard's queries against the metrics a node
//! exports, the embedding example run against the fake index, and the
//! bootstrap-by-address the Kubernetes and Compose examples rely on.

use crate::common;

use std::collections::BTreeSet;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use clap::Parser;
use common::*;
use yaml_rust2::{Yaml, YamlLoader};

fn example(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(path)
}

fn yaml(path: &str) -> Vec<Yaml> {
    let text = std::fs::read_to_string(example(path)).unwrap();
    YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Parses `args` (what follows `peerpi`) with the real command line and, for
/// `serve`, resolves them into a configuration as the binary would.
fn check_command(origin: &str, args: &[String]) {
    let argv = std::iter::once("peerpi".to_string()).chain(args.iter().cloned());
    let cli = peerpi::cli::Cli::try_parse_from(argv)
        .unwrap_or_else(|e| panic!("{origin}: `peerpi {}` does not parse: {e}", args.join(" ")));
    if let peerpi::cli::Command::Serve(mut serve) = cli.command {
        // Compose interpolates the upstream; Kubernetes sets it from a ConfigMap.
        if serve
            .options
            .upstream
            .as_deref()
            .is_none_or(|u| u.starts_with("${"))
        {
            serve.options.upstream = Some("http://127.0.0.1:9/simple/".into());
        }
        // The data directory comes from the environment in several examples.
        let env = |name: &str| (name == "HOME").then(|| "/nonexistent".to_string());
        if let Err(e) = serve.resolve(&env) {
            panic!("{origin}: `peerpi {}`: {e:#}", args.join(" "));
        }
    }
}

fn strings(node: &Yaml) -> Vec<String> {
    node.as_vec()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

/// The `PEERPI_*` variables `peerpi serve` reads.
fn serve_variables() -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_peerpi"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

fn assert_known_variable(origin: &str, name: &str, help: &str) {
    assert!(
        !name.starts_with("PEERPI_") || help.contains(&format!("[env: {name}=")),
        "{origin} sets {name}, which `peerpi serve` does not read"
    );
}

#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    let unit = std::fs::read_to_string(example("systemd/peerpi.service")).unwrap();
    for directive in [
        "User=peerpi",
        "ProtectSystem=strict",
        "StateDirectory=peerpi",
        "Restart=on-failure",
        "NoNewPrivileges=yes",
    ] {
        assert!(unit.lines().any(|l| l == directive), "no {directive}");
    }
    let help = serve_variables();
    for line in unit.lines() {
        if let Some(assignment) = line.strip_prefix("Environment=") {
            let name = assignment.split('=').next().unwrap();
            assert_known_variable("peerpi.service", name, &help);
        }
        if let Some(command) = line.strip_prefix("ExecStart=/usr/local/bin/peerpi ") {
            let args: Vec<String> = command.split_whitespace().map(String::from).collect();
            check_command("peerpi.service", &args);
        }
    }
    let Some(analyze) = which("systemd-analyze") else {
        peerpi_testkit::missing_prerequisite(
            "systemd-analyze is not installed here: only the directives were checked",
        );
        return;
    };
    // `verify` wants the program to exist: point it at the built binary.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("peerpi.service");
    std::fs::write(
        &copy,
        unit.replace("/usr/local/bin/peerpi", env!("CARGO_BIN_EXE_peerpi")),
    )
    .unwrap();
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "{stderr}");
}

#[test]
fn the_kubernetes_daemonset_runs_a_valid_node() {
    let docs = yaml("kubernetes/peerpi.yaml");
    let kinds: BTreeSet<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        BTreeSet::from(["ConfigMap", "DaemonSet", "Service"]),
        "{kinds:?}"
    );
    let daemonset = docs
        .iter()
        .find(|d| d["kind"].as_str() == Some("DaemonSet"))
        .unwrap();
    let pod = &daemonset["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    check_command("the DaemonSet", &strings(&container["args"]));
    let help = serve_variables();
    for var in container["env"].as_vec().unwrap() {
        assert_known_variable("the DaemonSet", var["name"].as_str().unwrap(), &help);
    }
    assert_eq!(container["ports"][0]["hostPort"].as_i64(), Some(7503));
    assert!(container["resources"]["limits"]["memory"]
        .as_str()
        .is_some());
    assert_eq!(
        pod["volumes"][1]["secret"]["secretName"].as_str(),
        Some("peerpi-swarm-key")
    );
    let service = docs
        .iter()
        .find(|d| d["kind"].as_str() == Some("Service"))
        .unwrap();
    assert_eq!(
        service["spec"]["clusterIP"].as_str(),
        Some("None"),
        "headless"
    );
}

#[test]
fn the_compose_file_runs_valid_nodes_and_a_job() {
    let docs = yaml("compose/compose.yaml");
    let services = docs[0]["services"].as_hash().unwrap();
    let mut nodes = 0;
    for (name, service) in services {
        let name = name.as_str().unwrap();
        if name.starts_with("node-") {
            nodes += 1;
            check_command(&format!("compose {name}"), &strings(&service["command"]));
        }
    }
    assert_eq!(nodes, 3);
    assert!(services.contains_key(&Yaml::String("job".into())));
    let dockerfile = std::fs::read_to_string(example("compose/Dockerfile")).unwrap();
    assert!(dockerfile.contains("cargo build --release --locked --bin peerpi"));
}

#[test]
fn the_ci_snippets_parse_and_use_what_peerpi_offers() {
    let help = serve_variables();
    let github = &yaml("ci/github-actions.yml")[0];
    let job = &github["jobs"]["test"];
    for (name, _) in job["env"].as_hash().unwrap() {
        assert_known_variable("github-actions.yml", name.as_str().unwrap(), &help);
    }
    let mut commands = 0;
    for step in job["steps"].as_vec().unwrap() {
        let Some(run) = step["run"].as_str() else {
            continue;
        };
        for line in run.lines() {
            let line = line.trim().trim_end_matches('\\').trim();
            let Some(rest) = line
                .strip_prefix("nohup peerpi ")
                .or_else(|| line.strip_prefix("peerpi "))
            else {
                continue;
            };
            let args: Vec<String> = rest
                .split_whitespace()
                .take_while(|w| !w.starts_with('>') && *w != "&")
                .map(String::from)
                .collect();
            commands += 1;
            // A `serve` line continues on the next line: parse the flags it has.
            check_command("github-actions.yml", &args);
        }
    }
    assert!(
        commands >= 2,
        "the snippet starts a node and prints its env"
    );

    let gitlab = &yaml("ci/gitlab-ci.yml")[0];
    let variables = gitlab["variables"].as_hash().unwrap();
    let index = variables[&Yaml::String("PIP_INDEX_URL".into())]
        .as_str()
        .unwrap();
    // What `peerpi env --format gitlab-ci` prints for a node on that address.
    let listen = index
        .trim_start_matches("http://")
        .trim_end_matches("/simple/");
    let printed = Command::new(env!("CARGO_BIN_EXE_peerpi"))
        .args(["env", "--format", "gitlab-ci", "--listen", listen])
        .env_remove("PEERPI_CONFIG")
        .output()
        .unwrap();
    assert!(printed.status.success());
    let printed = YamlLoader::load_from_str(&String::from_utf8(printed.stdout).unwrap()).unwrap();
    assert_eq!(&printed[0]["variables"], &gitlab["variables"]);
}

#[tokio::test]
async fn the_grafana_dashboard_queries_metrics_the_node_exports() {
    let upstream = fake_index(peerpi_testkit::demo_graph()).await;
    let node = peer_node(&upstream, &[], |_| {}).await;
    let text = get_text(node.url("/metrics")).await;
    let exported: BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let dashboard: serde_json::Value =
        serde_json::from_slice(&std::fs::read(example("grafana/peerpi.json")).unwrap()).unwrap();
    let mut queried = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("peerpi_") {
                    let family = ["_total", "_bucket", "_sum", "_count"]
                        .iter()
                        .find_map(|s| word.strip_suffix(s))
                        .unwrap_or(word);
                    queried.insert(family.to_string());
                }
            }
        }
    }
    let unknown: Vec<_> = queried
        .iter()
        .filter(|m| !exported.contains(m.as_str()))
        .collect();
    assert!(unknown.is_empty(), "the dashboard queries {unknown:?}");
    assert!(queried.len() >= 15, "{queried:?}");
}

/// `cargo run --example embed`: the node as a library serves the fake
/// index's pages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedding_example_serves_pages() {
    // Examples are built by `cargo test` next to the test binaries.
    let exe = std::env::current_exe().unwrap();
    let binary = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples/embed");
    assert!(
        binary.exists(),
        "{} (built by cargo test)",
        binary.display()
    );
    let upstream = fake_index(peerpi_testkit::demo_graph()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(&binary)
        .arg(upstream.simple_url())
        .arg("127.0.0.1:0")
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .map(|_| line)
    });
    let line = tokio::time::timeout(Duration::from_secs(20), line)
        .await
        .expect("the example says where it serves within 20 s")
        .unwrap()
        .unwrap();
    let base = line.trim().strip_prefix("serving ").unwrap().to_string();
    let page = client().get(format!("{base}alpha/")).send().await.unwrap();
    let status = page.status();
    let body = page.text().await.unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("alpha-"), "{body}");
}

/// The Kubernetes and Compose examples bootstrap by a DNS name without a
/// peer id (`/dns4/NAME/tcp/7504`): that alone connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bootstrap_address_without_a_peer_id_connects() {
    let upstream = fake_index(peerpi_testkit::demo_graph()).await;
    let dir = tempfile::tempdir().unwrap();
    let a = NodeProcess::start(&upstream.simple_url(), &dir.path().join("a"), &[]).await;
    let addr = p2p_addr_of(&a).await;
    let port = addr
        .strip_prefix("/ip4/127.0.0.1/tcp/")
        .and_then(|rest| rest.split('/').next())
        .unwrap()
        .to_string();
    let bootstrap = format!("/dns4/localhost/tcp/{port}");
    let b = NodeProcess::start(
        &upstream.simple_url(),
        &dir.path().join("b"),
        &["--bootstrap", &bootstrap],
    )
    .await;
    assert!(
        connected_within_20s(&b).await,
        "B never connected through {bootstrap}"
    );
}
