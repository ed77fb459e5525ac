//! Asking a peer of this region to keep a second copy of a large blob that
//! only this node holds there: `/peerpi/replicate/1` (see
//! specs/p2p-protocol.md). The swarm only carries the ask; the node decides
//! whether to take it and, when it does, fetches the blob like any other:
//! by digest from peers, checked against the digest its own trusted copy of
//! the project's page lists. An ask is never a reason to trust anything.
//!
//! Request: version `1` (u8), sha256 digest (32 bytes), size (u64,
//! big-endian), the project name's length (u8), the name (UTF-8).
//! Response: one status byte: `0` accepted (the asked node fetches it now),
//! `1` declined, `2` already held or being fetched.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{AsyncReadExt, AsyncWriteExt};
use libp2p::{PeerId, StreamProtocol};
use peerpi_core::Sha256Digest;
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use crate::{lock, Shared};

pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/peerpi/replicate/1");
const VERSION: u8 = 1;
/// Asks being answered at once, in all.
const MAX_CONCURRENT: usize = 8;
/// Asks waiting for the node's decision at once.
pub(crate) const QUEUE: usize = 8;
/// How long the node may take to decide before the ask is declined.
const DECIDE_WITHIN: Duration = Duration::from_secs(2);

/// How a peer answered an ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaAnswer {
    /// It fetches the blob now.
    Accepted = 0,
    /// It will not (off, no room, busy, over its budget).
    Declined = 1,
    /// It holds the blob already, or is fetching it.
    Held = 2,
}

impl ReplicaAnswer {
    fn from_byte(b: u8) -> Option<Self> {
        match b {
            0 => Some(Self::Accepted),
            1 => Some(Self::Declined),
            2 => Some(Self::Held),
            _ => None,
        }
    }
}

/// What a peer asked this node to keep: the node answers through
/// [`ReplicaAsk::answer`] (an ask dropped unanswered is declined).
#[derive(Debug)]
pub struct ReplicaAsk {
    pub from: PeerId,
    pub digest: Sha256Digest,
    pub size: u64,
    /// The normalized name of the project whose page lists the blob.
    pub project: String,
    answer: oneshot::Sender<ReplicaAnswer>,
}

impl ReplicaAsk {
    pub fn answer(self, answer: ReplicaAnswer) {
        let _ = self.answer.send(answer);
    }
}

/// The request's fields, as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Request {
    digest: Sha256Digest,
    size: u64,
    project: String,
}

fn encode(request: &Request) -> std::io::Result<Vec<u8>> {
    let name_len = u8::try_from(request.project.len()).map_err(|_| {
        std::io::Error::other(format!(
            "the project name {:?} is over 255 bytes",
            request.project
        ))
    })?;
    let mut buf = Vec::with_capacity(42 + request.project.len());
    buf.push(VERSION);
    buf.extend_from_slice(request.digest.as_bytes());
    buf.extend_from_slice(&request.size.to_be_bytes());
    buf.push(name_len);
    buf.extend_from_slice(request.project.as_bytes());
    Ok(buf)
}

async fn read_request<S: futures_util::AsyncRead + Unpin>(
    stream: &mut S,
) -> std::io::Result<Request> {
    let mut version = [0u8; 1];
    stream.read_exact(&mut version).await?;
    if version[0] != VERSION {
        return Err(std::io::Error::other(format!(
            "unsupported version {}",
            version[0]
        )));
    }
    let mut fixed = [0u8; 41];
    stream.read_exact(&mut fixed).await?;
    let mut digest = [0u8; 32];
    digest.copy_from_slice(&fixed[..32]);
    let mut size = [0u8; 8];
    size.copy_from_slice(&fixed[32..40]);
    let mut name = vec![0u8; usize::from(fixed[40])];
    stream.read_exact(&mut name).await?;
    Ok(Request {
        digest: Sha256Digest::from_bytes(digest),
        size: u64::from_be_bytes(size),
        project: String::from_utf8(name).map_err(std::io::Error::other)?,
    })
}

/// Answers asks until the swarm stops: each goes to the node (when it takes
/// asks, see `SwarmHandle::replica_asks`), which has [`DECIDE_WITHIN`].
pub(crate) async fn accept_loop(incoming: libp2p_stream::IncomingStreams, shared: Arc<Shared>) {
    crate::answer_streams(
        incoming,
        shared,
        MAX_CONCURRENT,
        "replica ask",
        |peer, stream, shared| async move {
            let answer = answer(peer, stream, &shared).await?;
            debug!(%peer, ?answer, "replica ask answered");
            Ok(())
        },
    )
    .await;
}

async fn answer(
    peer: PeerId,
    mut stream: libp2p::Stream,
    shared: &Shared,
) -> std::io::Result<ReplicaAnswer> {
    let request = read_request(&mut stream).await?;
    let blocked = lock(&shared.peers).get(&peer).is_some_and(|p| p.blocked);
    let node = lock(&shared.replica_asks).clone();
    let answer = match node {
        Some(node) if !blocked => {
            let (tx, rx) = oneshot::channel();
            let ask = ReplicaAsk {
                from: peer,
                digest: request.digest,
                size: request.size,
                project: request.project,
                answer: tx,
            };
            // A full queue declines: the asker tries another peer.
            match node.try_send(ask) {
                Ok(()) => match tokio::time::timeout(DECIDE_WITHIN, rx).await {
                    Ok(Ok(answer)) => answer,
                    _ => ReplicaAnswer::Declined,
                },
                Err(_) => ReplicaAnswer::Declined,
            }
        }
        _ => ReplicaAnswer::Declined,
    };
    stream.write_all(&[answer as u8]).await?;
    stream.close().await?;
    Ok(answer)
}

/// Asks `peer` to keep a copy of `digest` (`size` bytes, listed on
/// `project`'s page).
pub(crate) async fn ask(
    shared: &Shared,
    peer: PeerId,
    digest: Sha256Digest,
    size: u64,
    project: &str,
) -> std::io::Result<ReplicaAnswer> {
    let request = encode(&Request {
        digest,
        size,
        project: project.to_string(),
    })?;
    let exchange = async {
        let mut control = lock(&shared.control).clone();
        let mut stream = control
            .open_stream(peer, PROTOCOL)
            .await
            .map_err(std::io::Error::other)?;
        stream.write_all(&request).await?;
        stream.flush().await?;
        let mut status = [0u8; 1];
        stream.read_exact(&mut status).await?;
        ReplicaAnswer::from_byte(status[0])
            .ok_or_else(|| std::io::Error::other(format!("unknown status {}", status[0])))
    };
    tokio::time::timeout(shared.stream_timeout + DECIDE_WITHIN, exchange)
        .await
        .map_err(|_| std::io::Error::other("no answer in time"))?
}

/// A fresh channel for asks; the previous receiver, if any, gets no more.
pub(crate) fn take_asks(shared: &Shared) -> mpsc::Receiver<ReplicaAsk> {
    let (tx, rx) = mpsc::channel(QUEUE);
    *lock(&shared.replica_asks) = Some(tx);
    rx
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::io::Cursor;

    #[tokio::test]
    async fn a_request_round_trips_and_a_wrong_version_is_refused() {
        let request = Request {
            digest: Sha256Digest::from_bytes([3; 32]),
            size: 250 << 20,
            project: "torch-lite".into(),
        };
        let bytes = encode(&request).unwrap();
        assert_eq!(bytes.len(), 42 + 10);
        assert_eq!(
            read_request(&mut Cursor::new(bytes.clone())).await.unwrap(),
            request
        );
        let mut wrong = bytes;
        wrong[0] = 9;
        assert!(read_request(&mut Cursor::new(wrong)).await.is_err());
        let long = Request {
            project: "x".repeat(256),
            ..request
        };
        assert!(encode(&long).is_err());
        for answer in [
            ReplicaAnswer::Accepted,
            ReplicaAnswer::Declined,
            ReplicaAnswer::Held,
        ] {
            assert_eq!(ReplicaAnswer::from_byte(answer as u8), Some(answer));
        }
        assert_eq!(ReplicaAnswer::from_byte(3), None);
    }
}
