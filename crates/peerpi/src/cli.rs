//! Command-line definitions (clap).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "peerpi",
    version,
    about = "A verified, peer-to-peer, content-addressed Python package index mirror"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node: a Simple API index for pip and uv, backed by the store and upstream.
    Serve(ServeArgs),
    /// Print shell exports that point pip and uv at the node.
    Env(EnvArgs),
}

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

    /// Log format [default: text].
    #[arg(long, env = "PEERPI_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Default, Args)]
pub struct EnvArgs {
    #[command(flatten)]
    pub common: CommonArgs,
}
