//! A ping-like probe through the rig: UDP datagrams to an echo server in
//! another namespace, one at a time, each round trip timed. (The machine
//! has no `ping`, and ICMP would need raw sockets.)

use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;

/// The echo server's port.
pub const ECHO_PORT: u16 = 7777;

#[derive(Debug, Clone, Args)]
pub struct ProbeArgs {
    /// Namespace to probe from.
    #[arg(long)]
    pub from: String,
    /// Namespace to probe (an echo server is started there).
    #[arg(long)]
    pub to: String,
    /// Its address.
    #[arg(long)]
    pub address: std::net::Ipv4Addr,
    /// Round trips measured.
    #[arg(long, default_value_t = 20)]
    pub count: u32,
    /// (internal) Already inside `from`: measure directly.
    #[arg(long, hide = true)]
    pub inside: bool,
}

#[derive(Debug, Clone, Args)]
pub struct EchoArgs {
    /// Stop after this many seconds.
    #[arg(long, default_value_t = 120)]
    pub lifetime_s: u64,
}

/// Echoes datagrams back until its lifetime ends.
pub fn echo(args: &EchoArgs) -> Result<()> {
    let socket = UdpSocket::bind(("0.0.0.0", ECHO_PORT)).context("binding the echo port")?;
    socket.set_read_timeout(Some(Duration::from_millis(200)))?;
    let stop = Instant::now() + Duration::from_secs(args.lifetime_s);
    let mut buf = [0u8; 1500];
    while Instant::now() < stop {
        if let Ok((n, from)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(&buf[..n], from);
        }
    }
    Ok(())
}

/// The round trips from `from` to `to`.
pub fn probe(args: &ProbeArgs) -> Result<Vec<Duration>> {
    if args.inside {
        return measure(SocketAddr::from((args.address, ECHO_PORT)), args.count);
    }
    let exe = std::env::current_exe()?;
    let mut server = KillOnDrop(
        Command::new("ip")
            .args(["netns", "exec", &args.to])
            .arg(&exe)
            .args(["echo", "--lifetime-s", "60"])
            .spawn()
            .context("starting the echo server")?,
    );
    std::thread::sleep(Duration::from_millis(300));
    let out = Command::new("ip")
        .args(["netns", "exec", &args.from])
        .arg(&exe)
        .args(["probe", "--inside", "--from", &args.from, "--to", &args.to])
        .args([
            "--address",
            &args.address.to_string(),
            "--count",
            &args.count.to_string(),
        ])
        .output()
        .context("running the probe")?;
    let _ = server.0.kill();
    if !out.status.success() {
        bail!(
            "probe failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            l.trim()
                .parse::<u64>()
                .map(Duration::from_micros)
                .with_context(|| format!("probe output {l:?}"))
        })
        .collect()
}

/// Inside the source namespace: prints one round trip per line, in µs.
fn measure(target: SocketAddr, count: u32) -> Result<Vec<Duration>> {
    let socket = UdpSocket::bind("0.0.0.0:0")?;
    socket.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut rtts = Vec::new();
    let mut buf = [0u8; 64];
    for seq in 0..count {
        let started = Instant::now();
        socket.send_to(&seq.to_be_bytes(), target)?;
        loop {
            let (n, _) = socket.recv_from(&mut buf).context("no echo within 2 s")?;
            if n == 4 && buf[..4] == seq.to_be_bytes() {
                break;
            }
        }
        let rtt = started.elapsed();
        println!("{}", rtt.as_micros());
        rtts.push(rtt);
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(rtts)
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
