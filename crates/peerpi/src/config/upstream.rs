//! Where the upstream comes from when none is given (uv's, then pip's
//! settings, then asking pip), and what it says about the node's exposure:
//! an upstream that may hold private packages needs a private swarm.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use url::Url;

use super::*;

pub(crate) fn parse_upstream(text: &str, origin: &str) -> Result<Url> {
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
pub(crate) fn upstream_privacy(url: &Url, env: EnvLookup<'_>) -> Option<&'static str> {
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
pub(crate) fn looks_like_token(segment: &str) -> bool {
    segment.len() >= 20
        && segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && segment.bytes().any(|b| b.is_ascii_digit())
        && segment.bytes().any(|b| b.is_ascii_alphabetic())
}

/// Whether every address of `url`'s host is private (not loopback, not
/// public). A name that does not resolve now is not judged.
pub(crate) fn on_private_network(url: &Url) -> bool {
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
pub(crate) fn pip_config_files(env: EnvLookup<'_>) -> Vec<PathBuf> {
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

pub(crate) fn pip_config_index(path: &Path) -> Option<String> {
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
pub(crate) const PIP_INDEX_QUERY: &str = r#"
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
pub(crate) const PIP_QUERY_TIMEOUT: Duration = Duration::from_secs(20);

/// The index pip would use, asked of `PEERPI_PYTHON` (default `python3`).
pub(crate) fn pip_default_index(env: EnvLookup<'_>, listen: &SocketAddr) -> Result<(Url, String)> {
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
pub(crate) fn run_bounded(command: &mut std::process::Command, limit: Duration) -> Result<String> {
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
