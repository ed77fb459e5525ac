//! The fetching side of the blob protocol: ask a peer for a blob from an
//! offset, follow a redirect to its bulk channel (or fall back to the stream
//! when that channel cannot be reached), and read the body with a timeout on
//! silence, never more than announced.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::AsyncReadExt;
use libp2p::PeerId;
use peerpi_core::Sha256Digest;

use crate::{bulk, lock, protocol, FetchError, Shared, SwarmHandle, BULK_RETRY_AFTER};

/// How a transfer's bytes travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// On the libp2p stream (noise + yamux).
    Stream,
    /// On the peer's bulk channel (plain HTTP, redeeming a ticket).
    Bulk,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Stream => "stream",
            Channel::Bulk => "bulk",
        }
    }
}

enum Body {
    Stream(libp2p::Stream),
    Bulk(reqwest::Response),
}

/// A blob arriving from a peer.
pub struct PeerDownload {
    pub peer: PeerId,
    /// Bytes that follow, from the requested offset.
    pub remaining: u64,
    /// The peer is still fetching the blob and sends its bytes as they
    /// arrive (it sends the last one only once it verified the blob).
    pub in_flight: bool,
    body: Body,
    shared: Arc<Shared>,
    /// Where stream reads land: chunks handed out share its allocation, so a
    /// peer dripping single bytes costs single bytes, not a buffer each.
    buffer: bytes::BytesMut,
}

/// Bytes read from a stream at most per call.
/// Tries of a request whose stream broke before an answer, and the pause
/// before the second (doubled for each after it): 10 + 20 + 40 ms at most.
const STREAM_TRIES: u32 = 4;
const STREAM_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(10);

const READ_SIZE: usize = 256 * 1024;
/// A new read buffer is allocated once less than this is left in the old one.
const MIN_READ_SPACE: usize = 16 * 1024;

impl PeerDownload {
    pub fn channel(&self) -> Channel {
        match self.body {
            Body::Stream(_) => Channel::Stream,
            Body::Bulk(_) => Channel::Bulk,
        }
    }

    /// The next piece of the blob; `None` at the end. Silence longer than the
    /// stream timeout is an error (a stalled peer), and so is an early end.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, FetchError> {
        if self.remaining == 0 {
            return Ok(None);
        }
        let peer = self.peer;
        let broken = |reason: String| FetchError::Protocol { peer, reason };
        let read = async {
            match &mut self.body {
                Body::Stream(stream) => {
                    let buffer = &mut self.buffer;
                    if buffer.capacity() < MIN_READ_SPACE {
                        *buffer = bytes::BytesMut::with_capacity(READ_SIZE);
                    }
                    let want = buffer
                        .capacity()
                        .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
                    buffer.resize(want, 0);
                    let n = stream
                        .read(&mut buffer[..])
                        .await
                        .map_err(|e| broken(e.to_string()))?;
                    buffer.truncate(n);
                    Ok(buffer.split().freeze())
                }
                Body::Bulk(response) => response
                    .chunk()
                    .await
                    .map(Option::unwrap_or_default)
                    .map_err(|e| broken(e.to_string())),
            }
        };
        let chunk = tokio::time::timeout(self.shared.stream_timeout, read)
            .await
            .map_err(|_| FetchError::Timeout { peer })??;
        if chunk.is_empty() {
            return Err(broken(format!(
                "stream ended {} bytes early",
                self.remaining
            )));
        }
        if chunk.len() as u64 > self.remaining {
            return Err(broken("more bytes than announced".into()));
        }
        self.remaining -= chunk.len() as u64;
        self.shared
            .peer_mut(peer, |p| p.bytes_in += chunk.len() as u64);
        Ok(Some(chunk))
    }
}

impl SwarmHandle {
    /// Asks `peer` for `digest` from byte `offset`. Large bodies come over
    /// the peer's bulk channel when both sides have one on; if that channel
    /// cannot be reached, the same peer is asked again for the body on the
    /// stream.
    pub async fn fetch(
        &self,
        peer: PeerId,
        digest: Sha256Digest,
        offset: u64,
    ) -> Result<PeerDownload, FetchError> {
        // A node with its bulk channel off neither serves nor uses one: its
        // operator wants every byte inside noise (and the private network).
        let now = std::time::Instant::now();
        let ip = self
            .shared
            .bulk
            .as_ref()
            .and(self.peer_info(&peer))
            .filter(|p| p.bulk_unreachable_until.is_none_or(|until| until <= now))
            .and_then(|p| p.ip);
        let (response, stream) = self.request(peer, digest, offset, ip.is_some()).await?;
        let download = |remaining, in_flight, body| PeerDownload {
            peer,
            remaining,
            in_flight,
            body,
            shared: self.shared.clone(),
            buffer: bytes::BytesMut::new(),
        };
        match (response, ip) {
            (
                protocol::Response::Data {
                    remaining,
                    in_flight,
                },
                _,
            ) => Ok(download(remaining, in_flight, Body::Stream(stream))),
            (
                protocol::Response::Redirect {
                    remaining,
                    port,
                    ticket,
                    in_flight,
                },
                Some(ip),
            ) => {
                drop(stream);
                match bulk::fetch(&self.shared, peer, ip, port, &digest, &ticket, remaining).await {
                    Ok(response) => Ok(download(remaining, in_flight, Body::Bulk(response))),
                    Err(e) => {
                        tracing::warn!(%peer, "bulk channel unusable ({e}); using the stream, and not trying it again for {BULK_RETRY_AFTER:?}");
                        self.shared.peer_mut(peer, |p| {
                            p.bulk_unreachable_until = Some(now + BULK_RETRY_AFTER);
                        });
                        match self.request(peer, digest, offset, false).await? {
                            (
                                protocol::Response::Data {
                                    remaining,
                                    in_flight,
                                },
                                stream,
                            ) => Ok(download(remaining, in_flight, Body::Stream(stream))),
                            (other, _) => Err(unexpected(peer, other)),
                        }
                    }
                }
            }
            (other, _) => Err(unexpected(peer, other)),
        }
    }

    /// Test support: asks `peer` for `digest` as a fetch would and drops the
    /// answer, so that a ticket it hands out is never redeemed. True when
    /// the answer was a ticket (a redirect to the bulk channel).
    #[cfg(feature = "adversary")]
    pub async fn take_ticket_and_walk_away(
        &self,
        peer: PeerId,
        digest: Sha256Digest,
    ) -> Result<bool, FetchError> {
        let (response, _) = self.request(peer, digest, 0, true).await?;
        Ok(matches!(response, protocol::Response::Redirect { .. }))
    }

    /// One request, up to the response header, asked again on a new stream
    /// when the stream broke before any answer.
    ///
    /// The serving side takes new streams through a one-slot queue that
    /// drops a stream it cannot hold at once (rust-libp2p issue 5651), so a
    /// burst of requests to an honest peer loses some: the dropped stream
    /// reads as a closed connection. Asked again after a short pause, it
    /// starts. Each try has its own `stream_timeout`; the peer phase bounds
    /// the whole on the client's clock.
    async fn request(
        &self,
        peer: PeerId,
        digest: Sha256Digest,
        offset: u64,
        can_redirect: bool,
    ) -> Result<(protocol::Response, libp2p::Stream), FetchError> {
        let mut pause = STREAM_RETRY_PAUSE;
        for _ in 1..STREAM_TRIES {
            match self.request_once(peer, digest, offset, can_redirect).await {
                Err(FetchError::Broken { reason, .. }) => {
                    tracing::debug!(%peer, %digest, "stream broke before an answer ({reason}); asking again");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                answered => return answered,
            }
        }
        self.request_once(peer, digest, offset, can_redirect).await
    }

    async fn request_once(
        &self,
        peer: PeerId,
        digest: Sha256Digest,
        offset: u64,
        can_redirect: bool,
    ) -> Result<(protocol::Response, libp2p::Stream), FetchError> {
        let timeout = self.shared.stream_timeout;
        let mut control = lock(&self.shared.control).clone();
        let mut stream =
            tokio::time::timeout(timeout, control.open_stream(peer, protocol::PROTOCOL))
                .await
                .map_err(|_| FetchError::Timeout { peer })?
                .map_err(|e| FetchError::Open {
                    peer,
                    reason: e.to_string(),
                })?;
        // Every fetch takes bytes still arriving at the peer: the caller
        // verifies the whole blob whatever its source.
        let request = protocol::Request {
            digest,
            offset,
            can_redirect,
            accepts_in_flight: true,
        };
        let exchange = async {
            protocol::write_request(&mut stream, &request).await?;
            protocol::read_response(&mut stream).await
        };
        let response = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| FetchError::Timeout { peer })?
            .map_err(|e| match e {
                protocol::ProtocolError::Io(io) => FetchError::Broken {
                    peer,
                    reason: io.to_string(),
                },
                other => FetchError::Protocol {
                    peer,
                    reason: other.to_string(),
                },
            })?;
        Ok((response, stream))
    }
}

/// A response that carries no data for this request.
fn unexpected(peer: PeerId, response: protocol::Response) -> FetchError {
    match response {
        protocol::Response::Refused(status) => FetchError::Refused { peer, status },
        other => FetchError::Protocol {
            peer,
            reason: format!("unexpected answer {other:?}"),
        },
    }
}
