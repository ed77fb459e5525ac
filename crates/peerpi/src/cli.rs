//! The command line: the subcommands, each with its module owning its
//! arguments (`serve`, `env`, `id`, `keygen`, `peers`, `tuf`, `verify`,
//! `doctor` with serve's, `prefetch`); the settings they share are declared
//! once in `config::args`.
//! [`command`] adds each setting's default, read from where it is defined,
//! to its help.

use clap::{Parser, Subcommand};

pub use crate::config::args::{CommonArgs, LogFormat, TrustArg};
pub use crate::env::{EnvArgs, EnvFormat};
pub use crate::id::IdArgs;
pub use crate::keygen::KeygenArgs;
pub use crate::peers::PeersArgs;
pub use crate::prefetch::PrefetchArgs;
pub use crate::serve::ServeArgs;
pub use crate::verify::VerifyArgs;

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
    Verify(VerifyArgs),
    /// Check what a node needs (takes `serve`'s flags) and explain each finding.
    Doctor(Box<ServeArgs>),
    /// Warm a running node (and its cluster) from lockfiles, requirements or names.
    Prefetch(PrefetchArgs),
}

/// The command line with each setting's default in its help, read from the
/// configs that define it (`config::defaults`), never written twice.
pub fn command() -> clap::Command {
    use clap::CommandFactory;
    let defaults = crate::config::defaults();
    let mut cli = Cli::command();
    let names: Vec<String> = cli
        .get_subcommands()
        .map(|c| c.get_name().to_string())
        .collect();
    for name in names {
        cli = cli.mut_subcommand(name, |mut sub| {
            for (id, values) in &defaults {
                if !sub.get_arguments().any(|a| a.get_id() == id) {
                    continue;
                }
                let shown = format!(" [default: {}]", values.join(", "));
                sub = sub.mut_arg(*id, |arg| {
                    let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
                    arg.help(format!("{help}{shown}"))
                });
            }
            sub
        });
    }
    cli
}
