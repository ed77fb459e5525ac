//! The command line: the subcommands and the arguments of those without a
//! module of their own. The settings `serve`, `doctor` and `env` share are
//! declared in `config::args`; `prefetch` and `peers` own theirs.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub use crate::config::args::{CommonArgs, EnvFormat, LogFormat, ServeArgs, TrustArg};
pub use crate::peers::PeersArgs;
pub use crate::prefetch::PrefetchArgs;

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
    Serve(Box<ServeArgs>),
    /// Print what points pip and uv at the node (shell exports by default).
    Env(EnvArgs),
    /// Print the node's peer id (creating its key if needed), for bootstrap addresses.
    Id(IdArgs),
    /// Create keys: `--swarm-key FILE` writes a new private-swarm key.
    Keygen(KeygenArgs),
    /// List the peers a running node knows.
    Peers(PeersArgs),
    /// TUF: sign a repository (init, add, sign, rotate) or run a TUF client.
    Tuf(Box<crate::tuf::TufArgs>),
    /// Re-hash every blob in a stopped node's store; remove damaged ones.
    Verify(IdArgs),
    /// Check what a node needs (takes `serve`'s flags) and explain each finding.
    Doctor(Box<ServeArgs>),
    /// Warm a running node (and its cluster) from lockfiles, requirements or names.
    Prefetch(PrefetchArgs),
}

#[derive(Debug, Clone, Default, Args)]
pub struct EnvArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    /// shell: `eval "$(peerpi env)"`; pip-conf: a pip.conf; uv-toml: a
    /// uv.toml; github-actions: `peerpi env --format github-actions >>
    /// "$GITHUB_ENV"`; gitlab-ci: a `variables:` block.
    #[arg(long, value_enum, default_value_t = EnvFormat::Shell)]
    pub format: EnvFormat,
}

#[derive(Debug, Clone, Default, Args)]
pub struct IdArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    /// The node's data directory [default: $XDG_CACHE_HOME/peerpi].
    #[arg(long, env = "PEERPI_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct KeygenArgs {
    /// Where to write a new swarm key (never overwritten).
    #[arg(long, value_name = "FILE")]
    pub swarm_key: PathBuf,
}
