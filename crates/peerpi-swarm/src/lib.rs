//! The libp2p side of a node: a swarm (TCP + noise + yamux, optionally inside
//! a private network keyed by a swarm key) with Kademlia in server mode,
//! identify, ping and mDNS; blobs announced and found by CID; the blob
//! transfer protocol (see `protocol`) served from the store and fetched from
//! peers; misbehaving peers blocked. One task owns the swarm; the rest of the
//! program talks to it through a [`SwarmHandle`].

mod identity;
pub mod protocol;
mod providers;
mod serve;
mod task;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::AsyncReadExt;
use peerpi_core::Sha256Digest;
use peerpi_store::Store;
use tokio::sync::mpsc;

pub use identity::{load_or_create_keypair, read_swarm_key, write_new_swarm_key, KEY_FILE};
pub use libp2p::pnet::PreSharedKey;
pub use libp2p::{Multiaddr, PeerId};
pub use protocol::Status;

#[derive(Debug, thiserror::Error)]
pub enum SwarmError {
    #[error("{0}")]
    Key(String),
    #[error("starting the swarm: {0}")]
    Start(String),
    #[error("invalid address {addr}: {reason}")]
    Address { addr: String, reason: String },
    #[error("the swarm task has stopped")]
    Stopped,
}

/// Why a fetch from a peer failed before or while streaming.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot open a stream to {peer}: {reason}")]
    Open { peer: PeerId, reason: String },
    #[error("{peer} answered {status:?}")]
    Refused { peer: PeerId, status: Status },
    #[error("{peer} broke the protocol: {reason}")]
    Protocol { peer: PeerId, reason: String },
    #[error("{peer} did not answer in time")]
    Timeout { peer: PeerId },
}

#[derive(Debug, Clone)]
pub struct SwarmConfig {
    pub data_dir: PathBuf,
    pub listen: Vec<Multiaddr>,
    pub bootstrap: Vec<Multiaddr>,
    pub mdns: bool,
    pub region: Option<String>,
    pub swarm_key: Option<PreSharedKey>,
    /// Concurrent blob streams one peer may have open to this node.
    pub max_streams_per_peer: usize,
    /// Concurrent blob streams served in all.
    pub max_streams: usize,
    pub max_connections: u32,
    /// How often every held blob is announced again.
    pub reprovide_interval: Duration,
    /// Announcements started per second at most (spreads re-providing out).
    pub provide_rate: u32,
    /// Limit on opening a stream and on silence while reading one.
    pub stream_timeout: Duration,
    /// Test support: how this node lies when serving blobs.
    #[cfg(feature = "adversary")]
    pub adversary: Option<Adversary>,
}

/// Ways a test peer can lie on the blob protocol.
#[cfg(feature = "adversary")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adversary {
    /// Serves the announced length, with one byte changed.
    WrongBytes,
    /// Announces the full length, closes after half of it.
    Truncate,
    /// Sends the first chunk, then nothing.
    Stall,
}

impl SwarmConfig {
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            listen: Vec::new(),
            bootstrap: Vec::new(),
            mdns: true,
            region: None,
            swarm_key: None,
            max_streams_per_peer: 8,
            max_streams: 128,
            max_connections: 512,
            reprovide_interval: Duration::from_secs(12 * 3600),
            provide_rate: 50,
            stream_timeout: Duration::from_secs(10),
            #[cfg(feature = "adversary")]
            adversary: None,
        }
    }
}

/// What this node knows of a peer.
#[derive(Debug, Clone, Default)]
pub struct PeerInfo {
    pub peer_id: String,
    pub addrs: Vec<Multiaddr>,
    pub region: Option<String>,
    pub rtt: Option<Duration>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub connected: bool,
    pub blocked: bool,
}

/// Counters the node exposes as metrics.
#[derive(Debug, Default)]
pub struct SwarmCounters {
    pub provided_keys: AtomicU64,
    pub connected_peers: AtomicU64,
    pub blocked_peers: AtomicU64,
    pub bytes_served: AtomicU64,
}

pub(crate) enum Command {
    Provide(Sha256Digest),
    Unprovide(Sha256Digest),
    FindProviders(Sha256Digest, mpsc::UnboundedSender<PeerId>),
    Block(PeerId),
}

pub(crate) struct Shared {
    local_peer_id: PeerId,
    region: Option<String>,
    commands: mpsc::Sender<Command>,
    control: Mutex<libp2p_stream::Control>,
    peers: Mutex<HashMap<PeerId, PeerInfo>>,
    listen_addrs: Mutex<Vec<Multiaddr>>,
    counters: SwarmCounters,
    stream_timeout: Duration,
    #[cfg(feature = "adversary")]
    adversary: Option<Adversary>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    pub(crate) fn peer_mut<R>(&self, peer: PeerId, f: impl FnOnce(&mut PeerInfo) -> R) -> R {
        let mut peers = lock(&self.peers);
        let info = peers.entry(peer).or_insert_with(|| PeerInfo {
            peer_id: peer.to_string(),
            ..PeerInfo::default()
        });
        f(info)
    }
}

/// A running swarm; cheap to clone.
#[derive(Clone)]
pub struct SwarmHandle {
    shared: Arc<Shared>,
}

/// A blob arriving from a peer.
pub struct PeerDownload {
    pub peer: PeerId,
    /// Bytes that follow, from the requested offset.
    pub remaining: u64,
    stream: libp2p::Stream,
    shared: Arc<Shared>,
}

impl PeerDownload {
    /// The next piece of the blob; `None` at the end. Silence longer than the
    /// stream timeout is an error (a stalled peer).
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, FetchError> {
        if self.remaining == 0 {
            return Ok(None);
        }
        let mut buf = vec![0u8; 256 * 1024];
        let want = buf.len().min(self.remaining as usize);
        let n = tokio::time::timeout(
            self.shared.stream_timeout,
            self.stream.read(&mut buf[..want]),
        )
        .await
        .map_err(|_| FetchError::Timeout { peer: self.peer })?
        .map_err(|e| FetchError::Protocol {
            peer: self.peer,
            reason: e.to_string(),
        })?;
        if n == 0 {
            return Err(FetchError::Protocol {
                peer: self.peer,
                reason: format!("stream ended {} bytes early", self.remaining),
            });
        }
        buf.truncate(n);
        self.remaining -= n as u64;
        self.shared.peer_mut(self.peer, |p| p.bytes_in += n as u64);
        Ok(Some(Bytes::from(buf)))
    }
}

impl SwarmHandle {
    /// Starts the swarm task, the blob server and re-providing of `store`.
    pub async fn start(config: SwarmConfig, store: Arc<Store>) -> Result<Self, SwarmError> {
        task::start(config, store).await
    }

    pub fn local_peer_id(&self) -> PeerId {
        self.shared.local_peer_id
    }

    pub fn region(&self) -> Option<&str> {
        self.shared.region.as_deref()
    }

    /// Addresses the swarm listens on (with `/p2p/<id>`), once bound.
    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        lock(&self.shared.listen_addrs).clone()
    }

    pub fn counters(&self) -> &SwarmCounters {
        &self.shared.counters
    }

    pub fn peers(&self) -> Vec<PeerInfo> {
        let mut peers: Vec<PeerInfo> = lock(&self.shared.peers).values().cloned().collect();
        peers.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
        peers
    }

    pub fn peer_info(&self, peer: &PeerId) -> Option<PeerInfo> {
        lock(&self.shared.peers).get(peer).cloned()
    }

    pub fn is_blocked(&self, peer: &PeerId) -> bool {
        lock(&self.shared.peers)
            .get(peer)
            .is_some_and(|p| p.blocked)
    }

    async fn send(&self, command: Command) -> Result<(), SwarmError> {
        self.shared
            .commands
            .send(command)
            .await
            .map_err(|_| SwarmError::Stopped)
    }

    /// Announces that this node holds `digest` (its CID).
    pub async fn provide(&self, digest: Sha256Digest) -> Result<(), SwarmError> {
        self.send(Command::Provide(digest)).await
    }

    /// Withdraws the announcement (after eviction).
    pub async fn unprovide(&self, digest: Sha256Digest) -> Result<(), SwarmError> {
        self.send(Command::Unprovide(digest)).await
    }

    /// Starts a DHT lookup; providers arrive on the channel as they are found,
    /// and it closes when the lookup ends.
    pub async fn find_providers(
        &self,
        digest: Sha256Digest,
    ) -> Result<mpsc::UnboundedReceiver<PeerId>, SwarmError> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.send(Command::FindProviders(digest, tx)).await?;
        Ok(rx)
    }

    /// Blocks `peer`: its connections are closed and refused from now on.
    pub async fn block(&self, peer: PeerId) -> Result<(), SwarmError> {
        self.shared.peer_mut(peer, |p| p.blocked = true);
        self.send(Command::Block(peer)).await
    }

    /// Asks `peer` for `digest` from byte `offset`.
    pub async fn fetch(
        &self,
        peer: PeerId,
        digest: Sha256Digest,
        offset: u64,
    ) -> Result<PeerDownload, FetchError> {
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
        let request = protocol::Request { digest, offset };
        let exchange = async {
            protocol::write_request(&mut stream, &request).await?;
            protocol::read_status(&mut stream).await
        };
        let (status, remaining) = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| FetchError::Timeout { peer })?
            .map_err(|e| FetchError::Protocol {
                peer,
                reason: e.to_string(),
            })?;
        if status != Status::Ok {
            return Err(FetchError::Refused { peer, status });
        }
        Ok(PeerDownload {
            peer,
            remaining,
            stream,
            shared: self.shared.clone(),
        })
    }
}

pub(crate) fn count(counter: &AtomicU64, value: u64) {
    counter.store(value, Ordering::Relaxed);
}
