//! `peerpi prefetch`: warms a running node, and through it the cluster, with
//! what jobs will install. Pages and files are requested from the node like
//! pip would, so they come from peers first and are verified, stored and
//! announced as for any request. Files the node already holds are skipped
//! (a re-run resumes); the summary says what came from where, and the exit
//! status is non-zero when anything failed.

mod inputs;
mod select;

use std::collections::{BTreeMap, HashSet};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use peerpi_core::ProjectName;
use sha2::{Digest, Sha256};

use clap::Args;

use crate::config;
use crate::config::args::CommonArgs;

pub use inputs::{target_environment, Wanted};
pub use select::Target;

/// A file to warm, as listed on the node's page.
#[derive(Debug, Clone)]
struct Planned {
    filename: String,
    url: String,
    sha256: String,
    size: Option<u64>,
    /// The PEP 658 core metadata's sha256, when the page lists it: pip
    /// fetches it before the wheel, so it is warmed too.
    metadata_sha256: Option<String>,
}

/// How one file went.
enum Outcome {
    Fetched(u64),
    Present,
    Failed(String),
}

pub fn run(args: &PrefetchArgs) -> Result<()> {
    let place = config::locate(&args.common, &config::process_env)?;
    let listen = config::resolve_listen(place.listen.as_deref())?;
    let base = config::node_base_url(&listen);
    let env = match &args.python_version {
        Some(v) => Some(target_environment(
            v,
            args.platforms.first().map(String::as_str),
        )?),
        None => None,
    };
    let target = Target {
        python: match &args.python_version {
            Some(v) => Some(python_pair(v)?),
            None => None,
        },
        platforms: args.platforms.clone(),
    };
    let read = inputs::read(&args.inputs, env.as_ref())?;
    for skipped in &read.skipped {
        eprintln!("skipped: {skipped}");
    }
    if read.wanted.is_empty() {
        bail!("nothing to prefetch in {}", args.inputs.join(", "));
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(prefetch(&base, &read.wanted, &target, args))
}

fn python_pair(version: &str) -> Result<(u32, u32)> {
    let mut parts = version.split('.').map(str::parse::<u32>);
    match (parts.next(), parts.next()) {
        (Some(Ok(major)), Some(Ok(minor))) => Ok((major, minor)),
        _ => bail!("--python-version {version:?}: expected MAJOR.MINOR, e.g. 3.12"),
    }
}

async fn prefetch(
    base: &str,
    wanted: &[Wanted],
    target: &Target,
    args: &PrefetchArgs,
) -> Result<()> {
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        // Between chunks, like pip's own read timeout; a large file may take long in all.
        .read_timeout(Duration::from_secs(120))
        .no_gzip()
        .build()?;
    let started = Instant::now();
    let mut by_project: BTreeMap<String, Vec<&Wanted>> = BTreeMap::new();
    for w in wanted {
        let name = ProjectName::new(w.project()).map_err(|e| anyhow!("{}: {e}", w.project()))?;
        by_project
            .entry(name.as_str().to_string())
            .or_default()
            .push(w);
    }
    let mut failures: Vec<String> = Vec::new();
    let mut planned: Vec<Planned> = Vec::new();
    let mut seen = HashSet::new();
    let pages = futures_util::stream::iter(by_project.iter().map(|(project, items)| {
        let http = http.clone();
        async move { (project, items, page(&http, base, project).await) }
    }))
    .buffer_unordered(args.jobs.max(1));
    let pages: Vec<_> = pages.collect().await;
    let mut chosen = Vec::new();
    let mut locked = Vec::new();
    for (project, items, page) in &pages {
        let page = match page {
            Ok(page) => page,
            Err(e) => {
                failures.push(format!("{project}: {e:#}"));
                continue;
            }
        };
        for item in items.iter() {
            match (select::select(page, item, target), item) {
                (Ok(files), Wanted::File { .. }) => locked.extend(files),
                (Ok(files), Wanted::Requirement { .. }) => chosen.extend(files),
                (Err(reason), _) => failures.push(reason),
            }
        }
    }
    // A lock names its files for every platform: only the target's go.
    let (fitting, unfit) = select::locked_for_target(locked, target);
    for reason in unfit {
        eprintln!("skipped: {reason}");
    }
    chosen.extend(fitting);
    for f in chosen {
        let sha256 = f.hashes.get("sha256").cloned().unwrap_or_default();
        if seen.insert(sha256.clone()) {
            let metadata_sha256 = match &f.core_metadata {
                peerpi_core::simple::CoreMetadata::Available { hashes } => {
                    hashes.get("sha256").cloned()
                }
                peerpi_core::simple::CoreMetadata::Absent => None,
            };
            planned.push(Planned {
                filename: f.filename.clone(),
                url: f.url.clone(),
                sha256,
                size: f.size,
                metadata_sha256,
            });
        }
    }
    let total_bytes: u64 = planned.iter().filter_map(|p| p.size).sum();
    if args.dry_run {
        for p in &planned {
            println!(
                "{}  {}",
                p.filename,
                p.size.map_or("size unknown".into(), show_bytes)
            );
        }
        println!(
            "{} files, {} (dry run: nothing fetched)",
            planned.len(),
            show_bytes(total_bytes)
        );
        return finish(&failures);
    }

    let before = node_downloads(&http, base).await;
    let bar = progress_bar(total_bytes);
    let done = AtomicUsize::new(0);
    let count = planned.len();
    let terminal = std::io::stderr().is_terminal();
    let pin = args.pin;
    let outcomes: Vec<(Planned, Outcome)> =
        futures_util::stream::iter(planned.into_iter().map(|p| {
            let (http, bar, done) = (http.clone(), bar.clone(), &done);
            async move {
                let mut outcome = warm(&http, &p, &bar).await;
                if pin && !matches!(outcome, Outcome::Failed(_)) {
                    if let Err(reason) = pin_file(&http, base, &p).await {
                        outcome = Outcome::Failed(format!("pin: {reason}"));
                    }
                }
                let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                bar.set_message(format!("{n}/{count} files"));
                if !terminal {
                    // Plain lines for logs (the bar is hidden when not a terminal).
                    let what = match &outcome {
                        Outcome::Fetched(bytes) => format!("fetched, {}", show_bytes(*bytes)),
                        Outcome::Present => "already on the node".into(),
                        Outcome::Failed(reason) => format!("FAILED: {reason}"),
                    };
                    eprintln!("[{n}/{count}] {}: {what}", p.filename);
                }
                (p, outcome)
            }
        }))
        .buffer_unordered(args.jobs.max(1))
        .collect()
        .await;
    bar.finish_and_clear();
    let after = node_downloads(&http, base).await;

    let (mut fetched, mut fetched_bytes, mut present) = (0usize, 0u64, 0usize);
    for (p, outcome) in &outcomes {
        match outcome {
            Outcome::Fetched(bytes) => {
                fetched += 1;
                fetched_bytes += bytes;
            }
            Outcome::Present => present += 1,
            Outcome::Failed(reason) => failures.push(format!("{}: {reason}", p.filename)),
        }
    }
    println!("prefetch: {count} files in {:.1?}", started.elapsed());
    println!("  fetched       {fetched} ({})", show_bytes(fetched_bytes));
    println!("  already here  {present}");
    if args.pin {
        println!("  pinned        {}", fetched + present);
    }
    println!("  failed        {}", failures.len());
    if let (Some(before), Some(after)) = (before, after) {
        println!(
            "  node downloads meanwhile: {} from peers, {} from upstream (node-wide counters)",
            after.0.saturating_sub(before.0),
            after.1.saturating_sub(before.1)
        );
    }
    finish(&failures)
}

fn finish(failures: &[String]) -> Result<()> {
    for failure in failures {
        println!("  failed: {failure}");
    }
    if failures.is_empty() {
        Ok(())
    } else {
        bail!(
            "{} item(s) could not be prefetched (listed above); a re-run retries only those",
            failures.len()
        )
    }
}

/// The node's page of `project`, parsed (file URLs resolved to the node).
async fn page(
    http: &reqwest::Client,
    base: &str,
    project: &str,
) -> Result<peerpi_core::simple::ProjectPage> {
    let url = format!("{base}/simple/{project}/");
    let response = http
        .get(&url)
        .header("accept", "application/vnd.pypi.simple.v1+json")
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .with_context(|| {
            format!("no node answers at {base}: is `peerpi serve` running? (--listen)")
        })?;
    let status = response.status();
    let body = response.bytes().await?;
    if !status.is_success() {
        bail!(
            "the node answered {status}: {}",
            String::from_utf8_lossy(&body).trim()
        );
    }
    let page_url = url::Url::parse(&url)?;
    Ok(peerpi_core::json::parse_project_page(&body, &page_url)?)
}

/// Makes the node hold one file and its core metadata: nothing for what it
/// has, else a download through it, whose bytes are checked here too.
async fn warm(http: &reqwest::Client, file: &Planned, bar: &ProgressBar) -> Outcome {
    if let Some(sha256) = &file.metadata_sha256 {
        let url = format!("{}.metadata", file.url);
        if let Outcome::Failed(reason) = warm_one(http, &url, sha256, None).await {
            return Outcome::Failed(format!("core metadata: {reason}"));
        }
    }
    warm_one(
        http,
        &file.url,
        &file.sha256,
        Some((bar, file.size.unwrap_or(0))),
    )
    .await
}

/// One URL of the node: HEAD says whether it holds it; else GET it all.
/// `progress`: the bar to advance, and by how much when already held.
async fn warm_one(
    http: &reqwest::Client,
    url: &str,
    sha256: &str,
    progress: Option<(&ProgressBar, u64)>,
) -> Outcome {
    match http.head(url).send().await {
        Ok(r)
            if r.status().is_success()
                && r.headers()
                    .get("x-peerpi-source")
                    .is_some_and(|v| v == "local") =>
        {
            if let Some((bar, size)) = progress {
                bar.inc(size);
            }
            return Outcome::Present;
        }
        _ => {}
    }
    let response = match http.get(url).send().await {
        Ok(r) => r,
        Err(e) => return Outcome::Failed(format!("the node did not answer: {e}")),
    };
    let status = response.status();
    if !status.is_success() {
        let text = response.text().await.unwrap_or_default();
        return Outcome::Failed(format!("the node answered {status}: {}", text.trim()));
    }
    let mut hasher = Sha256::new();
    let mut len = 0u64;
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(chunk) => {
                hasher.update(&chunk);
                len += chunk.len() as u64;
                if let Some((bar, _)) = progress {
                    bar.inc(chunk.len() as u64);
                }
            }
            Err(e) => return Outcome::Failed(format!("the download broke off: {e}")),
        }
    }
    let actual = hex::encode(hasher.finalize());
    if !actual.eq_ignore_ascii_case(sha256) {
        return Outcome::Failed(format!("received sha256 {actual}, expected {sha256}"));
    }
    Outcome::Fetched(len)
}

/// Pins a warmed file and its core metadata on the node.
async fn pin_file(http: &reqwest::Client, base: &str, file: &Planned) -> Result<(), String> {
    for sha256 in std::iter::once(&file.sha256).chain(&file.metadata_sha256) {
        let response = http
            .put(format!("{base}/pins/{sha256}"))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            return Err(format!("the node answered {status}: {}", text.trim()));
        }
    }
    Ok(())
}

/// The node's downloads so far, from peers and from upstream.
async fn node_downloads(http: &reqwest::Client, base: &str) -> Option<(u64, u64)> {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let value = |source: &str| -> u64 {
        text.lines()
            .filter(|l| {
                l.starts_with("peerpi_blob_hits_total")
                    && l.contains(&format!("source=\"{source}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    };
    Some((value("peer"), value("upstream")))
}

fn progress_bar(total: u64) -> ProgressBar {
    let bar = if std::io::stderr().is_terminal() {
        ProgressBar::new(total)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

fn show_bytes(n: u64) -> String {
    bytesize::ByteSize::b(n).display().iec().to_string()
}

#[derive(Debug, Clone, Default, Args)]
pub struct PrefetchArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    /// pylock.toml, uv.lock or requirements files (by name), or requirement
    /// strings such as 'requests>=2.31' (without a lock, only the named
    /// projects: dependencies are not resolved).
    #[arg(required = true, value_name = "FILE|REQUIREMENT")]
    pub inputs: Vec<String>,

    /// Downloads at once.
    #[arg(long, default_value_t = 8)]
    pub jobs: usize,

    /// List what would be fetched, fetch nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Keep the prefetched files from eviction (run on the node's machine;
    /// pins may take half the store). `curl -X DELETE
    /// http://127.0.0.1:7503/pins/<sha256>` unpins one.
    #[arg(long)]
    pub pin: bool,

    /// Pick wheels for this CPython (e.g. 3.12) and judge markers for it
    /// [default: every file of the chosen versions].
    #[arg(long, value_name = "X.Y")]
    pub python_version: Option<String>,

    /// Pick wheels for this platform tag (repeatable), e.g.
    /// manylinux_2_28_x86_64 [default: every platform].
    #[arg(long = "platform", value_name = "TAG")]
    pub platforms: Vec<String>,
}
