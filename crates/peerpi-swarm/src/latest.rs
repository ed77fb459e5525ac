//! Small documents that change and carry their own proof, asked of connected
//! peers by name: `/peerpi/latest/1` (see specs/p2p-protocol.md). A node's
//! TUF timestamp is one: it is not named by a hash anywhere, so the blob
//! protocol cannot carry it, and it is signed, so any peer may hand it on.
//! The swarm neither reads nor trusts these documents; the asker verifies
//! what it receives and keeps the newest that verifies.
//!
//! Request: version `1` (u8), the name's length (u8), the name (UTF-8).
//! Response: a status byte (`0` held, `1` not held); when held, the length
//! (u32, big-endian) and then exactly that many bytes.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{AsyncReadExt, AsyncWriteExt};
use libp2p::{PeerId, StreamProtocol};
use tracing::debug;

use crate::{lock, Shared};

pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/peerpi/latest/1");
const VERSION: u8 = 1;
/// The largest document held or accepted: a TUF timestamp is under 1 KiB,
/// and the TUF client refuses one over 16 KiB.
pub const MAX_DOCUMENT: usize = 64 * 1024;
/// Requests answered at once, in all: each is one small write.
const MAX_CONCURRENT: usize = 32;

const HELD: u8 = 0;
const NOT_HELD: u8 = 1;

/// Answers requests for the documents this node published, until the
/// swarm stops.
pub(crate) async fn accept_loop(incoming: libp2p_stream::IncomingStreams, shared: Arc<Shared>) {
    crate::answer_streams(
        incoming,
        shared,
        MAX_CONCURRENT,
        "latest-document",
        |_peer, stream, shared| async move { answer(stream, &shared).await },
    )
    .await;
}

async fn answer(mut stream: libp2p::Stream, shared: &Shared) -> std::io::Result<()> {
    let name = read_request(&mut stream).await?;
    let document = lock(&shared.latest).get(&name).cloned();
    match document {
        Some(bytes) => {
            let len = u32::try_from(bytes.len()).map_err(std::io::Error::other)?;
            stream.write_all(&[HELD]).await?;
            stream.write_all(&len.to_be_bytes()).await?;
            stream.write_all(&bytes).await?;
        }
        None => stream.write_all(&[NOT_HELD]).await?,
    }
    stream.close().await
}

async fn read_request(stream: &mut libp2p::Stream) -> std::io::Result<String> {
    let mut head = [0u8; 2];
    stream.read_exact(&mut head).await?;
    if head[0] != VERSION {
        return Err(std::io::Error::other(format!(
            "unsupported version {}",
            head[0]
        )));
    }
    let mut name = vec![0u8; usize::from(head[1])];
    stream.read_exact(&mut name).await?;
    String::from_utf8(name).map_err(std::io::Error::other)
}

/// Asks `peer` for its document `name`, reading at most `limit` bytes:
/// `Ok(None)` when it holds none.
async fn ask(
    shared: &Shared,
    peer: PeerId,
    name: &str,
    limit: usize,
) -> std::io::Result<Option<Bytes>> {
    let name_len = u8::try_from(name.len()).map_err(std::io::Error::other)?;
    let mut control = lock(&shared.control).clone();
    let mut stream = control
        .open_stream(peer, PROTOCOL)
        .await
        .map_err(std::io::Error::other)?;
    stream.write_all(&[VERSION, name_len]).await?;
    stream.write_all(name.as_bytes()).await?;
    stream.flush().await?;
    let mut status = [0u8; 1];
    stream.read_exact(&mut status).await?;
    match status[0] {
        NOT_HELD => return Ok(None),
        HELD => {}
        other => return Err(std::io::Error::other(format!("unknown status {other}"))),
    }
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > limit.min(MAX_DOCUMENT) {
        return Err(std::io::Error::other(format!(
            "announced {len} bytes, over the limit of {limit}"
        )));
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await?;
    Ok(Some(Bytes::from(body)))
}

/// Asks up to `max_peers` connected, unblocked peers at once for their
/// document `name`; returns what arrived within `within`, unverified.
pub(crate) async fn ask_peers(
    shared: &Shared,
    name: &str,
    limit: usize,
    max_peers: usize,
    within: Duration,
) -> Vec<(PeerId, Bytes)> {
    let peers: Vec<PeerId> = lock(&shared.peers)
        .iter()
        .filter(|(_, info)| info.connected && !info.blocked)
        .map(|(peer, _)| *peer)
        .take(max_peers)
        .collect();
    ask_each(shared, &peers, name, limit, within).await
}

/// Asks each of `peers` (unblocked ones) at once for its document `name`;
/// returns what arrived within `within`, unverified.
pub(crate) async fn ask_each(
    shared: &Shared,
    peers: &[PeerId],
    name: &str,
    limit: usize,
    within: Duration,
) -> Vec<(PeerId, Bytes)> {
    let blocked = |peer: &PeerId| lock(&shared.peers).get(peer).is_some_and(|p| p.blocked);
    let peers: Vec<PeerId> = peers.iter().filter(|p| !blocked(p)).copied().collect();
    let asks = peers.into_iter().map(|peer| async move {
        match tokio::time::timeout(within, ask(shared, peer, name, limit)).await {
            Ok(Ok(Some(bytes))) => Some((peer, bytes)),
            Ok(Ok(None)) => None,
            Ok(Err(e)) => {
                debug!(%peer, name, "asking for the latest document failed: {e}");
                None
            }
            Err(_) => {
                debug!(%peer, name, "asking for the latest document timed out");
                None
            }
        }
    });
    futures_util::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .collect()
}
