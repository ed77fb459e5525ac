//! One download per digest (single flight): served from the store, or
//! fetched from peers, then upstream, into a hashing temp file that every
//! waiting client reads as it grows. The last byte is released only after
//! the digest matched, so a client never receives a complete file that
//! failed verification: on a mismatch its response is cut short and nothing
//! is stored. The sources themselves are in `sources/`.

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::{self, BoxStream, StreamExt};
use peerpi_core::Sha256Digest;
use peerpi_store::{BlobWriter, OpenedBlob, Origin};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::metrics::Source;
use crate::sources::peers::{judge, PeerBounds, PeerPhase};
use crate::{lock, Node, NodeError};

/// Largest core-metadata file accepted (its size is never listed). Real
/// ones are kilobytes; the largest seen carry a long description in a
/// megabyte or two.
pub const MAX_METADATA_SIZE: u64 = 4 << 20;

/// Bytes read per read call from a growing temp file.
const READ_CHUNK: u64 = peerpi_store::READ_CHUNK;

/// Why a download failed, as its waiting readers answer it.
#[derive(Debug, Clone)]
pub(crate) enum FlightFailure {
    /// No source delivered the verified blob (502).
    Sources(Arc<str>),
    /// The store could not write it (503, with the reason: a full disk is
    /// this node's trouble, not the upstream's).
    Store(Arc<str>),
}

impl FlightFailure {
    pub(crate) fn to_error(&self) -> NodeError {
        match self {
            FlightFailure::Sources(reason) => NodeError::Upstream(reason.to_string()),
            FlightFailure::Store(reason) => NodeError::Unavailable(reason.to_string()),
        }
    }
}

impl std::fmt::Display for FlightFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FlightFailure::Sources(reason) | FlightFailure::Store(reason) => f.write_str(reason),
        }
    }
}

/// The state of one download, shared with every client reading it.
#[derive(Clone)]
pub(crate) enum FlightState {
    /// Waiting for upstream's response headers.
    Connecting,
    /// Bytes `0..readable` of `file` may be read. `len` is the announced length.
    Streaming {
        file: Arc<File>,
        len: Option<u64>,
        readable: u64,
    },
    /// Verified and committed; all `len` bytes may be read. `source`
    /// delivered them.
    Done {
        file: Arc<File>,
        len: u64,
        source: Source,
    },
    Failed(FlightFailure),
}

pub(crate) struct Flight {
    pub(crate) state: watch::Sender<FlightState>,
    /// Its bytes offered to peers as they arrive (with a swarm).
    in_flight: Option<peerpi_swarm::InFlightShare>,
    /// A copy a peer asked for, that no client of this node wants yet:
    /// fetched from peers only (a client joining clears it).
    peers_only: AtomicBool,
}

impl Flight {
    pub(crate) fn new() -> Self {
        Self {
            state: watch::channel(FlightState::Connecting).0,
            in_flight: None,
            peers_only: AtomicBool::new(false),
        }
    }

    /// A flight whose bytes peers may take while they arrive.
    pub(crate) fn shared_with_peers(share: peerpi_swarm::InFlightShare) -> Self {
        Self {
            in_flight: Some(share),
            ..Self::new()
        }
    }

    /// Bytes `0..written` of `file`, a blob of `len` bytes, are written:
    /// peers may take them, less the last byte until it is verified.
    pub(crate) fn offer(&self, file: &Arc<File>, len: u64, written: u64) {
        if let Some(share) = &self.in_flight {
            share.written(file, len, written);
        }
    }

    /// `file` is the verified blob: peers following it may take the rest.
    fn offer_verified(&self, file: &Arc<File>, len: u64) {
        if let Some(share) = &self.in_flight {
            share.verified(file, len);
        }
    }
}

/// A stored blob, or the download a caller joined.
enum Joined {
    Stored(OpenedBlob),
    Flight(watch::Receiver<FlightState>, Origin),
}

/// A blob body for a client.
pub enum BlobBody {
    /// In the store, open for reading.
    Stored(OpenedBlob),
    /// Being fetched (from peers or upstream); `len` when known in advance.
    Fetching {
        len: Option<u64>,
        stream: BoxStream<'static, io::Result<Bytes>>,
    },
}

impl Node {
    /// Where the blob with this digest can be fetched from, from a page seen earlier.
    pub fn origin(&self, digest: &Sha256Digest) -> Result<Option<Origin>, NodeError> {
        Ok(self.inner.store.origin(digest)?)
    }

    /// The blob with `digest`: from the store, or joined to / starting its
    /// download. Fails when it is unknown or no source could start sending.
    pub async fn blob(&self, digest: &Sha256Digest) -> Result<BlobBody, NodeError> {
        let (mut rx, origin) = match self.join(digest)? {
            Joined::Stored(stored) => return Ok(BlobBody::Stored(stored)),
            Joined::Flight(rx, origin) => (rx, origin),
        };
        // Wait for the response to start, so that its status is known.
        let len = loop {
            match &*rx.borrow_and_update() {
                FlightState::Connecting => {}
                FlightState::Streaming { len, .. } => break len.or(origin.size),
                FlightState::Done { len, .. } => break Some(*len),
                FlightState::Failed(failure) => return Err(failure.to_error()),
            }
            if rx.changed().await.is_err() {
                return Err(NodeError::Internal(
                    "the download ended without a result".into(),
                ));
            }
        };
        Ok(BlobBody::Fetching {
            len,
            stream: follow(rx).boxed(),
        })
    }

    /// The stored blob, or the download of it (joined, or started here).
    fn join(&self, digest: &Sha256Digest) -> Result<Joined, NodeError> {
        self.join_flight(digest, false)
    }

    /// As `join`; `peers_only`: a download started here does not go
    /// upstream (a copy for a peer, see `replication`).
    fn join_flight(&self, digest: &Sha256Digest, peers_only: bool) -> Result<Joined, NodeError> {
        if let Some(stored) = self.inner.store.open_blob(digest)? {
            self.inner.metrics.blob_hit(Source::Local);
            return Ok(Joined::Stored(stored));
        }
        let origin = self.origin(digest)?.ok_or_else(|| {
            NodeError::NotFound(format!(
                "no file with sha256 {digest} is known here: request its project page first"
            ))
        })?;
        let mut flights = lock(&self.inner.flights);
        let flight = match flights.get(digest) {
            Some(f) => {
                if !peers_only {
                    f.peers_only.store(false, Ordering::Release);
                }
                f.clone()
            }
            None => {
                // A download may have been committed since the first check.
                if let Some(stored) = self.inner.store.open_blob(digest)? {
                    self.inner.metrics.blob_hit(Source::Local);
                    return Ok(Joined::Stored(stored));
                }
                let flight = Arc::new(match self.inner.swarm.as_ref() {
                    Some(swarm) => Flight::shared_with_peers(swarm.share_in_flight(*digest)),
                    None => Flight::new(),
                });
                flight.peers_only.store(peers_only, Ordering::Release);
                flights.insert(*digest, flight.clone());
                tokio::spawn(self.clone().drive(*digest, origin.clone(), flight.clone()));
                flight
            }
        };
        Ok(Joined::Flight(flight.state.subscribe(), origin))
    }

    /// All the bytes of a small blob (a signed page, a snapshot), read from
    /// the store or fetched by digest like any blob (peers, then `origin`),
    /// so verified, stored and announced; with the source that delivered
    /// them.
    pub(crate) async fn small_blob(
        &self,
        digest: &Sha256Digest,
        origin: Origin,
        limit: u64,
    ) -> Result<(Vec<u8>, Source), NodeError> {
        if origin.size.is_some_and(|size| size > limit) {
            return Err(NodeError::Upstream(format!(
                "{} is {} bytes, over its {limit}-byte limit",
                origin.filename,
                origin.size.unwrap_or_default()
            )));
        }
        self.inner.store.put_origins(&[(*digest, origin)])?;
        let (opened, source) = match self.join(digest)? {
            Joined::Stored(stored) => (stored, Source::Local),
            Joined::Flight(rx, _) => {
                let source = flight_done(rx).await?;
                let stored = self.inner.store.open_blob(digest)?.ok_or_else(|| {
                    NodeError::Upstream(format!("{digest} was evicted as soon as it was stored"))
                })?;
                (stored, source)
            }
        };
        if opened.size > limit {
            return Err(NodeError::Upstream(format!(
                "{digest} is {} bytes, over its {limit}-byte limit",
                opened.size
            )));
        }
        let bytes = read_whole(opened)
            .await
            .map_err(|e| NodeError::Internal(format!("reading {digest}: {e}")))?;
        Ok((bytes, source))
    }

    /// Fetches the blob into the store from peers only (never upstream),
    /// unless it is stored or being fetched already; waits for the end.
    pub(crate) async fn fetch_from_peers_only(
        &self,
        digest: &Sha256Digest,
    ) -> Result<(), NodeError> {
        match self.join_flight(digest, true)? {
            Joined::Stored(_) => Ok(()),
            Joined::Flight(rx, _) => flight_done(rx).await.map(|_| ()),
        }
    }

    /// The blob once it is verified and stored: waits for its download (if
    /// one runs) to end.
    pub async fn verified_blob(&self, digest: &Sha256Digest) -> Result<OpenedBlob, NodeError> {
        let flight = lock(&self.inner.flights).get(digest).cloned();
        if let Some(flight) = flight {
            flight_done(flight.state.subscribe()).await?;
        }
        self.inner.store.open_blob(digest)?.ok_or_else(|| {
            NodeError::Upstream(format!(
                "the download of {digest} ended without a verified file"
            ))
        })
    }

    /// Runs one download to its end and records the outcome for its readers.
    async fn drive(self, digest: Sha256Digest, origin: Origin, flight: Arc<Flight>) {
        let started = std::time::Instant::now();
        let metrics = &self.inner.metrics;
        let mut outcome = Err(FlightFailure::Sources("no source tried".into()));
        let mut source = Source::Peer;
        let mut suspects = Vec::new();
        // Peers missing this blob meanwhile wait for this fetch instead of
        // fetching upstream too (until the guard drops). Announced before the
        // peer phase: a provider lookup can take its whole deadline, and a
        // peer missing the blob in that time must find the intent.
        let _intent = self.inner.swarm.as_ref().map(|s| s.intend(digest));
        let mut partial = None;
        if let Some(swarm) = self.inner.swarm.as_ref() {
            let phase = PeerPhase {
                net: swarm,
                store: &self.inner.store,
                bounds: self.peer_bounds(&origin),
                metrics,
                flight: &flight,
                hedging: &self.inner.hedging,
            };
            let commit = |writer, len| self.commit(writer, digest, len);
            outcome = match phase.run(digest, &origin, &mut suspects, commit).await {
                Ok(done) => Ok(done),
                Err(unfinished) => {
                    partial = unfinished.partial;
                    Err(FlightFailure::Sources(unfinished.reason.into()))
                }
            };
            match &outcome {
                Ok((_, len)) => {
                    metrics.blob_hit(Source::Peer);
                    metrics.upstream_bytes_saved(*len);
                    metrics.blob_fetched(Source::Peer, started.elapsed().as_secs_f64());
                }
                Err(reason) => debug!(%digest, %reason, "no peer delivered; going upstream"),
            }
        }
        if outcome.is_err() && flight.peers_only.load(Ordering::Acquire) {
            debug!(%digest, "a copy for a peer: not fetched upstream");
        } else if outcome.is_err() {
            outcome = self
                .fetch_upstream(&digest, &origin, &flight, partial, &mut suspects)
                .await;
            source = Source::Upstream;
            if outcome.is_ok() {
                metrics.blob_hit(Source::Upstream);
                metrics.blob_fetched(Source::Upstream, started.elapsed().as_secs_f64());
            }
        }
        match outcome {
            Ok((file, len)) => {
                info!(%digest, file = %origin.filename, len, "verified and stored");
                self.inner.status.record_fetch(crate::status::RecentFetch {
                    filename: origin.filename.clone(),
                    source,
                    bytes: len,
                    at: jiff::Timestamp::now(),
                });
                flight.offer_verified(&file, len);
                flight.state.send_replace(FlightState::Done {
                    file: file.clone(),
                    len,
                    source,
                });
                self.after_store(digest, &origin.filename, len);
                // After the clients are released: judging re-reads files.
                if let (Some(swarm), false) = (self.inner.swarm.as_ref(), suspects.is_empty()) {
                    let swarm = swarm.clone();
                    let suspension = self.inner.config.peer_suspension;
                    tokio::spawn(
                        async move { judge(&swarm, digest, suspects, file, suspension).await },
                    );
                }
            }
            Err(failure) => {
                warn!(%digest, file = %origin.filename, reason = %failure, "download failed");
                flight.state.send_replace(FlightState::Failed(failure));
            }
        }
        lock(&self.inner.flights).remove(&digest);
    }

    /// Verifies and stores a finished download, then announces it to peers
    /// and withdraws what eviction removed.
    pub(crate) async fn commit(
        &self,
        writer: BlobWriter,
        digest: Sha256Digest,
        len: u64,
    ) -> Result<(), CommitError> {
        let store = self.inner.store.clone();
        let committed =
            tokio::task::spawn_blocking(move || store.commit(writer, &digest, Some(len)))
                .await
                .map_err(|e| CommitError::Other(format!("commit task failed: {e}")))?;
        let evicted = match committed {
            Ok(evicted) => evicted,
            Err(
                e @ (peerpi_store::StoreError::DigestMismatch { .. }
                | peerpi_store::StoreError::LengthMismatch { .. }),
            ) => return Err(CommitError::Mismatch(e.to_string())),
            Err(e) => return Err(CommitError::Other(e.to_string())),
        };
        if let Some(swarm) = self.inner.swarm.as_ref() {
            for gone in evicted {
                let _ = swarm.unprovide(gone).await;
            }
            let _ = swarm.provide(digest).await;
        }
        Ok(())
    }

    /// The most bytes accepted for `origin` when no size is known.
    pub(crate) fn size_cap(&self, origin: &Origin) -> u64 {
        if origin.filename.ends_with(".metadata") {
            MAX_METADATA_SIZE
        } else {
            self.inner.config.max_file_size
        }
    }

    /// The bounds of the peer phase for a blob from `origin`.
    fn peer_bounds(&self, origin: &Origin) -> PeerBounds {
        let config = &self.inner.config;
        PeerBounds {
            first_provider: config.peer_deadline,
            hold_back: config.peer_hold_back,
            min_rate: config.peer_min_rate,
            min_rate_grace: crate::sources::peers::MIN_RATE_GRACE,
            suspension: config.peer_suspension,
            size_cap: origin.size.unwrap_or_else(|| self.size_cap(origin)),
            intent_wait: crate::sources::peers::intent_wait(origin.size),
            split_min: config.peer_split_min,
        }
    }
}

/// The source of a download once it is verified and stored, or why it failed.
async fn flight_done(mut rx: watch::Receiver<FlightState>) -> Result<Source, NodeError> {
    loop {
        match &*rx.borrow_and_update() {
            FlightState::Done { source, .. } => return Ok(*source),
            FlightState::Failed(failure) => return Err(failure.to_error()),
            FlightState::Connecting | FlightState::Streaming { .. } => {}
        }
        if rx.changed().await.is_err() {
            return Err(NodeError::Internal(
                "the download ended without a result".into(),
            ));
        }
    }
}

/// Lets clients read a released peer transfer up to what is written, less
/// the last byte (which waits for verification).
pub(crate) fn publish_progress(flight: &Flight, file: &Arc<File>, total: u64, written: u64) {
    flight.state.send_replace(FlightState::Streaming {
        file: file.clone(),
        len: Some(total),
        readable: written.min(total).saturating_sub(1),
    });
}

#[derive(Debug)]
pub(crate) enum CommitError {
    /// The bytes are not the ones the digest names.
    Mismatch(String),
    Other(String),
}

/// A client's view of a download: what is readable, as it becomes readable;
/// an error (which cuts the response short) if the download fails.
///
/// When the download moves to another temp file (a source failed after its
/// bytes were released), the response goes on from its offset in the new
/// file. The bytes it already sent from earlier files are compared with the
/// verified file before its last byte: a difference cuts it, so a client
/// never receives a complete file that is not the verified one.
fn follow(rx: watch::Receiver<FlightState>) -> impl futures_util::Stream<Item = io::Result<Bytes>> {
    let cursor = Cursor {
        rx,
        offset: 0,
        reading: None,
        from: 0,
        earlier: Vec::new(),
    };
    stream::unfold(Some(cursor), |cursor| async move {
        let mut c = cursor?;
        loop {
            let state = c.rx.borrow_and_update().clone();
            let readable = match &state {
                FlightState::Streaming { file, readable, .. } => Some((file.clone(), *readable)),
                FlightState::Done { file, len, .. } => Some((file.clone(), *len)),
                FlightState::Failed(reason) => {
                    return Some((Err(io::Error::other(reason.to_string())), None));
                }
                FlightState::Connecting => None,
            };
            if let Some((file, end)) = readable {
                if let Some(old) = c.reading.replace(file.clone()) {
                    if !Arc::ptr_eq(&old, &file) && c.offset > c.from {
                        c.earlier.push((old, c.from..c.offset));
                        c.from = c.offset;
                    }
                }
                if matches!(state, FlightState::Done { .. }) && !c.earlier.is_empty() {
                    let earlier = std::mem::take(&mut c.earlier);
                    match sent_bytes_differ(earlier, file.clone()).await {
                        Ok(false) => {}
                        Ok(true) => {
                            let reason = "bytes this response already sent differ from the verified file; retry";
                            return Some((Err(io::Error::other(reason)), None));
                        }
                        Err(e) => return Some((Err(e), None)),
                    }
                }
                if c.offset < end {
                    let want = (end - c.offset).min(READ_CHUNK);
                    return match read_at(file, c.offset, want).await {
                        Ok(bytes) => {
                            c.offset += bytes.len() as u64;
                            Some((Ok(bytes), Some(c)))
                        }
                        Err(e) => Some((Err(e), None)),
                    };
                }
                if matches!(state, FlightState::Done { .. }) {
                    return None;
                }
            }
            if c.rx.changed().await.is_err() {
                return Some((Err(io::Error::other("download abandoned")), None));
            }
        }
    })
}

/// Where a client's response stands in a download.
struct Cursor {
    rx: watch::Receiver<FlightState>,
    /// Bytes sent so far.
    offset: u64,
    /// The temp file being read, and where reading it began.
    reading: Option<Arc<File>>,
    from: u64,
    /// Ranges sent from files given up since.
    earlier: Vec<(Arc<File>, std::ops::Range<u64>)>,
}

/// Whether any range sent from an earlier file differs from `verified`.
async fn sent_bytes_differ(
    earlier: Vec<(Arc<File>, std::ops::Range<u64>)>,
    verified: Arc<File>,
) -> io::Result<bool> {
    tokio::task::spawn_blocking(move || {
        for (file, range) in earlier {
            if ranges_differ(&file, &verified, range)? {
                return Ok(true);
            }
        }
        Ok(false)
    })
    .await
    .map_err(io::Error::other)?
}

/// Whether `range` of `a` and of `b` differ.
pub(crate) fn ranges_differ(a: &File, b: &File, range: std::ops::Range<u64>) -> io::Result<bool> {
    let mut offset = range.start;
    while offset < range.end {
        let len = (range.end - offset).min(READ_CHUNK);
        if peerpi_store::read_exact_at(a, offset, len)?
            != peerpi_store::read_exact_at(b, offset, len)?
        {
            return Ok(true);
        }
        offset += len;
    }
    Ok(false)
}

async fn read_at(file: Arc<File>, offset: u64, len: u64) -> io::Result<Bytes> {
    tokio::task::spawn_blocking(move || peerpi_store::read_exact_at(&file, offset, len))
        .await
        .map_err(io::Error::other)?
}

/// A stored blob's bytes, read on a blocking thread (small blobs only:
/// metadata and pages).
pub(crate) async fn read_whole(opened: OpenedBlob) -> io::Result<Vec<u8>> {
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut bytes = Vec::with_capacity(opened.size as usize);
        let mut file = opened.file;
        file.read_to_end(&mut bytes).map(|_| bytes)
    })
    .await
    .map_err(io::Error::other)?
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

    use std::io::Write;

    use super::*;

    fn file_with(bytes: &[u8]) -> Arc<File> {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(bytes).unwrap();
        Arc::new(file)
    }

    /// A client reads 1,000 released bytes of one temp file; the download
    /// then moves to another file (its source failed) and verifies there.
    async fn read_across_a_switch(first: &[u8], verified: &[u8]) -> io::Result<Vec<u8>> {
        let flight = Flight::new();
        let mut body = Box::pin(follow(flight.state.subscribe()));
        flight.state.send_replace(FlightState::Streaming {
            file: file_with(first),
            len: Some(verified.len() as u64),
            readable: 1000,
        });
        let mut got = body.next().await.unwrap()?.to_vec();
        assert_eq!(got.len(), 1000);
        flight.state.send_replace(FlightState::Done {
            file: file_with(verified),
            len: verified.len() as u64,
            source: Source::Upstream,
        });
        while let Some(chunk) = body.next().await {
            got.extend_from_slice(&chunk?);
        }
        Ok(got)
    }

    #[tokio::test]
    async fn a_response_goes_on_in_the_next_file_when_what_it_sent_was_right() {
        let good: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let got = read_across_a_switch(&good[..3000], &good).await.unwrap();
        assert_eq!(got, good);
    }

    #[tokio::test]
    async fn a_response_is_cut_when_bytes_it_sent_differ_from_the_verified_file() {
        let good: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let mut lie = good.clone();
        lie[10] ^= 0xff;
        let err = read_across_a_switch(&lie, &good).await.unwrap_err();
        assert!(err.to_string().contains("differ"), "{err}");
    }
}
