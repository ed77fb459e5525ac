//! `peerpi keygen`: writes a new private-swarm key.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

#[derive(Debug, Clone, Args)]
pub struct KeygenArgs {
    /// Where to write a new swarm key (never overwritten).
    #[arg(long, value_name = "FILE")]
    pub swarm_key: PathBuf,
}

pub fn run(args: &KeygenArgs) -> Result<()> {
    let key = peerpi_swarm::write_new_swarm_key(&args.swarm_key)?;
    println!(
        "wrote {} (fingerprint {}); give it to every node of the swarm with --swarm-key",
        args.swarm_key.display(),
        key.fingerprint()
    );
    Ok(())
}
