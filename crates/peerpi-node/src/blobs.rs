//! Blobs by digest: served from the store, or fetched once (single flight)
//! from upstream into a hashing temp file that every waiting client reads as
//! it grows. The last byte is released only after the digest matched, so a
//! client never receives a complete file that failed verification: on a
//! mismatch its response is cut short and nothing is stored.

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::{self, BoxStream, StreamExt};
use peerpi_core::Sha256Digest;
use peerpi_store::{BlobWriter, Origin, StoredBlob};
use peerpi_swarm::{PeerId, SwarmHandle};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::metrics::Source;
use crate::{lock, Node, NodeError};

/// Bytes from a peer gathered before one write to the temp file.
const PEER_WRITE_BATCH: usize = 1 << 20;

/// Chunks gathered for one write at most (a peer dripping single bytes would
/// otherwise make a batch of a million tiny chunks).
const MAX_BATCH_CHUNKS: usize = 4096;

/// Providers asked for one blob before the peer phase gives up.
const MAX_PROVIDERS_TRIED: usize = 8;

/// How long a peer transfer may run before its average rate is judged.
const MIN_RATE_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// Largest core-metadata file accepted (its size is never listed).
const MAX_METADATA_SIZE: u64 = 16 << 20;

/// How long to gather providers after the first one arrives.
const PROVIDER_WINDOW: std::time::Duration = std::time::Duration::from_millis(25);

/// Bytes read per read call from a growing temp file.
const READ_CHUNK: u64 = peerpi_store::READ_CHUNK;

/// The state of one download, shared with every client reading it.
#[derive(Clone)]
enum FlightState {
    /// Waiting for upstream's response headers.
    Connecting,
    /// Bytes `0..readable` of `file` may be read. `len` is the announced length.
    Streaming {
        file: Arc<File>,
        len: Option<u64>,
        readable: u64,
    },
    /// Verified and committed; all `len` bytes may be read.
    Done {
        file: Arc<File>,
        len: u64,
    },
    Failed(Arc<str>),
}

pub(crate) struct Flight {
    state: watch::Sender<FlightState>,
}

/// A blob body for a client.
pub enum BlobBody {
    /// In the store.
    Stored(StoredBlob),
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
        if let Some(stored) = self.inner.store.get(digest)? {
            self.inner.metrics.blob_hit(Source::Local);
            return Ok(BlobBody::Stored(stored));
        }
        let origin = self.origin(digest)?.ok_or_else(|| {
            NodeError::NotFound(format!(
                "no file with sha256 {digest} is known here: request its project page first"
            ))
        })?;
        let flight = {
            let mut flights = lock(&self.inner.flights);
            match flights.get(digest) {
                Some(f) => f.clone(),
                None => {
                    // A download may have been committed since the first check.
                    if let Some(stored) = self.inner.store.get(digest)? {
                        self.inner.metrics.blob_hit(Source::Local);
                        return Ok(BlobBody::Stored(stored));
                    }
                    let (tx, _) = watch::channel(FlightState::Connecting);
                    let flight = Arc::new(Flight { state: tx });
                    flights.insert(*digest, flight.clone());
                    tokio::spawn(self.clone().drive(*digest, origin.clone(), flight.clone()));
                    flight
                }
            }
        };
        let mut rx = flight.state.subscribe();
        // Wait for the response to start, so that its status is known.
        let len = loop {
            match &*rx.borrow_and_update() {
                FlightState::Connecting => {}
                FlightState::Streaming { len, .. } => break len.or(origin.size),
                FlightState::Done { len, .. } => break Some(*len),
                FlightState::Failed(reason) => return Err(NodeError::Upstream(reason.to_string())),
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

    /// The blob once it is verified and stored: waits for its download (if
    /// one runs) to end.
    pub async fn verified_blob(&self, digest: &Sha256Digest) -> Result<StoredBlob, NodeError> {
        let flight = lock(&self.inner.flights).get(digest).cloned();
        if let Some(flight) = flight {
            let mut rx = flight.state.subscribe();
            loop {
                match &*rx.borrow_and_update() {
                    FlightState::Done { .. } => break,
                    FlightState::Failed(reason) => {
                        return Err(NodeError::Upstream(reason.to_string()))
                    }
                    FlightState::Connecting | FlightState::Streaming { .. } => {}
                }
                if rx.changed().await.is_err() {
                    break;
                }
            }
        }
        self.inner.store.get(digest)?.ok_or_else(|| {
            NodeError::Upstream(format!(
                "the download of {digest} ended without a verified file"
            ))
        })
    }

    /// Runs one download to its end and records the outcome for its readers.
    async fn drive(self, digest: Sha256Digest, origin: Origin, flight: Arc<Flight>) {
        let started = std::time::Instant::now();
        let metrics = &self.inner.metrics;
        let mut outcome = Err("no source tried".to_string());
        let mut suspects = Vec::new();
        if let Some(swarm) = self.inner.swarm.get() {
            outcome = self
                .fetch_from_peers(swarm, &digest, &origin, &flight, &mut suspects)
                .await;
            match &outcome {
                Ok((_, len)) => {
                    metrics.blob_hit(Source::Peer);
                    metrics.upstream_bytes_saved(*len);
                    metrics.blob_fetched(Source::Peer, started.elapsed().as_secs_f64());
                }
                Err(reason) => debug!(%digest, %reason, "no peer delivered; going upstream"),
            }
        }
        if outcome.is_err() {
            outcome = self.fetch_upstream(&digest, &origin, &flight).await;
            if outcome.is_ok() {
                metrics.blob_hit(Source::Upstream);
                metrics.blob_fetched(Source::Upstream, started.elapsed().as_secs_f64());
            }
        }
        match outcome {
            Ok((file, len)) => {
                info!(%digest, file = %origin.filename, len, "verified and stored");
                flight.state.send_replace(FlightState::Done {
                    file: file.clone(),
                    len,
                });
                // After the clients are released: judging re-reads files.
                if let (Some(swarm), false) = (self.inner.swarm.get(), suspects.is_empty()) {
                    tokio::spawn(judge(swarm.clone(), digest, suspects, file));
                }
            }
            Err(reason) => {
                warn!(%digest, file = %origin.filename, %reason, "download failed");
                flight
                    .state
                    .send_replace(FlightState::Failed(reason.into()));
            }
        }
        lock(&self.inner.flights).remove(&digest);
    }

    async fn fetch_upstream(
        &self,
        digest: &Sha256Digest,
        origin: &Origin,
        flight: &Flight,
    ) -> Result<(Arc<File>, u64), String> {
        let metrics = &self.inner.metrics;
        let download = match self.inner.upstream.fetch_file(&origin.url, 0).await {
            Ok(d) => d,
            Err(e) => {
                metrics.upstream_request("file", "error");
                return Err(format!("fetching {} from upstream: {e}", origin.filename));
            }
        };
        if let (Some(announced), Some(expected)) = (download.content_length, origin.size) {
            if announced != expected {
                metrics.upstream_request("file", "bad_length");
                metrics.verification_failure(Source::Upstream);
                return Err(format!(
                    "upstream announced {announced} bytes for {}, the index lists {expected}",
                    origin.filename
                ));
            }
        }
        // Never accept more than was announced: a source cannot make us store
        // endless data. With nothing announced, the size cap applies.
        let limit = origin.size.or(download.content_length);
        let cap = limit.unwrap_or_else(|| self.size_cap(origin));
        let mut writer = self.inner.store.writer().map_err(|e| e.to_string())?;
        let file = writer.reader().map_err(|e| e.to_string())?;
        flight.state.send_replace(FlightState::Streaming {
            file: file.clone(),
            len: limit,
            readable: 0,
        });
        let mut body = download.body;
        while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    metrics.upstream_request("file", "error");
                    return Err(format!("downloading {}: {e}", origin.filename));
                }
            };
            if writer.len() + chunk.len() as u64 > cap {
                metrics.upstream_request("file", "bad_length");
                metrics.verification_failure(Source::Upstream);
                return Err(format!(
                    "upstream sent more than {} bytes for {}",
                    cap, origin.filename
                ));
            }
            metrics.blob_bytes(Source::Upstream, chunk.len() as u64);
            writer = append(writer, chunk).await?;
            // Hold back the last byte until the digest is checked.
            let readable = writer.len().saturating_sub(1);
            flight.state.send_modify(|s| {
                if let FlightState::Streaming { readable: r, .. } = s {
                    *r = readable;
                }
            });
        }
        let len = writer.len();
        if let Some(expected) = limit.filter(|&l| l != len) {
            metrics.upstream_request("file", "truncated");
            return Err(format!(
                "upstream sent {len} of {expected} bytes for {}",
                origin.filename
            ));
        }
        match self.commit(writer, digest, len).await {
            Ok(()) => {
                metrics.upstream_request("file", "ok");
                Ok((file, len))
            }
            Err(CommitError::Mismatch(e)) => {
                metrics.upstream_request("file", "bad_digest");
                metrics.verification_failure(Source::Upstream);
                Err(format!(
                    "upstream sent bad content for {}: {e}",
                    origin.filename
                ))
            }
            Err(CommitError::Other(e)) => Err(format!("storing {}: {e}", origin.filename)),
        }
    }

    /// Verifies and stores a finished download, then announces it to peers
    /// and withdraws what eviction removed.
    async fn commit(
        &self,
        writer: BlobWriter,
        digest: &Sha256Digest,
        len: u64,
    ) -> Result<(), CommitError> {
        let store = self.inner.store.clone();
        let digest_owned = *digest;
        let committed =
            tokio::task::spawn_blocking(move || store.commit(writer, &digest_owned, Some(len)))
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
        if let Some(swarm) = self.inner.swarm.get() {
            for gone in evicted {
                let _ = swarm.unprovide(gone).await;
            }
            let _ = swarm.provide(*digest).await;
        }
        Ok(())
    }

    /// The most bytes accepted for `origin` when no size is known.
    fn size_cap(&self, origin: &Origin) -> u64 {
        if origin.filename.ends_with(".metadata") {
            MAX_METADATA_SIZE
        } else {
            self.inner.config.max_file_size
        }
    }

    /// Fetches from peers that announce the CID, one at a time, resuming at
    /// the current offset when a peer stalls, drops or falls below the
    /// minimum rate. Bounded three ways: the first provider must appear
    /// within the peer deadline, at most `MAX_PROVIDERS_TRIED` are asked, and
    /// the whole phase ends once it has taken longer than the blob at the
    /// minimum rate (plus a grace).
    ///
    /// Peer bytes are held back from clients (no response head either)
    /// for the hold-back time: a peer is not trusted, and pip does not retry
    /// a cut-short download, so within it a bad peer costs the client
    /// nothing. A transfer still running after it is released as it arrives,
    /// last byte after verification, so that the client's read timeout does
    /// not end a large download from a slow honest peer.
    ///
    /// A peer that lies about the size or sends bad bytes is blocked; one
    /// that breaks off or is too slow is suspended. When bytes from several
    /// peers fail verification together, the hash cannot say who lied: their
    /// attempts go to `suspects`, to be judged against the verified blob once
    /// one is stored (see `judge`).
    async fn fetch_from_peers(
        &self,
        swarm: &SwarmHandle,
        digest: &Sha256Digest,
        origin: &Origin,
        flight: &Flight,
        suspects: &mut Vec<Attempt>,
    ) -> Result<(Arc<File>, u64), String> {
        let metrics = &self.inner.metrics;
        let config = &self.inner.config;
        let started = tokio::time::Instant::now();
        let release_at = started + config.peer_hold_back;
        let min_rate = config.peer_min_rate.max(1) as f64;
        let cap = origin.size.unwrap_or_else(|| self.size_cap(origin));
        let mut providers = swarm
            .find_providers(*digest)
            .await
            .map_err(|e| e.to_string())?;
        let deadline = started + config.peer_deadline;
        let mut phase_deadline = None;
        let mut tried: HashSet<PeerId> = HashSet::new();
        let mut queue: Vec<PeerId> = Vec::new();
        let mut contributors: Vec<(PeerId, std::ops::Range<u64>)> = Vec::new();
        let (mut writer, mut file) = self.new_peer_writer()?;
        let mut released = false;
        loop {
            if queue.is_empty() {
                match tokio::time::timeout_at(deadline, providers.recv()).await {
                    Ok(Some(p)) => queue.push(p),
                    Ok(None) => return Err("no (more) providers".into()),
                    Err(_) => return Err("no provider delivered before the peer deadline".into()),
                }
                // Providers arrive one DHT response at a time: gather what
                // comes within a short window so that region and RTT can
                // choose among them, without waiting for the whole query.
                let _ = tokio::time::timeout(PROVIDER_WINDOW, async {
                    while let Some(p) = providers.recv().await {
                        queue.push(p);
                    }
                })
                .await;
                order_providers(swarm, &mut queue);
            }
            let peer = queue.remove(0);
            if peer == swarm.local_peer_id() || swarm.is_blocked(&peer) || !tried.insert(peer) {
                continue;
            }
            if tried.len() > MAX_PROVIDERS_TRIED {
                return Err(format!("{MAX_PROVIDERS_TRIED} providers tried"));
            }
            let offset = writer.len();
            let mut download = match swarm.fetch(peer, *digest, offset).await {
                Ok(d) => d,
                Err(e) => {
                    debug!(%peer, %digest, "peer fetch did not start: {e}");
                    continue;
                }
            };
            metrics.peer_transfer(download.channel().as_str());
            let total = offset + download.remaining;
            let size_lie = match origin.size {
                Some(expected) => total != expected,
                None => total > cap,
            };
            if size_lie {
                warn!(%peer, %digest, announced = total, listed = ?origin.size, cap, "peer announces a size that is not the listed one, or over the cap; blocking it");
                metrics.verification_failure(Source::Peer);
                let _ = swarm.block(peer).await;
                continue;
            }
            let phase_deadline = *phase_deadline.get_or_insert_with(|| {
                tokio::time::Instant::now()
                    + MIN_RATE_GRACE
                    + std::time::Duration::from_secs_f64(total as f64 / min_rate)
            });
            contributors.push((peer, offset..offset));
            let transfer_started = tokio::time::Instant::now();
            let mut received_here = 0u64;
            let mut complete = true;
            let mut phase_over = false;
            // Peer bytes are written in large batches, one at a time on
            // blocking threads while the next batch arrives.
            let mut pending = Batch::default();
            loop {
                let wake = if released {
                    phase_deadline
                } else {
                    phase_deadline.min(release_at)
                };
                let chunk = match tokio::time::timeout_at(wake, download.next_chunk()).await {
                    Err(_) if !released && tokio::time::Instant::now() >= release_at => {
                        writer.push(std::mem::take(&mut pending)).await?;
                        released = true;
                        debug!(%digest, "peer transfer outlasts the hold-back; releasing its bytes to clients as they arrive");
                        publish_progress(flight, &file, total, writer.written());
                        continue;
                    }
                    Err(_) => {
                        warn!(%peer, %digest, "the peer phase ran past its deadline; suspending the peer");
                        let _ = swarm.suspend(peer, config.peer_suspension).await;
                        complete = false;
                        phase_over = true;
                        break;
                    }
                    Ok(Ok(Some(chunk))) => chunk,
                    Ok(Ok(None)) => break,
                    Ok(Err(e)) => {
                        warn!(%peer, %digest, at = writer.len() + pending.len as u64, "peer transfer failed: {e}; suspending it and resuming elsewhere");
                        let _ = swarm.suspend(peer, config.peer_suspension).await;
                        complete = false;
                        break;
                    }
                };
                metrics.blob_bytes(Source::Peer, chunk.len() as u64);
                received_here += chunk.len() as u64;
                pending.add(chunk);
                if pending.len >= PEER_WRITE_BATCH || pending.chunks.len() >= MAX_BATCH_CHUNKS {
                    writer.push(std::mem::take(&mut pending)).await?;
                    if released {
                        publish_progress(flight, &file, total, writer.written());
                    }
                }
                let elapsed = transfer_started.elapsed();
                if elapsed >= MIN_RATE_GRACE
                    && (received_here as f64) < min_rate * elapsed.as_secs_f64()
                {
                    warn!(%peer, %digest, received = received_here, ?elapsed, "peer transfer below the minimum rate; suspending it and resuming elsewhere");
                    let _ = swarm.suspend(peer, config.peer_suspension).await;
                    complete = false;
                    break;
                }
            }
            writer.push(pending).await?;
            if let Some((_, range)) = contributors.last_mut() {
                range.end = writer.len();
            }
            // A peer that sent nothing is no suspect in a failed verification.
            if contributors
                .last()
                .is_some_and(|(_, range)| range.is_empty())
            {
                contributors.pop();
            }
            if phase_over {
                return Err("the peer phase ran past its deadline".into());
            }
            if !complete {
                continue;
            }
            let len = writer.len();
            let received = started.elapsed();
            let finished = writer.finish().await?;
            let written = started.elapsed();
            match self.commit(finished, digest, len).await {
                Ok(()) => {
                    info!(
                        %digest, file = %origin.filename, len, from = %peer,
                        channel = download.channel().as_str(),
                        received_ms = received.as_millis() as u64,
                        written_ms = written.as_millis() as u64,
                        stored_ms = started.elapsed().as_millis() as u64,
                        "verified and stored from peers"
                    );
                    return Ok((file, len));
                }
                Err(CommitError::Mismatch(e)) => {
                    metrics.verification_failure(Source::Peer);
                    if let [(liar, _)] = contributors[..] {
                        warn!(peer = %liar, %digest, "bad content from peer ({e}); blocking it");
                        let _ = swarm.block(liar).await;
                    } else {
                        for (peer, _) in &contributors {
                            warn!(%peer, %digest, "bad content from several peers ({e}); suspending them until a verified copy tells who lied");
                            let _ = swarm.suspend(*peer, config.peer_suspension).await;
                        }
                        suspects.push(Attempt {
                            file: file.clone(),
                            parts: std::mem::take(&mut contributors),
                        });
                    }
                    contributors.clear();
                    (writer, file) = self.new_peer_writer()?;
                    released = false;
                }
                Err(CommitError::Other(e)) => return Err(e),
            }
        }
    }

    /// A fresh temp file for a peer fetch; clients see none of it until it is
    /// released or verified.
    fn new_peer_writer(&self) -> Result<(BackgroundWriter, Arc<File>), String> {
        let writer = self.inner.store.writer().map_err(|e| e.to_string())?;
        let file = writer.reader().map_err(|e| e.to_string())?;
        Ok((BackgroundWriter::new(writer, file.clone()), file))
    }
}

/// Lets clients read a released peer transfer up to what is written, less
/// the last byte (which waits for verification).
fn publish_progress(flight: &Flight, file: &Arc<File>, total: u64, written: u64) {
    flight.state.send_replace(FlightState::Streaming {
        file: file.clone(),
        len: Some(total),
        readable: written.min(total).saturating_sub(1),
    });
}

/// Received chunks gathered for one append, without copying them together.
#[derive(Default)]
struct Batch {
    chunks: Vec<Bytes>,
    len: usize,
}

impl Batch {
    fn add(&mut self, chunk: Bytes) {
        self.len += chunk.len();
        self.chunks.push(chunk);
    }
}

/// A temp-file writer whose appends (write and hash, in parallel) run on
/// blocking threads, one batch at a time, while the caller receives the next
/// batch. Every `SYNC_EVERY` bytes it also starts flushing what is written to
/// disk on another thread, so that the fsync before the commit finds little
/// left to do.
struct BackgroundWriter {
    idle: Option<BlobWriter>,
    /// The append running, and the length once it is done.
    busy: Option<(
        tokio::task::JoinHandle<Result<BlobWriter, peerpi_store::StoreError>>,
        u64,
    )>,
    file: Arc<File>,
    /// Bytes in the file (appends finished).
    written: u64,
    syncing: Option<tokio::task::JoinHandle<io::Result<()>>>,
    /// Bytes handed over, written or not yet.
    len: u64,
    synced_at: u64,
}

/// Bytes between background flushes of a peer download's temp file.
const SYNC_EVERY: u64 = 16 << 20;

impl BackgroundWriter {
    fn new(writer: BlobWriter, file: Arc<File>) -> Self {
        let len = writer.len();
        Self {
            idle: Some(writer),
            busy: None,
            file,
            written: len,
            syncing: None,
            len,
            synced_at: len,
        }
    }

    fn len(&self) -> u64 {
        self.len
    }

    fn written(&self) -> u64 {
        self.written
    }

    async fn push(&mut self, batch: Batch) -> Result<(), String> {
        let mut writer = self.wait().await?;
        if batch.len == 0 {
            self.idle = Some(writer);
            return Ok(());
        }
        self.len += batch.len as u64;
        let task = tokio::task::spawn_blocking(move || {
            writer.append_batch(&batch.chunks).map(|()| writer)
        });
        self.busy = Some((task, self.len));
        let sync_idle = self.syncing.as_ref().is_none_or(|s| s.is_finished());
        if self.len - self.synced_at >= SYNC_EVERY && sync_idle {
            self.synced_at = self.len;
            let file = self.file.clone();
            // Errors surface in the commit's own fsync.
            self.syncing = Some(tokio::task::spawn_blocking(move || file.sync_data()));
        }
        Ok(())
    }

    /// The writer, once its last append finished.
    async fn wait(&mut self) -> Result<BlobWriter, String> {
        if let Some((busy, len)) = self.busy.take() {
            let writer = busy
                .await
                .map_err(|e| format!("write task failed: {e}"))?
                .map_err(|e| e.to_string())?;
            self.written = len;
            return Ok(writer);
        }
        // Invariant: one of `idle` and `busy` is set between calls; an error
        // above ends the fetch, which drops this writer.
        self.idle
            .take()
            .ok_or_else(|| "temp file writer used after a failed write".to_string())
    }

    async fn finish(mut self) -> Result<BlobWriter, String> {
        let writer = self.wait().await?;
        if let Some(syncing) = self.syncing.take() {
            let _ = syncing.await;
        }
        Ok(writer)
    }
}

/// A peer attempt that failed verification with bytes from several peers:
/// its temp file (unlinked, still open) and who sent which range.
pub(crate) struct Attempt {
    file: Arc<File>,
    parts: Vec<(PeerId, std::ops::Range<u64>)>,
}

/// Compares each suspect's range with the verified blob `good` and blocks
/// the peers whose bytes differ; the others were honest (they stay only
/// suspended for breaking off, if they did).
async fn judge(swarm: SwarmHandle, digest: Sha256Digest, attempts: Vec<Attempt>, good: Arc<File>) {
    for attempt in attempts {
        for (peer, range) in attempt.parts {
            let (bad, good) = (attempt.file.clone(), good.clone());
            let differs = tokio::task::spawn_blocking(move || ranges_differ(&bad, &good, range))
                .await
                .unwrap_or(Ok(false));
            match differs {
                Ok(true) => {
                    warn!(%peer, %digest, "its part of a failed transfer differs from the verified blob; blocking it");
                    let _ = swarm.block(peer).await;
                }
                Ok(false) => info!(%peer, %digest, "its part of a failed transfer was correct"),
                Err(e) => warn!(%peer, %digest, "cannot compare a failed transfer: {e}"),
            }
        }
    }
}

fn ranges_differ(a: &File, b: &File, range: std::ops::Range<u64>) -> io::Result<bool> {
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

enum CommitError {
    /// The bytes are not the ones the digest names.
    Mismatch(String),
    Other(String),
}

/// Same region first, then lower round-trip time, unknown last.
fn order_providers(swarm: &SwarmHandle, queue: &mut [PeerId]) {
    let mine = swarm.region().map(str::to_string);
    queue.sort_by_key(|peer| {
        let info = swarm.peer_info(peer);
        let same_region = info
            .as_ref()
            .and_then(|i| i.region.clone())
            .is_some_and(|r| Some(r) == mine);
        let rtt = info.and_then(|i| i.rtt).unwrap_or(std::time::Duration::MAX);
        (!same_region, rtt)
    });
}

async fn append(mut writer: BlobWriter, chunk: Bytes) -> Result<BlobWriter, String> {
    tokio::task::spawn_blocking(move || writer.append(&chunk).map(|()| writer))
        .await
        .map_err(|e| format!("write task failed: {e}"))?
        .map_err(|e| e.to_string())
}

/// A client's view of a download: what is readable, as it becomes readable;
/// an error (which cuts the response short) if the download fails, or if
/// the bytes it was reading were given up for another source's.
fn follow(rx: watch::Receiver<FlightState>) -> impl futures_util::Stream<Item = io::Result<Bytes>> {
    stream::unfold(Some((rx, 0u64, None::<Arc<File>>)), |cursor| async move {
        let (mut rx, offset, mut reading) = cursor?;
        loop {
            let state = rx.borrow_and_update().clone();
            let readable = match &state {
                FlightState::Streaming { file, readable, .. } => Some((file.clone(), *readable)),
                FlightState::Done { file, len } => Some((file.clone(), *len)),
                FlightState::Failed(reason) => {
                    return Some((Err(io::Error::other(reason.to_string())), None));
                }
                FlightState::Connecting => None,
            };
            if let Some((file, end)) = readable {
                if offset > 0 && reading.as_ref().is_some_and(|r| !Arc::ptr_eq(r, &file)) {
                    let reason = "the source this response was reading failed; retry";
                    return Some((Err(io::Error::other(reason)), None));
                }
                reading = Some(file.clone());
                if offset < end {
                    let want = (end - offset).min(READ_CHUNK);
                    return match read_at(file, offset, want).await {
                        Ok(bytes) => {
                            let next = offset + bytes.len() as u64;
                            Some((Ok(bytes), Some((rx, next, reading))))
                        }
                        Err(e) => Some((Err(e), None)),
                    };
                }
                if matches!(state, FlightState::Done { .. }) {
                    return None;
                }
            }
            if rx.changed().await.is_err() {
                return Some((Err(io::Error::other("download abandoned")), None));
            }
        }
    })
}

async fn read_at(file: Arc<File>, offset: u64, len: u64) -> io::Result<Bytes> {
    tokio::task::spawn_blocking(move || peerpi_store::read_exact_at(&file, offset, len))
        .await
        .map_err(io::Error::other)?
}
