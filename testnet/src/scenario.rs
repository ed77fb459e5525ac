//! Scenarios on the rig. `ci-burst`: peerpi on every runner, the index in
//! its own namespace behind a slow, distant link, and jobs that each make a
//! fresh venv on a random runner and install a requirement set with real pip
//! or uv (alternating), a few at a time. With `--poison`, one runner's
//! stored files are damaged after the first wave (it then serves wrong
//! bytes to peers) and no job runs on it. The report counts failed jobs,
//! installed files that do not match their RECORD hashes, upstream egress
//! against unique bytes, and bytes by source per runner.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::index::{requirement_sets, PackageSet};
use crate::net::{self, Layout};

#[derive(Debug, Clone, Args)]
pub struct ScenarioArgs {
    #[command(flatten)]
    pub layout: Layout,
    /// Jobs in all.
    #[arg(long, default_value_t = 12)]
    pub jobs: usize,
    /// Jobs running at once.
    #[arg(long, default_value_t = 3)]
    pub parallel: usize,
    /// Damage one runner's store after the first wave (it lies to peers).
    #[arg(long)]
    pub poison: bool,
    /// Seed of the job placement.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The peerpi binary [default: next to this one].
    #[arg(long)]
    pub peerpi: Option<PathBuf>,
    /// Pause between waves, in milliseconds (time for announcements).
    #[arg(long, default_value_t = 0)]
    pub gap_ms: u64,
    /// Upstream egress allowed, as a multiple of the unique bytes fetched.
    #[arg(long, default_value_t = 1.05)]
    pub max_egress: f64,
    /// Where venvs, data dirs, logs and the report go.
    #[arg(long, default_value = "/tmp/peerpi-testnet")]
    pub out: PathBuf,
}

/// What a run found.
#[derive(Debug, Default)]
pub struct Report {
    pub jobs: usize,
    pub failed_jobs: Vec<String>,
    pub corrupted_files: usize,
    pub checked_files: usize,
    pub egress_bytes: u64,
    pub unique_bytes: u64,
    pub job_seconds: Vec<f64>,
    /// Per runner: name, local, peer and upstream bytes, bytes from peers
    /// refused for failing verification, peers blocked.
    pub by_source: Vec<(String, u64, u64, u64, u64, u64)>,
}

impl Report {
    pub fn egress_ratio(&self) -> f64 {
        if self.unique_bytes == 0 {
            0.0
        } else {
            self.egress_bytes as f64 / self.unique_bytes as f64
        }
    }

    pub fn markdown(&self, args: &ScenarioArgs) -> String {
        let mut times = self.job_seconds.clone();
        times.sort_by(f64::total_cmp);
        let pct = |p: f64| {
            times
                .get(((times.len() as f64 - 1.0) * p).round() as usize)
                .copied()
                .unwrap_or(0.0)
        };
        let mut md = format!(
            "# ci-burst: {} regions x {} runners, {} jobs{}\n\n\
             | measure | value |\n|---|---|\n\
             | failed jobs | {} |\n| corrupted installed files | {} of {} checked |\n\
             | upstream egress | {} B for {} B unique ({:.3}x) |\n\
             | job time p50 / p95 | {:.2} s / {:.2} s |\n\n\
             | runner | local | peer | upstream | refused from peers | peers blocked |\n|---|---|---|---|---|---|\n",
            args.layout.regions,
            args.layout.nodes,
            self.jobs,
            if args.poison { ", one poisoning runner" } else { "" },
            self.failed_jobs.len(),
            self.corrupted_files,
            self.checked_files,
            self.egress_bytes,
            self.unique_bytes,
            self.egress_ratio(),
            pct(0.5),
            pct(0.95),
        );
        for (name, local, peer, upstream, refused, blocked) in &self.by_source {
            md.push_str(&format!(
                "| {name} | {local} | {peer} | {upstream} | {refused} | {blocked} |\n"
            ));
        }
        for failed in &self.failed_jobs {
            md.push_str(&format!("\nfailed: {failed}\n"));
        }
        md
    }
}

/// Processes killed when the run ends, however it ends.
struct Fleet(Vec<Child>);

impl Drop for Fleet {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn run(args: &ScenarioArgs) -> Result<Report> {
    let exe = std::env::current_exe()?;
    let peerpi = match &args.peerpi {
        Some(p) => p.clone(),
        None => exe.parent().context("binary directory")?.join("peerpi"),
    };
    if !peerpi.is_file() {
        bail!(
            "{} not found: build it (cargo build) or pass --peerpi",
            peerpi.display()
        );
    }
    let _ = std::fs::remove_dir_all(&args.out);
    std::fs::create_dir_all(&args.out)?;
    let prefix = &args.layout.prefix;
    let made = net::up(&args.layout)?;
    let result = run_on_rig(args, &exe, &peerpi, &made);
    let down = net::down(prefix);
    let report = result?;
    down?;
    std::fs::write(args.out.join("report.md"), report.markdown(args))?;
    Ok(report)
}

fn run_on_rig(args: &ScenarioArgs, exe: &Path, peerpi: &Path, made: &net::Made) -> Result<Report> {
    let prefix = &args.layout.prefix;
    let mut fleet = Fleet(Vec::new());
    let index_url = format!("http://{}:8000/simple/", made.index);
    fleet.0.push(spawn_in(
        &net::index_namespace(prefix),
        exe,
        &["index", "--listen", &format!("{}:8000", made.index)],
        &args.out.join("index.log"),
    )?);
    let bootstrap = format!("/ip4/{}/tcp/7504", made.nodes[0].1);
    for (i, (namespace, _)) in made.nodes.iter().enumerate() {
        let region = namespace
            .rsplit('-')
            .next()
            .and_then(|s| s.split('n').next())
            .unwrap_or("r0");
        let data = args.out.join("data").join(namespace);
        let data = data.to_str().context("data dir path")?;
        let mut node_args = vec![
            "serve",
            "--upstream",
            &index_url,
            "--listen",
            "0.0.0.0:7503",
            "--data-dir",
            data,
            "--p2p-listen",
            "/ip4/0.0.0.0/tcp/7504",
            "--bulk-listen",
            "0.0.0.0:7505",
            "--no-mdns",
            "--region",
            region,
            "--page-ttl",
            "10m",
        ];
        if i > 0 {
            node_args.extend(["--bootstrap", &bootstrap]);
        }
        fleet.0.push(spawn_in(
            namespace,
            peerpi,
            &node_args,
            &args.out.join(format!("{namespace}.log")),
        )?);
    }
    for (namespace, _) in &made.nodes {
        fetch_in(namespace, exe, "http://127.0.0.1:7503/healthz", 30)?;
    }
    fetch_in(&made.nodes[0].0, exe, &index_url, 30)?;

    let runners: Vec<&String> = made.nodes.iter().map(|(n, _)| n).collect();
    let poisoner = args.poison.then(|| runners[runners.len() - 1].clone());
    let honest: Vec<&String> = runners
        .iter()
        .copied()
        .filter(|r| Some(*r) != poisoner.as_ref())
        .collect();
    let sets = requirement_sets(PackageSet::Small);
    let mut rng = args.seed.max(1);
    let mut next = move || {
        // xorshift64: placement reproducible from the seed.
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut report = Report {
        jobs: args.jobs,
        ..Report::default()
    };
    let jobs: Vec<(usize, String, Vec<&'static str>, bool)> = (0..args.jobs)
        .map(|j| {
            let runner = honest[(next() % honest.len() as u64) as usize].clone();
            let set = sets[(next() % sets.len() as u64) as usize].clone();
            (j, runner, set, j % 2 == 0)
        })
        .collect();
    let mut poisoned = false;
    for wave in jobs.chunks(args.parallel.max(1)) {
        std::thread::sleep(Duration::from_millis(args.gap_ms));
        if let (Some(poisoner), false) = (&poisoner, poisoned) {
            if wave[0].0 > 0 {
                // After the first wave: the poisoner fetches what that wave
                // installed (from peers, so it holds only copies honest
                // runners hold too), then its disk "rots".
                for (_, _, set, _) in &jobs[..args.parallel.max(1).min(jobs.len())] {
                    let _ = run_job(poisoner, &args.out.join("poison-venv"), set, false);
                }
                damage_store(&args.out.join("data").join(poisoner))?;
                poisoned = true;
            }
        }
        let handles: Vec<_> = wave
            .iter()
            .map(|(j, runner, set, pip)| {
                let (j, runner, set, pip) = (*j, runner.clone(), set.clone(), *pip);
                let venv = args.out.join(format!("venv-{j}"));
                std::thread::spawn(move || {
                    let started = Instant::now();
                    let outcome =
                        run_job(&runner, &venv, &set, pip).and_then(|()| check_installed(&venv));
                    (
                        format!(
                            "job {j} on {runner} ({}, {})",
                            if pip { "pip" } else { "uv" },
                            set.join(" ")
                        ),
                        started.elapsed(),
                        outcome,
                    )
                })
            })
            .collect();
        for handle in handles {
            let (name, took, outcome) = handle
                .join()
                .map_err(|_| anyhow::anyhow!("a job thread panicked"))?;
            report.job_seconds.push(took.as_secs_f64());
            match outcome {
                Ok((checked, corrupted)) => {
                    report.checked_files += checked;
                    report.corrupted_files += corrupted;
                }
                Err(e) => report.failed_jobs.push(format!("{name}: {e:#}")),
            }
        }
    }

    let stats: serde_json::Value = serde_json::from_str(&fetch_in(
        &made.nodes[0].0,
        exe,
        &format!("http://{}:8000/_stats", made.index),
        10,
    )?)?;
    for file in stats["files"].as_array().into_iter().flatten() {
        let (len, requests) = (
            file["len"].as_u64().unwrap_or(0),
            file["requests"].as_u64().unwrap_or(0),
        );
        report.egress_bytes += len * requests;
        if requests > 0 {
            report.unique_bytes += len;
        }
    }
    for (namespace, _) in &made.nodes {
        let metrics = fetch_in(namespace, exe, "http://127.0.0.1:7503/metrics", 10)?;
        let sum = |metric: &str, label: &str| -> u64 {
            metrics
                .lines()
                .filter(|l| l.starts_with(metric) && l.contains(label))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>() as u64
        };
        let bytes = |source: &str| sum("peerpi_blob_bytes_total", &format!("\"{source}\""));
        report.by_source.push((
            namespace.clone(),
            bytes("local"),
            bytes("peer"),
            bytes("upstream"),
            sum("peerpi_verification_failures_total", "\"peer\""),
            sum("peerpi_blocked_peers ", ""),
        ));
    }
    drop(fleet);
    Ok(report)
}

fn spawn_in(namespace: &str, program: &Path, args: &[&str], log: &Path) -> Result<Child> {
    let log = std::fs::File::create(log)?;
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
fn fetch_in(namespace: &str, exe: &Path, url: &str, wait_s: u64) -> Result<String> {
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

/// A fresh venv on `runner`, then pip or uv installs `set` from the
/// runner's own node (at 127.0.0.1 inside its namespace).
fn run_job(runner: &str, venv: &Path, set: &[&str], pip: bool) -> Result<()> {
    let _ = std::fs::remove_dir_all(venv);
    let venv_s = venv.to_str().context("venv path")?;
    let index = "http://127.0.0.1:7503/simple/";
    let steps: Vec<Vec<String>> = if pip {
        vec![
            vec!["python3".into(), "-m".into(), "venv".into(), venv_s.into()],
            [
                vec![
                    format!("{venv_s}/bin/pip"),
                    "install".into(),
                    "--no-cache-dir".into(),
                    "--disable-pip-version-check".into(),
                    "--index-url".into(),
                    index.into(),
                ],
                set.iter().map(|s| s.to_string()).collect(),
            ]
            .concat(),
        ]
    } else {
        vec![
            vec!["uv".into(), "venv".into(), "--quiet".into(), venv_s.into()],
            [
                vec![
                    "uv".into(),
                    "pip".into(),
                    "install".into(),
                    "--quiet".into(),
                    "--no-cache".into(),
                    "--python".into(),
                    format!("{venv_s}/bin/python"),
                    "--index-url".into(),
                    index.into(),
                ],
                set.iter().map(|s| s.to_string()).collect(),
            ]
            .concat(),
        ]
    };
    for step in steps {
        let out = Command::new("ip")
            .args(["netns", "exec", runner])
            .args(&step)
            .output()
            .with_context(|| format!("running {}", step[0]))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            bail!(
                "{} failed: {}",
                step[0],
                stderr.lines().rev().take(3).collect::<Vec<_>>().join(" / ")
            );
        }
    }
    Ok(())
}

/// Every installed file against its RECORD hash: (checked, corrupted).
fn check_installed(venv: &Path) -> Result<(usize, usize)> {
    let script = r#"
import base64, csv, hashlib, importlib.metadata as m, os, sys
checked = corrupted = 0
for dist in m.distributions():
    record = dist.read_text("RECORD") or ""
    for row in csv.reader(record.splitlines()):
        if len(row) < 2 or not row[1].startswith("sha256="):
            continue
        path = dist.locate_file(row[0])
        want = row[1][len("sha256="):]
        with open(path, "rb") as f:
            got = base64.urlsafe_b64encode(hashlib.sha256(f.read()).digest()).rstrip(b"=").decode()
        checked += 1
        corrupted += got != want
print(checked, corrupted)
"#;
    let out = Command::new(venv.join("bin/python"))
        .args(["-c", script])
        .output()?;
    if !out.status.success() {
        bail!(
            "checking RECORD hashes: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut numbers = text.split_whitespace().map(str::parse::<usize>);
    match (numbers.next(), numbers.next()) {
        (Some(Ok(checked)), Some(Ok(corrupted))) => Ok((checked, corrupted)),
        _ => bail!("unexpected RECORD check output {text:?}"),
    }
}

/// Flips the first byte of every stored blob: the runner now serves wrong
/// bytes for everything it announced.
fn damage_store(data_dir: &Path) -> Result<()> {
    let blobs = data_dir.join("blobs");
    for shard in std::fs::read_dir(&blobs).with_context(|| format!("{}", blobs.display()))? {
        for blob in std::fs::read_dir(shard?.path())? {
            let path = blob?.path();
            let mut bytes = std::fs::read(&path)?;
            if let Some(first) = bytes.first_mut() {
                *first ^= 0xff;
                std::fs::write(&path, bytes)?;
            }
        }
    }
    Ok(())
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
