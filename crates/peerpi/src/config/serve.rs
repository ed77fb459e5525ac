//! `peerpi serve`'s settings resolved: flags over variables over the file
//! over defaults, into the node's, the swarm's and the trust layer's
//! configurations.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use peerpi_node::trust::TrustMode;
use peerpi_swarm::Multiaddr;
use url::Url;

use super::args::{LogFormat, ServeArgs, TrustArg};
use super::*;

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
pub(crate) fn resolve_trust(
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
