//! The serving side of the blob protocol: answers requests from the store,
//! streaming with backpressure, within per-peer and global stream limits.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use futures_util::{AsyncWriteExt, StreamExt};
use libp2p::PeerId;
use peerpi_store::Store;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::debug;

use crate::protocol::{self, Status};
use crate::{lock, Shared};

pub(crate) struct Limits {
    per_peer: usize,
    all: Arc<Semaphore>,
    peers: Mutex<HashMap<PeerId, Arc<Semaphore>>>,
}

impl Limits {
    pub(crate) fn new(per_peer: usize, all: usize) -> Self {
        Self {
            per_peer,
            all: Arc::new(Semaphore::new(all)),
            peers: Mutex::new(HashMap::new()),
        }
    }

    fn acquire(&self, peer: PeerId) -> Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)> {
        let per_peer = lock(&self.peers)
            .entry(peer)
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_peer)))
            .clone();
        let peer_permit = per_peer.try_acquire_owned().ok()?;
        let all_permit = self.all.clone().try_acquire_owned().ok()?;
        Some((peer_permit, all_permit))
    }
}

/// Accepts blob streams until the swarm stops.
pub(crate) async fn accept_loop(
    mut incoming: libp2p_stream::IncomingStreams,
    shared: Arc<Shared>,
    store: Arc<Store>,
    limits: Arc<Limits>,
) {
    while let Some((peer, stream)) = incoming.next().await {
        let permits = limits.acquire(peer);
        let shared = shared.clone();
        let store = store.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_one(peer, stream, permits, &shared, &store).await {
                debug!(%peer, "blob stream ended with an error: {e}");
            }
        });
    }
}

async fn serve_one(
    peer: PeerId,
    mut stream: libp2p::Stream,
    permits: Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)>,
    shared: &Shared,
    store: &Store,
) -> Result<(), protocol::ProtocolError> {
    let request = match tokio::time::timeout(
        shared.stream_timeout,
        protocol::read_request(&mut stream),
    )
    .await
    {
        Ok(Ok(r)) => r,
        Ok(Err(protocol::ProtocolError::Version(v))) => {
            debug!(%peer, version = v, "unsupported request version");
            return protocol::write_status(&mut stream, Status::BadRequest, 0).await;
        }
        Ok(Err(e)) => return Err(e),
        Err(_) => return Ok(()),
    };
    if permits.is_none() {
        return protocol::write_status(&mut stream, Status::Busy, 0).await;
    }
    let blob = match store.get(&request.digest) {
        Ok(Some(blob)) => blob,
        _ => return protocol::write_status(&mut stream, Status::NotFound, 0).await,
    };
    if request.offset > blob.size {
        return protocol::write_status(&mut stream, Status::BadRequest, 0).await;
    }
    let file = match std::fs::File::open(&blob.path) {
        Ok(f) => f,
        // Evicted between lookup and open.
        Err(_) => return protocol::write_status(&mut stream, Status::NotFound, 0).await,
    };
    let remaining = blob.size - request.offset;
    protocol::write_status(&mut stream, Status::Ok, remaining).await?;
    let mut chunks = std::pin::pin!(peerpi_store::read_range(
        Arc::new(file),
        request.offset,
        remaining
    ));
    #[cfg(feature = "adversary")]
    let mut sent = 0u64;
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk?;
        #[cfg(feature = "adversary")]
        let chunk = match lie(shared, chunk, sent, remaining).await {
            Some(c) => c,
            None => return Ok(()),
        };
        #[cfg(feature = "adversary")]
        {
            sent += chunk.len() as u64;
        }
        // write_all waits for the peer to read: the stream's flow control is the backpressure.
        stream.write_all(&chunk).await?;
        #[cfg(feature = "adversary")]
        if shared.adversary == Some(crate::Adversary::Stall) {
            stream.flush().await?;
            tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
        }
        shared
            .counters
            .bytes_served
            .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        shared.peer_mut(peer, |p| p.bytes_out += chunk.len() as u64);
    }
    stream.close().await?;
    Ok(())
}

/// Test support: what a lying peer sends instead of `chunk` (`None`: stop).
#[cfg(feature = "adversary")]
async fn lie(shared: &Shared, chunk: bytes::Bytes, sent: u64, total: u64) -> Option<bytes::Bytes> {
    use crate::Adversary;
    match shared.adversary {
        None => Some(chunk),
        Some(Adversary::WrongBytes) => {
            let mut bad = chunk.to_vec();
            if sent == 0 {
                if let Some(b) = bad.first_mut() {
                    *b ^= 0xff;
                }
            }
            Some(bad.into())
        }
        Some(Adversary::Truncate) => {
            (sent < total / 2).then(|| chunk.slice(..chunk.len().min((total / 2 - sent) as usize)))
        }
        // Half of the first chunk; `serve_one` then goes silent.
        Some(Adversary::Stall) => Some(chunk.slice(..chunk.len() / 2)),
    }
}
