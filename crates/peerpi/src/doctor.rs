//! `peerpi doctor`: checks what a node needs, with the configuration
//! `peerpi serve` would run with the same flags, and explains each finding:
//! one line per check, a verdict, and the fix when it is not fine.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Result;

use crate::config::{self, EnvLookup, ServeConfig};
use crate::serve::ServeArgs;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    Warn,
    Fail,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Ok => "ok  ",
            Verdict::Warn => "warn",
            Verdict::Fail => "FAIL",
        })
    }
}

/// One finding: what was checked, the verdict, what was seen, the fix.
#[derive(Debug, Clone)]
pub struct Finding {
    pub check: &'static str,
    pub verdict: Verdict,
    pub detail: String,
    pub fix: Option<String>,
}

impl Finding {
    fn ok(check: &'static str, detail: impl Into<String>) -> Self {
        Finding {
            check,
            verdict: Verdict::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    fn bad(
        check: &'static str,
        verdict: Verdict,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Finding {
            check,
            verdict,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:<12} {}", self.verdict, self.check, self.detail)?;
        if let Some(fix) = &self.fix {
            write!(f, "\n                  fix: {fix}")?;
        }
        Ok(())
    }
}

/// Runs every check, prints the findings, and fails if any failed.
pub fn run(args: &ServeArgs) -> Result<()> {
    let findings = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(diagnose(args, &config::process_env));
    for finding in &findings {
        println!("{finding}");
    }
    let failed = findings
        .iter()
        .filter(|f| f.verdict == Verdict::Fail)
        .count();
    if failed > 0 {
        anyhow::bail!("{failed} check(s) failed; see the fixes above");
    }
    Ok(())
}

/// The findings for the node `args` describe.
pub async fn diagnose(args: &ServeArgs, env: EnvLookup<'_>) -> Vec<Finding> {
    let config = match args.resolve(env) {
        Ok(config) => config,
        Err(e) => {
            return vec![Finding::bad(
                "config",
                Verdict::Fail,
                format!("{e:#}"),
                "fix the flag, variable or peerpi.toml key named above",
            )]
        }
    };
    let mut findings = vec![Finding::ok(
        "config",
        format!(
            "upstream {} (from {}), data dir {}, listen {}",
            peerpi_upstream::redacted(config.upstream().as_str()),
            config.upstream_source,
            config.node.data_dir.display(),
            config.listen
        ),
    )];
    let http = match reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
    {
        Ok(http) => http,
        Err(e) => {
            findings.push(Finding::bad(
                "http",
                Verdict::Fail,
                e.to_string(),
                "report this",
            ));
            return findings;
        }
    };
    let (upstream, clock) = check_upstream(&http, &config).await;
    findings.push(upstream);
    findings.extend(clock);
    findings.push(check_data_dir(
        &config.node.data_dir,
        config.node.cache_size,
    ));
    let (port, running) = check_port(&http, config.listen).await;
    findings.push(port);
    findings.push(check_peers(&http, &config, running).await);
    findings.extend(check_swarm_key(&config));
    findings.push(check_clients(env, &config.listen));
    findings
}

/// The upstream answers the Simple API (asked for pip's own page, which
/// every mirror of the public index has); its `Date` tells the clock skew.
async fn check_upstream(
    http: &reqwest::Client,
    config: &ServeConfig,
) -> (Finding, Option<Finding>) {
    let shown = peerpi_upstream::redacted(config.upstream().as_str());
    let Ok(url) = config.upstream().join("pip/") else {
        return (
            Finding::bad(
                "upstream",
                Verdict::Fail,
                format!("{shown} cannot be joined"),
                "pass the Simple API base, ending in /simple/",
            ),
            None,
        );
    };
    let response = http
        .get(url)
        .header(
            "accept",
            "application/vnd.pypi.simple.v1+json, text/html;q=0.1",
        )
        .send()
        .await;
    let response = match response {
        Ok(r) => r,
        Err(e) => {
            return (
                Finding::bad(
                    "upstream",
                    Verdict::Fail,
                    format!("{shown} does not answer: {e}"),
                    "check the URL, DNS, proxy and firewall (HTTPS_PROXY is honoured), or pass another --upstream",
                ),
                None,
            )
        }
    };
    let clock = response
        .headers()
        .get("date")
        .and_then(|d| d.to_str().ok())
        .and_then(|d| jiff::fmt::rfc2822::parse(d).ok())
        .map(|d| check_clock(d.timestamp()));
    let status = response.status();
    let kind = response
        .headers()
        .get("content-type")
        .and_then(|c| c.to_str().ok())
        .unwrap_or("")
        .to_string();
    let finding =
        if status.is_success() && (kind.contains("vnd.pypi.simple") || kind.contains("html")) {
            Finding::ok(
                "upstream",
                format!("{shown} answers the Simple API ({kind})"),
            )
        } else if status == reqwest::StatusCode::NOT_FOUND {
            Finding::ok(
                "upstream",
                format!("{shown} answers (it has no project \"pip\")"),
            )
        } else if status.is_success() {
            Finding::bad(
                "upstream",
                Verdict::Warn,
                format!("{shown} answered with {kind:?}, not a Simple API page"),
                "pass the Simple API base (it usually ends in /simple/)",
            )
        } else {
            Finding::bad(
                "upstream",
                Verdict::Fail,
                format!("{shown} answered {status}"),
                if status == reqwest::StatusCode::UNAUTHORIZED
                    || status == reqwest::StatusCode::FORBIDDEN
                {
                    "give credentials in the URL (https://user:token@host/simple/) or in ~/.netrc"
                } else {
                    "check the URL: it must be the Simple API base, ending in /simple/"
                },
            )
        };
    (finding, clock)
}

/// TUF expiry and signatures' validity depend on the clock.
fn check_clock(remote: jiff::Timestamp) -> Finding {
    let skew = jiff::Timestamp::now().as_second() - remote.as_second();
    if skew.abs() <= 300 {
        Finding::ok(
            "clock",
            format!("within {}s of the upstream's clock", skew.abs()),
        )
    } else {
        Finding::bad(
            "clock",
            Verdict::Warn,
            format!("{skew}s off the upstream's clock"),
            "run NTP (timedatectl set-ntp true): TUF metadata expiry is judged by this clock",
        )
    }
}

/// The data directory can be written and has room for the cache.
fn check_data_dir(dir: &Path, cache_size: u64) -> Finding {
    if let Err(e) = std::fs::create_dir_all(dir) {
        return Finding::bad(
            "data dir",
            Verdict::Fail,
            format!("{} cannot be created: {e}", dir.display()),
            "pass --data-dir DIR on a writable disk",
        );
    }
    let probe = dir.join(".doctor-probe");
    let written = std::fs::write(&probe, b"probe").and_then(|()| std::fs::remove_file(&probe));
    if let Err(e) = written {
        return Finding::bad(
            "data dir",
            Verdict::Fail,
            format!("{} is not writable: {e}", dir.display()),
            "fix its owner or permissions, or pass --data-dir DIR",
        );
    }
    let free = fs2::available_space(dir).unwrap_or(0);
    let show = |n: u64| bytesize::ByteSize::b(n).display().iec().to_string();
    // The cache already in the directory counts as room it may reuse.
    if free < cache_size.min(1 << 30) {
        Finding::bad(
            "data dir",
            Verdict::Warn,
            format!("{}: only {} free", dir.display(), show(free)),
            format!(
                "free space, or lower --cache-size ({}) to what the disk can hold",
                show(cache_size)
            ),
        )
    } else {
        Finding::ok(
            "data dir",
            format!(
                "{} is writable, {} free (cache cap {})",
                dir.display(),
                show(free),
                show(cache_size)
            ),
        )
    }
}

/// The HTTP address is free, or held by a peerpi node (which is then asked
/// about its peers). Returns whether a node answers there.
async fn check_port(http: &reqwest::Client, listen: SocketAddr) -> (Finding, bool) {
    if std::net::TcpListener::bind(listen).is_ok() {
        return (
            Finding::ok(
                "listen",
                format!("{listen} is free: no node runs there now"),
            ),
            false,
        );
    }
    let url = format!("{}/healthz", config::node_base_url(&listen));
    match http.get(&url).send().await {
        Ok(r) if r.status().is_success() => (
            Finding::ok("listen", format!("a peerpi node answers on {listen}")),
            true,
        ),
        Ok(r) if r.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE => {
            let reason = r.text().await.unwrap_or_default();
            (
                Finding::bad(
                    "listen",
                    Verdict::Warn,
                    format!("the node on {listen} is degraded: {}", reason.trim()),
                    "free disk space in its data dir; cached files are still served",
                ),
                true,
            )
        }
        _ => (
            Finding::bad(
                "listen",
                Verdict::Fail,
                format!("{listen} is taken by another program"),
                "stop it, or pass another address with --listen",
            ),
            false,
        ),
    }
}

/// How many peers the running node has, in which regions.
async fn check_peers(http: &reqwest::Client, config: &ServeConfig, running: bool) -> Finding {
    if config.p2p.is_none() {
        return Finding::ok("peers", "peer-to-peer is off (--no-p2p)");
    }
    if !running {
        return Finding::ok(
            "peers",
            "no node runs here to ask (start one: peerpi serve)",
        );
    }
    let url = format!("{}/peers", config::node_base_url(&config.listen));
    let body: Option<serde_json::Value> = match http.get(&url).send().await {
        Ok(r) => r
            .bytes()
            .await
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok()),
        Err(_) => None,
    };
    let Some(body) = body else {
        return Finding::bad(
            "peers",
            Verdict::Warn,
            format!("{url} did not answer"),
            "check the node's log",
        );
    };
    let peers = body["peers"].as_array().cloned().unwrap_or_default();
    let connected: Vec<_> = peers
        .iter()
        .filter(|p| p["connected"].as_bool() == Some(true))
        .collect();
    let blocked = peers
        .iter()
        .filter(|p| p["blocked"].as_bool() == Some(true))
        .count();
    let mut regions: Vec<String> = connected
        .iter()
        .map(|p| p["region"].as_str().unwrap_or("(none)").to_string())
        .collect();
    regions.sort();
    regions.dedup();
    if connected.is_empty() {
        Finding::bad(
            "peers",
            Verdict::Warn,
            format!(
                "no peer connected ({} known, {blocked} blocked)",
                peers.len()
            ),
            "pass --bootstrap /dns4/<other node>/tcp/7504 (mDNS finds nodes on this LAN only); \
             every node needs the same --swarm-key (compare the fingerprints below); \
             open TCP 7504 between nodes",
        )
    } else {
        Finding::ok(
            "peers",
            format!(
                "{} connected in regions {} ({blocked} blocked)",
                connected.len(),
                regions.join(", ")
            ),
        )
    }
}

/// The swarm key's fingerprint, to compare across nodes.
fn check_swarm_key(config: &ServeConfig) -> Option<Finding> {
    let path = config.p2p.as_ref()?.swarm_key.as_ref()?;
    Some(match peerpi_swarm::read_swarm_key(path) {
        Ok(key) => Finding::ok(
            "swarm key",
            format!(
                "{}: fingerprint {} (every node of the swarm must show the same)",
                path.display(),
                key.fingerprint()
            ),
        ),
        Err(e) => Finding::bad(
            "swarm key",
            Verdict::Fail,
            e.to_string(),
            "make one with `peerpi keygen --swarm-key FILE` and give the same file to every node",
        ),
    })
}

/// Whether this user's pip and uv are pointed at the node.
fn check_clients(env: EnvLookup<'_>, listen: &SocketAddr) -> Finding {
    let settings = config::index_settings(env);
    let at_node: Vec<&str> = settings
        .iter()
        .filter(|(text, _)| {
            url::Url::parse(text.trim()).is_ok_and(|u| config::points_at(&u, listen))
        })
        .map(|(_, origin)| origin.as_str())
        .collect();
    let elsewhere: Vec<String> = settings
        .iter()
        .filter(|(_, origin)| !at_node.contains(&origin.as_str()))
        .map(|(text, origin)| format!("{origin} = {}", peerpi_upstream::redacted(text.trim())))
        .collect();
    match (at_node.is_empty(), elsewhere.is_empty()) {
        (false, true) => Finding::ok("pip/uv", format!("use this node ({})", at_node.join(", "))),
        (true, true) => Finding::bad(
            "pip/uv",
            Verdict::Warn,
            "not pointed at this node (no index configured)",
            "eval \"$(peerpi env)\" in jobs, or `peerpi env --format pip-conf` into pip.conf",
        ),
        (_, false) => Finding::bad(
            "pip/uv",
            Verdict::Warn,
            format!("set elsewhere: {}", elsewhere.join("; ")),
            "point them at this node: eval \"$(peerpi env)\"",
        ),
    }
}
