//! Configuration layering: flags, then `PEERPI_*` variables (both through
//! clap), then the TOML file, then defaults. With no upstream configured the
//! node inherits the one pip or uv already use, never one pointing at itself.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use peerpi_node::trust::TrustMode;
use peerpi_swarm::Multiaddr;
use serde::Deserialize;
use url::Url;

use crate::cli::{CommonArgs, EnvFormat, LogFormat, ServeArgs, TrustArg};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:7503";

/// Reads an environment variable; injected so that tests need not touch the
/// process environment.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// `peerpi.toml`: every key optional, names as the long flags.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub upstream: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub cache_size: Option<String>,
    pub scrub_rate: Option<String>,
    pub page_ttl: Option<String>,
    pub page_max_age: Option<String>,
    pub upstream_timeout: Option<String>,
    pub shutdown_timeout: Option<String>,
    pub log_format: Option<LogFormat>,
    pub p2p: Option<bool>,
    pub p2p_listen: Option<Vec<String>>,
    pub bootstrap: Option<Vec<String>>,
    pub mdns: Option<bool>,
    pub region: Option<String>,
    pub swarm_key: Option<PathBuf>,
    pub peer_deadline: Option<String>,
    pub peer_suspension: Option<String>,
    pub peer_timeout: Option<String>,
    pub bulk_listen: Option<String>,
    pub upload_limit: Option<String>,
    pub signer: Option<PathBuf>,
    pub tuf_repo: Option<PathBuf>,
    pub sign_interval: Option<String>,
    pub trust: Option<TrustArg>,
    pub tuf_root: Option<PathBuf>,
    pub tuf_url: Option<String>,
}

pub const DEFAULT_P2P_LISTEN: &str = "/ip4/0.0.0.0/tcp/7504";
pub const DEFAULT_P2P_LISTEN_QUIC: &str = "/ip4/0.0.0.0/udp/7504/quic-v1";
pub const DEFAULT_BULK_LISTEN: &str = "0.0.0.0:7505";

/// Peer-to-peer settings of `peerpi serve`.
#[derive(Debug, Clone)]
pub struct P2pConfig {
    pub listen: Vec<Multiaddr>,
    pub bootstrap: Vec<Multiaddr>,
    pub mdns: bool,
    pub region: Option<String>,
    pub swarm_key: Option<PathBuf>,
    pub peer_timeout: Duration,
    /// `None`: the bulk channel is off.
    pub bulk_listen: Option<SocketAddr>,
    /// Bytes per second to peers in all; `None`: unlimited.
    pub upload_limit: Option<u64>,
}

/// The resolved configuration of `peerpi serve`.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub upstream: Url,
    /// Where the upstream URL came from, for the start-up log.
    pub upstream_source: String,
    pub data_dir: PathBuf,
    pub cache_size: u64,
    /// Background scrub, bytes per second; 0: off.
    pub scrub_rate: u64,
    pub page_ttl: Duration,
    pub page_max_age: Duration,
    pub upstream_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub log_format: LogFormat,
    /// `None` when peer-to-peer is off.
    pub p2p: Option<P2pConfig>,
    pub peer_deadline: Duration,
    pub peer_suspension: Duration,
    /// Connection cap and timeouts of the HTTP front.
    pub http_limits: peerpi_http::Limits,
    /// `Some` on a signer node.
    pub signer: Option<peerpi_node::signing::SignerConfig>,
    /// `None`: pages come from the upstream index (`--trust index`).
    pub trust: Option<peerpi_node::trust::TrustConfig>,
}

fn multiaddrs(flag: &str, values: &[String]) -> Result<Vec<Multiaddr>> {
    values
        .iter()
        .map(|v| {
            v.trim().parse::<Multiaddr>().map_err(|e| {
                anyhow!(
                    "invalid --{flag} {v:?}: {e} (example: /ip4/192.0.2.1/tcp/7504/p2p/<peer id>)"
                )
            })
        })
        .collect()
}

/// The data directory: the flag or file, else `$XDG_CACHE_HOME/peerpi`.
pub fn resolve_data_dir(
    flag: Option<&Path>,
    file: &FileConfig,
    env: EnvLookup<'_>,
) -> Result<PathBuf> {
    match flag.map(Path::to_path_buf).or(file.data_dir.clone()) {
        Some(d) => Ok(d),
        None => cache_home(env).map(|c| c.join("peerpi")).ok_or_else(|| {
            anyhow!("no cache directory is known (HOME is unset): pass --data-dir DIR")
        }),
    }
}

/// Loads the config file named by `--config`, or the first default that exists.
pub fn load_file(common: &CommonArgs, env: EnvLookup<'_>) -> Result<FileConfig> {
    let path = match &common.config {
        Some(p) => Some(p.clone()),
        None => {
            let mut candidates = vec![PathBuf::from("peerpi.toml")];
            if let Some(dir) = config_home(env) {
                candidates.push(dir.join("peerpi").join("peerpi.toml"));
            }
            candidates.into_iter().find(|p| p.is_file())
        }
    };
    let Some(path) = path else {
        return Ok(FileConfig::default());
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read the config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
}

fn config_home(env: EnvLookup<'_>) -> Option<PathBuf> {
    env("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|h| Path::new(&h).join(".config")))
}

fn cache_home(env: EnvLookup<'_>) -> Option<PathBuf> {
    env("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|h| Path::new(&h).join(".cache")))
}

pub fn resolve_listen(flag: Option<&str>, file: &FileConfig) -> Result<SocketAddr> {
    let text = flag.or(file.listen.as_deref()).unwrap_or(DEFAULT_LISTEN);
    text.to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| {
            anyhow!("invalid listen address {text:?}: expected HOST:PORT, e.g. {DEFAULT_LISTEN}")
        })
}

fn duration(name: &str, value: Option<&str>, default: Duration) -> Result<Duration> {
    match value {
        None => Ok(default),
        Some(v) => humantime::parse_duration(v)
            .map_err(|e| anyhow!("invalid --{name} {v:?}: {e} (examples: 90s, 10m, 1h)")),
    }
}

fn size(name: &str, value: &str) -> Result<u64> {
    value
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| anyhow!("invalid --{name} {value:?}: {e} (examples: 500MB, 20GiB)"))
}

fn bulk_listen(value: Option<&str>) -> Result<Option<SocketAddr>> {
    let text = value.unwrap_or(DEFAULT_BULK_LISTEN).trim();
    if text.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    text.to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .map(Some)
        .ok_or_else(|| {
            anyhow!("invalid --bulk-listen {text:?}: expected HOST:PORT (e.g. {DEFAULT_BULK_LISTEN}) or off")
        })
}

fn parse_upstream(text: &str, origin: &str) -> Result<Url> {
    let shown = peerpi_upstream::redacted(text.trim());
    let url = Url::parse(text.trim())
        .with_context(|| format!("invalid upstream URL {shown:?} from {origin}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        bail!("upstream URL {shown:?} from {origin} must be http or https");
    }
    Ok(url)
}

/// Why the upstream at `url` may hold packages that must not reach an open
/// swarm, if it may: credentials (user info in the URL, or a `machine`
/// entry for its host in the netrc file, `NETRC` else `~/.netrc`, which pip
/// and uv both read), a token in its query or path, or an address that only
/// a private network reaches. A loopback upstream is this machine's own
/// and does not count.
fn upstream_privacy(url: &Url, env: EnvLookup<'_>) -> Option<&'static str> {
    if !url.username().is_empty() || url.password().is_some() {
        return Some("a user name or password in its URL");
    }
    if url.query().is_some_and(|q| !q.is_empty()) {
        return Some("a query string in its URL, which may carry a token");
    }
    if url
        .path_segments()
        .into_iter()
        .flatten()
        .any(looks_like_token)
    {
        return Some("a path segment that looks like a token");
    }
    if on_private_network(url) {
        return Some("an address only a private network reaches");
    }
    let netrc = env("NETRC")
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|home| Path::new(&home).join(".netrc")))?;
    let text = std::fs::read_to_string(netrc).ok()?;
    let host = url.host_str()?;
    let mut words = text.split_whitespace();
    while let Some(word) = words.next() {
        if word == "machine" && words.next().is_some_and(|m| m.eq_ignore_ascii_case(host)) {
            return Some("an entry for its host in the netrc file");
        }
    }
    None
}

/// A long run of letters and digits mixed (an API token, a key), not a
/// word such as `simple` or `packages`.
fn looks_like_token(segment: &str) -> bool {
    segment.len() >= 20
        && segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && segment.bytes().any(|b| b.is_ascii_digit())
        && segment.bytes().any(|b| b.is_ascii_alphabetic())
}

/// Whether every address of `url`'s host is private (not loopback, not
/// public). A name that does not resolve now is not judged.
fn on_private_network(url: &Url) -> bool {
    let private = |ip: std::net::IpAddr| !ip.is_loopback() && peerpi_upstream::is_non_global(ip);
    let port = url.port_or_known_default().unwrap_or(443);
    let addresses: Vec<std::net::IpAddr> = match url.host() {
        Some(url::Host::Ipv4(ip)) => vec![ip.into()],
        Some(url::Host::Ipv6(ip)) => vec![ip.into()],
        Some(url::Host::Domain(name)) => std::net::ToSocketAddrs::to_socket_addrs(&(name, port))
            .map(|a| a.map(|a| a.ip()).collect())
            .unwrap_or_default(),
        None => Vec::new(),
    };
    !addresses.is_empty() && addresses.into_iter().all(private)
}

/// True when `url` would send requests to the node listening on `listen`.
pub fn points_at(url: &Url, listen: &SocketAddr) -> bool {
    let Some(port) = url.port_or_known_default() else {
        return false;
    };
    if port != listen.port() {
        return false;
    }
    let host_ip: Option<IpAddr> = match url.host() {
        Some(url::Host::Ipv4(ip)) => Some(ip.into()),
        Some(url::Host::Ipv6(ip)) => Some(ip.into()),
        Some(url::Host::Domain(d)) if d.eq_ignore_ascii_case("localhost") => {
            Some(IpAddr::from([127, 0, 0, 1]))
        }
        _ => None,
    };
    match host_ip {
        Some(ip) => {
            ip == listen.ip()
                || (ip.is_loopback() && (listen.ip().is_loopback() || listen.ip().is_unspecified()))
        }
        None => false,
    }
}

/// pip's config files, most specific first.
fn pip_config_files(env: EnvLookup<'_>) -> Vec<PathBuf> {
    let mut files = Vec::new();
    if let Some(f) = env("PIP_CONFIG_FILE") {
        files.push(PathBuf::from(f));
    }
    if let Some(dir) = config_home(env) {
        files.push(dir.join("pip").join("pip.conf"));
    }
    if let Some(home) = env("HOME") {
        files.push(Path::new(&home).join(".pip").join("pip.conf"));
    }
    files.push(PathBuf::from("/etc/xdg/pip/pip.conf"));
    files.push(PathBuf::from("/etc/pip.conf"));
    files
}

fn pip_config_index(path: &Path) -> Option<String> {
    let ini = ini::Ini::load_from_file(path).ok()?;
    ["global", "install"].iter().find_map(|section| {
        let s = ini.section(Some(*section))?;
        s.get("index-url")
            .or_else(|| s.get("index_url"))
            .map(str::to_string)
    })
}

/// The index URLs uv and pip are configured with, with where each is set:
/// uv's variables, pip's variable, then pip's config files.
pub fn index_settings(env: EnvLookup<'_>) -> Vec<(String, String)> {
    let mut settings: Vec<(String, String)> = Vec::new();
    for var in ["UV_DEFAULT_INDEX", "UV_INDEX_URL", "PIP_INDEX_URL"] {
        if let Some(v) = env(var) {
            settings.push((v, var.to_string()));
        }
    }
    for file in pip_config_files(env) {
        if let Some(v) = pip_config_index(&file) {
            settings.push((v, format!("index-url in {}", file.display())));
        }
    }
    settings
}

/// The upstream pip or uv would use, skipping any that points at this node.
pub fn inherited_upstream(
    env: EnvLookup<'_>,
    listen: &SocketAddr,
) -> Result<Option<(Url, String)>> {
    for (text, origin) in index_settings(env) {
        let url = parse_upstream(&text, &origin)?;
        if points_at(&url, listen) {
            tracing::info!(%url, %origin, "not inheriting an index URL that points at this node");
            continue;
        }
        return Ok(Some((url, origin)));
    }
    Ok(None)
}

/// Asks the local Python's pip which index it would use (its configuration
/// in every place pip reads it, else pip's built-in default), so that a node
/// started with nothing configured mirrors what `pip install` reaches
/// today. The URL is never written here: it is pip's to know.
const PIP_INDEX_QUERY: &str = r#"
import sys
try:
    from pip._internal.configuration import Configuration
    from pip._internal.models.index import PyPI
except ImportError as e:
    sys.exit("pip is not importable: %s" % e)
configuration = Configuration(isolated=False)
configuration.load()
items = dict(configuration.items())
url = None
for key in ("global.index-url", "install.index-url", ":env:.index-url"):
    url = items.get(key, url)
print(url or PyPI.simple_url)
"#;

/// How long pip may take to answer.
const PIP_QUERY_TIMEOUT: Duration = Duration::from_secs(20);

/// The index pip would use, asked of `PEERPI_PYTHON` (default `python3`).
fn pip_default_index(env: EnvLookup<'_>, listen: &SocketAddr) -> Result<(Url, String)> {
    let python = env("PEERPI_PYTHON").unwrap_or_else(|| "python3".to_string());
    let no_pip = |why: String| {
        anyhow!(
            "no upstream index is configured, and the local pip cannot be asked for its index \
             ({why}): pass --upstream URL (the Simple API base, ending in /simple/), or set \
             PEERPI_UPSTREAM, `upstream = \"URL\"` in peerpi.toml, PIP_INDEX_URL, or \
             PEERPI_PYTHON=/path/to/python with pip installed"
        )
    };
    let answer = run_bounded(
        std::process::Command::new(&python).args(["-c", PIP_INDEX_QUERY]),
        PIP_QUERY_TIMEOUT,
    )
    .map_err(|e| no_pip(format!("{python}: {e}")))?;
    let text = answer.trim();
    if text.is_empty() {
        return Err(no_pip(format!("{python} printed no index")));
    }
    let origin = format!("the index pip uses ({python} -m pip)");
    let url = parse_upstream(text, &origin)?;
    if points_at(&url, listen) {
        bail!(
            "pip's index {url} is this node itself ({listen}): pass the real index with --upstream"
        );
    }
    Ok((url, origin))
}

/// Runs `command` to its end within `limit`, returning its stdout; its
/// stderr is the error when it fails.
fn run_bounded(command: &mut std::process::Command, limit: Duration) -> Result<String> {
    use std::process::Stdio;
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run it")?;
    let started = std::time::Instant::now();
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            bail!("no answer within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // The answer is one line and the error a few, well under a pipe's buffer,
    // so reading after the exit cannot have blocked the child.
    let output = child.wait_with_output()?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr.lines().last().unwrap_or("").trim().to_string();
        bail!("it failed ({}): {last}", output.status);
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

pub fn resolve_serve(args: &ServeArgs, env: EnvLookup<'_>) -> Result<ServeConfig> {
    let file = load_file(&args.common, env)?;
    let listen = resolve_listen(args.common.listen.as_deref(), &file)?;
    let trust = resolve_trust(args, &file)?;
    let (upstream, upstream_source) = match (&args.upstream, &file.upstream) {
        _ if trust.as_ref().is_some_and(|t| t.mode == TrustMode::Tuf) => {
            if args.upstream.is_some() || file.upstream.is_some() {
                bail!(
                    "--trust tuf takes pages and files from the signer (--tuf-url), never from \
                     an upstream index: drop --upstream, or use --trust tuf-or-index"
                );
            }
            let signer = trust
                .as_ref()
                .map(|t| t.signer_base())
                .ok_or_else(|| anyhow!("no signer"))?;
            let base = signer.join("simple/").context("the signer's URL")?;
            (base, "the TUF signer (--tuf-url)".to_string())
        }
        (Some(u), _) => (
            parse_upstream(u, "--upstream / PEERPI_UPSTREAM")?,
            "--upstream / PEERPI_UPSTREAM".to_string(),
        ),
        (None, Some(u)) => (
            parse_upstream(u, "the config file")?,
            "the config file".to_string(),
        ),
        (None, None) => match inherited_upstream(env, &listen)? {
            Some(inherited) => inherited,
            None => pip_default_index(env, &listen)?,
        },
    };
    if points_at(&upstream, &listen) {
        bail!("the upstream {upstream} is this node itself ({listen}): pass the real index with --upstream");
    }
    let data_dir = resolve_data_dir(args.data_dir.as_deref(), &file, env)?;
    let p2p_on = !args.no_p2p && file.p2p.unwrap_or(true);
    let p2p = if p2p_on {
        let swarm_key = args.swarm_key.clone().or(file.swarm_key.clone());
        if swarm_key.is_none() {
            // In `tuf` mode the upstream is the cluster's signer, private by
            // design; the signer's own upstream is judged on the signer.
            let judged = match trust.as_ref().map(|t| t.mode) {
                Some(TrustMode::Tuf) => None,
                _ => upstream_privacy(&upstream, env),
            };
            if let Some(how) = judged {
                bail!(
                    "the upstream {} may hold private packages ({how}): an open swarm would \
                     serve them to any host that joins. Make a swarm key with \
                     `peerpi keygen --swarm-key FILE` and pass it to every node with \
                     --swarm-key FILE, or run with --no-p2p",
                    peerpi_upstream::redacted(upstream.as_str())
                );
            }
        }
        let listen = if !args.p2p_listen.is_empty() {
            args.p2p_listen.clone()
        } else {
            file.p2p_listen.clone().unwrap_or_else(|| {
                let mut defaults = vec![DEFAULT_P2P_LISTEN.to_string()];
                // QUIC cannot carry the private-network key.
                if swarm_key.is_none() {
                    defaults.push(DEFAULT_P2P_LISTEN_QUIC.to_string());
                }
                defaults
            })
        };
        let bootstrap = if !args.bootstrap.is_empty() {
            args.bootstrap.clone()
        } else {
            file.bootstrap.clone().unwrap_or_default()
        };
        Some(P2pConfig {
            listen: multiaddrs("p2p-listen", &listen)?,
            bootstrap: multiaddrs("bootstrap", &bootstrap)?,
            // A private swarm has its members listed (bootstrap): multicasting
            // on the LAN only when asked (`mdns = true`).
            mdns: !args.no_mdns && file.mdns.unwrap_or(swarm_key.is_none()),
            region: args.region.clone().or(file.region.clone()),
            swarm_key,
            peer_timeout: duration(
                "peer-timeout",
                args.peer_timeout
                    .as_deref()
                    .or(file.peer_timeout.as_deref()),
                Duration::from_secs(10),
            )?,
            bulk_listen: bulk_listen(args.bulk_listen.as_deref().or(file.bulk_listen.as_deref()))?,
            upload_limit: args
                .upload_limit
                .as_deref()
                .or(file.upload_limit.as_deref())
                .map(|v| size("upload-limit", v))
                .transpose()?
                .filter(|&limit| limit > 0),
        })
    } else {
        None
    };
    Ok(ServeConfig {
        listen,
        upstream,
        upstream_source,
        cache_size: match args.cache_size.as_deref().or(file.cache_size.as_deref()) {
            Some(v) => size("cache-size", v)?,
            None => 20 << 30,
        },
        scrub_rate: match args.scrub_rate.as_deref().or(file.scrub_rate.as_deref()) {
            Some(v) => size("scrub-rate", v)?,
            None => 4 << 20,
        },
        page_ttl: duration(
            "page-ttl",
            args.page_ttl.as_deref().or(file.page_ttl.as_deref()),
            Duration::from_secs(600),
        )?,
        page_max_age: duration(
            "page-max-age",
            args.page_max_age
                .as_deref()
                .or(file.page_max_age.as_deref()),
            Duration::from_secs(60),
        )?,
        upstream_timeout: duration(
            "upstream-timeout",
            args.upstream_timeout
                .as_deref()
                .or(file.upstream_timeout.as_deref()),
            Duration::from_secs(30),
        )?,
        shutdown_timeout: duration(
            "shutdown-timeout",
            args.shutdown_timeout
                .as_deref()
                .or(file.shutdown_timeout.as_deref()),
            Duration::from_secs(30),
        )?,
        log_format: args
            .log_format
            .or(file.log_format)
            .unwrap_or(LogFormat::Text),
        p2p,
        peer_deadline: duration(
            "peer-deadline",
            args.peer_deadline
                .as_deref()
                .or(file.peer_deadline.as_deref()),
            Duration::from_secs(2),
        )?,
        peer_suspension: duration(
            "peer-suspension",
            args.peer_suspension
                .as_deref()
                .or(file.peer_suspension.as_deref()),
            Duration::from_secs(600),
        )?,
        http_limits: peerpi_http::Limits::default(),
        trust,
        signer: match args.signer.clone().or(file.signer.clone()) {
            None => None,
            Some(keys) => Some(peerpi_node::signing::SignerConfig {
                online_key: keys.join("online.pk8"),
                repo: args
                    .tuf_repo
                    .clone()
                    .or(file.tuf_repo.clone())
                    .unwrap_or_else(|| data_dir.join("tuf")),
                interval: duration(
                    "sign-interval",
                    args.sign_interval
                        .as_deref()
                        .or(file.sign_interval.as_deref()),
                    Duration::from_secs(10),
                )?,
            }),
        },
        data_dir,
    })
}

/// `--trust` with its root and signer URL.
fn resolve_trust(
    args: &ServeArgs,
    file: &FileConfig,
) -> Result<Option<peerpi_node::trust::TrustConfig>> {
    let mode = match args.trust.or(file.trust).unwrap_or(TrustArg::Index) {
        TrustArg::Index => return Ok(None),
        TrustArg::Tuf => TrustMode::Tuf,
        TrustArg::TufOrIndex => TrustMode::TufOrIndex,
    };
    let root =
        args.tuf_root
            .clone()
            .or(file.tuf_root.clone())
            .ok_or_else(|| {
                anyhow!(
            "--trust {} needs --tuf-root FILE: the repository's 1.root.json, installed by the \
             operator (from `peerpi tuf init` on the signer's side)",
            if mode == TrustMode::Tuf { "tuf" } else { "tuf-or-index" }
        )
            })?;
    let url = args.tuf_url.as_deref().or(file.tuf_url.as_deref()).ok_or_else(|| {
        anyhow!("--trust needs --tuf-url URL: the signer's repository, e.g. http://signer:7503/tuf/")
    })?;
    let mut url = Url::parse(url).map_err(|e| anyhow!("invalid --tuf-url {url:?}: {e}"))?;
    if !url.path().ends_with('/') {
        url.set_path(&format!("{}/", url.path()));
    }
    Ok(Some(peerpi_node::trust::TrustConfig {
        mode,
        root,
        url,
        refresh: Duration::from_secs(10),
        wait: Duration::from_secs(30),
    }))
}

/// The shell lines that point pip and uv at a node listening on `listen`.
/// The host clients on this machine reach a node listening on `listen` at
/// (loopback for a wildcard address; IPv6 in brackets).
pub fn node_host(listen: &SocketAddr) -> String {
    match listen.ip() {
        ip if ip.is_unspecified() => "127.0.0.1".to_string(),
        IpAddr::V6(ip) => format!("[{ip}]"),
        IpAddr::V4(ip) => ip.to_string(),
    }
}

/// `http://HOST:PORT` of a node listening on `listen`, without a slash.
pub fn node_base_url(listen: &SocketAddr) -> String {
    format!("http://{}:{}", node_host(listen), listen.port())
}

/// What points pip and uv at the node listening on `listen`, in `format`.
pub fn env_text(listen: &SocketAddr, format: EnvFormat) -> String {
    let host = node_host(listen);
    let url = format!("{}/simple/", node_base_url(listen));
    // pip refuses plain-HTTP hosts other than loopback unless trusted.
    let trusted = (!listen.ip().is_loopback() && !listen.ip().is_unspecified()).then_some(host);
    let mut vars = vec![
        ("PIP_INDEX_URL", url.clone()),
        ("UV_DEFAULT_INDEX", url.clone()),
    ];
    if let Some(host) = &trusted {
        vars.push(("PIP_TRUSTED_HOST", host.clone()));
    }
    match format {
        EnvFormat::Shell => vars
            .iter()
            .map(|(k, v)| format!("export {k}={v}\n"))
            .collect(),
        EnvFormat::GithubActions => vars.iter().map(|(k, v)| format!("{k}={v}\n")).collect(),
        EnvFormat::GitlabCi => {
            let mut out = "variables:\n".to_string();
            for (k, v) in &vars {
                out.push_str(&format!("  {k}: \"{v}\"\n"));
            }
            out
        }
        EnvFormat::PipConf => {
            let mut out = format!("[global]\nindex-url = {url}\n");
            if let Some(host) = &trusted {
                out.push_str(&format!("trusted-host = {host}\n"));
            }
            out
        }
        EnvFormat::UvToml => format!("[[index]]\nurl = \"{url}\"\ndefault = true\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn listen() -> SocketAddr {
        DEFAULT_LISTEN.parse().unwrap()
    }

    #[test]
    fn flags_win_over_file_and_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("peerpi.toml");
        std::fs::write(&file, "upstream = \"https://file.invalid/simple/\"\ncache-size = \"1GiB\"\npage-ttl = \"5m\"\n").unwrap();
        let mut args = ServeArgs::default();
        args.common.config = Some(file.clone());
        args.data_dir = Some(dir.path().into());
        let env = env_of(&[]);
        let c = resolve_serve(&args, &env).unwrap();
        assert_eq!(c.upstream.as_str(), "https://file.invalid/simple/");
        assert_eq!(c.cache_size, 1 << 30);
        assert_eq!(c.page_ttl, Duration::from_secs(300));
        assert_eq!(c.listen, listen());
        args.upstream = Some("https://flag.invalid/simple/".into());
        args.cache_size = Some("2GiB".into());
        let c = resolve_serve(&args, &env).unwrap();
        assert_eq!(c.upstream.as_str(), "https://flag.invalid/simple/");
        assert_eq!(c.cache_size, 2 << 30);
    }

    /// Every `peerpi serve` setting is declared in the clap struct, the
    /// config file struct and the README's table: this keeps the three in
    /// step (a flag added to one and forgotten in another fails here).
    #[test]
    fn every_serve_flag_has_a_variable_a_file_key_and_a_readme_row() {
        use clap::CommandFactory;
        let readme = include_str!("../../../README.md");
        let cli = crate::cli::Cli::command();
        let serve = cli.find_subcommand("serve").unwrap();
        let mut checked = 0;
        for arg in serve.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if long == "help" || long == "config" {
                continue;
            }
            let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
            let env = env.unwrap_or_else(|| panic!("--{long} has no PEERPI_* variable"));
            let row = readme
                .lines()
                .find(|l| l.starts_with(&format!("| `--{long}")))
                .unwrap_or_else(|| panic!("README's table has no row for --{long}"));
            assert!(
                row.contains(&format!("`{env}`")),
                "README row of --{long} names {env}"
            );
            // The file key: the flag's name, or `mdns`/`p2p` for the `no-` switches.
            let (key, value) = match long.strip_prefix("no-") {
                Some(positive) => (positive.to_string(), "false".to_string()),
                None if arg.get_num_args().is_some_and(|n| n.max_values() > 1)
                    || matches!(long, "p2p-listen" | "bootstrap") =>
                {
                    (long.to_string(), "[\"x\"]".to_string())
                }
                None if long == "log-format" => (long.to_string(), "\"json\"".to_string()),
                None if long == "trust" => (long.to_string(), "\"tuf-or-index\"".to_string()),
                None => (long.to_string(), "\"x\"".to_string()),
            };
            assert!(
                row.contains(&format!("`{key}")),
                "README row of --{long} names the key {key}"
            );
            let toml_text = format!("{key} = {value}\n");
            toml::from_str::<FileConfig>(&toml_text)
                .unwrap_or_else(|e| panic!("peerpi.toml has no key {key} for --{long}: {e}"));
            checked += 1;
        }
        assert!(checked >= 20, "{checked} flags checked");
    }

    #[test]
    fn trust_modes_need_a_root_and_a_signer_and_tuf_mode_takes_no_upstream() {
        let dir = tempfile::tempdir().unwrap();
        let mut args = ServeArgs {
            data_dir: Some(dir.path().into()),
            trust: Some(TrustArg::Tuf),
            ..ServeArgs::default()
        };
        let e = resolve_serve(&args, &env_of(&[])).unwrap_err().to_string();
        assert!(e.contains("--tuf-root FILE"), "{e}");
        args.tuf_root = Some(dir.path().join("root.json"));
        let e = resolve_serve(&args, &env_of(&[])).unwrap_err().to_string();
        assert!(e.contains("--tuf-url URL"), "{e}");
        args.tuf_url = Some("http://signer.internal:7503/tuf".into());
        let config = resolve_serve(
            &args,
            &env_of(&[("PIP_INDEX_URL", "https://elsewhere.invalid/simple/")]),
        )
        .unwrap();
        // The signer is the only source, whatever pip's settings say.
        assert_eq!(
            config.upstream.as_str(),
            "http://signer.internal:7503/simple/"
        );
        let trust = config.trust.unwrap();
        assert_eq!(
            (trust.mode, trust.url.as_str()),
            (TrustMode::Tuf, "http://signer.internal:7503/tuf/")
        );
        args.upstream = Some("https://index.invalid/simple/".into());
        let e = resolve_serve(&args, &env_of(&[])).unwrap_err().to_string();
        assert!(e.contains("drop --upstream"), "{e}");
        args.trust = Some(TrustArg::TufOrIndex);
        let config = resolve_serve(&args, &env_of(&[])).unwrap();
        assert_eq!(config.upstream.as_str(), "https://index.invalid/simple/");
        args.trust = Some(TrustArg::Index);
        assert!(resolve_serve(&args, &env_of(&[])).unwrap().trust.is_none());
    }

    #[test]
    fn an_upstream_with_credentials_needs_a_swarm_key_for_peer_to_peer() {
        let dir = tempfile::tempdir().unwrap();
        let mut args = ServeArgs {
            data_dir: Some(dir.path().into()),
            upstream: Some("https://ci:s3cret@private.invalid/simple/".into()),
            ..ServeArgs::default()
        };
        let e = resolve_serve(&args, &env_of(&[])).unwrap_err().to_string();
        assert!(e.contains("--swarm-key") && e.contains("--no-p2p"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");

        // Credentials from netrc count too.
        let netrc = dir.path().join("netrc");
        std::fs::write(
            &netrc,
            "machine other.invalid login a password b
machine private.invalid
  login ci password s3cret
",
        )
        .unwrap();
        args.upstream = Some("https://private.invalid/simple/".into());
        let env = env_of(&[("NETRC", netrc.to_str().unwrap())]);
        let e = resolve_serve(&args, &env).unwrap_err().to_string();
        assert!(e.contains("netrc"), "{e}");
        args.upstream = Some("https://public.invalid/simple/".into());
        assert!(resolve_serve(&args, &env).is_ok(), "no entry for this host");

        // A private swarm, or none, is fine; a private swarm has mDNS off.
        args.upstream = Some("https://ci:s3cret@private.invalid/simple/".into());
        args.swarm_key = Some("swarm.key".into());
        let p2p = resolve_serve(&args, &env).unwrap().p2p.unwrap();
        assert!(!p2p.mdns, "mDNS off with a swarm key unless asked for");
        args.swarm_key = None;
        args.no_p2p = true;
        assert!(resolve_serve(&args, &env).unwrap().p2p.is_none());
    }

    #[test]
    fn an_upstream_with_a_token_or_on_a_private_network_needs_a_swarm_key() {
        let dir = tempfile::tempdir().unwrap();
        let refused = |upstream: &str| {
            let args = ServeArgs {
                data_dir: Some(dir.path().into()),
                upstream: Some(upstream.into()),
                ..ServeArgs::default()
            };
            resolve_serve(&args, &env_of(&[]))
                .err()
                .map(|e| e.to_string())
        };
        for (upstream, why) in [
            ("https://index.invalid/simple/?token=abc", "query string"),
            (
                "https://index.invalid/Ab3dE5fG7hJ9kL1mN3pQ5r/simple/",
                "token",
            ),
            ("http://10.1.2.3:8080/simple/", "private network"),
            ("http://[fd00::5]/simple/", "private network"),
        ] {
            let e = refused(upstream).unwrap_or_else(|| panic!("{upstream} accepted"));
            assert!(e.contains(why) && e.contains("--swarm-key"), "{e}");
            assert!(!e.contains("  "), "one space between words: {e}");
        }
        for fine in [
            "https://index.invalid/simple/",
            "https://index.invalid/api/packages/pypi/simple/",
            "http://127.0.0.1:3141/root/pypi/+simple/",
        ] {
            assert_eq!(refused(fine), None, "{fine}");
        }
    }

    #[test]
    fn p2p_settings_layer_and_validate() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("peerpi.toml");
        std::fs::write(&file, "upstream = \"https://u.invalid/\"\nbootstrap = [\"/ip4/127.0.0.1/tcp/1\"]\nmdns = false\nregion = \"eu\"\n").unwrap();
        let mut args = ServeArgs::default();
        args.common.config = Some(file);
        args.data_dir = Some(dir.path().into());
        let c = resolve_serve(&args, &env_of(&[])).unwrap();
        let p2p = c.p2p.unwrap();
        assert_eq!(p2p.bootstrap.len(), 1);
        assert!(!p2p.mdns);
        assert_eq!(p2p.region.as_deref(), Some("eu"));
        assert_eq!(p2p.listen[0].to_string(), DEFAULT_P2P_LISTEN);
        assert_eq!(p2p.listen[1].to_string(), DEFAULT_P2P_LISTEN_QUIC);
        args.swarm_key = Some("swarm.key".into());
        let private = resolve_serve(&args, &env_of(&[])).unwrap().p2p.unwrap();
        assert_eq!(
            private.listen.len(),
            1,
            "a private swarm listens on TCP only"
        );
        args.swarm_key = None;
        assert_eq!(p2p.bulk_listen, Some(DEFAULT_BULK_LISTEN.parse().unwrap()));
        assert_eq!(p2p.upload_limit, None);
        args.bulk_listen = Some("off".into());
        args.upload_limit = Some("8MiB".into());
        let p2p = resolve_serve(&args, &env_of(&[])).unwrap().p2p.unwrap();
        assert_eq!((p2p.bulk_listen, p2p.upload_limit), (None, Some(8 << 20)));
        args.bulk_listen = Some("127.0.0.1:99999".into());
        let e = resolve_serve(&args, &env_of(&[])).unwrap_err().to_string();
        assert!(e.contains("--bulk-listen") && e.contains("off"), "{e}");
        args.bulk_listen = None;
        args.upload_limit = Some("fast".into());
        let e = resolve_serve(&args, &env_of(&[])).unwrap_err().to_string();
        assert!(e.contains("--upload-limit"), "{e}");
        args.upload_limit = None;
        args.bootstrap = vec!["not a multiaddr".into()];
        let e = resolve_serve(&args, &env_of(&[])).unwrap_err().to_string();
        assert!(e.contains("--bootstrap") && e.contains("/p2p/"), "{e}");
        args.bootstrap.clear();
        args.no_p2p = true;
        assert!(resolve_serve(&args, &env_of(&[])).unwrap().p2p.is_none());
    }

    #[test]
    fn bad_values_say_how_to_fix_them() {
        let mut args = ServeArgs {
            upstream: Some("https://u.invalid/".into()),
            data_dir: Some("/tmp/x".into()),
            ..Default::default()
        };
        args.page_ttl = Some("soon".into());
        let e = resolve_serve(&args, &env_of(&[])).unwrap_err().to_string();
        assert!(e.contains("--page-ttl") && e.contains("10m"), "{e}");
        args.page_ttl = None;
        args.cache_size = Some("lots".into());
        let e = resolve_serve(&args, &env_of(&[])).unwrap_err().to_string();
        assert!(e.contains("--cache-size"), "{e}");
        args.cache_size = None;
        args.upstream = Some("ftp://u.invalid/".into());
        assert!(resolve_serve(&args, &env_of(&[])).is_err());
    }

    #[test]
    fn inherits_from_uv_then_pip_and_skips_itself() {
        let env = env_of(&[
            ("UV_DEFAULT_INDEX", "http://127.0.0.1:7503/simple/"),
            ("PIP_INDEX_URL", "https://pip.invalid/simple/"),
            ("HOME", "/nonexistent"),
        ]);
        let (url, origin) = inherited_upstream(&env, &listen()).unwrap().unwrap();
        assert_eq!(url.as_str(), "https://pip.invalid/simple/");
        assert_eq!(origin, "PIP_INDEX_URL");
    }

    #[test]
    fn inherits_from_pip_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("pip.conf");
        std::fs::write(
            &conf,
            "[global]\nindex-url = https://conf.invalid/simple/\n",
        )
        .unwrap();
        let conf_text = conf.to_str().unwrap().to_string();
        let env = env_of(&[
            ("PIP_CONFIG_FILE", conf_text.as_str()),
            ("HOME", "/nonexistent"),
        ]);
        let (url, origin) = inherited_upstream(&env, &listen()).unwrap().unwrap();
        assert_eq!(url.as_str(), "https://conf.invalid/simple/");
        assert!(origin.contains("pip.conf"));
    }

    /// What pip answers is the upstream; an answer naming this node is
    /// refused; a python that fails is reported with its own message.
    #[test]
    fn asks_pip_for_its_index_when_nothing_is_configured() {
        let dir = tempfile::tempdir().unwrap();
        let fake_python = |name: &str, body: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            path.to_str().unwrap().to_string()
        };
        let answers = fake_python("answers", "echo http://pip.invalid/simple");
        let (url, origin) =
            pip_default_index(&env_of(&[("PEERPI_PYTHON", &answers)]), &listen()).unwrap();
        assert_eq!(url.as_str(), "http://pip.invalid/simple");
        assert!(origin.contains(&answers), "{origin}");

        let itself = fake_python("itself", "echo http://127.0.0.1:7503/simple/");
        let e = pip_default_index(&env_of(&[("PEERPI_PYTHON", &itself)]), &listen()).unwrap_err();
        assert!(e.to_string().contains("this node itself"), "{e}");

        let no_pip = fake_python("no-pip", "echo 'No module named pip' >&2; exit 1");
        let e = pip_default_index(&env_of(&[("PEERPI_PYTHON", &no_pip)]), &listen()).unwrap_err();
        let e = e.to_string();
        assert!(
            e.contains("No module named pip") && e.contains("--upstream"),
            "{e}"
        );
    }

    #[test]
    fn no_upstream_is_an_error_that_says_how_to_set_one() {
        let args = ServeArgs {
            data_dir: Some("/tmp/x".into()),
            ..Default::default()
        };
        let e = resolve_serve(
            &args,
            &env_of(&[
                ("HOME", "/nonexistent"),
                ("PEERPI_PYTHON", "/nonexistent/python3"),
            ]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("--upstream")
                && e.contains("PIP_INDEX_URL")
                && e.contains("/nonexistent/python3"),
            "{e}"
        );
    }

    #[test]
    fn detects_urls_pointing_at_the_node() {
        let l = listen();
        assert!(points_at(
            &Url::parse("http://localhost:7503/simple/").unwrap(),
            &l
        ));
        assert!(points_at(
            &Url::parse("http://127.0.0.1:7503/").unwrap(),
            &l
        ));
        assert!(!points_at(
            &Url::parse("http://127.0.0.1:7504/").unwrap(),
            &l
        ));
        assert!(!points_at(
            &Url::parse("https://example.invalid:7503/").unwrap(),
            &l
        ));
        let any: SocketAddr = "0.0.0.0:7503".parse().unwrap();
        assert!(points_at(
            &Url::parse("http://127.0.0.1:7503/").unwrap(),
            &any
        ));
    }

    #[test]
    fn env_exports_point_at_the_node() {
        assert_eq!(
            env_text(&listen(), EnvFormat::Shell),
            "export PIP_INDEX_URL=http://127.0.0.1:7503/simple/\nexport UV_DEFAULT_INDEX=http://127.0.0.1:7503/simple/\n"
        );
        let lan: SocketAddr = "192.0.2.10:8000".parse().unwrap();
        assert!(env_text(&lan, EnvFormat::Shell).contains("PIP_TRUSTED_HOST=192.0.2.10"));
    }

    /// Every format parses as what it claims to be and names the node.
    #[test]
    fn env_formats_parse_and_point_at_the_node() {
        let lan: SocketAddr = "192.0.2.10:8000".parse().unwrap();
        let url = "http://192.0.2.10:8000/simple/";

        let pip = ini::Ini::load_from_str(&env_text(&lan, EnvFormat::PipConf)).unwrap();
        let global = pip.section(Some("global")).unwrap();
        assert_eq!(global.get("index-url"), Some(url));
        assert_eq!(global.get("trusted-host"), Some("192.0.2.10"));

        let uv: toml::Value = toml::from_str(&env_text(&lan, EnvFormat::UvToml)).unwrap();
        assert_eq!(uv["index"][0]["url"].as_str(), Some(url));
        assert_eq!(uv["index"][0]["default"].as_bool(), Some(true));

        let github = env_text(&lan, EnvFormat::GithubActions);
        assert!(
            github.lines().all(|l| l.split_once('=').is_some()),
            "{github}"
        );
        assert!(github.contains(&format!("UV_DEFAULT_INDEX={url}\n")));

        let gitlab = env_text(&lan, EnvFormat::GitlabCi);
        let docs = yaml_rust2::YamlLoader::load_from_str(&gitlab).unwrap();
        assert_eq!(docs[0]["variables"]["PIP_INDEX_URL"].as_str(), Some(url));
        assert_eq!(
            docs[0]["variables"]["PIP_TRUSTED_HOST"].as_str(),
            Some("192.0.2.10")
        );
    }
}
