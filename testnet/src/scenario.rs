//! Scenarios on the rig. Every scenario runs the same seeded job schedule:
//! jobs in waves, each a fresh venv on a runner installing one of a few
//! overlapping requirement sets with real pip or uv (alternating), from the
//! index URL its baseline gives:
//!
//! - `peerpi`: a node on every runner (127.0.0.1 inside the runner);
//! - `peerpi-region`: one node per region, on the region's first runner;
//! - `proxy`: one nginx `proxy_cache` (with `proxy_cache_lock`) per region,
//!   on the region's first runner, the way CI operators run it today;
//! - `direct`: every job straight to the index.
//!
//! Faults (on the `peerpi` baselines): `poison` (three runners serve wrong,
//! truncated or no bytes), `churn` (runners SIGKILLed and restarted, a third
//! with an empty data dir), `outage` (the index unreachable for the middle
//! third of the jobs), `cold-region` (the last region joins a third of the
//! way in). `herd` is its own schedule: every runner starts the same job at
//! once, the large wheels no node holds yet, on any baseline. The results go
//! to `results.json` and `report.md` in `--out`.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};

use crate::faults;
use crate::index::{requirement_sets, PackageSet};
use crate::jobs::{check_installed, run_job};
use crate::net::{self, Layout};
use crate::results::{JobRecord, Results, RunnerBytes, Sample};

/// Where jobs install from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Baseline {
    /// peerpi on every runner.
    #[default]
    Peerpi,
    /// peerpi, one node per region.
    PeerpiRegion,
    /// One nginx caching proxy per region.
    Proxy,
    /// Straight to the index.
    Direct,
}

/// What goes wrong during a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    None,
    Poison,
    Churn,
    Outage,
    ColdRegion,
    /// One job per runner, all at once: the large wheels no node holds.
    Herd,
}

/// What a `herd` job installs: the 200 MB and 50 MB wheels of the default
/// package set.
pub const HERD_SET: [&str; 2] = ["weights", "tokenizer"];

#[derive(Debug, Clone, Args)]
pub struct ScenarioArgs {
    #[command(flatten)]
    pub layout: Layout,
    /// Jobs in all.
    #[arg(long, default_value_t = 200)]
    pub jobs: usize,
    /// Jobs running at once (one wave).
    #[arg(long, default_value_t = 4)]
    pub parallel: usize,
    /// Where jobs install from.
    #[arg(long, value_enum, default_value_t = Baseline::Peerpi)]
    pub baseline: Baseline,
    /// The packages the index serves.
    #[arg(long, value_enum, default_value_t = PackageSet::Default)]
    pub set: PackageSet,
    /// One runner's store is damaged after the first wave (it serves wrong
    /// bytes to peers); no job runs on it. The `poison` scenario has three.
    #[arg(long)]
    pub poison: bool,
    /// Seed of the job schedule (same seed, same jobs on every baseline).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The peerpi binary [default: next to this one].
    #[arg(long)]
    pub peerpi: Option<PathBuf>,
    /// The nginx binary, for `--baseline proxy`.
    #[arg(long, default_value = "nginx")]
    pub nginx: PathBuf,
    /// Pause between waves, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub gap_ms: u64,
    /// Upstream egress allowed, as a multiple of the unique bytes fetched
    /// (checked on the peerpi baselines).
    #[arg(long, default_value_t = 1.05)]
    pub max_egress: f64,
    /// Seconds between two churn kills.
    #[arg(long, default_value_t = 6)]
    pub churn_every_s: u64,
    /// Where venvs, data dirs, logs and the results go.
    #[arg(long, default_value = "/tmp/peerpi-testnet")]
    pub out: PathBuf,
}

const NODE_PORT: u16 = 7503;
const PROXY_PORT: u16 = 8080;
const INDEX_PORT: u16 = 8000;

/// A job in the schedule.
#[derive(Debug, Clone)]
struct PlannedJob {
    index: usize,
    runner: String,
    set: Vec<&'static str>,
    pip: bool,
    /// Runs while the index is unreachable.
    in_outage: bool,
}

/// Child processes by name, killed when the run ends, however it ends.
#[derive(Default)]
struct Fleet(Mutex<HashMap<String, Child>>);

impl Fleet {
    fn add(&self, name: &str, child: Child) {
        if let Ok(mut children) = self.0.lock() {
            children.insert(name.to_string(), child);
        }
    }

    fn kill(&self, name: &str) {
        let child = self.0.lock().ok().and_then(|mut c| c.remove(name));
        if let Some(mut child) = child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn pid(&self, name: &str) -> Option<u32> {
        self.0.lock().ok()?.get(name).map(Child::id)
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if let Ok(children) = self.0.get_mut() {
            for child in children.values_mut() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Which runners are down (churn) and which run a job, so that churn only
/// kills idle runners and a job waits for its runner to be back.
#[derive(Default)]
struct Occupancy {
    state: Mutex<(HashSet<String>, HashMap<String, usize>)>,
    changed: Condvar,
}

impl Occupancy {
    /// Marks `runner` busy once it is up (waiting at most `wait`).
    fn enter(&self, runner: &str, wait: Duration) -> Result<()> {
        let deadline = Instant::now() + wait;
        let mut state = self.state.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        while state.0.contains(runner) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("{runner} did not come back within {wait:?}");
            }
            state = self
                .changed
                .wait_timeout(state, left)
                .map_err(|_| anyhow::anyhow!("poisoned"))?
                .0;
        }
        *state.1.entry(runner.to_string()).or_default() += 1;
        Ok(())
    }

    fn leave(&self, runner: &str) {
        if let Ok(mut state) = self.state.lock() {
            if let Some(n) = state.1.get_mut(runner) {
                *n = n.saturating_sub(1);
            }
        }
        self.changed.notify_all();
    }

    /// Marks one idle runner of `candidates` down; `None` if all are busy.
    fn take_down(&self, candidates: &[String], pick: u64) -> Option<String> {
        let mut state = self.state.lock().ok()?;
        let idle: Vec<&String> = candidates
            .iter()
            .filter(|r| state.1.get(*r).copied().unwrap_or(0) == 0 && !state.0.contains(*r))
            .collect();
        let chosen = (*idle.get((pick % idle.len().max(1) as u64) as usize)?).clone();
        state.0.insert(chosen.clone());
        Some(chosen)
    }

    fn bring_up(&self, runner: &str) {
        if let Ok(mut state) = self.state.lock() {
            state.0.remove(runner);
        }
        self.changed.notify_all();
    }
}

/// xorshift64: the schedule is reproducible from the seed.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Runs `fault` on a fresh rig and writes `results.json` and `report.md`.
pub fn run(args: &ScenarioArgs, fault: Fault) -> Result<Results> {
    let exe = std::env::current_exe()?;
    let peerpi = match &args.peerpi {
        Some(p) => p.clone(),
        None => exe.parent().context("binary directory")?.join("peerpi"),
    };
    let uses_peerpi = matches!(args.baseline, Baseline::Peerpi | Baseline::PeerpiRegion);
    if uses_peerpi && !peerpi.is_file() {
        bail!(
            "{} not found: build it (cargo build) or pass --peerpi",
            peerpi.display()
        );
    }
    if !matches!(fault, Fault::None | Fault::Herd) && args.baseline != Baseline::Peerpi {
        bail!("the fault scenarios run on --baseline peerpi");
    }
    if fault == Fault::Herd && args.set != PackageSet::Default {
        bail!("herd installs the large wheels of --set default");
    }
    // A herd is one wave: a job on every runner at once.
    let herd;
    let args = if fault == Fault::Herd {
        let runners = usize::from(args.layout.regions) * usize::from(args.layout.nodes);
        herd = ScenarioArgs {
            jobs: runners,
            parallel: runners,
            ..args.clone()
        };
        &herd
    } else {
        args
    };
    if fault == Fault::ColdRegion && args.layout.regions < 2 {
        bail!("cold-region needs --regions 2 or more");
    }
    let missing = missing_prerequisites(args);
    if !missing.is_empty() {
        bail!(
            "the rig cannot run here; install first:\n  {}",
            missing.join("\n  ")
        );
    }
    let _ = std::fs::remove_dir_all(&args.out);
    std::fs::create_dir_all(&args.out)?;
    let made = net::up(&args.layout)?;
    let result = run_on_rig(args, fault, &exe, &peerpi, &made);
    let down = net::down(&args.layout.prefix);
    let results = result?;
    down?;
    std::fs::write(
        args.out.join("results.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    std::fs::write(args.out.join("report.md"), results.markdown())?;
    Ok(results)
}

/// The runner namespaces' region, from `<prefix>-r<r>n<n>`.
/// What the rig needs that this machine lacks, each with the install that
/// brings it: checked before a rig is built (a missing `uv` once surfaced
/// as six failed jobs after the whole rig ran).
fn missing_prerequisites(args: &ScenarioArgs) -> Vec<String> {
    let mut missing = Vec::new();
    let mut need = |ok: bool, what: &str| {
        if !ok {
            missing.push(what.to_string());
        }
    };
    need(on_path("ip"), "ip (apt-get install iproute2)");
    need(on_path("tc"), "tc (apt-get install iproute2)");
    need(
        Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0"),
        "root, to make network namespaces (run as root)",
    );
    need(
        Command::new("python3")
            .args(["-c", "import venv, ensurepip"])
            .output()
            .is_ok_and(|o| o.status.success()),
        "python3 with venv and ensurepip, for the pip jobs (apt-get install python3-venv)",
    );
    need(
        on_path("uv"),
        "uv, for the uv jobs (python3 -m pip install uv)",
    );
    if args.baseline == Baseline::Proxy {
        let nginx = &args.nginx;
        let found = if nginx.components().count() > 1 {
            nginx.is_file()
        } else {
            nginx.to_str().is_some_and(on_path)
        };
        need(
            found,
            "nginx, for --baseline proxy (apt-get install nginx-light, or --nginx PATH)",
        );
    }
    missing
}

/// Whether `program` is an executable file in a `PATH` directory.
fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

fn region_of(namespace: &str) -> u8 {
    namespace
        .rsplit('-')
        .next()
        .and_then(|s| s.strip_prefix('r'))
        .and_then(|s| s.split('n').next())
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn run_on_rig(
    args: &ScenarioArgs,
    fault: Fault,
    exe: &Path,
    peerpi: &Path,
    made: &net::Made,
) -> Result<Results> {
    let prefix = &args.layout.prefix;
    let fleet = Arc::new(Fleet::default());
    let index_url = format!("http://{}:{INDEX_PORT}/simple/", made.index);
    let set_name = match args.set {
        PackageSet::Small => "small",
        PackageSet::Default => "default",
    };
    fleet.add(
        "index",
        spawn_in(
            &net::index_namespace(prefix),
            exe,
            &[
                "index",
                "--listen",
                &format!("{}:{INDEX_PORT}", made.index),
                "--set",
                set_name,
            ],
            &args.out.join("index.log"),
        )?,
    );
    let runners: Vec<String> = made.nodes.iter().map(|(n, _)| n.clone()).collect();
    let first_of_region: HashMap<u8, (String, std::net::Ipv4Addr)> = made
        .nodes
        .iter()
        .rev()
        .map(|(n, ip)| (region_of(n), (n.clone(), *ip)))
        .collect();
    let last_region = args.layout.regions.saturating_sub(1);
    let cold = |runner: &str| fault == Fault::ColdRegion && region_of(runner) == last_region;
    // Poisoners are the last runners of the last regions, one region each
    // first, so that every region has honest runners where it can.
    let mut by_lateness: Vec<&(String, std::net::Ipv4Addr)> = made.nodes.iter().collect();
    by_lateness.sort_by_key(|(n, ip)| std::cmp::Reverse((ip.octets()[3], region_of(n))));
    let poisoners: Vec<String> = match (fault, args.poison) {
        (Fault::Poison, _) => by_lateness.iter().take(3).map(|(n, _)| n.clone()).collect(),
        (_, true) => by_lateness.iter().take(1).map(|(n, _)| n.clone()).collect(),
        _ => Vec::new(),
    };
    if fault == Fault::Poison && runners.len() < 5 {
        bail!("the poison scenario needs 5 runners or more (3 poisoners)");
    }

    // The services jobs install from. The index sits on a private network,
    // so the nodes form a private swarm (as a cluster in front of such an
    // index must): one key for all.
    let bootstrap = format!("/ip4/{}/tcp/7504", made.nodes[0].1);
    let swarm_key = args.out.join("swarm.key");
    if matches!(args.baseline, Baseline::Peerpi | Baseline::PeerpiRegion) && !swarm_key.is_file() {
        std::fs::create_dir_all(&args.out)?;
        let made_key = std::process::Command::new(peerpi)
            .args(["keygen", "--swarm-key"])
            .arg(&swarm_key)
            .output()
            .context("running peerpi keygen")?;
        if !made_key.status.success() {
            bail!(
                "peerpi keygen failed: {}",
                String::from_utf8_lossy(&made_key.stderr)
            );
        }
    }
    let swarm_key = swarm_key.to_str().context("swarm key path")?.to_string();
    let start_node = |namespace: &str, bootstrap_to: bool| -> Result<Child> {
        let data = args.out.join("data").join(namespace);
        let data = data.to_str().context("data dir path")?.to_string();
        let region = format!("r{}", region_of(namespace));
        let listen = format!("0.0.0.0:{NODE_PORT}");
        let mut node_args = vec![
            "serve",
            "--upstream",
            &index_url,
            "--listen",
            &listen,
            "--data-dir",
            &data,
            "--p2p-listen",
            "/ip4/0.0.0.0/tcp/7504",
            "--bulk-listen",
            "0.0.0.0:7505",
            "--no-mdns",
            "--region",
            &region,
            "--page-ttl",
            "10m",
            "--swarm-key",
            &swarm_key,
        ];
        if bootstrap_to {
            node_args.extend(["--bootstrap", &bootstrap]);
        }
        spawn_in(
            namespace,
            peerpi,
            &node_args,
            &args.out.join(format!("{namespace}.log")),
        )
    };
    let mut service_hosts: Vec<String> = Vec::new();
    match args.baseline {
        Baseline::Peerpi => {
            for (i, runner) in runners.iter().enumerate() {
                if !cold(runner) {
                    fleet.add(runner, start_node(runner, i > 0)?);
                    service_hosts.push(runner.clone());
                }
            }
        }
        Baseline::PeerpiRegion => {
            for region in 0..args.layout.regions {
                let (namespace, _) = &first_of_region[&region];
                fleet.add(namespace, start_node(namespace, region > 0)?);
                service_hosts.push(namespace.clone());
            }
        }
        Baseline::Proxy => {
            for region in 0..args.layout.regions {
                let (namespace, ip) = &first_of_region[&region];
                let conf = faults::nginx_conf(&args.out, region, *ip, PROXY_PORT, &index_url)?;
                let conf = conf.to_str().context("nginx conf path")?.to_string();
                let nginx = args.nginx.to_str().context("nginx path")?.to_string();
                let child = spawn_in(
                    namespace,
                    Path::new(&nginx),
                    &["-c", &conf, "-g", "daemon off;"],
                    &args.out.join(format!("nginx-r{region}.log")),
                )
                .context("starting nginx (install it: apt-get install nginx-light)")?;
                fleet.add(&format!("nginx-r{region}"), child);
            }
        }
        Baseline::Direct => {}
    }
    for host in &service_hosts {
        fetch_in(
            host,
            exe,
            &format!("http://127.0.0.1:{NODE_PORT}/healthz"),
            30,
        )?;
    }
    fetch_in(&runners[0], exe, &index_url, 60)?;
    if args.baseline == Baseline::Proxy {
        for region in 0..args.layout.regions {
            let (namespace, ip) = &first_of_region[&region];
            fetch_in(
                namespace,
                exe,
                &format!("http://{ip}:{PROXY_PORT}/simple/"),
                30,
            )?;
        }
    }
    let url_for = |runner: &str| -> String {
        let (_, ip) = &first_of_region[&region_of(runner)];
        match args.baseline {
            Baseline::Peerpi => format!("http://127.0.0.1:{NODE_PORT}/simple/"),
            Baseline::PeerpiRegion => format!("http://{ip}:{NODE_PORT}/simple/"),
            Baseline::Proxy => format!("http://{ip}:{PROXY_PORT}/simple/"),
            Baseline::Direct => index_url.clone(),
        }
    };

    // The schedule.
    let sets = requirement_sets(args.set);
    let mut rng = Rng(args.seed.max(1));
    let honest: Vec<String> = runners
        .iter()
        .filter(|r| !poisoners.contains(r))
        .cloned()
        .collect();
    let warm: Vec<String> = honest.iter().filter(|r| !cold(r)).cloned().collect();
    let third = args.jobs / 3;
    let mut plan: Vec<PlannedJob> = Vec::new();
    if fault == Fault::Herd {
        for (index, runner) in honest.iter().enumerate() {
            plan.push(PlannedJob {
                index,
                runner: runner.clone(),
                set: HERD_SET.to_vec(),
                pip: index % 2 == 0,
                in_outage: false,
            });
        }
    }
    for index in plan.len()..args.jobs {
        let in_outage = fault == Fault::Outage && (third..2 * third).contains(&index);
        let (runner, set) = if in_outage {
            // Only what the runner installed before the outage: a node
            // serves its cached pages, but has never seen other pages.
            let before: Vec<&PlannedJob> = plan.iter().filter(|j| !j.in_outage).collect();
            let job = before[rng.below(before.len())];
            (job.runner.clone(), job.set.clone())
        } else {
            let pool = if fault == Fault::ColdRegion && index < third {
                &warm
            } else {
                &honest
            };
            (
                pool[rng.below(pool.len())].clone(),
                sets[rng.below(sets.len())].clone(),
            )
        };
        plan.push(PlannedJob {
            index,
            runner,
            set,
            pip: index % 2 == 0,
            in_outage,
        });
    }

    // Sampling and churn run beside the jobs.
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let timeline = Arc::new(Mutex::new(Vec::<Sample>::new()));
    let sampler = {
        let (stop, timeline, exe) = (stop.clone(), timeline.clone(), exe.to_path_buf());
        let hosts = Arc::new(Mutex::new(service_hosts.clone()));
        let index_stats = format!("http://{}:{INDEX_PORT}/_stats", made.index);
        let probe_host = runners[0].clone();
        let (hosts_for_thread, uses_peerpi) = (hosts.clone(), args.baseline != Baseline::Proxy);
        let handle = std::thread::spawn(move || {
            // Bounded: stops with the run (the flag) or after 4 hours.
            while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(4 * 3600)
            {
                let mut sample = Sample {
                    t_s: started.elapsed().as_secs_f64(),
                    ..Sample::default()
                };
                if let Ok(stats) = fetch_in(&probe_host, &exe, &index_stats, 5) {
                    sample.index_egress = egress_of(&stats).0;
                }
                let hosts = hosts_for_thread
                    .lock()
                    .map(|h| h.clone())
                    .unwrap_or_default();
                if uses_peerpi {
                    for host in hosts {
                        let url = format!("http://127.0.0.1:{NODE_PORT}/metrics");
                        if let Ok(metrics) = fetch_in(&host, &exe, &url, 2) {
                            let bytes = node_bytes(&metrics);
                            sample.local += bytes.local;
                            sample.peer += bytes.peer;
                            sample.upstream += bytes.upstream;
                        }
                    }
                }
                if let Ok(mut t) = timeline.lock() {
                    t.push(sample);
                }
                std::thread::sleep(Duration::from_secs(2));
            }
        });
        (handle, hosts)
    };
    let occupancy = Arc::new(Occupancy::default());
    let restarts = Arc::new(Mutex::new(Vec::<String>::new()));
    // The first runner is everyone's bootstrap address; it stays up.
    let churn_candidates: Vec<String> = honest.iter().skip(1).cloned().collect();

    let mut results = Results {
        scenario: match fault {
            Fault::None if args.poison => "ci-burst with a poisoning runner".into(),
            Fault::None => "ci-burst".into(),
            Fault::Poison => "poison".into(),
            Fault::Churn => "churn".into(),
            Fault::Outage => "outage".into(),
            Fault::ColdRegion => "cold-region".into(),
            Fault::Herd => "herd".into(),
        },
        baseline: args.baseline,
        regions: args.layout.regions,
        nodes_per_region: args.layout.nodes,
        parallel: args.parallel,
        seed: args.seed,
        set: set_name.into(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        ..Results::default()
    };

    std::thread::scope(|scope| -> Result<()> {
        if fault == Fault::Churn {
            let (stop, occupancy, fleet, restarts) = (&stop, &occupancy, &fleet, &restarts);
            let (candidates, start_node) = (&churn_candidates, &start_node);
            let every = Duration::from_secs(args.churn_every_s.max(1));
            scope.spawn(move || {
                let mut rng = Rng(args.seed.wrapping_mul(7919).max(1));
                // Bounded: stops with the run (the flag) or after 4 hours.
                let until = Instant::now() + Duration::from_secs(4 * 3600);
                while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                    std::thread::sleep(every);
                    let Some(victim) = occupancy.take_down(candidates, rng.next()) else {
                        continue;
                    };
                    fleet.kill(&victim);
                    let wiped = rng.below(3) == 0;
                    if wiped {
                        let _ = std::fs::remove_dir_all(args.out.join("data").join(&victim));
                    }
                    match start_node(&victim, true) {
                        Ok(child) => {
                            fleet.add(&victim, child);
                            let health = format!("http://127.0.0.1:{NODE_PORT}/healthz");
                            let _ = fetch_in(&victim, exe, &health, 30);
                        }
                        Err(e) => eprintln!("churn: restarting {victim}: {e:#}"),
                    }
                    if let Ok(mut r) = restarts.lock() {
                        r.push(format!(
                            "{victim}{}",
                            if wiped { " (empty data dir)" } else { "" }
                        ));
                    }
                    occupancy.bring_up(&victim);
                }
            });
        }
        let outcome = run_waves(
            args,
            fault,
            &plan,
            &poisoners,
            &fleet,
            &occupancy,
            &url_for,
            started,
            &mut results,
            &|namespace: &str| -> Result<()> {
                fleet.add(namespace, start_node(namespace, true)?);
                fetch_in(
                    namespace,
                    exe,
                    &format!("http://127.0.0.1:{NODE_PORT}/healthz"),
                    30,
                )?;
                if let Ok(mut hosts) = sampler.1.lock() {
                    hosts.push(namespace.to_string());
                }
                Ok(())
            },
            &runners,
            cold,
        );
        stop.store(true, Ordering::Relaxed);
        outcome
    })?;
    let _ = sampler.0.join();
    results.timeline = timeline.lock().map(|t| t.clone()).unwrap_or_default();
    results.restarts = restarts.lock().map(|r| r.clone()).unwrap_or_default();
    results.elapsed_s = started.elapsed().as_secs_f64();

    let stats = fetch_in(
        &runners[0],
        exe,
        &format!("http://{}:{INDEX_PORT}/_stats", made.index),
        10,
    )?;
    (results.egress_bytes, results.unique_bytes) = egress_of(&stats);
    results.refetched = refetched(&stats);
    if fault == Fault::Herd {
        // What the herd is measured against: one runner alone downloading
        // the same files from the index (after the egress was read).
        let venv = args.out.join("venv-reference");
        let began = Instant::now();
        run_job(&runners[0], &venv, &index_url, &HERD_SET, true)
            .context("the reference download")?;
        results.reference_s = Some(began.elapsed().as_secs_f64());
        let _ = std::fs::remove_dir_all(&venv);
    }
    if let Ok(text) = std::fs::read_to_string(net::router_stats_path(prefix)) {
        let stats: serde_json::Value = serde_json::from_str(&text)?;
        for pair in stats["pairs"].as_array().into_iter().flatten() {
            let (from, to, bytes) = (
                pair["from"].as_u64().unwrap_or(0),
                pair["to"].as_u64().unwrap_or(0),
                pair["bytes"].as_u64().unwrap_or(0),
            );
            let index = u64::from(net::INDEX_OCTET);
            if from != index && to != index && from != to {
                results.cross_region_bytes += bytes;
            }
        }
    }
    let hosts = sampler.1.lock().map(|h| h.clone()).unwrap_or_default();
    if args.baseline != Baseline::Proxy {
        for host in hosts {
            let url = format!("http://127.0.0.1:{NODE_PORT}/metrics");
            if let Ok(metrics) = fetch_in(&host, exe, &url, 10) {
                let mut bytes = node_bytes(&metrics);
                bytes.runner = host.clone();
                bytes.poisoner = poisoners.contains(&host);
                results.by_runner.push(bytes);
            }
        }
    }
    drop(fleet);
    Ok(results)
}

/// The runs of the schedule, wave by wave, with the faults that happen
/// between waves.
#[allow(clippy::too_many_arguments)] // one call site; the pieces of one run
fn run_waves(
    args: &ScenarioArgs,
    fault: Fault,
    plan: &[PlannedJob],
    poisoners: &[String],
    fleet: &Fleet,
    occupancy: &Occupancy,
    url_for: &(dyn Fn(&str) -> String + Sync),
    started: Instant,
    results: &mut Results,
    start_cold_node: &dyn Fn(&str) -> Result<()>,
    runners: &[String],
    cold: impl Fn(&str) -> bool,
) -> Result<()> {
    let prefix = &args.layout.prefix;
    let wave_len = args.parallel.max(1);
    let third = args.jobs / 3;
    let mut poisoned = poisoners.is_empty();
    let mut outage = false;
    let mut cold_started = fault != Fault::ColdRegion;
    for wave in plan.chunks(wave_len) {
        std::thread::sleep(Duration::from_millis(args.gap_ms));
        let first = wave[0].index;
        if !poisoned && first > 0 {
            // After the first wave: the poisoners fetch what that wave
            // installed (from peers, so they hold only copies honest runners
            // hold too), then they turn.
            for (p, poisoner) in poisoners.iter().enumerate() {
                for job in &plan[..wave_len.min(plan.len())] {
                    let venv = args.out.join(format!("poison-venv-{p}"));
                    let _ = run_job(poisoner, &venv, &url_for(poisoner), &job.set, false);
                    let _ = std::fs::remove_dir_all(&venv);
                }
                let data = args.out.join("data").join(poisoner);
                let how = if fault == Fault::Poison {
                    ["wrong bytes", "truncated", "stalled"][p % 3]
                } else {
                    "wrong bytes"
                };
                match how {
                    "wrong bytes" => faults::damage_store(&data)?,
                    "truncated" => faults::truncate_store(&data)?,
                    _ => {
                        let pid = fleet.pid(poisoner).context("the staller's process")?;
                        faults::stop_process(pid)?;
                    }
                }
                results.poisoners.push(format!("{poisoner} ({how})"));
            }
            poisoned = true;
        }
        if fault == Fault::Outage && !outage && wave.iter().any(|j| j.in_outage) {
            faults::index_link(prefix, false)?;
            outage = true;
            results.events.push(format!(
                "index unreachable at {:.1} s (job {first})",
                started.elapsed().as_secs_f64()
            ));
        }
        if outage && wave.iter().all(|j| !j.in_outage) && first >= 2 * third {
            faults::index_link(prefix, true)?;
            outage = false;
            results.events.push(format!(
                "index back at {:.1} s (job {first})",
                started.elapsed().as_secs_f64()
            ));
        }
        if !cold_started && first >= third {
            for runner in runners.iter().filter(|r| cold(r)) {
                start_cold_node(runner)?;
            }
            cold_started = true;
            results.events.push(format!(
                "region r{} joins at {:.1} s (job {first})",
                args.layout.regions - 1,
                started.elapsed().as_secs_f64()
            ));
        }
        let records: Vec<JobRecord> = std::thread::scope(|scope| {
            let handles: Vec<_> = wave
                .iter()
                .map(|job| {
                    scope.spawn(move || {
                        let venv = args.out.join(format!("venv-{}", job.index));
                        let at = started.elapsed();
                        let mut record = JobRecord {
                            index: job.index,
                            runner: job.runner.clone(),
                            region: region_of(&job.runner),
                            tool: if job.pip { "pip" } else { "uv" }.into(),
                            set: job.set.join(" "),
                            start_s: at.as_secs_f64(),
                            in_outage: job.in_outage,
                            ..JobRecord::default()
                        };
                        let began = Instant::now();
                        let outcome = occupancy
                            .enter(&job.runner, Duration::from_secs(120))
                            .and_then(|()| {
                                let url = url_for(&job.runner);
                                let ran = run_job(&job.runner, &venv, &url, &job.set, job.pip);
                                occupancy.leave(&job.runner);
                                ran
                            })
                            .and_then(|()| check_installed(&venv));
                        record.seconds = began.elapsed().as_secs_f64();
                        match outcome {
                            Ok((checked, corrupted)) => {
                                record.checked_files = checked;
                                record.corrupted_files = corrupted;
                            }
                            Err(e) => record.error = Some(format!("{e:#}")),
                        }
                        let _ = std::fs::remove_dir_all(&venv);
                        record
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_default())
                .collect()
        });
        results.jobs.extend(records);
    }
    if outage {
        faults::index_link(prefix, true)?;
    }
    Ok(())
}

/// (bytes sent, unique bytes sent) from the index's `/_stats`.
fn egress_of(stats: &str) -> (u64, u64) {
    let stats: serde_json::Value = serde_json::from_str(stats).unwrap_or_default();
    let (mut egress, mut unique) = (0, 0);
    for file in stats["files"].as_array().into_iter().flatten() {
        let (len, requests) = (
            file["len"].as_u64().unwrap_or(0),
            file["requests"].as_u64().unwrap_or(0),
        );
        egress += len * requests;
        if requests > 0 {
            unique += len;
        }
    }
    (egress, unique)
}

/// Files the index sent more than once: (filename, times).
fn refetched(stats: &str) -> Vec<(String, u64)> {
    let stats: serde_json::Value = serde_json::from_str(stats).unwrap_or_default();
    stats["files"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|file| {
            let requests = file["requests"].as_u64()?;
            (requests > 1).then(|| {
                (
                    file["filename"].as_str().unwrap_or("?").to_string(),
                    requests,
                )
            })
        })
        .collect()
}

/// A node's bytes by source, refusals and blocks, from its `/metrics`.
fn node_bytes(metrics: &str) -> RunnerBytes {
    let sum = |metric: &str, label: &str| -> u64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(metric) && l.contains(label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    };
    let bytes = |source: &str| sum("peerpi_blob_bytes_total", &format!("\"{source}\""));
    RunnerBytes {
        local: bytes("local"),
        peer: bytes("peer"),
        upstream: bytes("upstream"),
        refused: sum("peerpi_verification_failures_total", "\"peer\""),
        blocked: sum("peerpi_blocked_peers ", ""),
        ranges: sum("peerpi_peer_ranges_total", "\"appended\""),
        ..RunnerBytes::default()
    }
}

pub(crate) fn spawn_in(
    namespace: &str,
    program: &Path,
    args: &[&str],
    log: &Path,
) -> Result<Child> {
    // Appended to: a runner restarted by churn keeps its earlier log.
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    Command::new("ip")
        .args(["netns", "exec", namespace])
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {} in {namespace}", program.display()))
}

/// GETs `url` from inside `namespace` (retrying for up to `wait_s`).
pub(crate) fn fetch_in(namespace: &str, exe: &Path, url: &str, wait_s: u64) -> Result<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", namespace])
        .arg(exe)
        .args(["fetch", "--url", url, "--wait-s", &wait_s.to_string()])
        .output()?;
    if !out.status.success() {
        bail!(
            "GET {url} in {namespace}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `testnet fetch`: a GET from inside a namespace, retried until it answers
/// 200 or `wait_s` passes; prints the body.
pub fn fetch(url: &str, wait_s: u64) -> Result<String> {
    let started = Instant::now();
    loop {
        match get(url) {
            Ok(body) => return Ok(body),
            Err(e) if started.elapsed() >= Duration::from_secs(wait_s) => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn get(url: &str) -> Result<String> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").context("http:// URLs only")?;
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
    let mut stream = std::net::TcpStream::connect(host)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {host}\r\nAccept: */*\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").context("no HTTP header")?;
    if !head
        .lines()
        .next()
        .is_some_and(|status| status.contains(" 200"))
    {
        bail!("{}", head.lines().next().unwrap_or("no status"));
    }
    Ok(body.to_string())
}
