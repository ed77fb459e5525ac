//! The CI scenario: 6 runners in 2 regions (60 ms apart, the index 100 ms
//! away), a dozen pip and uv jobs one at a time, one runner whose store is
//! damaged after the first job so that it serves wrong bytes to peers. Fails
//! on any failed job or any installed file that does not match its RECORD
//! hash, and on upstream egress above 1.05x the unique bytes.
//!
//! The egress bound is the 1.05x (the scenario's default). A run
//! once measured 1.072x: a runner refused the poisoner and then took one
//! wheel upstream; the peer phase now waits for the lookup after a failed
//! provider (tests in peerpi-node's `sources::peers`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::path::Path;
use std::process::Command;

fn netns_allowed() -> Result<(), String> {
    let name = format!("ppcheck{}", std::process::id());
    match Command::new("ip").args(["netns", "add", &name]).output() {
        Ok(out) if out.status.success() => {
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
            Ok(())
        }
        Ok(out) => Err(String::from_utf8_lossy(&out.stderr).trim().to_string()),
        Err(e) => Err(format!("cannot run ip: {e}")),
    }
}

#[test]
fn ci_burst_with_a_poisoning_runner_meets_its_goals() {
    if let Err(why) = netns_allowed() {
        peerpi_testkit::missing_prerequisite(&format!(
            "network namespaces are not available here ({why}): the scenario did not run"
        ));
        return;
    }
    let testnet = Path::new(env!("CARGO_BIN_EXE_testnet"));
    let peerpi = testnet.with_file_name("peerpi");
    assert!(
        peerpi.is_file(),
        "{} is built by `cargo test --workspace`",
        peerpi.display()
    );
    let out_dir = tempfile::tempdir().unwrap();
    let prefix = format!("pc{}", std::process::id() % 100_000);
    let out = Command::new(testnet)
        .args([
            "ci-burst",
            "--prefix",
            &prefix,
            "--regions",
            "2",
            "--nodes",
            "3",
        ])
        .args([
            "--jobs",
            "12",
            "--parallel",
            "1",
            "--set",
            "small",
            "--poison",
            "--lifetime-s",
            "900",
        ])
        .arg("--peerpi")
        .arg(&peerpi)
        .arg("--out")
        .arg(out_dir.path())
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{report}");
    if !out.status.success() {
        // CI keeps only this output: the nodes' warnings say which peer
        // misbehaved, or which honest one was suspended, when a goal is missed.
        eprintln!("{}", node_warnings(out_dir.path()));
    }
    assert!(out.status.success(), "{report}\n{stderr}");
    assert!(report.contains("| failed jobs | 0 |"), "{report}");
    assert!(
        report.contains("| corrupted installed files | 0 of"),
        "{report}"
    );
    let ratio: f64 = report
        .split("unique (")
        .nth(1)
        .and_then(|rest| rest.split("x)").next())
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("no egress ratio in the report:\n{report}"));
    assert!(ratio <= 1.05, "upstream egress {ratio}x the unique bytes");
    assert!(out_dir.path().join("report.md").is_file());
}

/// The warnings and errors of every node log in `dir` (the last 40 of each),
/// without terminal colours and without connection noise.
fn node_warnings(dir: &Path) -> String {
    let mut logs: Vec<_> = std::fs::read_dir(dir)
        .map(|entries| entries.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    logs.retain(|p| {
        p.extension().is_some_and(|e| e == "log") && p.file_name().is_some_and(|n| n != "index.log")
    });
    logs.sort();
    let mut out = String::new();
    for log in logs {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<String> = text
            .lines()
            .map(strip_ansi)
            .filter(|l| {
                (l.contains(" WARN ") || l.contains(" ERROR ")) && !l.contains("connection with")
            })
            .collect();
        out.push_str(&format!(
            "--- {} ({} warnings)\n",
            log.display(),
            lines.len()
        ));
        for line in &lines[lines.len().saturating_sub(40)..] {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
