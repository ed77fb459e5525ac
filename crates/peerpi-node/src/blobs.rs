//! The blob path as one service: a node's store, swarm, upstream client,
//! metrics and fetch bounds, and one download per digest (single flight)
//! driven through the sources (peers, then upstream). Pages, trust, signing,
//! scrub and second copies all reach blobs through it; it holds nothing of
//! theirs, so it is built first and handed to each.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{BoxStream, StreamExt};
use peerpi_core::Sha256Digest;
use peerpi_store::{BlobWriter, OpenedBlob, Origin, Store};
use peerpi_swarm::SwarmHandle;
use peerpi_upstream::Upstream;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::flight::{follow, read_whole, CommitError, Flight, FlightFailure, FlightState};
use crate::metrics::{Metrics, Source};
use crate::sources::hedge::Hedging;
use crate::sources::peers::{judge, PeerBounds, PeerPhase};
use crate::sources::upstream::UpstreamSource;
use crate::status::StatusState;
use crate::{lock, NodeConfig, NodeError};

/// The bounds a download keeps (see [`NodeConfig`] for each).
#[derive(Debug, Clone, Copy)]
pub(crate) struct FetchSettings {
    pub peer_deadline: Duration,
    pub peer_hold_back: Duration,
    pub peer_min_rate: u64,
    pub peer_suspension: Duration,
    pub peer_split_min: u64,
    pub max_file_size: u64,
}

impl From<&NodeConfig> for FetchSettings {
    fn from(config: &NodeConfig) -> Self {
        Self {
            peer_deadline: config.peer_deadline,
            peer_hold_back: config.peer_hold_back,
            peer_min_rate: config.peer_min_rate,
            peer_suspension: config.peer_suspension,
            peer_split_min: config.peer_split_min,
            max_file_size: config.max_file_size,
        }
    }
}

/// The blob path: where every file a node serves, keeps or copies comes
/// from. Shared as `Arc<Blobs>`.
pub(crate) struct Blobs {
    pub(crate) store: Arc<Store>,
    pub(crate) swarm: Option<SwarmHandle>,
    /// The index (pages and files); without a swarm, files' only source.
    pub(crate) upstream: Upstream,
    pub(crate) metrics: Metrics,
    settings: FetchSettings,
    /// The download running for each digest.
    flights: Mutex<HashMap<Sha256Digest, Arc<Flight>>>,
    /// When this node's flights ask a second provider (see `hedge`).
    hedging: Hedging,
    /// Recent downloads and throughput, for the status page.
    pub(crate) status: StatusState,
    /// Told of each blob a download stored (second copies watch it).
    stored: Option<mpsc::Sender<Stored>>,
}

/// A blob a download just verified and stored.
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    pub digest: Sha256Digest,
    pub filename: String,
    pub len: u64,
}

impl Blobs {
    pub(crate) fn new(
        store: Arc<Store>,
        swarm: Option<SwarmHandle>,
        upstream: Upstream,
        settings: FetchSettings,
        stored: Option<mpsc::Sender<Stored>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            swarm,
            upstream,
            metrics: Metrics::new(),
            settings,
            flights: Mutex::new(HashMap::new()),
            hedging: Hedging::default(),
            status: StatusState::new(),
            stored,
        })
    }

    /// Whether a download of `digest` runs now.
    pub(crate) fn fetching(&self, digest: &Sha256Digest) -> bool {
        lock(&self.flights).contains_key(digest)
    }
}

/// Largest core-metadata file accepted (its size is never listed). Real
/// ones are kilobytes; the largest seen carry a long description in a
/// megabyte or two.
pub const MAX_METADATA_SIZE: u64 = 4 << 20;

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

impl Blobs {
    /// Where the blob with this digest can be fetched from, from a page seen earlier.
    pub(crate) fn origin(&self, digest: &Sha256Digest) -> Result<Option<Origin>, NodeError> {
        Ok(self.store.origin(digest)?)
    }

    /// The blob with `digest`: from the store, or joined to / starting its
    /// download. Fails when it is unknown or no source could start sending.
    pub(crate) async fn blob(
        self: &Arc<Self>,
        digest: &Sha256Digest,
    ) -> Result<BlobBody, NodeError> {
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
    fn join(self: &Arc<Self>, digest: &Sha256Digest) -> Result<Joined, NodeError> {
        self.join_flight(digest, false)
    }

    /// As `join`; `peers_only`: a download started here does not go
    /// upstream (a copy for a peer, see `replication`).
    fn join_flight(
        self: &Arc<Self>,
        digest: &Sha256Digest,
        peers_only: bool,
    ) -> Result<Joined, NodeError> {
        if let Some(stored) = self.store.open_blob(digest)? {
            self.metrics.blob_hit(Source::Local);
            return Ok(Joined::Stored(stored));
        }
        let origin = self.origin(digest)?.ok_or_else(|| {
            NodeError::NotFound(format!(
                "no file with sha256 {digest} is known here: request its project page first"
            ))
        })?;
        let mut flights = lock(&self.flights);
        let flight = match flights.get(digest) {
            Some(f) => {
                if !peers_only {
                    f.peers_only.store(false, Ordering::Release);
                }
                f.clone()
            }
            None => {
                // A download may have been committed since the first check.
                if let Some(stored) = self.store.open_blob(digest)? {
                    self.metrics.blob_hit(Source::Local);
                    return Ok(Joined::Stored(stored));
                }
                let flight = Arc::new(match self.swarm.as_ref() {
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
        self: &Arc<Self>,
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
        self.store.put_origins(&[(*digest, origin)])?;
        let (opened, source) = match self.join(digest)? {
            Joined::Stored(stored) => (stored, Source::Local),
            Joined::Flight(rx, _) => {
                let source = flight_done(rx).await?;
                let stored = self.store.open_blob(digest)?.ok_or_else(|| {
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
        self: &Arc<Self>,
        digest: &Sha256Digest,
    ) -> Result<(), NodeError> {
        match self.join_flight(digest, true)? {
            Joined::Stored(_) => Ok(()),
            Joined::Flight(rx, _) => flight_done(rx).await.map(|_| ()),
        }
    }

    /// The blob once it is verified and stored: waits for its download (if
    /// one runs) to end.
    pub(crate) async fn verified_blob(
        &self,
        digest: &Sha256Digest,
    ) -> Result<OpenedBlob, NodeError> {
        let flight = lock(&self.flights).get(digest).cloned();
        if let Some(flight) = flight {
            flight_done(flight.state.subscribe()).await?;
        }
        self.store.open_blob(digest)?.ok_or_else(|| {
            NodeError::Upstream(format!(
                "the download of {digest} ended without a verified file"
            ))
        })
    }

    /// Runs one download to its end and records the outcome for its readers.
    async fn drive(self: Arc<Self>, digest: Sha256Digest, origin: Origin, flight: Arc<Flight>) {
        let started = std::time::Instant::now();
        let metrics = &self.metrics;
        let mut outcome = Err(FlightFailure::Sources("no source tried".into()));
        let mut source = Source::Peer;
        let mut suspects = Vec::new();
        // Peers missing this blob meanwhile wait for this fetch instead of
        // fetching upstream too (until the guard drops). Announced before the
        // peer phase: a provider lookup can take its whole deadline, and a
        // peer missing the blob in that time must find the intent.
        let _intent = self.swarm.as_ref().map(|s| s.intend(digest));
        let mut partial = None;
        if let Some(swarm) = self.swarm.as_ref() {
            let phase = PeerPhase {
                net: swarm,
                store: &self.store,
                bounds: self.peer_bounds(&origin),
                metrics,
                flight: &flight,
                hedging: &self.hedging,
            };
            let commit = |writer, len| self.commit(writer, digest, len);
            outcome = match phase.run(digest, &origin, &mut suspects, commit).await {
                Ok(done) => Ok(done),
                Err(unfinished) if unfinished.store_failed => {
                    Err(FlightFailure::Store(unfinished.reason.into()))
                }
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
        // A store that could not keep the peers' bytes would not keep the
        // index's either: only a failure of the sources goes upstream.
        let sources_failed = matches!(outcome, Err(FlightFailure::Sources(_)));
        if sources_failed && flight.peers_only.load(Ordering::Acquire) {
            debug!(%digest, "a copy for a peer: not fetched upstream");
        } else if sources_failed {
            let upstream = UpstreamSource {
                upstream: &self.upstream,
                store: &self.store,
                metrics,
                swarm: self.swarm.as_ref(),
                suspension: self.settings.peer_suspension,
                size_cap: self.size_cap(&origin),
                flight: &flight,
                digest,
                origin: &origin,
                commit: |writer, len| self.commit(writer, digest, len),
            };
            outcome = upstream.fetch(partial, &mut suspects).await;
            source = Source::Upstream;
            if outcome.is_ok() {
                metrics.blob_hit(Source::Upstream);
                metrics.blob_fetched(Source::Upstream, started.elapsed().as_secs_f64());
            }
        }
        match outcome {
            Ok((file, len)) => {
                info!(%digest, file = %origin.filename, len, "verified and stored");
                self.status.record_fetch(crate::status::RecentFetch {
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
                if let Some(stored) = &self.stored {
                    // A watcher that fell behind misses this one; the
                    // second-copy sweep still finds the blob later.
                    let _ = stored.try_send(Stored {
                        digest,
                        filename: origin.filename.clone(),
                        len,
                    });
                }
                // After the clients are released: judging re-reads files.
                if let (Some(swarm), false) = (self.swarm.as_ref(), suspects.is_empty()) {
                    let swarm = swarm.clone();
                    let suspension = self.settings.peer_suspension;
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
        lock(&self.flights).remove(&digest);
    }

    /// Verifies and stores a finished download, then announces it to peers
    /// and withdraws what eviction removed.
    pub(crate) async fn commit(
        &self,
        writer: BlobWriter,
        digest: Sha256Digest,
        len: u64,
    ) -> Result<(), CommitError> {
        let store = self.store.clone();
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
        if let Some(swarm) = self.swarm.as_ref() {
            for gone in evicted {
                let _ = swarm.unprovide(gone).await;
            }
            let _ = swarm.provide(digest).await;
        }
        Ok(())
    }

    /// Keeps bytes a signer published (a canonical page, a snapshot) as a
    /// blob under their own digest and announces it, so that `tuf` nodes
    /// get them over the swarm from the signer too (not only over HTTP from
    /// `/tuf/`). Returns their digest (kept or not: a failure is logged).
    pub(crate) async fn keep_blob(self: Arc<Self>, bytes: Vec<u8>) -> Sha256Digest {
        let digest = Sha256Digest::from_bytes(Sha256::digest(&bytes).into());
        if matches!(self.store.open_blob(&digest), Ok(Some(_))) {
            return digest;
        }
        let len = bytes.len() as u64;
        let store = self.store.clone();
        let written = tokio::task::spawn_blocking(move || {
            let mut writer = store.writer()?;
            writer.append(&bytes)?;
            Ok::<_, peerpi_store::StoreError>(writer)
        })
        .await;
        match written {
            Ok(Ok(writer)) => {
                if let Err(e) = self.commit(writer, digest, len).await {
                    warn!(%digest, error = ?e, "cannot keep a signed file's bytes");
                }
            }
            Ok(Err(e)) => warn!(%digest, error = %e, "cannot keep a signed file's bytes"),
            Err(e) => warn!(%digest, error = %e, "the page-keeping task failed"),
        }
        digest
    }

    /// The most bytes accepted for `origin` when no size is known.
    pub(crate) fn size_cap(&self, origin: &Origin) -> u64 {
        if origin.filename.ends_with(".metadata") {
            MAX_METADATA_SIZE
        } else {
            self.settings.max_file_size
        }
    }

    /// The bounds of the peer phase for a blob from `origin`.
    fn peer_bounds(&self, origin: &Origin) -> PeerBounds {
        let config = &self.settings;
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
