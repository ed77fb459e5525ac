//! `testnet`: the multi-region rig on one machine. Every node gets a network
//! namespace, every region a bridge; traffic between regions (and to the
//! index's namespace) passes a user-space router that delays it by the
//! configured round-trip time and shapes it to the configured rate, since
//! the kernel here has no `netem`. Everything it makes carries a prefix and
//! lives inside namespaces it created; `down` removes it all, and `up`
//! first removes a stale run with the same prefix.

mod faults;
mod index;
mod jobs;
mod net;
mod probe;
mod report;
mod results;
mod router;
mod scenario;
mod simulate;

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
    /// Jobs in waves on a fresh rig, from the chosen baseline (peerpi on
    /// every runner by default); prints the report, exits 1 on a failed job,
    /// a corrupted file or (peerpi) upstream egress above --max-egress.
    CiBurst(scenario::ScenarioArgs),
    /// ci-burst with three poisoning runners: wrong bytes, truncated blobs,
    /// a stalled process.
    Poison(scenario::ScenarioArgs),
    /// ci-burst with runners SIGKILLed and restarted mid-run, a third of
    /// them with an empty data dir.
    Churn(scenario::ScenarioArgs),
    /// ci-burst with the index unreachable for the middle third of the jobs
    /// (which install only what their runner installed before).
    Outage(scenario::ScenarioArgs),
    /// ci-burst where the last region's runners join a third of the way in.
    ColdRegion(scenario::ScenarioArgs),
    /// Every runner starts the same job at once: the 200 MB and 50 MB wheels
    /// that no node holds. Reports the time until the last runner holds
    /// them against one upstream download of them (measured after, alone);
    /// any baseline.
    Herd(scenario::ScenarioArgs),
    /// The report over several runs' results.json: Markdown and SVG plots.
    Report(report::ReportArgs),
    /// Many Kademlia nodes in one process (in-memory transport): lookup
    /// cost, records per node, and projections as blob counts grow.
    Simulate(simulate::SimulateArgs),
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
        Command::CiBurst(args) => scenario_command(&args, scenario::Fault::None),
        Command::Poison(args) => scenario_command(&args, scenario::Fault::Poison),
        Command::Churn(args) => scenario_command(&args, scenario::Fault::Churn),
        Command::Outage(args) => scenario_command(&args, scenario::Fault::Outage),
        Command::ColdRegion(args) => scenario_command(&args, scenario::Fault::ColdRegion),
        Command::Herd(args) => scenario_command(&args, scenario::Fault::Herd),
        Command::Report(args) => report::write(&args),
        Command::Simulate(args) => simulate::run(&args),
        Command::Fetch(args) => {
            print!("{}", scenario::fetch(&args.url, args.wait_s)?);
            Ok(())
        }
        Command::Router(args) => router::run(&args),
        Command::Index(args) => index::serve(&args),
        Command::Echo(args) => probe::echo(&args),
    }
}

/// Runs a scenario, prints its report and fails on a missed goal.
fn scenario_command(args: &scenario::ScenarioArgs, fault: scenario::Fault) -> Result<()> {
    let results = scenario::run(args, fault)?;
    print!("{}", results.markdown());
    let missed = results.missed_goals(args.max_egress);
    if !missed.is_empty() {
        anyhow::bail!("missed goals: {}", missed.join(", "));
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
