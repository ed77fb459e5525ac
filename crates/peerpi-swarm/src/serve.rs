//! The serving side of the blob protocol: answers requests from the store,
//! on the stream itself or by a ticket for the bulk channel, streaming with
//! backpressure, within per-peer and global stream limits and the upload limit.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{AsyncWriteExt, Stream, StreamExt};
use libp2p::PeerId;
use peerpi_store::Store;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{debug, warn};

use crate::protocol::{self, Response, Status};
use crate::{lock, Shared};

/// Requests one peer may make per second, on average.
const REQUESTS_PER_SECOND: f64 = 100.0;
/// Requests one peer may make at once after a quiet spell.
const REQUEST_BURST: f64 = 200.0;
/// Peers remembered before idle ones are forgotten.
const MAX_TRACKED_PEERS: usize = 4096;

/// Per-peer and global limits on what peers may ask of this node: streams
/// open at once (transfers, unredeemed tickets included) and the rate of
/// requests. Over a limit the answer is BUSY.
pub(crate) struct Limits {
    per_peer: usize,
    all: Arc<Semaphore>,
    peers: Mutex<HashMap<PeerId, PeerLimits>>,
}

struct PeerLimits {
    streams: Arc<Semaphore>,
    requests: TokenBucket,
}

/// A token bucket: `rate` tokens per second, at most `burst` saved up.
struct TokenBucket {
    tokens: f64,
    last: std::time::Instant,
}

impl TokenBucket {
    fn new(now: std::time::Instant) -> Self {
        Self {
            tokens: REQUEST_BURST,
            last: now,
        }
    }

    fn refill(&mut self, now: std::time::Instant) {
        let earned = now.saturating_duration_since(self.last).as_secs_f64() * REQUESTS_PER_SECOND;
        self.tokens = (self.tokens + earned).min(REQUEST_BURST);
        self.last = now;
    }

    fn take(&mut self, now: std::time::Instant) -> bool {
        self.refill(now);
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }

    fn is_full(&mut self, now: std::time::Instant) -> bool {
        self.refill(now);
        self.tokens >= REQUEST_BURST
    }
}

impl Limits {
    pub(crate) fn new(per_peer: usize, all: usize) -> Self {
        Self {
            per_peer,
            all: Arc::new(Semaphore::new(all)),
            peers: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one request against `peer`'s rate; false when over it.
    fn admit(&self, peer: PeerId) -> bool {
        self.admit_at(peer, std::time::Instant::now())
    }

    fn admit_at(&self, peer: PeerId, now: std::time::Instant) -> bool {
        let mut peers = lock(&self.peers);
        if peers.len() >= MAX_TRACKED_PEERS && !peers.contains_key(&peer) {
            // Forget peers with nothing open and nothing owed.
            let per_peer = self.per_peer;
            peers.retain(|_, l| {
                l.streams.available_permits() < per_peer || !l.requests.is_full(now)
            });
        }
        self.limits_of(&mut peers, peer, now).requests.take(now)
    }

    fn limits_of<'a>(
        &self,
        peers: &'a mut HashMap<PeerId, PeerLimits>,
        peer: PeerId,
        now: std::time::Instant,
    ) -> &'a mut PeerLimits {
        peers.entry(peer).or_insert_with(|| PeerLimits {
            streams: Arc::new(Semaphore::new(self.per_peer)),
            requests: TokenBucket::new(now),
        })
    }

    /// Stream permits for one transfer of `peer`'s: one of its own and one
    /// of the node's; `None` when either is used up.
    fn permits(&self, peer: PeerId) -> Option<Permits> {
        let streams = {
            let mut peers = lock(&self.peers);
            self.limits_of(&mut peers, peer, std::time::Instant::now())
                .streams
                .clone()
        };
        let peer_permit = streams.try_acquire_owned().ok()?;
        let all_permit = self.all.clone().try_acquire_owned().ok()?;
        Some((peer_permit, all_permit))
    }

    #[cfg(test)]
    fn acquire_at(&self, peer: PeerId, now: std::time::Instant) -> Option<Permits> {
        if !self.admit_at(peer, now) {
            return None;
        }
        self.permits(peer)
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
        let admitted = limits.admit(peer);
        let shared = shared.clone();
        let store = store.clone();
        let limits = limits.clone();
        tokio::spawn(async move {
            let served = serve_one(peer, stream, admitted, &limits, &shared, &store);
            if let Err(e) = served.await {
                debug!(%peer, "blob stream ended with an error: {e}");
            }
        });
    }
}

/// The stream permits held while a transfer (or its unredeemed ticket) lives.
pub(crate) type Permits = (OwnedSemaphorePermit, OwnedSemaphorePermit);

/// Answers one request. Stream permits are taken only once the request has
/// been read, so a peer that opens streams and sends nothing holds no
/// transfer slot (and its stream ends at the stream timeout).
async fn serve_one(
    peer: PeerId,
    mut stream: libp2p::Stream,
    admitted: bool,
    limits: &Limits,
    shared: &Arc<Shared>,
    store: &Store,
) -> Result<(), protocol::ProtocolError> {
    let refuse = |status| Response::Refused(status);
    let request = match tokio::time::timeout(
        shared.stream_timeout,
        protocol::read_request(&mut stream),
    )
    .await
    {
        Ok(Ok(r)) => r,
        Ok(Err(protocol::ProtocolError::Version(v))) => {
            debug!(%peer, version = v, "unsupported request version");
            return protocol::write_response(&mut stream, &refuse(Status::BadRequest)).await;
        }
        Ok(Err(e)) => return Err(e),
        Err(_) => return Ok(()),
    };
    let Some(permits) = admitted.then(|| limits.permits(peer)).flatten() else {
        return protocol::write_response(&mut stream, &refuse(Status::Busy)).await;
    };
    let blob = match store.get(&request.digest) {
        Ok(Some(blob)) => blob,
        _ => return protocol::write_response(&mut stream, &refuse(Status::NotFound)).await,
    };
    if request.offset > blob.size {
        return protocol::write_response(&mut stream, &refuse(Status::BadRequest)).await;
    }
    let file = match std::fs::File::open(&blob.path) {
        Ok(f) => Arc::new(f),
        // Evicted between lookup and open.
        Err(_) => return protocol::write_response(&mut stream, &refuse(Status::NotFound)).await,
    };
    let remaining = blob.size - request.offset;
    if let Some(bulk) = shared.bulk.as_ref() {
        if request.can_redirect && remaining >= bulk.min_size {
            let issued = bulk.issue(Grant {
                peer,
                digest: request.digest,
                file: file.clone(),
                offset: request.offset,
                len: remaining,
                permits,
            });
            match issued {
                Ok(ticket) => {
                    let redirect = Response::Redirect {
                        remaining,
                        port: bulk.port,
                        ticket,
                    };
                    protocol::write_response(&mut stream, &redirect).await?;
                    stream.close().await?;
                    return Ok(());
                }
                Err(e) => {
                    warn!("cannot make a ticket ({e}); answering BUSY");
                    return protocol::write_response(&mut stream, &refuse(Status::Busy)).await;
                }
            }
        }
    }
    #[cfg(feature = "adversary")]
    let remaining = match shared.adversary {
        Some(crate::Adversary::HugeSize) => 1 << 40,
        _ => remaining,
    };
    protocol::write_response(&mut stream, &Response::Data { remaining }).await?;
    let mut body = std::pin::pin!(outgoing(
        shared.clone(),
        Grant {
            peer,
            digest: request.digest,
            file,
            offset: request.offset,
            len: remaining,
            permits,
        }
    ));
    while let Some(chunk) = body.next().await {
        // write_all waits for the peer to read: the stream's flow control is
        // the backpressure, and a peer that stops reading loses the stream
        // (and its permits) after the stream timeout.
        let chunk = chunk?;
        tokio::time::timeout(shared.stream_timeout, stream.write_all(&chunk))
            .await
            .map_err(|_| stalled_reader())??;
    }
    tokio::time::timeout(shared.stream_timeout, stream.close())
        .await
        .map_err(|_| stalled_reader())??;
    Ok(())
}

fn stalled_reader() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "the peer stopped reading the transfer",
    )
}

/// One transfer a peer may receive: a range of one blob, with the stream
/// permits it holds while it lasts.
pub(crate) struct Grant {
    pub(crate) peer: PeerId,
    pub(crate) digest: peerpi_core::Sha256Digest,
    pub(crate) file: Arc<std::fs::File>,
    pub(crate) offset: u64,
    pub(crate) len: u64,
    pub(crate) permits: Permits,
}

/// The bytes of one transfer, for either channel: paced by the upload limit
/// and counted as they go. The permits are released when the stream is
/// dropped.
pub(crate) fn outgoing(
    shared: Arc<Shared>,
    grant: Grant,
) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    struct Transfer<S> {
        chunks: std::pin::Pin<Box<S>>,
        shared: Arc<Shared>,
        peer: PeerId,
        sent: u64,
        #[cfg_attr(not(feature = "adversary"), allow(dead_code))]
        len: u64,
        _permits: Permits,
    }
    let transfer = Transfer {
        chunks: Box::pin(peerpi_store::read_range(
            grant.file,
            grant.offset,
            grant.len,
        )),
        shared,
        peer: grant.peer,
        sent: 0,
        len: grant.len,
        _permits: grant.permits,
    };
    futures_util::stream::unfold(transfer, |mut t| async move {
        let chunk = match t.chunks.next().await {
            Some(Ok(chunk)) => chunk,
            Some(Err(e)) => return Some((Err(e), t)),
            None => {
                #[cfg(feature = "adversary")]
                lie_at_end(&t.shared).await;
                return None;
            }
        };
        #[cfg(feature = "adversary")]
        let chunk = lie(&t.shared, chunk, t.sent, t.len).await?;
        if let Some(limit) = t.shared.upload_limit.as_ref() {
            limit.take(chunk.len()).await;
        }
        let n = chunk.len() as u64;
        t.sent += n;
        t.shared
            .counters
            .bytes_served
            .fetch_add(n, Ordering::Relaxed);
        t.shared.peer_mut(t.peer, |p| p.bytes_out += n);
        Some((Ok(chunk), t))
    })
}

/// Upload pacing shared by every transfer: bytes per second in all.
pub(crate) struct UploadLimit {
    bytes_per_second: u64,
    next_free: Mutex<tokio::time::Instant>,
}

impl UploadLimit {
    pub(crate) fn new(bytes_per_second: u64) -> Self {
        Self {
            bytes_per_second: bytes_per_second.max(1),
            next_free: Mutex::new(tokio::time::Instant::now()),
        }
    }

    /// Waits until `n` more bytes may go out.
    async fn take(&self, n: usize) {
        let start = {
            let mut next_free = lock(&self.next_free);
            let start = (*next_free).max(tokio::time::Instant::now());
            *next_free = start + Duration::from_secs_f64(n as f64 / self.bytes_per_second as f64);
            start
        };
        tokio::time::sleep_until(start).await;
    }
}

/// Test support: a lying peer's behaviour after its last chunk. A staller
/// stays silent even when the blob fit in one chunk; a truncator lingers a
/// moment before closing, so that the requester has read the response head
/// and the lie is the short body, not a reset connection.
#[cfg(feature = "adversary")]
async fn lie_at_end(shared: &Shared) {
    match shared.adversary {
        Some(crate::Adversary::Stall) => tokio::time::sleep(Duration::from_secs(3600)).await,
        Some(crate::Adversary::Truncate) => tokio::time::sleep(Duration::from_millis(200)).await,
        _ => {}
    }
}

/// Test support: what a lying peer sends instead of `chunk` (`None`: stop).
#[cfg(feature = "adversary")]
async fn lie(shared: &Shared, chunk: Bytes, sent: u64, total: u64) -> Option<Bytes> {
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
            if sent >= total / 2 {
                lie_at_end(shared).await;
                return None;
            }
            Some(chunk.slice(..chunk.len().min((total / 2 - sent) as usize)))
        }
        Some(Adversary::Drip) => {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Some(chunk.slice(..chunk.len().min(1)))
        }
        Some(Adversary::HugeSize) => Some(chunk),
        Some(Adversary::EmptyBody) => {
            tokio::time::sleep(Duration::from_millis(200)).await;
            None
        }
        // Half of the first chunk, then silence.
        Some(Adversary::Stall) => {
            if sent > 0 {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            Some(chunk.slice(..chunk.len() / 2))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn a_peer_gets_a_burst_then_the_steady_rate() {
        let limits = Limits::new(usize::MAX >> 4, usize::MAX >> 4);
        let (peer, other) = (PeerId::random(), PeerId::random());
        let start = Instant::now();
        let mut held = Vec::new();
        for _ in 0..REQUEST_BURST as usize {
            held.push(limits.acquire_at(peer, start).expect("within the burst"));
        }
        assert!(limits.acquire_at(peer, start).is_none(), "burst spent");
        assert!(
            limits.acquire_at(other, start).is_some(),
            "limits are per peer"
        );
        let later = start + Duration::from_millis(100);
        let allowed = (0..100)
            .filter(|_| limits.acquire_at(peer, later).is_some())
            .count();
        assert_eq!(
            allowed,
            (REQUESTS_PER_SECOND / 10.0) as usize,
            "0.1 s earns 10"
        );
    }

    #[test]
    fn streams_are_limited_per_peer_and_in_all() {
        let limits = Limits::new(2, 3);
        let (a, b) = (PeerId::random(), PeerId::random());
        let now = Instant::now();
        let first = limits.acquire_at(a, now).unwrap();
        let _second = limits.acquire_at(a, now).unwrap();
        assert!(limits.acquire_at(a, now).is_none(), "two per peer");
        let _third = limits.acquire_at(b, now).unwrap();
        assert!(limits.acquire_at(b, now).is_none(), "three in all");
        drop(first);
        assert!(
            limits.acquire_at(b, now).is_some(),
            "a finished transfer frees its permits"
        );
    }
}
