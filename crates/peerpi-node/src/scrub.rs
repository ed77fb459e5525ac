//! The background scrub: stored blobs are re-hashed against their digests
//! at a bounded rate, so that bit rot or tampering on this node's disk is
//! found (and the blob removed, withdrawn from the DHT and fetched again
//! when next asked) before a peer that received the bad bytes blames this
//! node for them.

use std::sync::{Arc, Weak};
use std::time::Duration;

use peerpi_store::Scrub;
use tracing::{info, warn};

use crate::background_runtime;
use crate::blobs::Blobs;

/// When and how fast to scrub.
#[derive(Debug, Clone, Copy)]
pub struct ScrubConfig {
    /// Bytes re-hashed per second at most, on average; 0: never scrub.
    pub rate: u64,
    /// Delay from start to the first pass (a node that just started is
    /// busy; a short-lived CI runner never scrubs).
    pub first: Duration,
    /// Delay from the end of one pass to the start of the next.
    pub every: Duration,
}

impl Default for ScrubConfig {
    fn default() -> Self {
        ScrubConfig {
            rate: 4 << 20,
            first: Duration::from_secs(600),
            every: Duration::from_secs(24 * 3600),
        }
    }
}

/// Starts the scrub loop, unless it is off or there is no runtime.
pub(crate) fn start(blobs: &Arc<Blobs>, config: ScrubConfig) {
    if config.rate == 0 {
        return;
    }
    let Some(runtime) = background_runtime("the background scrub") else {
        return;
    };
    runtime.spawn(run(Arc::downgrade(blobs), config));
}

async fn run(blobs: Weak<Blobs>, config: ScrubConfig) {
    tokio::time::sleep(config.first).await;
    loop {
        let Some(digests) = blobs.upgrade().and_then(|b| b.store.digests().ok()) else {
            return;
        };
        let (mut bytes, mut damaged) = (0u64, 0usize);
        for digest in digests {
            // Holds the node's blob path only while one blob is checked: a
            // node that shuts down is not kept alive by its scrub.
            let Some(node) = blobs.upgrade() else { return };
            let store = node.store.clone();
            let outcome = tokio::task::spawn_blocking(move || store.scrub_blob(&digest)).await;
            let pause = match outcome {
                Ok(Ok(Scrub::Good { bytes: n })) => {
                    bytes += n;
                    node.metrics.scrubbed(n);
                    Duration::from_secs_f64(n as f64 / config.rate as f64)
                }
                Ok(Ok(Scrub::Corrupt { reason })) => {
                    damaged += 1;
                    node.metrics.scrub_damaged();
                    warn!(%digest, %reason, "scrub: a stored blob was damaged on disk; removed and withdrawn");
                    if let Some(swarm) = node.swarm.as_ref() {
                        let _ = swarm.unprovide(digest).await;
                    }
                    Duration::ZERO
                }
                Ok(Ok(Scrub::Gone)) => Duration::ZERO,
                Ok(Err(e)) => {
                    warn!(%digest, error = %e, "scrub: cannot check a blob");
                    Duration::ZERO
                }
                Err(e) => {
                    warn!(error = %e, "scrub: the check task failed");
                    Duration::ZERO
                }
            };
            drop(node);
            tokio::time::sleep(pause).await;
        }
        info!(bytes, damaged, "scrub pass done");
        tokio::time::sleep(config.every).await;
    }
}
