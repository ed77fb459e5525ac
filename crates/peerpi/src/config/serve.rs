//! `peerpi serve`'s settings resolved: flags and variables over the file
//! (`ServeOptions::or`, the one merge), over the defaults of the library
//! configs the settings fill (`NodeConfig::new`, `SwarmConfig::new`,
//! `SignerConfig::new`) and the few this binary owns (below).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use clap::ValueEnum;
use peerpi_node::signing::SignerConfig;
use peerpi_node::trust::TrustMode;
use peerpi_node::NodeConfig;
use peerpi_swarm::SwarmConfig;
use peerpi_upstream::UpstreamConfig;
use url::Url;

use super::args::{CommonArgs, LogFormat, ServeOptions, TrustArg};
use super::values::{show_size, show_span, P2pAddr};
use super::*;

/// How long in-flight responses may take to finish on shutdown.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// Peer-to-peer settings of `peerpi serve`: the swarm's configuration (its
/// key still a file name, read when the swarm starts).
#[derive(Debug, Clone)]
pub struct P2pConfig {
    pub swarm: SwarmConfig,
    pub swarm_key: Option<PathBuf>,
}

/// The resolved configuration of `peerpi serve`.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    /// Where the upstream URL came from, for the start-up log.
    pub upstream_source: String,
    pub shutdown_timeout: Duration,
    pub log_format: LogFormat,
    /// Connection cap and timeouts of the HTTP front.
    pub http_limits: peerpi_http::Limits,
    pub node: NodeConfig,
    /// `None` when peer-to-peer is off.
    pub p2p: Option<P2pConfig>,
}

impl ServeConfig {
    pub fn upstream(&self) -> &Url {
        &self.node.upstream.base
    }
}

/// Sets `slot` to `value` when the setting was given.
fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(value) = value {
        *slot = value;
    }
}

fn addrs(values: Vec<P2pAddr>) -> Vec<peerpi_swarm::Multiaddr> {
    values.into_iter().map(|a| a.0).collect()
}

/// `peerpi serve`'s configuration from its command line (`common`,
/// `given`), the file and the defaults.
pub fn resolve_serve(
    common: &CommonArgs,
    given: &ServeOptions,
    env: EnvLookup<'_>,
) -> Result<ServeConfig> {
    let file = load_file(common, env)?;
    let place = common.place.clone().or(file.place);
    let options = given.clone().or(file.options);
    let listen = resolve_listen(place.listen.as_deref())?;
    let trust = resolve_trust(&options)?;
    let (upstream, upstream_source) = match &options.upstream {
        _ if trust.as_ref().is_some_and(|t| t.mode == TrustMode::Tuf) => {
            if options.upstream.is_some() {
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
        Some(u) => {
            let origin = if given.upstream.is_some() {
                "--upstream / PEERPI_UPSTREAM"
            } else {
                "the config file"
            };
            (parse_upstream(u, origin)?, origin.to_string())
        }
        None => match inherited_upstream(env, &listen)? {
            Some(inherited) => inherited,
            None => pip_default_index(env, &listen)?,
        },
    };
    if points_at(&upstream, &listen) {
        bail!("the upstream {upstream} is this node itself ({listen}): pass the real index with --upstream");
    }
    let data_dir = resolve_data_dir(place.data_dir.as_deref(), env)?;

    let mut node = NodeConfig::new(data_dir.clone(), UpstreamConfig::new(upstream.clone()));
    set(&mut node.cache_size, options.cache_size.map(|s| s.0));
    set(&mut node.scrub.rate, options.scrub_rate.map(|s| s.0));
    set(
        &mut node.replication.min_size,
        options.replicate_min_size.map(|s| s.0),
    );
    set(
        &mut node.replication.check_after,
        options.replicate_after.map(|s| s.0),
    );
    set(&mut node.page_ttl, options.page_ttl.map(|s| s.0));
    set(&mut node.page_max_age, options.page_max_age.map(|s| s.0));
    set(&mut node.peer_deadline, options.peer_deadline.map(|s| s.0));
    set(
        &mut node.peer_suspension,
        options.peer_suspension.map(|s| s.0),
    );
    set(
        &mut node.upstream.page_timeout,
        options.upstream_timeout.map(|s| s.0),
    );
    node.signer = options.signer.as_ref().map(|keys| {
        let repo = options
            .tuf_repo
            .clone()
            .unwrap_or_else(|| data_dir.join("tuf"));
        let mut signer = SignerConfig::new(repo, keys.join("online.pk8"));
        set(&mut signer.interval, options.sign_interval.map(|s| s.0));
        signer
    });
    if let Some(trust) = &trust {
        node.upstream.signer = Some(trust.signer_base());
    }
    node.trust = trust;

    let p2p = if options.p2p.unwrap_or(true) {
        Some(resolve_p2p(&options, &node, env)?)
    } else {
        None
    };
    Ok(ServeConfig {
        listen,
        upstream_source,
        shutdown_timeout: options
            .shutdown_timeout
            .map_or(DEFAULT_SHUTDOWN_TIMEOUT, |s| s.0),
        log_format: options.log_format.unwrap_or_default(),
        http_limits: peerpi_http::Limits::default(),
        node,
        p2p,
    })
}

fn resolve_p2p(options: &ServeOptions, node: &NodeConfig, env: EnvLookup<'_>) -> Result<P2pConfig> {
    let swarm_key = options.swarm_key.clone();
    if swarm_key.is_none() {
        // In `tuf` mode the upstream is the cluster's signer, private by
        // design; the signer's own upstream is judged on the signer.
        let judged = match node.trust.as_ref().map(|t| t.mode) {
            Some(TrustMode::Tuf) => None,
            _ => upstream_privacy(&node.upstream.base, env),
        };
        if let Some(how) = judged {
            bail!(
                "the upstream {} may hold private packages ({how}): an open swarm would \
                 serve them to any host that joins. Make a swarm key with \
                 `peerpi keygen --swarm-key FILE` and pass it to every node with \
                 --swarm-key FILE, or run with --no-p2p",
                peerpi_upstream::redacted(node.upstream.base.as_str())
            );
        }
    }
    let private = swarm_key.is_some();
    let mut swarm = SwarmConfig::new(node.data_dir.clone());
    swarm.listen = options
        .p2p_listen
        .clone()
        .map_or_else(|| SwarmConfig::default_listen(private), addrs);
    set(&mut swarm.bootstrap, options.bootstrap.clone().map(addrs));
    // A private swarm has its members listed (bootstrap): multicasting on
    // the LAN only when asked (`mdns = true`).
    swarm.mdns = options.mdns.unwrap_or(!private);
    swarm.region = options.region.clone();
    set(&mut swarm.stream_timeout, options.peer_timeout.map(|s| s.0));
    set(&mut swarm.bulk_listen, options.bulk_listen.map(|b| b.0));
    if let Some(limit) = options.upload_limit {
        swarm.upload_limit = (limit.0 > 0).then_some(limit.0);
    }
    Ok(P2pConfig { swarm, swarm_key })
}

/// `--trust` with its root and signer URL.
pub(crate) fn resolve_trust(
    options: &ServeOptions,
) -> Result<Option<peerpi_node::trust::TrustConfig>> {
    let mode = match options.trust.unwrap_or_default() {
        TrustArg::Index => return Ok(None),
        TrustArg::Tuf => TrustMode::Tuf,
        TrustArg::TufOrIndex => TrustMode::TufOrIndex,
        TrustArg::IndexSigned => TrustMode::IndexSigned,
    };
    let root = options.tuf_root.clone().ok_or_else(|| {
        anyhow!(
            "--trust {} needs --tuf-root FILE: the repository's 1.root.json, installed by the \
             operator (from `peerpi tuf init` on the signer's side)",
            match mode {
                TrustMode::Tuf => "tuf",
                TrustMode::TufOrIndex => "tuf-or-index",
                TrustMode::IndexSigned => "index-signed",
            }
        )
    })?;
    let url = options.tuf_url.as_deref().ok_or_else(|| {
        anyhow!(
            "--trust needs --tuf-url URL: the signer's repository, e.g. http://signer:7503/tuf/"
        )
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

/// The default of each setting that has one value (by clap id), as
/// `--help` and the README show it, taken from where it is defined.
pub fn defaults() -> Vec<(&'static str, Vec<String>)> {
    // Any URL: only the defaults of the configs are read.
    #[allow(clippy::expect_used)] // an invariant: this literal URL parses
    let placeholder = Url::parse("http://upstream.invalid/").expect("a valid literal URL");
    let node = NodeConfig::new(PathBuf::new(), UpstreamConfig::new(placeholder));
    let swarm = SwarmConfig::new(PathBuf::new());
    let name = |value: Option<clap::builder::PossibleValue>| {
        value.map(|v| v.get_name().to_string()).unwrap_or_default()
    };
    vec![
        ("listen", vec![DEFAULT_LISTEN.to_string()]),
        ("cache_size", vec![show_size(node.cache_size)]),
        ("scrub_rate", vec![show_size(node.scrub.rate)]),
        ("page_ttl", vec![show_span(node.page_ttl)]),
        ("page_max_age", vec![show_span(node.page_max_age)]),
        (
            "upstream_timeout",
            vec![show_span(node.upstream.page_timeout)],
        ),
        (
            "shutdown_timeout",
            vec![show_span(DEFAULT_SHUTDOWN_TIMEOUT)],
        ),
        (
            "log_format",
            vec![name(LogFormat::default().to_possible_value())],
        ),
        (
            "p2p_listen",
            SwarmConfig::default_listen(false)
                .iter()
                .map(ToString::to_string)
                .collect(),
        ),
        ("peer_deadline", vec![show_span(node.peer_deadline)]),
        ("peer_suspension", vec![show_span(node.peer_suspension)]),
        (
            "replicate_min_size",
            vec![show_size(node.replication.min_size)],
        ),
        (
            "replicate_after",
            vec![show_span(node.replication.check_after)],
        ),
        ("peer_timeout", vec![show_span(swarm.stream_timeout)]),
        (
            "bulk_listen",
            vec![swarm.bulk_listen.map_or("off".into(), |a| a.to_string())],
        ),
        (
            "sign_interval",
            vec![show_span(SignerConfig::DEFAULT_INTERVAL)],
        ),
        ("trust", vec![name(TrustArg::default().to_possible_value())]),
    ]
}
