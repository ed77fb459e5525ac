//! Blobs by digest: served from the store, or fetched once (single flight)
//! from upstream into a hashing temp file that every waiting client reads as
//! it grows. The last byte is released only after the digest matched, so a
//! client never receives a complete file that failed verification: on a
//! mismatch its response is cut short and nothing is stored.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::{self, BoxStream, StreamExt};
use peerpi_core::Sha256Digest;
use peerpi_store::{BlobWriter, Origin, StoredBlob};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::metrics::Source;
use crate::{lock, Node, NodeError};

/// Bytes read per read call, from temp files and stored blobs alike.
const READ_CHUNK: u64 = 256 * 1024;

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
    /// Being fetched; `len` when known in advance.
    Fetching {
        len: Option<u64>,
        source: Source,
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
        self.inner.metrics.blob_hit(Source::Upstream);
        Ok(BlobBody::Fetching {
            len,
            source: Source::Upstream,
            stream: follow(rx).boxed(),
        })
    }

    /// Runs one download to its end and records the outcome for its readers.
    async fn drive(self, digest: Sha256Digest, origin: Origin, flight: Arc<Flight>) {
        let outcome = self.fetch_upstream(&digest, &origin, &flight).await;
        match outcome {
            Ok((file, len)) => {
                info!(%digest, file = %origin.filename, len, "verified and stored");
                flight.state.send_replace(FlightState::Done { file, len });
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
        // Never accept more than was announced: a source cannot make us store endless data.
        let limit = origin.size.or(download.content_length);
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
            if limit.is_some_and(|l| writer.len() + chunk.len() as u64 > l) {
                metrics.upstream_request("file", "bad_length");
                metrics.verification_failure(Source::Upstream);
                return Err(format!(
                    "upstream sent more bytes than announced for {}",
                    origin.filename
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
        let store = self.inner.store.clone();
        let digest_owned = *digest;
        let committed =
            tokio::task::spawn_blocking(move || store.commit(writer, &digest_owned, Some(len)))
                .await
                .map_err(|e| format!("commit task failed: {e}"))?;
        match committed {
            Ok(_evicted) => {
                metrics.upstream_request("file", "ok");
                Ok((file, len))
            }
            Err(
                e @ (peerpi_store::StoreError::DigestMismatch { .. }
                | peerpi_store::StoreError::LengthMismatch { .. }),
            ) => {
                metrics.upstream_request("file", "bad_digest");
                metrics.verification_failure(Source::Upstream);
                Err(format!(
                    "upstream sent bad content for {}: {e}",
                    origin.filename
                ))
            }
            Err(e) => Err(format!("storing {}: {e}", origin.filename)),
        }
    }
}

async fn append(mut writer: BlobWriter, chunk: Bytes) -> Result<BlobWriter, String> {
    tokio::task::spawn_blocking(move || writer.append(&chunk).map(|()| writer))
        .await
        .map_err(|e| format!("write task failed: {e}"))?
        .map_err(|e| e.to_string())
}

/// A client's view of a download: what is readable, as it becomes readable;
/// an error (which cuts the response short) if the download fails.
fn follow(rx: watch::Receiver<FlightState>) -> impl futures_util::Stream<Item = io::Result<Bytes>> {
    stream::unfold(Some((rx, 0u64)), |cursor| async move {
        let (mut rx, offset) = cursor?;
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
                if offset < end {
                    let want = (end - offset).min(READ_CHUNK);
                    return match read_at(file, offset, want).await {
                        Ok(bytes) => {
                            let next = offset + bytes.len() as u64;
                            Some((Ok(bytes), Some((rx, next))))
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

/// Bytes `start..start + len` of `file`. One blocking task reads ahead of the
/// client by at most `READ_AHEAD` chunks, so disk reads overlap socket writes
/// and memory per download stays bounded.
pub(crate) fn file_range(
    file: Arc<File>,
    start: u64,
    len: u64,
) -> impl futures_util::Stream<Item = io::Result<Bytes>> {
    const READ_AHEAD: usize = 4;
    let (tx, rx) = tokio::sync::mpsc::channel(READ_AHEAD);
    tokio::task::spawn_blocking(move || {
        let end = start + len;
        let mut offset = start;
        while offset < end {
            let result = read_exact_at(&file, offset, (end - offset).min(READ_CHUNK));
            let failed = result.is_err();
            if let Ok(bytes) = &result {
                offset += bytes.len() as u64;
            }
            // A closed channel means the client went away.
            if tx.blocking_send(result).is_err() || failed {
                break;
            }
        }
    });
    stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
}

fn read_exact_at(file: &File, offset: u64, len: u64) -> io::Result<Bytes> {
    let mut buf = vec![0u8; len as usize];
    let mut filled = 0usize;
    while filled < buf.len() {
        let n = file.read_at(&mut buf[filled..], offset + filled as u64)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shorter than recorded",
            ));
        }
        filled += n;
    }
    Ok(Bytes::from(buf))
}

async fn read_at(file: Arc<File>, offset: u64, len: u64) -> io::Result<Bytes> {
    tokio::task::spawn_blocking(move || read_exact_at(&file, offset, len))
        .await
        .map_err(io::Error::other)?
}
