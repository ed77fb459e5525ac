//! The settings `peerpi serve` (and `doctor`, which takes the same flags)
//! and `peerpi env` read, as clap declares them: flags and `PEERPI_*`
//! variables. The file keys and defaults are resolved in `config::serve`.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

/// Settings shared by every subcommand that needs the node's configuration.
#[derive(Debug, Clone, Default, Args)]
pub struct CommonArgs {
    /// Configuration file (TOML). Default: ./peerpi.toml, then
    /// $XDG_CONFIG_HOME/peerpi/peerpi.toml, when they exist.
    #[arg(long, env = "PEERPI_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Address the HTTP index listens on [default: 127.0.0.1:7503].
    #[arg(long, env = "PEERPI_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
}

#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Upstream Simple API base URL. Default: inherited from UV_DEFAULT_INDEX,
    /// UV_INDEX_URL, PIP_INDEX_URL or pip's config file (global.index-url).
    #[arg(long, env = "PEERPI_UPSTREAM", value_name = "URL")]
    pub upstream: Option<String>,

    /// Where blobs and the catalog live [default: $XDG_CACHE_HOME/peerpi].
    #[arg(long, env = "PEERPI_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Size cap of the blob store, e.g. 20GiB or 500MB [default: 20GiB].
    #[arg(long, env = "PEERPI_CACHE_SIZE", value_name = "SIZE")]
    pub cache_size: Option<String>,

    /// Re-hash stored blobs in the background at most this many bytes per
    /// second (a pass 10 minutes after start, then daily; damaged blobs are
    /// removed and withdrawn), or 0 for never [default: 4MiB].
    #[arg(long, env = "PEERPI_SCRUB_RATE", value_name = "BYTES")]
    pub scrub_rate: Option<String>,

    /// How long a cached page is served before revalidation, e.g. 10m [default: 10m].
    #[arg(long, env = "PEERPI_PAGE_TTL", value_name = "DURATION")]
    pub page_ttl: Option<String>,

    /// Cache-Control max-age sent to clients with pages [default: 60s].
    #[arg(long, env = "PEERPI_PAGE_MAX_AGE", value_name = "DURATION")]
    pub page_max_age: Option<String>,

    /// Limit on one upstream page request [default: 30s].
    #[arg(long, env = "PEERPI_UPSTREAM_TIMEOUT", value_name = "DURATION")]
    pub upstream_timeout: Option<String>,

    /// How long in-flight responses may take to finish on shutdown [default: 30s].
    #[arg(long, env = "PEERPI_SHUTDOWN_TIMEOUT", value_name = "DURATION")]
    pub shutdown_timeout: Option<String>,

    /// libp2p listen address, repeatable [default: /ip4/0.0.0.0/tcp/7504].
    #[arg(
        long = "p2p-listen",
        env = "PEERPI_P2P_LISTEN",
        value_name = "MULTIADDR",
        value_delimiter = ','
    )]
    pub p2p_listen: Vec<String>,

    /// A peer to join the swarm through, repeatable, e.g.
    /// /dns/node-a.example/tcp/7504/p2p/<peer id> (see `peerpi id`).
    #[arg(
        long,
        env = "PEERPI_BOOTSTRAP",
        value_name = "MULTIADDR",
        value_delimiter = ','
    )]
    pub bootstrap: Vec<String>,

    /// Do not look for peers on the LAN with mDNS.
    #[arg(long, env = "PEERPI_NO_MDNS")]
    pub no_mdns: bool,

    /// Run without peer-to-peer (upstream only).
    #[arg(long, env = "PEERPI_NO_P2P")]
    pub no_p2p: bool,

    /// Region name advertised to peers; same-region peers are preferred.
    #[arg(long, env = "PEERPI_REGION", value_name = "NAME")]
    pub region: Option<String>,

    /// Private swarm key file: only nodes with the same key connect
    /// (create one with `peerpi keygen --swarm-key FILE`).
    #[arg(long, env = "PEERPI_SWARM_KEY", value_name = "FILE")]
    pub swarm_key: Option<PathBuf>,

    /// How long to wait for a peer to start delivering before going upstream [default: 2s].
    #[arg(long, env = "PEERPI_PEER_DEADLINE", value_name = "DURATION")]
    pub peer_deadline: Option<String>,

    /// How long a peer that broke off or stalled a transfer is not asked
    /// again; a peer that sent bad bytes is blocked for good [default: 10m].
    #[arg(long, env = "PEERPI_PEER_SUSPENSION", value_name = "DURATION")]
    pub peer_suspension: Option<String>,

    /// Silence after which a peer transfer counts as stalled [default: 10s].
    #[arg(long, env = "PEERPI_PEER_TIMEOUT", value_name = "DURATION")]
    pub peer_timeout: Option<String>,

    /// Where peers fetch large blobs over plain HTTP with a one-time ticket
    /// from the swarm, or `off` to send everything on libp2p streams
    /// [default: 0.0.0.0:7505].
    #[arg(long, env = "PEERPI_BULK_LISTEN", value_name = "HOST:PORT|off")]
    pub bulk_listen: Option<String>,

    /// Upload to peers at most this many bytes per second in all, e.g.
    /// 50MiB [default: unlimited].
    #[arg(long, env = "PEERPI_UPLOAD_LIMIT", value_name = "BYTES")]
    pub upload_limit: Option<String>,

    /// Sign every fetched page into a TUF repository and serve it at
    /// /tuf/: the directory holding the repository's online key
    /// (online.pk8, from `peerpi tuf init`) [default: not a signer].
    #[arg(long, env = "PEERPI_SIGNER", value_name = "KEYDIR")]
    pub signer: Option<PathBuf>,

    /// The TUF repository a signer signs into [default: DATA_DIR/tuf].
    #[arg(long, env = "PEERPI_TUF_REPO", value_name = "DIR")]
    pub tuf_repo: Option<PathBuf>,

    /// How often a signer signs the pages it fetched [default: 10s].
    #[arg(long, env = "PEERPI_SIGN_INTERVAL", value_name = "DURATION")]
    pub sign_interval: Option<String>,

    /// Which pages to trust: `tuf` (only pages a TUF signer signed; no
    /// upstream), `tuf-or-index` (signed pages where there are, the upstream
    /// index otherwise), `index` (the upstream index over TLS) [default:
    /// index].
    #[arg(long, env = "PEERPI_TRUST", value_enum)]
    pub trust: Option<TrustArg>,

    /// The TUF root to trust (the repository's 1.root.json, installed by
    /// the operator) [required with --trust tuf or tuf-or-index].
    #[arg(long, env = "PEERPI_TUF_ROOT", value_name = "FILE")]
    pub tuf_root: Option<PathBuf>,

    /// The signer's TUF repository, e.g. http://signer:7503/tuf/ [required
    /// with --trust tuf or tuf-or-index].
    #[arg(long, env = "PEERPI_TUF_URL", value_name = "URL")]
    pub tuf_url: Option<String>,

    /// Log format [default: text].
    #[arg(long, env = "PEERPI_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TrustArg {
    Tuf,
    TufOrIndex,
    Index,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// What `peerpi env` prints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum EnvFormat {
    #[default]
    Shell,
    PipConf,
    UvToml,
    GithubActions,
    GitlabCi,
}
