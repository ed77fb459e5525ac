//! `peerpi peers`: asks a running node for the peers it knows and prints them.

use anyhow::{anyhow, Context, Result};

use clap::Args;

use crate::config;
use crate::config::args::CommonArgs;

pub fn run(args: &PeersArgs) -> Result<()> {
    let place = config::locate(&args.common, &config::process_env)?;
    let listen = config::resolve_listen(place.listen.as_deref())?;
    let url = format!("{}/peers", config::node_base_url(&listen));
    let body = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let response = reqwest::get(&url).await.with_context(|| {
                format!("no node answers at {url}: is `peerpi serve` running there? (--listen)")
            })?;
            let status = response.status();
            let text = response.text().await?;
            if !status.is_success() {
                return Err(anyhow!("{url} answered {status}: {}", text.trim()));
            }
            Ok(text)
        })?;
    if args.json {
        println!("{body}");
        return Ok(());
    }
    let v: serde_json::Value = serde_json::from_str(&body).context("the node sent invalid JSON")?;
    println!(
        "this node: {} region {}",
        v["peer_id"].as_str().unwrap_or("?"),
        v["region"].as_str().unwrap_or("-")
    );
    println!(
        "{:<54} {:<8} {:>9} {:>12} {:>12} {:<9} address",
        "peer id", "region", "rtt ms", "bytes in", "bytes out", "state"
    );
    for p in v["peers"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let state = if p["blocked"].as_bool() == Some(true) {
            if p["blocked_for_s"].is_u64() {
                "suspended"
            } else {
                "blocked"
            }
        } else if p["connected"].as_bool() == Some(true) {
            "connected"
        } else {
            "known"
        };
        println!(
            "{:<54} {:<8} {:>9} {:>12} {:>12} {:<9} {}",
            p["peer_id"].as_str().unwrap_or("?"),
            p["region"].as_str().unwrap_or("-"),
            p["rtt_ms"]
                .as_f64()
                .map_or("-".to_string(), |r| format!("{r:.2}")),
            p["bytes_in"],
            p["bytes_out"],
            state,
            p["addrs"].get(0).and_then(|a| a.as_str()).unwrap_or("-"),
        );
    }
    Ok(())
}

#[derive(Debug, Clone, Default, Args)]
pub struct PeersArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}
