//! The serving side of the blob protocol: answers requests from the store,
//! on the stream itself or by a ticket for the bulk channel, streaming with
//! backpressure, within the limits of `limits`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{AsyncWriteExt, Stream, StreamExt};
use libp2p::PeerId;
use peerpi_store::Store;
use tracing::{debug, warn};

use crate::limits::{Limits, Permits};
use crate::protocol::{self, Response, Status};
use crate::Shared;

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
    let ip = shared.peer_ip(&peer);
    let Some(permits) = admitted.then(|| limits.permits(peer, ip)).flatten() else {
        return protocol::write_response(&mut stream, &refuse(Status::Busy)).await;
    };
    #[cfg(feature = "adversary")]
    if let Some(status) = crate::adversary::refusal(shared).await {
        return protocol::write_response(&mut stream, &refuse(status)).await;
    }
    let (file, blob_len, follower) = match store.get(&request.digest) {
        Ok(Some(blob)) => match std::fs::File::open(&blob.path) {
            Ok(f) => (Arc::new(f), blob.size, None),
            // Evicted between lookup and open.
            Err(_) => {
                return protocol::write_response(&mut stream, &refuse(Status::NotFound)).await
            }
        },
        _ => {
            let in_flight = request
                .accepts_in_flight
                .then(|| shared.in_flight_from(&request.digest, request.offset))
                .flatten();
            match in_flight {
                Some((follower, progress)) => (progress.file, progress.len, Some(follower)),
                None => {
                    let status = if shared.is_fetching(&request.digest) {
                        Status::Pending
                    } else if request.accepts_in_flight && shared.is_waiting(&request.digest) {
                        Status::Waiting
                    } else {
                        Status::NotFound
                    };
                    return protocol::write_response(&mut stream, &refuse(status)).await;
                }
            }
        }
    };
    if request.offset > blob_len {
        return protocol::write_response(&mut stream, &refuse(Status::BadRequest)).await;
    }
    let in_flight = follower.is_some();
    if in_flight {
        shared
            .counters
            .in_flight_served
            .fetch_add(1, Ordering::Relaxed);
    }
    let remaining = blob_len - request.offset;
    let grant = Grant {
        peer,
        digest: request.digest,
        file,
        offset: request.offset,
        len: remaining,
        follower,
        permits,
    };
    if let Some(bulk) = shared.bulk.as_ref() {
        if request.can_redirect && remaining >= bulk.min_size {
            match bulk.issue(grant) {
                Ok(ticket) => {
                    let redirect = Response::Redirect {
                        remaining,
                        port: bulk.port,
                        ticket,
                        in_flight,
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
    let remaining = crate::adversary::announced(shared, remaining);
    let data = Response::Data {
        remaining,
        in_flight,
    };
    protocol::write_response(&mut stream, &data).await?;
    let mut body = std::pin::pin!(outgoing(shared.clone(), grant));
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
    /// For a blob still being fetched here: how far `file` is written.
    pub(crate) follower: Option<crate::in_flight::Follower>,
    pub(crate) permits: Permits,
}

/// The bytes of one transfer, for either channel: paced by the upload limit
/// and counted as they go. The permits are released when the stream is
/// dropped.
pub(crate) fn outgoing(
    shared: Arc<Shared>,
    grant: Grant,
) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    struct Transfer {
        chunks: futures_util::stream::BoxStream<'static, std::io::Result<Bytes>>,
        shared: Arc<Shared>,
        peer: PeerId,
        sent: u64,
        #[cfg_attr(not(feature = "adversary"), allow(dead_code))]
        len: u64,
        _permits: Permits,
    }
    let chunks = match grant.follower {
        Some(follower) => crate::in_flight::follow(
            follower,
            grant.file,
            grant.offset,
            grant.len,
            shared.stream_timeout,
        )
        .boxed(),
        None => peerpi_store::read_range(grant.file, grant.offset, grant.len).boxed(),
    };
    let transfer = Transfer {
        chunks,
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
                crate::adversary::lie_at_end(&t.shared).await;
                return None;
            }
        };
        #[cfg(feature = "adversary")]
        let chunk = crate::adversary::lie(&t.shared, chunk, t.sent, t.len).await?;
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
