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
    let blob = match store.get(&request.digest) {
        Ok(Some(blob)) => blob,
        _ => {
            let status = if shared.is_fetching(&request.digest) {
                Status::Pending
            } else {
                Status::NotFound
            };
            return protocol::write_response(&mut stream, &refuse(status)).await;
        }
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
    let remaining = crate::adversary::announced(shared, remaining);
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
