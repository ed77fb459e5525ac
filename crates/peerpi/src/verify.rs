//! `peerpi verify`: the offline scrub. Re-hashes every blob of a stopped
//! node's store against the digest its name (CID) carries, removes damaged
//! ones (the node fetches and verifies them again on demand, and no longer
//! announces them after its restart) and reports. A running node scrubs in
//! the background instead (`--scrub-rate`).

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::config::{self, args::CommonArgs};
use indicatif::{ProgressBar, ProgressStyle};
use peerpi_store::{Scrub, Store};

#[derive(Debug, Clone, Default, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub common: CommonArgs,
}

pub fn run(args: &VerifyArgs) -> Result<()> {
    verify(&config::data_dir(&args.common, &config::process_env)?)
}

fn verify(data_dir: &Path) -> Result<()> {
    // No eviction: verifying must not remove good blobs.
    let (store, _) = Store::open(data_dir, u64::MAX).with_context(|| {
        format!(
            "cannot open the store in {} (a running node holds it: stop the node first, or let \
             it scrub in the background with --scrub-rate)",
            data_dir.display()
        )
    })?;
    let digests = store.digests()?;
    let bar = ProgressBar::new(store.total_bytes());
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:40} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    let (mut good, mut bytes) = (0usize, 0u64);
    let mut corrupt = Vec::new();
    for digest in &digests {
        match store.scrub_blob(digest)? {
            Scrub::Good { bytes: n } => {
                good += 1;
                bytes += n;
                bar.inc(n);
            }
            Scrub::Corrupt { reason } => {
                // Printed also when the bar is hidden (not a terminal).
                bar.suspend(|| eprintln!("damaged, removed: sha256 {digest}: {reason}"));
                corrupt.push(digest);
            }
            Scrub::Gone => {}
        }
        bar.set_message(format!("{} damaged", corrupt.len()));
    }
    bar.finish_and_clear();
    store.flush()?;
    println!(
        "checked {} blobs in {:.1?}: {good} good ({bytes} bytes), {} damaged and removed",
        digests.len(),
        started.elapsed(),
        corrupt.len()
    );
    if !corrupt.is_empty() {
        bail!(
            "{} damaged blob(s) removed from {}; the node fetches them again, verified, when next \
             asked. Damage on disk points at the disk: check it (dmesg, smartctl)",
            corrupt.len(),
            data_dir.display()
        );
    }
    Ok(())
}
