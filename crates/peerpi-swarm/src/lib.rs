//! The libp2p side of a node: a swarm (TCP + noise + yamux, optionally inside
//! a private network keyed by a swarm key) with Kademlia in server mode,
//! identify, ping and mDNS; blobs announced and found by CID; the blob
//! transfer protocol (see `protocol`, with large bodies on the `bulk`
//! channel) served from the store and fetched from peers; misbehaving peers
//! blocked. One task owns the swarm; the rest of the program talks to it
//! through a [`SwarmHandle`].
//!
//! By role: `protocol` (the wire format), `provider` (the serving side) with
//! `limits` (streams, request rate, upload pacing), `get` (the fetching
//! side), `bulk` (the HTTP channel, both sides), `task` (the event loop),
//! `providers` (the DHT record store), `adversary` (test support only).

#[cfg(feature = "adversary")]
mod adversary;
mod bulk;
mod get;
mod identity;
mod in_flight;
mod latest;
mod limits;
pub mod protocol;
mod provider;
mod providers;
mod replicate;
mod task;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use peerpi_core::Sha256Digest;
use peerpi_store::Store;
use tokio::sync::mpsc;

pub use get::{Channel, PeerDownload};
pub use identity::{load_or_create_keypair, read_swarm_key, write_new_swarm_key, KEY_FILE};
pub use in_flight::InFlightShare;
pub use latest::MAX_DOCUMENT as MAX_LATEST_DOCUMENT;
pub use libp2p::pnet::PreSharedKey;
pub use libp2p::{Multiaddr, PeerId};
pub use protocol::Status;
pub use providers::{MAX_RECORDS_PER_PROVIDER, MAX_REMOTE_RECORDS};
pub use replicate::{ReplicaAnswer, ReplicaAsk};

/// How often a node announces again what it provides.
pub const REPROVIDE_INTERVAL: Duration = Duration::from_secs(12 * 3600);

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
    #[error("the document {name} cannot be published: {reason}")]
    Document { name: String, reason: String },
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
    /// The stream closed before an answer: a transport failure, not a
    /// refusal (see `SwarmHandle::request`).
    #[error("the stream to {peer} broke before an answer: {reason}")]
    Broken { peer: PeerId, reason: String },
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
    /// Where the bulk channel listens (`None`: off, every body goes over
    /// the libp2p stream).
    pub bulk_listen: Option<SocketAddr>,
    /// Transfers of at least this many bytes go over the bulk channel.
    pub bulk_min_size: u64,
    /// Bytes per second sent to peers in all (`None`: unlimited).
    pub upload_limit: Option<u64>,
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
    /// Sends one byte every 50 ms: never silent long enough for a timeout.
    Drip,
    /// Announces a terabyte on the stream, whatever the blob's size.
    HugeSize,
    /// Announces the length, then closes without sending a byte.
    EmptyBody,
    /// Waits 9.5 s (just under a stream timeout), then answers "not found",
    /// whatever it holds.
    SlowNotFound,
    /// Answers "pending" (fetching it) to every request, for ever; paired
    /// with intents the test announces, it claims to fetch what it never will.
    Pending,
    /// Serves the right bytes but the last one, which it changes: a lie
    /// told after its other bytes were released to a client.
    LastByteWrong,
}

/// Where the bulk channel listens unless told otherwise.
pub const DEFAULT_BULK_LISTEN: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::UNSPECIFIED,
    7505,
));

impl SwarmConfig {
    /// The defaults of a node on the network: TCP and QUIC on port 7504
    /// (see [`SwarmConfig::default_listen`]), the bulk channel on 7505,
    /// mDNS on.
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            listen: Self::default_listen(false),
            bootstrap: Vec::new(),
            mdns: true,
            region: None,
            swarm_key: None,
            max_streams_per_peer: 8,
            max_streams: 128,
            max_connections: 512,
            reprovide_interval: REPROVIDE_INTERVAL,
            provide_rate: 50,
            stream_timeout: Duration::from_secs(10),
            bulk_listen: Some(DEFAULT_BULK_LISTEN),
            bulk_min_size: 1 << 20,
            upload_limit: None,
            #[cfg(feature = "adversary")]
            adversary: None,
        }
    }
}

impl SwarmConfig {
    /// Where a node listens unless told otherwise: TCP on port 7504 and,
    /// in an open swarm, QUIC on the same port (QUIC cannot carry the
    /// private-network key).
    pub fn default_listen(private: bool) -> Vec<Multiaddr> {
        let tcp = Multiaddr::empty()
            .with(libp2p::multiaddr::Protocol::Ip4(
                std::net::Ipv4Addr::UNSPECIFIED,
            ))
            .with(libp2p::multiaddr::Protocol::Tcp(7504));
        let quic = Multiaddr::empty()
            .with(libp2p::multiaddr::Protocol::Ip4(
                std::net::Ipv4Addr::UNSPECIFIED,
            ))
            .with(libp2p::multiaddr::Protocol::Udp(7504))
            .with(libp2p::multiaddr::Protocol::QuicV1);
        if private {
            vec![tcp]
        } else {
            vec![tcp, quic]
        }
    }
}

/// What this node knows of a peer.
#[derive(Debug, Clone, Default)]
pub struct PeerInfo {
    pub peer_id: String,
    pub addrs: Vec<Multiaddr>,
    /// The IP address of the latest connection (where its bulk channel is).
    pub ip: Option<IpAddr>,
    pub region: Option<String>,
    pub rtt: Option<Duration>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub connected: bool,
    pub blocked: bool,
    /// For a suspension (a broken transfer), when it ends; `None` while
    /// `blocked` means blocked for good (bad content).
    pub blocked_until: Option<std::time::Instant>,
    /// Until when this peer's bulk channel is not tried (it could not be
    /// reached: a firewall that drops packets would cost a connect timeout
    /// on every transfer).
    pub bulk_unreachable_until: Option<std::time::Instant>,
}

/// How long a peer's unreachable bulk channel is left untried.
const BULK_RETRY_AFTER: Duration = Duration::from_secs(600);

/// Counters the node exposes as metrics.
#[derive(Debug, Default)]
pub struct SwarmCounters {
    pub provided_keys: AtomicU64,
    pub connected_peers: AtomicU64,
    pub blocked_peers: AtomicU64,
    pub bytes_served: AtomicU64,
    /// Transfers served from a blob this node was still fetching.
    pub in_flight_served: AtomicU64,
}

pub(crate) enum Command {
    Provide(Sha256Digest),
    Unprovide(Sha256Digest),
    FindProviders(Sha256Digest, mpsc::UnboundedSender<PeerId>),
    /// Announce (true) or withdraw (false) the intent to fetch a blob.
    Intent(Sha256Digest, bool),
    FindIntents(Sha256Digest, mpsc::UnboundedSender<PeerId>),
    Block(PeerId),
    Unblock(PeerId),
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
    bulk: Option<bulk::Channel>,
    upload_limit: Option<limits::UploadLimit>,
    /// Blobs this node is fetching, with how many fetches, and whether it
    /// is itself waiting for another peer's intent.
    fetching: Mutex<HashMap<Sha256Digest, (usize, bool)>>,
    /// Fetches whose bytes are offered while they arrive (see `in_flight`).
    in_flight: Mutex<HashMap<Sha256Digest, in_flight::Follower>>,
    http: reqwest::Client,
    /// Documents this node hands to peers that ask by name (its TUF
    /// timestamp), see `latest`.
    latest: Mutex<HashMap<String, bytes::Bytes>>,
    /// Where peers' asks to keep a copy go (`None`: the node takes none).
    replica_asks: Mutex<Option<mpsc::Sender<ReplicaAsk>>>,
    #[cfg(feature = "adversary")]
    adversary: Option<Adversary>,
}

/// The Kademlia settings of a peerpi node (also used by the testnet's
/// simulation, so that it measures these). Re-providing is paced by the
/// swarm task instead of Kademlia (see `reprovide`); provider records live
/// 48 h.
pub fn kademlia_config() -> libp2p::kad::Config {
    let mut config = libp2p::kad::Config::new(libp2p::kad::PROTOCOL_NAME);
    config.set_provider_publication_interval(None);
    config.set_provider_record_ttl(Some(Duration::from_secs(48 * 3600)));
    config.set_query_timeout(Duration::from_secs(30));
    config
}

/// Documents published for peers at most (one per page verified under
/// `--trust index-signed`, 32 bytes each).
const MAX_LATEST_DOCUMENTS: usize = 65_536;

/// Blobs being fetched beyond which no further intent is announced.
const MAX_ANNOUNCED_INTENTS: usize = 64;

/// This node's intent to fetch a blob, withdrawn when dropped (the fetch
/// ended, verified or not).
pub struct IntentGuard {
    shared: Arc<Shared>,
    digest: Sha256Digest,
}

impl Drop for IntentGuard {
    fn drop(&mut self) {
        let last = {
            let mut fetching = lock(&self.shared.fetching);
            match fetching.get_mut(&self.digest) {
                Some((count, _)) if *count > 1 => {
                    *count -= 1;
                    false
                }
                _ => {
                    fetching.remove(&self.digest);
                    true
                }
            }
        };
        if last {
            let _ = self
                .shared
                .commands
                .try_send(Command::Intent(self.digest, false));
        }
    }
}

impl Shared {
    /// Fetching `digest` and not waiting for another peer's intent.
    pub(crate) fn is_fetching(&self, digest: &Sha256Digest) -> bool {
        lock(&self.fetching)
            .get(digest)
            .is_some_and(|(_, waiting)| !waiting)
    }

    /// Waiting for another peer's intent to fetch `digest`.
    pub(crate) fn is_waiting(&self, digest: &Sha256Digest) -> bool {
        lock(&self.fetching)
            .get(digest)
            .is_some_and(|(_, waiting)| *waiting)
    }
}

/// Answers each incoming stream of one small request protocol with
/// `answer`, at most `max_concurrent` at once (over that the stream is
/// dropped: the asker sees it close and asks another peer), each exchange
/// bounded by the stream timeout; `what` names them in the log.
pub(crate) async fn answer_streams<F, Fut>(
    mut incoming: libp2p_stream::IncomingStreams,
    shared: Arc<Shared>,
    max_concurrent: usize,
    what: &'static str,
    answer: F,
) where
    F: Fn(PeerId, libp2p::Stream, Arc<Shared>) -> Fut,
    Fut: std::future::Future<Output = std::io::Result<()>> + Send + 'static,
{
    use futures_util::StreamExt;
    let slots = Arc::new(tokio::sync::Semaphore::new(max_concurrent));
    while let Some((peer, stream)) = incoming.next().await {
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "{what} stream refused: all slots busy");
            continue;
        };
        let exchange =
            tokio::time::timeout(shared.stream_timeout, answer(peer, stream, shared.clone()));
        tokio::spawn(async move {
            let _slot = slot;
            match exchange.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(%peer, "{what} stream: {e}"),
                Err(_) => tracing::debug!(%peer, "{what} stream timed out"),
            }
        });
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Peers remembered before disconnected, unblocked ones are forgotten
/// (every peer id that ever connected would otherwise stay).
const MAX_TRACKED_PEERS: usize = 4096;
/// Addresses remembered per peer, newest kept (each inbound connection comes
/// from a new ephemeral port).
const MAX_ADDRS_PER_PEER: usize = 8;

/// The entry for `peer`, made if needed; a full table first forgets the
/// peers that are neither connected nor blocked.
fn peer_entry(peers: &mut HashMap<PeerId, PeerInfo>, peer: PeerId) -> &mut PeerInfo {
    if peers.len() >= MAX_TRACKED_PEERS && !peers.contains_key(&peer) {
        peers.retain(|_, p| p.connected || p.blocked);
    }
    peers.entry(peer).or_insert_with(|| PeerInfo {
        peer_id: peer.to_string(),
        ..PeerInfo::default()
    })
}

impl PeerInfo {
    /// Remembers an address the peer was seen at, forgetting the oldest.
    pub(crate) fn seen_at(&mut self, addr: Multiaddr) {
        self.addrs.retain(|a| *a != addr);
        if self.addrs.len() >= MAX_ADDRS_PER_PEER {
            self.addrs.remove(0);
        }
        self.addrs.push(addr);
    }
}

impl Shared {
    pub(crate) fn peer_mut<R>(&self, peer: PeerId, f: impl FnOnce(&mut PeerInfo) -> R) -> R {
        f(peer_entry(&mut lock(&self.peers), peer))
    }

    /// The IP address `peer` is connected from, when known.
    pub(crate) fn peer_ip(&self, peer: &PeerId) -> Option<IpAddr> {
        lock(&self.peers).get(peer).and_then(|p| p.ip)
    }
}

/// A running swarm; cheap to clone.
#[derive(Clone)]
pub struct SwarmHandle {
    shared: Arc<Shared>,
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

    /// The TCP port of this node's bulk channel, when it is on.
    pub fn bulk_port(&self) -> Option<u16> {
        self.shared.bulk.as_ref().map(|b| b.port)
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

    /// Hands `bytes` to every peer that asks for the document `name` from
    /// now on, replacing what was published under it. The swarm does not
    /// read them: publish only what a peer can verify by itself (signed
    /// metadata). Over [`MAX_LATEST_DOCUMENT`] bytes is refused.
    pub fn publish_latest(&self, name: &str, bytes: bytes::Bytes) -> Result<(), SwarmError> {
        if bytes.len() > latest::MAX_DOCUMENT || name.len() > usize::from(u8::MAX) {
            return Err(SwarmError::Document {
                name: name.to_string(),
                reason: format!(
                    "{} bytes (at most {}), a name of {} bytes (at most 255)",
                    bytes.len(),
                    latest::MAX_DOCUMENT,
                    name.len()
                ),
            });
        }
        let mut latest = lock(&self.shared.latest);
        if latest.len() >= MAX_LATEST_DOCUMENTS && !latest.contains_key(name) {
            // Any one goes: a peer that asks for it then finds it elsewhere
            // or at its source.
            if let Some(old) = latest.keys().next().cloned() {
                latest.remove(&old);
            }
        }
        latest.insert(name.to_string(), bytes);
        Ok(())
    }

    /// Asks up to `max_peers` connected, unblocked peers at once for their
    /// document `name` (at most `limit` bytes each), waiting at most
    /// `within`. What arrives is unverified: the caller checks each copy
    /// and keeps what it can trust.
    pub async fn ask_latest(
        &self,
        name: &str,
        limit: usize,
        max_peers: usize,
        within: Duration,
    ) -> Vec<(PeerId, bytes::Bytes)> {
        latest::ask_peers(&self.shared, name, limit, max_peers, within).await
    }

    /// Asks each of `peers` (those not blocked) at once for its document
    /// `name`, as [`SwarmHandle::ask_latest`] does connected peers.
    pub async fn ask_latest_of(
        &self,
        peers: &[PeerId],
        name: &str,
        limit: usize,
        within: Duration,
    ) -> Vec<(PeerId, bytes::Bytes)> {
        latest::ask_each(&self.shared, peers, name, limit, within).await
    }

    /// Asks from peers to keep a copy of a blob only they hold in their
    /// region, from now on (see `replicate`); without a receiver, or once it
    /// is dropped, every ask is declined.
    pub fn replica_asks(&self) -> mpsc::Receiver<ReplicaAsk> {
        replicate::take_asks(&self.shared)
    }

    /// Asks `peer` to keep a copy of `digest` (`size` bytes, listed on the
    /// page of `project`, a normalized name).
    pub async fn ask_to_replicate(
        &self,
        peer: PeerId,
        digest: Sha256Digest,
        size: u64,
        project: &str,
    ) -> std::io::Result<ReplicaAnswer> {
        replicate::ask(&self.shared, peer, digest, size, project).await
    }

    /// Announces that this node holds `digest` (its CID).
    pub async fn provide(&self, digest: Sha256Digest) -> Result<(), SwarmError> {
        self.send(Command::Provide(digest)).await
    }

    /// Withdraws the announcement (after eviction).
    pub async fn unprovide(&self, digest: Sha256Digest) -> Result<(), SwarmError> {
        self.send(Command::Unprovide(digest)).await
    }

    /// Announces that this node is fetching `digest` (from peers, then
    /// upstream), until the guard drops. Peers that miss the same blob
    /// meanwhile find the intent ([`SwarmHandle::find_intents`]) and wait
    /// for this node instead of fetching upstream too; asked for the blob,
    /// this node answers `Pending` until it holds it. An intent is not an
    /// announcement of the content: the blob is provided only once it is
    /// verified and stored.
    pub fn intend(&self, digest: Sha256Digest) -> IntentGuard {
        let announce = {
            let mut fetching = lock(&self.shared.fetching);
            let busy = fetching.len() >= MAX_ANNOUNCED_INTENTS;
            let (count, _) = fetching.entry(digest).or_default();
            *count += 1;
            // Each announcement is a DHT query: a burst of misses (a
            // prefetch) announces its first ones only.
            *count == 1 && !busy
        };
        if announce {
            // A full command queue only loses the announcement (peers then
            // fetch upstream too), never the fetch.
            let _ = self.shared.commands.try_send(Command::Intent(digest, true));
        }
        IntentGuard {
            shared: self.shared.clone(),
            digest,
        }
    }

    /// Offers the bytes of this node's fetch of `digest` to peers that ask
    /// for it, as they arrive, until the share drops (see [`InFlightShare`]).
    pub fn share_in_flight(&self, digest: Sha256Digest) -> InFlightShare {
        InFlightShare::new(self.shared.clone(), digest)
    }

    /// Marks this node as waiting (or no longer) for another peer's intent
    /// to fetch `digest`. While it waits it answers `NotFound`, not
    /// `Pending`: two nodes that each wait for the other would otherwise
    /// hold each other back until the wait runs out.
    pub fn set_waiting(&self, digest: Sha256Digest, waiting: bool) {
        if let Some((_, flag)) = lock(&self.shared.fetching).get_mut(&digest) {
            *flag = waiting;
        }
    }

    /// Starts a DHT lookup of peers that announced an intent to fetch
    /// `digest`; they arrive on the channel, which closes when it ends.
    pub async fn find_intents(
        &self,
        digest: Sha256Digest,
    ) -> Result<mpsc::UnboundedReceiver<PeerId>, SwarmError> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.send(Command::FindIntents(digest, tx)).await?;
        Ok(rx)
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

    /// Blocks `peer` for good (it sent bad content): its connections are
    /// closed and refused from now on.
    pub async fn block(&self, peer: PeerId) -> Result<(), SwarmError> {
        self.shared.peer_mut(peer, |p| {
            p.blocked = true;
            p.blocked_until = None;
        });
        self.send(Command::Block(peer)).await
    }

    /// Blocks `peer` for `duration` (it broke off or stalled a transfer,
    /// which an honest peer that crashed or restarted also does). A
    /// permanent block in the meantime wins.
    pub async fn suspend(&self, peer: PeerId, duration: Duration) -> Result<(), SwarmError> {
        let until = std::time::Instant::now() + duration;
        let newly = self.shared.peer_mut(peer, |p| {
            if p.blocked && p.blocked_until.is_none() {
                return false;
            }
            p.blocked = true;
            p.blocked_until = Some(p.blocked_until.map_or(until, |u| u.max(until)));
            true
        });
        if !newly {
            return Ok(());
        }
        self.send(Command::Block(peer)).await?;
        let handle = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(duration).await;
            let lifted = handle.shared.peer_mut(peer, |p| {
                let over = p
                    .blocked_until
                    .is_some_and(|u| u <= std::time::Instant::now());
                if over {
                    p.blocked = false;
                    p.blocked_until = None;
                }
                over
            });
            if lifted {
                let _ = handle.send(Command::Unblock(peer)).await;
            }
        });
        Ok(())
    }

    /// Ends `peer`'s suspension now (it was suspected with others and its
    /// bytes proved right). A permanent block stays.
    pub async fn lift_suspension(&self, peer: PeerId) -> Result<(), SwarmError> {
        let lifted = self.shared.peer_mut(peer, |p| {
            let suspended = p.blocked && p.blocked_until.is_some();
            if suspended {
                p.blocked = false;
                p.blocked_until = None;
            }
            suspended
        });
        if lifted {
            self.send(Command::Unblock(peer)).await?;
        }
        Ok(())
    }
}

pub(crate) fn count(counter: &AtomicU64, value: u64) {
    counter.store(value, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peer_table_forgets_idle_peers_when_full_and_keeps_blocked_ones() {
        let mut peers = HashMap::new();
        let blocked = PeerId::random();
        peer_entry(&mut peers, blocked).blocked = true;
        let connected = PeerId::random();
        peer_entry(&mut peers, connected).connected = true;
        for _ in 0..MAX_TRACKED_PEERS * 3 {
            peer_entry(&mut peers, PeerId::random());
        }
        assert!(peers.len() <= MAX_TRACKED_PEERS, "{}", peers.len());
        assert!(peers[&blocked].blocked, "a block is never forgotten");
        assert!(peers.contains_key(&connected));
    }

    #[test]
    fn a_peer_keeps_its_newest_addresses_only() {
        let mut info = PeerInfo::default();
        for port in 0..100u16 {
            info.seen_at(format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap());
        }
        assert_eq!(info.addrs.len(), MAX_ADDRS_PER_PEER);
        assert_eq!(
            info.addrs.last().unwrap().to_string(),
            "/ip4/127.0.0.1/tcp/99"
        );
    }
}
