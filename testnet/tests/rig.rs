//! The rig on this machine: `up` makes the namespaces, the router delays
//! traffic between regions by what was configured (measured round trips
//! within 10%), a second `up` replaces a stale run, and `down` leaves
//! nothing behind. Needs root and TUN devices: where the machine refuses
//! network namespaces, the test says so and does not run.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::process::Command;

fn testnet(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_testnet"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Whether this machine lets us make a network namespace.
fn netns_allowed() -> Result<(), String> {
    let name = format!("ppcheck{}", std::process::id());
    let add = Command::new("ip").args(["netns", "add", &name]).output();
    match add {
        Ok(out) if out.status.success() => {
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
            if std::path::Path::new("/dev/net/tun").exists() {
                Ok(())
            } else {
                Err("no /dev/net/tun".into())
            }
        }
        Ok(out) => Err(String::from_utf8_lossy(&out.stderr).trim().to_string()),
        Err(e) => Err(format!("cannot run ip: {e}")),
    }
}

/// The median of a `probe` line: "N probes: min A ms, median B ms, max C ms".
fn median_ms(line: &str) -> f64 {
    line.split("median ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no median in {line:?}"))
}

fn namespaces(prefix: &str) -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&format!("{prefix}-")))
        .map(String::from)
        .collect()
}

#[test]
fn the_rig_delays_traffic_between_regions_as_configured_and_cleans_up() {
    if let Err(why) = netns_allowed() {
        peerpi_testkit::missing_prerequisite(&format!(
            "network namespaces are not available here ({why}): the rig test did not run"
        ));
        return;
    }
    let prefix = format!("pt{}", std::process::id() % 100_000);
    let up = [
        "up",
        "--prefix",
        &prefix,
        "--regions",
        "2",
        "--nodes",
        "2",
        "--cross-rtt-ms",
        "60",
        "--index-rtt-ms",
        "100",
        "--lifetime-s",
        "300",
    ];
    let (ok, out) = testnet(&up);
    assert!(ok, "{out}");
    // A second `up` finds the first run and replaces it.
    let (ok, out) = testnet(&up);
    assert!(ok, "{out}");
    assert!(out.contains(&format!("{prefix}-r1n1 10.2.0.2")), "{out}");
    assert_eq!(
        namespaces(&prefix).len(),
        6,
        "4 nodes, the index, the router"
    );

    let probe = |from: &str, to: &str, address: &str| {
        let (ok, out) = testnet(&[
            "probe",
            "--from",
            &format!("{prefix}-{from}"),
            "--to",
            &format!("{prefix}-{to}"),
            "--address",
            address,
            "--count",
            "20",
        ]);
        assert!(ok, "{out}");
        median_ms(&out)
    };
    let cross = probe("r0n0", "r1n1", "10.2.0.2");
    let index = probe("r1n0", "index", "10.250.0.1");
    let inside = probe("r0n0", "r0n1", "10.1.0.2");
    let (ok, out) = testnet(&["down", "--prefix", &prefix]);
    assert!(ok, "{out}");
    assert!(
        namespaces(&prefix).is_empty(),
        "down removes every namespace"
    );

    eprintln!("measured RTT: cross {cross} ms, index {index} ms, inside {inside} ms");
    assert!(
        (54.0..=66.0).contains(&cross),
        "cross-region RTT {cross} ms, configured 60"
    );
    assert!(
        (90.0..=110.0).contains(&index),
        "RTT to the index {index} ms, configured 100"
    );
    assert!(inside < 5.0, "inside a region {inside} ms");
}
