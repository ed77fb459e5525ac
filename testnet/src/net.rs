//! Namespaces, bridges and addresses, made with `ip`. Layout: a router
//! namespace `<prefix>-router` holds one bridge per region (`br<r>`, gateway
//! `10.<r+1>.0.254/16`) and the index's bridge (`bri`, `10.250.0.254/16`);
//! node `n` of region `r` is namespace `<prefix>-r<r>n<n>` with `eth0` at
//! `10.<r+1>.0.<n+1>/16`; the index is `<prefix>-index` at `10.250.0.1`.
//! Inside a region, packets cross the bridge only; between regions, policy
//! routing sends them to the router's TUN device, where the user-space
//! router delays and shapes them and writes them back to be delivered.

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;

pub const DEFAULT_PREFIX: &str = "pptn";
/// The router's TUN device.
pub const TUN: &str = "pptun";
/// Second octet of the index's subnet.
pub const INDEX_OCTET: u8 = 250;
/// Routing table for packets that arrive from a bridge.
const FROM_BRIDGES_TABLE: &str = "100";

#[derive(Debug, Clone, Args)]
pub struct Layout {
    /// Prefix of every namespace made (several rigs can coexist).
    #[arg(long, default_value = DEFAULT_PREFIX)]
    pub prefix: String,
    /// Regions.
    #[arg(long, default_value_t = 3)]
    pub regions: u8,
    /// Nodes per region.
    #[arg(long, default_value_t = 4)]
    pub nodes: u8,
    /// Round-trip time between two regions, in milliseconds.
    #[arg(long, default_value_t = 60.0)]
    pub cross_rtt_ms: f64,
    /// Round-trip time between any region and the index, in milliseconds.
    #[arg(long, default_value_t = 100.0)]
    pub index_rtt_ms: f64,
    /// Rate between two regions, in Mbit/s, each way (0: unlimited).
    #[arg(long, default_value_t = 150.0)]
    pub cross_mbit: f64,
    /// Rate between a region and the index, in Mbit/s, each way.
    #[arg(long, default_value_t = 50.0)]
    pub index_mbit: f64,
    /// Rate of each node's own link inside a region, in Mbit/s each way
    /// (kernel `tbf` on both ends of its veth; 0: unlimited).
    #[arg(long, default_value_t = 1000.0)]
    pub region_mbit: f64,
    /// The router stops by itself after this many seconds.
    #[arg(long, default_value_t = 7200)]
    pub lifetime_s: u64,
}

/// What `up` made: node namespaces with their addresses, and the index's.
pub struct Made {
    pub nodes: Vec<(String, Ipv4Addr)>,
    pub index: Ipv4Addr,
}

pub fn node_namespace(prefix: &str, region: u8, node: u8) -> String {
    format!("{prefix}-r{region}n{node}")
}

pub fn node_ip(region: u8, node: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, region + 1, 0, node + 1)
}

pub fn index_namespace(prefix: &str) -> String {
    format!("{prefix}-index")
}

pub fn index_ip() -> Ipv4Addr {
    Ipv4Addr::new(10, INDEX_OCTET, 0, 1)
}

fn router_namespace(prefix: &str) -> String {
    format!("{prefix}-router")
}

/// Runs `ip ARGS`, failing with its stderr.
fn ip(args: &[&str]) -> Result<()> {
    run("ip", args)
}

fn run(program: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program} (is iproute2 installed?)"))?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Writes a sysctl inside a namespace.
fn sysctl(namespace: &str, key: &str, value: &str) -> Result<()> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    run(
        "ip",
        &[
            "netns",
            "exec",
            namespace,
            "sh",
            "-c",
            &format!("echo {value} > {path}"),
        ],
    )
}

pub fn up(layout: &Layout) -> Result<Made> {
    if layout.regions == 0 || layout.regions > 200 || layout.nodes == 0 || layout.nodes > 250 {
        bail!("--regions must be 1..=200 and --nodes 1..=250");
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        bail!("/dev/net/tun is missing: the router needs TUN devices");
    }
    down(&layout.prefix)?;
    let router = router_namespace(&layout.prefix);
    ip(&["netns", "add", &router])?;
    ip(&["-n", &router, "link", "set", "lo", "up"])?;
    sysctl(&router, "net.ipv4.ip_forward", "1")?;
    for key in [
        "net.ipv4.conf.all.rp_filter",
        "net.ipv4.conf.default.rp_filter",
    ] {
        sysctl(&router, key, "0")?;
    }
    let mut bridges: Vec<(String, u8)> = (0..layout.regions)
        .map(|r| (format!("br{r}"), r + 1))
        .collect();
    bridges.push(("bri".to_string(), INDEX_OCTET));
    for (bridge, octet) in &bridges {
        ip(&["-n", &router, "link", "add", bridge, "type", "bridge"])?;
        ip(&[
            "-n",
            &router,
            "addr",
            "add",
            &format!("10.{octet}.0.254/16"),
            "dev",
            bridge,
        ])?;
        ip(&["-n", &router, "link", "set", bridge, "up"])?;
    }
    let mut made = Made {
        nodes: Vec::new(),
        index: index_ip(),
    };
    for region in 0..layout.regions {
        for node in 0..layout.nodes {
            let namespace = node_namespace(&layout.prefix, region, node);
            attach(
                &router,
                &namespace,
                (&format!("v{region}n{node}"), &format!("br{region}")),
                node_ip(region, node),
                layout.region_mbit,
            )?;
            made.nodes.push((namespace, node_ip(region, node)));
        }
    }
    // The index's rate is the router's (`--index-mbit`), per region.
    attach(
        &router,
        &index_namespace(&layout.prefix),
        ("vidx", "bri"),
        index_ip(),
        0.0,
    )?;
    start_router(layout, &router)?;
    // Packets from any bridge to another subnet go through the router's TUN.
    for (bridge, _) in &bridges {
        ip(&[
            "-n",
            &router,
            "rule",
            "add",
            "iif",
            bridge,
            "lookup",
            FROM_BRIDGES_TABLE,
        ])?;
    }
    for (_, octet) in &bridges {
        ip(&[
            "-n",
            &router,
            "route",
            "add",
            &format!("10.{octet}.0.0/16"),
            "dev",
            TUN,
            "table",
            FROM_BRIDGES_TABLE,
        ])?;
    }
    Ok(made)
}

/// A namespace with `eth0` at `addr/16` on `bridge`, default route via the
/// bridge's gateway.
fn attach(
    router: &str,
    namespace: &str,
    (outer, bridge): (&str, &str),
    addr: Ipv4Addr,
    mbit: f64,
) -> Result<()> {
    ip(&["netns", "add", namespace])?;
    ip(&["-n", namespace, "link", "set", "lo", "up"])?;
    ip(&[
        "-n", router, "link", "add", outer, "type", "veth", "peer", "name", "eth0", "netns",
        namespace,
    ])?;
    ip(&["-n", router, "link", "set", outer, "master", bridge])?;
    ip(&["-n", router, "link", "set", outer, "up"])?;
    ip(&[
        "-n",
        namespace,
        "addr",
        "add",
        &format!("{addr}/16"),
        "dev",
        "eth0",
    ])?;
    ip(&["-n", namespace, "link", "set", "eth0", "up"])?;
    if mbit > 0.0 {
        // Both directions: the node's sends on eth0, its receives on the
        // router's end of the pair.
        shape(namespace, "eth0", mbit)?;
        shape(router, outer, mbit)?;
    }
    let [a, b, _, _] = addr.octets();
    ip(&[
        "-n",
        namespace,
        "route",
        "add",
        "default",
        "via",
        &format!("{a}.{b}.0.254"),
    ])?;
    Ok(())
}

/// A token bucket at `mbit` on `dev` in `namespace`: bursts of 256 KB, at
/// most 20 ms of queue.
fn shape(namespace: &str, dev: &str, mbit: f64) -> Result<()> {
    let rate = format!("{}kbit", (mbit * 1000.0).round() as u64);
    ip(&[
        "netns", "exec", namespace, "tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate",
        &rate, "burst", "256kb", "latency", "20ms",
    ])
    .with_context(|| format!("shaping {dev} in {namespace} (is tc from iproute2 installed?)"))
}

/// Where the router writes the bytes it carried per region pair (JSON,
/// rewritten every second).
pub fn router_stats_path(prefix: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("{prefix}-router-stats.json"))
}

/// Starts the router inside its namespace, detached, and waits (bounded)
/// for its TUN device.
fn start_router(layout: &Layout, router: &str) -> Result<()> {
    let exe = std::env::current_exe()?;
    let log =
        std::fs::File::create(std::env::temp_dir().join(format!("{}-router.log", layout.prefix)))?;
    Command::new("ip")
        .args(["netns", "exec", router])
        .arg(exe)
        .args([
            "router",
            "--cross-rtt-ms",
            &layout.cross_rtt_ms.to_string(),
            "--index-rtt-ms",
            &layout.index_rtt_ms.to_string(),
            "--cross-mbit",
            &layout.cross_mbit.to_string(),
            "--index-mbit",
            &layout.index_mbit.to_string(),
            "--lifetime-s",
            &layout.lifetime_s.to_string(),
        ])
        .arg("--stats")
        .arg(router_stats_path(&layout.prefix))
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting the router")?;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        if ip(&["-n", router, "link", "show", TUN]).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("the router did not create {TUN} within 10 s (see its log in the temp directory)")
}

/// Kills what runs in the rig's namespaces and deletes them.
pub fn down(prefix: &str) -> Result<()> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .context("running ip")?;
    let list = String::from_utf8_lossy(&out.stdout);
    let ours: Vec<&str> = list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| name.starts_with(&format!("{prefix}-")))
        .collect();
    for namespace in &ours {
        let pids = Command::new("ip")
            .args(["netns", "pids", namespace])
            .output()?;
        for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-KILL", pid]).status();
        }
    }
    for namespace in ours {
        ip(&["netns", "del", namespace])?;
    }
    let _ = std::fs::remove_file(router_stats_path(prefix));
    Ok(())
}
