//! The upstream source: the file's URL from the index page, streamed into
//! the flight's temp file with every byte readable by clients as it lands
//! (the last one after verification). Never more than was announced or
//! listed, or the size cap when neither was. When the peer phase left bytes
//! behind, it continues that file from their end (a range request), so a
//! client already reading them gets the rest instead of a cut response.

use std::fs::File;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use peerpi_core::Sha256Digest;
use peerpi_store::{BlobWriter, Origin, Store};
use peerpi_swarm::SwarmHandle;
use peerpi_upstream::Upstream;
use tracing::{debug, warn};

use crate::flight::{CommitError, Flight, FlightFailure, FlightState};
use crate::metrics::{Metrics, Source};
use crate::reputation::Misdeed;
use crate::sources::peers::{Attempt, Partial, PeerNetwork};

/// Why an upstream download did not deliver.
enum Failure {
    /// Starting again from the first byte may still work: the range was
    /// refused, or the bytes continued on failed verification.
    Retry(String),
    Final(String),
    /// The store could not hold the bytes (a full disk): no source would
    /// do better now.
    Store(String),
}

impl From<Failure> for FlightFailure {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::Retry(e) | Failure::Final(e) => FlightFailure::Sources(e.into()),
            Failure::Store(e) => FlightFailure::Store(e.into()),
        }
    }
}

/// The upstream download of one flight, from the parts it uses.
pub(crate) struct UpstreamSource<'a, C> {
    pub upstream: &'a Upstream,
    pub store: &'a Store,
    pub metrics: &'a Metrics,
    /// Where peers whose bytes were continued are sentenced.
    pub swarm: Option<&'a SwarmHandle>,
    pub suspension: Duration,
    /// The most bytes accepted when no size is listed or announced.
    pub size_cap: u64,
    pub flight: &'a Flight,
    pub digest: Sha256Digest,
    pub origin: &'a Origin,
    /// Verifies and stores a finished temp file (announcing it).
    pub commit: C,
}

impl<C, F> UpstreamSource<'_, C>
where
    C: Fn(BlobWriter, u64) -> F,
    F: Future<Output = Result<(), CommitError>>,
{
    /// Fetches the blob upstream: continuing `partial` when the peer phase
    /// left one, else (or when that fails) from the first byte. A continued
    /// file that fails verification makes its peers suspects, judged once
    /// the full download is verified.
    pub(crate) async fn fetch(
        &self,
        partial: Option<Partial>,
        suspects: &mut Vec<Attempt>,
    ) -> Result<(Arc<File>, u64), FlightFailure> {
        let (digest, origin) = (&self.digest, self.origin);
        if let Some(Partial {
            writer,
            file,
            parts,
        }) = partial
        {
            let from = writer.len();
            match self.download(writer, file.clone()).await {
                Ok(done) => return Ok(done),
                Err(e @ (Failure::Final(_) | Failure::Store(_))) => return Err(e.into()),
                Err(Failure::Retry(e)) => {
                    debug!(%digest, from, "continuing the peers' bytes upstream failed ({e}); fetching it whole");
                    if let Some(swarm) = self.swarm {
                        let verdict = Misdeed::Suspect.verdict(self.suspension);
                        for part in &parts {
                            swarm.sentence(part.peer, verdict).await;
                        }
                    }
                    if !parts.is_empty() {
                        suspects.push(Attempt::new(file, parts));
                    }
                }
            }
        }
        let store_failure =
            |e: peerpi_store::StoreError| FlightFailure::from(store_full(origin, e));
        let writer = self.store.writer().map_err(store_failure)?;
        let file = writer.reader().map_err(store_failure)?;
        self.download(writer, file)
            .await
            .map_err(FlightFailure::from)
    }

    /// Downloads into `writer` from its length on, then verifies and stores.
    async fn download(
        &self,
        mut writer: BlobWriter,
        file: Arc<File>,
    ) -> Result<(Arc<File>, u64), Failure> {
        let (digest, origin, flight, metrics) =
            (&self.digest, self.origin, self.flight, self.metrics);
        let from = writer.len();
        // A listed size the disk cannot hold is refused before the index is
        // asked: its bytes would only be thrown away.
        if let Some(size) = origin.size {
            self.store
                .disk_room_for(size.saturating_sub(from))
                .map_err(|e| store_full(origin, e))?;
        }
        let download = match self.upstream.fetch_file(&origin.url, from).await {
            Ok(d) => d,
            Err(e @ peerpi_upstream::UpstreamError::Status { .. }) if from > 0 => {
                return Err(Failure::Retry(e.to_string()));
            }
            Err(e) => {
                metrics.upstream_request("file", "error");
                return Err(Failure::Final(format!(
                    "fetching {} from upstream: {e}",
                    origin.filename
                )));
            }
        };
        let announced = download.content_length.map(|rest| from + rest);
        if let (Some(announced), Some(expected)) = (announced, origin.size) {
            if announced != expected {
                metrics.upstream_request("file", "bad_length");
                metrics.verification_failure(Source::Upstream);
                return Err(Failure::Final(format!(
                    "upstream announced {announced} bytes for {}, the index lists {expected}",
                    origin.filename
                )));
            }
        }
        // Never accept more than was announced: a source cannot make us store
        // endless data. With nothing announced, the size cap applies.
        let limit = origin.size.or(announced);
        let cap = limit.unwrap_or(self.size_cap);
        // Before a client gets a response head: a file the disk cannot
        // hold would be cut short, where a refusal can say why.
        if let (None, Some(size)) = (origin.size, announced) {
            self.store
                .disk_room_for(size.saturating_sub(from))
                .map_err(|e| store_full(origin, e))?;
        }
        flight.state.send_replace(FlightState::Streaming {
            file: file.clone(),
            len: limit,
            readable: from.saturating_sub(1),
        });
        if let Some(len) = limit {
            flight.offer(&file, len, from);
        }
        let mut body = download.body;
        while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    metrics.upstream_request("file", "error");
                    return Err(Failure::Final(format!(
                        "downloading {}: {e}",
                        origin.filename
                    )));
                }
            };
            if writer.len() + chunk.len() as u64 > cap {
                metrics.upstream_request("file", "bad_length");
                metrics.verification_failure(Source::Upstream);
                return Err(Failure::Final(format!(
                    "upstream sent more than {} bytes for {}",
                    cap, origin.filename
                )));
            }
            metrics.blob_bytes(Source::Upstream, chunk.len() as u64);
            writer = append(writer, chunk)
                .await
                .map_err(|e| store_full(origin, e))?;
            // Hold back the last byte until the digest is checked.
            let readable = writer.len().saturating_sub(1);
            flight.state.send_modify(|s| {
                if let FlightState::Streaming { readable: r, .. } = s {
                    *r = readable;
                }
            });
            if let Some(len) = limit {
                flight.offer(&file, len, writer.len());
            }
        }
        let len = writer.len();
        if let Some(expected) = limit.filter(|&l| l != len) {
            metrics.upstream_request("file", "truncated");
            return Err(Failure::Final(format!(
                "upstream sent {len} of {expected} bytes for {}",
                origin.filename
            )));
        }
        match (self.commit)(writer, len).await {
            Ok(()) => {
                metrics.upstream_request("file", "ok");
                Ok((file, len))
            }
            Err(CommitError::Mismatch(e)) if from > 0 => {
                warn!(%digest, from, "peer bytes continued upstream failed verification ({e})");
                metrics.verification_failure(Source::Peer);
                Err(Failure::Retry(e))
            }
            Err(CommitError::Mismatch(e)) => {
                metrics.upstream_request("file", "bad_digest");
                metrics.verification_failure(Source::Upstream);
                Err(Failure::Final(format!(
                    "upstream sent bad content for {}: {e}",
                    origin.filename
                )))
            }
            Err(CommitError::Other(e)) => Err(Failure::Store(format!(
                "this node's store cannot keep {} ({e}); retry once the disk has room",
                origin.filename
            ))),
        }
    }
}

/// The store could not take `origin`'s bytes.
fn store_full(origin: &Origin, error: impl std::fmt::Display) -> Failure {
    Failure::Store(format!(
        "this node's store cannot write {} ({error}); retry once the disk has room",
        origin.filename
    ))
}

async fn append(
    mut writer: BlobWriter,
    chunk: Bytes,
) -> Result<BlobWriter, peerpi_store::StoreError> {
    tokio::task::spawn_blocking(move || writer.append(&chunk).map(|()| writer))
        .await
        .map_err(|e| peerpi_store::StoreError::Unavailable(format!("write task failed: {e}")))?
}
