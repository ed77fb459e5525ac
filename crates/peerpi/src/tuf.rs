//! `peerpi tuf ...`: the signer (`init`, `add`, `sign`, `rotate`) and the
//! TUF client in the command-line protocol of the TUF conformance suite
//! (`client`).

use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use peerpi_trust::keys::SigningKey;
use peerpi_trust::signer::{Changes, InitOptions, KeyRole, Keys, Lifetimes, NewTarget, Repository};
use peerpi_trust::{Client, HttpFetcher, Limits, MetadataDir};
use sha2::{Digest, Sha256};
use url::Url;

#[derive(Debug, Args)]
pub struct TufArgs {
    #[command(subcommand)]
    pub command: TufCommand,
}

#[derive(Debug, Subcommand)]
pub enum TufCommand {
    /// Create a repository (root, targets, hashed bins, snapshot, timestamp) and its keys.
    Init(InitArgs),
    /// Sign targets into their bins (touches only those bins, snapshot and timestamp).
    Add(AddArgs),
    /// Re-sign every role with less than half of its lifetime left.
    Sign(SignArgs),
    /// Replace the keys of a role and publish everything they sign.
    Rotate(RotateArgs),
    /// Move every target into a new number of bins (a repository that
    /// outgrew its bins); needs the offline targets key and the online key.
    Rebin(RebinArgs),
    /// A TUF client (the TUF conformance suite's command-line protocol).
    Client(ClientArgs),
    /// A node's TUF state: versions and expiries it trusts, bins cached,
    /// whether the signer answers.
    Status(StatusArgs),
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Where the node is (its TUF state is in DATA_DIR/tuf-client/).
    #[command(flatten)]
    pub common: crate::config::args::CommonArgs,
    /// The signer's repository, to check that it answers and how far
    /// ahead it is [default: the config file's `tuf-url`].
    #[arg(long, env = "PEERPI_TUF_URL", value_name = "URL")]
    pub tuf_url: Option<Url>,
}

#[derive(Debug, Args)]
pub struct RepoArg {
    /// The repository directory (metadata/ and targets/ inside).
    #[arg(
        long,
        env = "PEERPI_TUF_REPO",
        value_name = "DIR",
        default_value = "tuf"
    )]
    pub repo: PathBuf,
}

#[derive(Debug, Args)]
pub struct KeyArgs {
    /// Root key file(s) (PKCS#8 ed25519); give a threshold of them.
    #[arg(long = "root-key", value_name = "FILE")]
    pub root: Vec<PathBuf>,
    /// The targets key file.
    #[arg(long = "targets-key", value_name = "FILE")]
    pub targets: Option<PathBuf>,
    /// The online key file (timestamp, snapshot, bins).
    #[arg(
        long = "online-key",
        env = "PEERPI_TUF_ONLINE_KEY",
        value_name = "FILE"
    )]
    pub online: Option<PathBuf>,
}

impl KeyArgs {
    fn load(&self) -> anyhow::Result<Keys> {
        Ok(Keys {
            root: self
                .root
                .iter()
                .map(|p| SigningKey::load(p))
                .collect::<Result<_, _>>()?,
            targets: self.targets.as_deref().map(SigningKey::load).transpose()?,
            online: self.online.as_deref().map(SigningKey::load).transpose()?,
        })
    }
}

#[derive(Debug, Args)]
pub struct InitArgs {
    #[command(flatten)]
    pub repo: RepoArg,
    /// Where the new keys are written (root-N.pk8, targets.pk8, online.pk8).
    /// Move the root and targets keys offline afterwards.
    #[arg(long, value_name = "DIR", default_value = "tuf-keys")]
    pub keys: PathBuf,
    /// Number of hashed bins (a power of two, at least 2); by default sized
    /// for --expected-targets (the metadata a cold node downloads is
    /// least there).
    #[arg(long)]
    pub bins: Option<u32>,
    /// Pages (and files) the repository is expected to sign: sizes the
    /// bins (10,000: 256 bins; 100,000: 1,024). A cluster signs the
    /// projects its jobs use, thousands rather than the index's millions.
    #[arg(long, value_name = "N", default_value_t = peerpi_trust::signer::DEFAULT_EXPECTED_TARGETS)]
    pub expected_targets: u64,
    /// Number of root keys.
    #[arg(long, default_value_t = 1)]
    pub root_keys: usize,
    /// Root keys needed to sign a new root.
    #[arg(long, default_value_t = 1)]
    pub root_threshold: u64,
}

#[derive(Debug, Args)]
pub struct AddArgs {
    #[command(flatten)]
    pub repo: RepoArg,
    #[command(flatten)]
    pub keys: KeyArgs,
    /// Targets as JSON lines `{"path": ..., "length": ..., "sha256": ...}`
    /// ("-" reads standard input). The bytes are published elsewhere.
    #[arg(long, value_name = "FILE")]
    pub from: Option<PathBuf>,
    /// Targets as TARGET_PATH=LOCAL_FILE: hashed, and copied into the
    /// repository's targets/ under their consistent name.
    #[arg(value_name = "TARGET_PATH=FILE")]
    pub files: Vec<String>,
}

#[derive(Debug, Args)]
pub struct SignArgs {
    #[command(flatten)]
    pub repo: RepoArg,
    #[command(flatten)]
    pub keys: KeyArgs,
}

#[derive(Debug, Args)]
pub struct RebinArgs {
    #[command(flatten)]
    pub repo: RepoArg,
    #[command(flatten)]
    pub keys: KeyArgs,
    /// The new number of bins (a power of two, at least 2).
    #[arg(long)]
    pub bins: u32,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RotateRole {
    Root,
    Targets,
    /// Timestamp, snapshot and bins.
    Online,
}

#[derive(Debug, Args)]
pub struct RotateArgs {
    /// Which keys to replace.
    #[arg(value_enum)]
    pub role: RotateRole,
    #[command(flatten)]
    pub repo: RepoArg,
    #[command(flatten)]
    pub keys: KeyArgs,
    /// Where to write the new key (must not exist).
    #[arg(long, value_name = "FILE")]
    pub new_key: PathBuf,
}

#[derive(Debug, Args)]
pub struct ClientArgs {
    /// The trusted metadata directory.
    #[arg(long, value_name = "DIR")]
    pub metadata_dir: PathBuf,
    /// The repository's metadata URL.
    #[arg(long, value_name = "URL")]
    pub metadata_url: Option<Url>,
    /// Targets to download, in order.
    #[arg(long, value_name = "PATH")]
    pub target_name: Vec<String>,
    /// The repository's targets URL.
    #[arg(long, value_name = "URL")]
    pub target_base_url: Option<Url>,
    /// Where downloaded targets are written.
    #[arg(long, value_name = "DIR")]
    pub target_dir: Option<PathBuf>,
    /// Bound on each download.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    #[command(subcommand)]
    pub command: ClientCommand,
}

#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Install TRUSTED_ROOT as the trusted root (no network).
    Init { trusted_root: PathBuf },
    /// Update root, timestamp, snapshot and top-level targets.
    Refresh,
    /// Refresh, then download each --target-name into --target-dir.
    Download,
}

pub fn run(args: TufArgs) -> anyhow::Result<()> {
    match args.command {
        TufCommand::Init(args) => init(&args),
        TufCommand::Add(args) => add(&args),
        TufCommand::Sign(args) => sign(&args),
        TufCommand::Rotate(args) => rotate(&args),
        TufCommand::Rebin(args) => rebin(&args),
        TufCommand::Client(args) => client(args),
        TufCommand::Status(args) => status(&args),
    }
}

fn status(args: &StatusArgs) -> anyhow::Result<()> {
    let env = &crate::config::process_env;
    let file = crate::config::load_file(&args.common, env)?;
    let place = args.common.place.clone().or(file.place);
    let data_dir = crate::config::resolve_data_dir(place.data_dir.as_deref(), env)?;
    let tuf_url = match (&args.tuf_url, &file.options.tuf_url) {
        (Some(url), _) => Some(url.clone()),
        (None, Some(text)) => Some(
            Url::parse(text)
                .map_err(|e| anyhow::anyhow!("invalid tuf-url {text:?} in the config file: {e}"))?,
        ),
        (None, None) => None,
    };
    let dir = data_dir.join("tuf-client");
    if !dir.join("root.json").exists() {
        bail!(
            "{} holds no TUF state: this node does not run with --trust tuf or tuf-or-index \
             (or has not started yet)",
            dir.display()
        );
    }
    let now = jiff::Timestamp::now();
    let mut local_timestamp = None;
    let mut bins = 0usize;
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .with_context(|| format!("{}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".json"))
        .collect();
    entries.sort();
    for name in &entries {
        let role = name.trim_end_matches(".json");
        if !["root", "timestamp", "snapshot", "targets"].contains(&role) {
            bins += 1;
            continue;
        }
        let bytes =
            std::fs::read(dir.join(name)).with_context(|| dir.join(name).display().to_string())?;
        let value: serde_json::Value = serde_json::from_slice(&bytes)
            .with_context(|| format!("{}: not JSON", dir.join(name).display()))?;
        let version = value["signed"]["version"].as_u64().unwrap_or(0);
        let expires = value["signed"]["expires"].as_str().unwrap_or("?");
        let left = expires
            .parse::<jiff::Timestamp>()
            .map(|e| {
                let seconds = e.as_second() - now.as_second();
                if seconds <= 0 {
                    "EXPIRED".to_string()
                } else {
                    format!("{}h left", seconds / 3600)
                }
            })
            .unwrap_or_default();
        if role == "timestamp" {
            local_timestamp = Some(version);
        }
        println!("{role:<10} v{version:<8} expires {expires} ({left})");
    }
    println!("bins cached: {bins}");
    if let Some(url) = &tuf_url {
        let timestamp = url.join("metadata/timestamp.json")?;
        match remote_version(&timestamp) {
            Ok(version) => println!(
                "signer {url}: answers, timestamp v{version} (this node trusts v{})",
                local_timestamp.unwrap_or(0)
            ),
            Err(e) => println!("signer {url}: does not answer ({e})"),
        }
    }
    Ok(())
}

fn init(args: &InitArgs) -> anyhow::Result<()> {
    let options = InitOptions {
        bins: args
            .bins
            .unwrap_or_else(|| peerpi_trust::signer::bins_for(args.expected_targets)),
        root_keys: args.root_keys,
        root_threshold: args.root_threshold,
        ..InitOptions::default()
    };
    let changes = Repository::init(&args.repo.repo, &args.keys, &options)?;
    report(&changes);
    println!(
        "repository in {}, keys in {}: install {} on every client; keep root-*.pk8 and targets.pk8 offline",
        args.repo.repo.display(),
        args.keys.display(),
        args.repo.repo.join("metadata/1.root.json").display()
    );
    Ok(())
}

fn add(args: &AddArgs) -> anyhow::Result<()> {
    let repo = Repository::open(&args.repo.repo)?;
    let keys = args.keys.load()?;
    if keys.online.is_none() {
        bail!("adding targets needs the online key: --online-key FILE (or PEERPI_TUF_ONLINE_KEY)");
    }
    let mut targets = Vec::new();
    if let Some(from) = &args.from {
        targets.extend(read_target_lines(from)?);
    }
    for spec in &args.files {
        let (path, file) = spec
            .split_once('=')
            .with_context(|| format!("{spec:?}: write TARGET_PATH=LOCAL_FILE"))?;
        targets.push(publish_file(&repo.targets_dir(), path, Path::new(file))?);
    }
    if targets.is_empty() {
        bail!("nothing to add: give TARGET_PATH=FILE arguments or --from FILE");
    }
    let changes = repo.add(&targets, &keys, Lifetimes::default())?;
    report(&changes);
    Ok(())
}

fn sign(args: &SignArgs) -> anyhow::Result<()> {
    let repo = Repository::open(&args.repo.repo)?;
    let (changes, waiting) = repo.sign(&args.keys.load()?, Lifetimes::default())?;
    report(&changes);
    for role in waiting {
        println!("not signed: {role}");
    }
    Ok(())
}

fn rebin(args: &RebinArgs) -> anyhow::Result<()> {
    let repo = Repository::open(&args.repo.repo)?;
    let keys = args.keys.load()?;
    if keys.targets.is_none() || keys.online.is_none() {
        bail!(
            "rebinning signs a new delegation and every new bin: give --targets-key FILE and \
             --online-key FILE"
        );
    }
    let changes = repo.rebin(args.bins, &keys, Lifetimes::default())?;
    report(&changes);
    Ok(())
}

fn rotate(args: &RotateArgs) -> anyhow::Result<()> {
    let repo = Repository::open(&args.repo.repo)?;
    let which = match args.role {
        RotateRole::Root => KeyRole::Root,
        RotateRole::Targets => KeyRole::Targets,
        RotateRole::Online => KeyRole::Online,
    };
    let new_key = SigningKey::create(&args.new_key)?;
    let changes = repo.rotate(which, &new_key, &args.keys.load()?, Lifetimes::default())?;
    report(&changes);
    println!("new key in {}", args.new_key.display());
    Ok(())
}

fn report(changes: &Changes) {
    let parts = [
        changes.root_version.map(|v| format!("root v{v}")),
        changes.targets_version.map(|v| format!("targets v{v}")),
        (changes.bins_signed > 0).then(|| format!("{} bin(s)", changes.bins_signed)),
        changes.snapshot_version.map(|v| format!("snapshot v{v}")),
        changes.timestamp_version.map(|v| format!("timestamp v{v}")),
    ];
    let signed: Vec<String> = parts.into_iter().flatten().collect();
    if signed.is_empty() {
        println!("nothing needed signing");
    } else {
        println!("signed: {}", signed.join(", "));
    }
}

/// The version of the metadata file at `url`.
fn remote_version(url: &Url) -> anyhow::Result<u64> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let body = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?
            .get(url.clone())
            .send()
            .await?
            .error_for_status()?
            .bytes()
            .await?;
        let value: serde_json::Value = serde_json::from_slice(&body)?;
        value["signed"]["version"]
            .as_u64()
            .context("no version in the signer's timestamp")
    })
}

fn read_target_lines(from: &Path) -> anyhow::Result<Vec<NewTarget>> {
    #[derive(serde::Deserialize)]
    struct Line {
        path: String,
        length: u64,
        sha256: String,
    }
    let reader: Box<dyn BufRead> = if from == Path::new("-") {
        Box::new(std::io::stdin().lock())
    } else {
        let file = std::fs::File::open(from).with_context(|| format!("{}", from.display()))?;
        Box::new(std::io::BufReader::new(file))
    };
    let mut targets = Vec::new();
    for (number, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("{}", from.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let place = || format!("{} line {}", from.display(), number + 1);
        let parsed: Line = serde_json::from_str(&line).with_context(place)?;
        let sha256 = hex::decode(&parsed.sha256)
            .ok()
            .and_then(|d| <[u8; 32]>::try_from(d).ok())
            .with_context(|| format!("{}: sha256 must be 64 hex digits", place()))?;
        targets.push(NewTarget {
            path: parsed.path,
            length: parsed.length,
            sha256,
        });
    }
    Ok(targets)
}

/// Hashes `file` and copies it to `targets_dir/DIR/SHA256.NAME`, the name a
/// client asks for under consistent snapshots.
fn publish_file(targets_dir: &Path, path: &str, file: &Path) -> anyhow::Result<NewTarget> {
    let mut input = std::fs::File::open(file).with_context(|| format!("{}", file.display()))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0; 256 * 1024];
    let mut length = 0u64;
    loop {
        let n = input
            .read(&mut buffer)
            .with_context(|| format!("{}", file.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        length += n as u64;
    }
    let sha256: [u8; 32] = hasher.finalize().into();
    let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
    if name.is_empty() || path.split('/').any(|s| s == ".." || s == ".") || path.starts_with('/') {
        bail!("{path:?}: a target path is relative, with no '.' or '..' segments");
    }
    let destination = targets_dir
        .join(dir)
        .join(format!("{}.{name}", hex::encode(sha256)));
    std::fs::create_dir_all(destination.parent().unwrap_or(targets_dir))
        .with_context(|| format!("{}", destination.display()))?;
    std::fs::copy(file, &destination).with_context(|| format!("{}", destination.display()))?;
    Ok(NewTarget {
        path: path.to_string(),
        length,
        sha256,
    })
}

fn client(args: ClientArgs) -> anyhow::Result<()> {
    let store = MetadataDir::new(&args.metadata_dir);
    if let ClientCommand::Init { trusted_root } = &args.command {
        let bytes =
            std::fs::read(trusted_root).with_context(|| format!("{}", trusted_root.display()))?;
        std::fs::create_dir_all(&args.metadata_dir)
            .with_context(|| format!("{}", args.metadata_dir.display()))?;
        store.write("root", &bytes)?;
        return Ok(());
    }
    let metadata_url = args
        .metadata_url
        .as_ref()
        .context("--metadata-url is required")?;
    let fetcher = HttpFetcher::new(args.timeout)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut client = Client::new(store, fetcher, metadata_url, Limits::default())?;
        client.refresh().await?;
        if let ClientCommand::Download = args.command {
            let base = args
                .target_base_url
                .as_ref()
                .context("--target-base-url is required")?;
            let dir = args
                .target_dir
                .as_ref()
                .context("--target-dir is required")?;
            for name in &args.target_name {
                let info = client
                    .lookup(name)
                    .await?
                    .with_context(|| format!("{name}: no trusted role lists this target"))?;
                client.download(&info, base, dir).await?;
            }
        }
        Ok(())
    })
}
