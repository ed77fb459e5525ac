//! `testnet`: the multi-region rig on one machine. Every node gets a network
//! namespace, every region a bridge; traffic between regions (and to the
//! index's namespace) passes a user-space router that delays it by the
//! configured round-trip time and shapes it to the configured rate, since
//! the kernel here has no `netem`. Everything it makes carries a prefix and
//! lives inside namespaces it created; `down` removes it all, and `up`
//! first removes a stale run with the same prefix.

mod index;
mod net;
mod probe;
mod router;
mod scenario;

use std::time::Duration;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "testnet",
    about = "The peerpi multi-region rig (network namespaces; run as root)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the namespaces, bridges and the delaying router.
    Up(net::Layout),
    /// Remove everything `up` made with this prefix (also after a crash).
    Down(PrefixArgs),
    /// Measure the round-trip time between two namespaces through the rig.
    Probe(probe::ProbeArgs),
    /// Run `ci-burst` on a fresh rig: peerpi on every runner, pip and uv
    /// jobs; prints the report, exits 1 on a failed job, a corrupted file or
    /// upstream egress above --max-egress (1.05x the unique bytes).
    CiBurst(scenario::ScenarioArgs),
    /// (internal) GET a URL from inside a namespace, retrying.
    #[command(hide = true)]
    Fetch(FetchArgs),
    /// (internal) The fake index with a package set, run in the index namespace.
    #[command(hide = true)]
    Index(index::IndexArgs),
    /// (internal) The delaying router, run inside the router namespace.
    #[command(hide = true)]
    Router(router::RouterArgs),
    /// (internal) A UDP echo server for `probe`, run inside a namespace.
    #[command(hide = true)]
    Echo(probe::EchoArgs),
}

#[derive(Debug, Args)]
struct FetchArgs {
    #[arg(long)]
    url: String,
    #[arg(long, default_value_t = 10)]
    wait_s: u64,
}

#[derive(Debug, Args)]
struct PrefixArgs {
    /// Prefix of every namespace the rig made.
    #[arg(long, default_value = net::DEFAULT_PREFIX)]
    prefix: String,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Up(layout) => {
            let made = net::up(&layout)?;
            for (name, ip) in made.nodes {
                println!("{name} {ip}");
            }
            println!("index {}", made.index);
            Ok(())
        }
        Command::Down(args) => net::down(&args.prefix),
        Command::Probe(args) => {
            let rtts = probe::probe(&args)?;
            if args.inside || rtts.is_empty() {
                return Ok(());
            }
            let mut sorted = rtts.clone();
            sorted.sort();
            let median = sorted[sorted.len() / 2];
            println!(
                "{} probes: min {:.2} ms, median {:.2} ms, max {:.2} ms",
                rtts.len(),
                ms(sorted[0]),
                ms(median),
                ms(sorted[sorted.len() - 1])
            );
            Ok(())
        }
        Command::CiBurst(args) => {
            let report = scenario::run(&args)?;
            print!("{}", report.markdown(&args));
            if !report.failed_jobs.is_empty()
                || report.corrupted_files > 0
                || report.egress_ratio() > args.max_egress
            {
                anyhow::bail!("ci-burst failed its goals (see the report above)");
            }
            Ok(())
        }
        Command::Fetch(args) => {
            print!("{}", scenario::fetch(&args.url, args.wait_s)?);
            Ok(())
        }
        Command::Router(args) => router::run(&args),
        Command::Index(args) => index::serve(&args),
        Command::Echo(args) => probe::echo(&args),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
