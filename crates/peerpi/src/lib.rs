//! The `peerpi` command line: flags, `PEERPI_*` variables and `peerpi.toml`
//! layered into one configuration (flags win, then variables, then the file,
//! then defaults), the upstream inherited from pip/uv settings when none is
//! given, and the subcommands.

pub mod cli;
pub mod config;
pub mod doctor;
pub mod env;
pub mod id;
pub mod keygen;
pub mod logging;
pub mod memory;
pub mod peers;
pub mod prefetch;
pub mod serve;
pub mod tuf;
pub mod verify;
