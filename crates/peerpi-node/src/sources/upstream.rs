//! The upstream source: the file's URL from the index page, streamed into
//! the flight's temp file with every byte readable by clients as it lands
//! (the last one after verification). Never more than was announced or
//! listed, or the size cap when neither was.

use std::fs::File;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use peerpi_core::Sha256Digest;
use peerpi_store::{BlobWriter, Origin};

use crate::flight::{CommitError, Flight, FlightState};
use crate::metrics::Source;
use crate::Node;

impl Node {
    pub(crate) async fn fetch_upstream(
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
        match self.commit(writer, *digest, len).await {
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
}

async fn append(mut writer: BlobWriter, chunk: Bytes) -> Result<BlobWriter, String> {
    tokio::task::spawn_blocking(move || writer.append(&chunk).map(|()| writer))
        .await
        .map_err(|e| format!("write task failed: {e}"))?
        .map_err(|e| e.to_string())
}
