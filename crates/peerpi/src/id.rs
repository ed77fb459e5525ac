//! `peerpi id`: prints the node's peer id (creating its key if needed),
//! for the bootstrap addresses of other nodes.

use anyhow::Result;
use clap::Args;

use crate::config::{self, args::CommonArgs};

#[derive(Debug, Clone, Default, Args)]
pub struct IdArgs {
    #[command(flatten)]
    pub common: CommonArgs,
}

pub fn run(args: &IdArgs) -> Result<()> {
    let dir = config::data_dir(&args.common, &config::process_env)?;
    let key = peerpi_swarm::load_or_create_keypair(&dir)?;
    println!("{}", key.public().to_peer_id());
    Ok(())
}
