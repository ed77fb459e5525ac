//! The task that owns the libp2p swarm: builds it, runs its event loop,
//! carries out commands, and paces (re-)announcements.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::Boxed;
use libp2p::core::upgrade::Version;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    allow_block_list, connection_limits, identify, kad, mdns, noise, ping, quic, tcp, yamux,
    PeerId, Swarm, Transport,
};
use peerpi_core::Sha256Digest;
use peerpi_store::Store;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::limits::Limits;
use crate::provider::accept_loop;
use crate::providers::ProviderStore;
use crate::{count, lock, Command, Shared, SwarmConfig, SwarmError, SwarmHandle};

const AGENT_PREFIX: &str = concat!("peerpi/", env!("CARGO_PKG_VERSION"));

/// Announcements (Kademlia queries) running at once. Each live query holds
/// kilobytes inside Kademlia and its query pool is scanned on every poll, so
/// further announcements wait in a queue of bare digests instead.
const MAX_PROVIDE_QUERIES: usize = 32;
/// How soon a node with no peer at all dials its bootstrap addresses again,
/// at first: nodes of a cluster often start at the same instant, and one
/// that dialled a moment before its bootstrap peer listened would otherwise
/// stay alone for the whole retry interval (on the rig, two runners then
/// fetched a 200 MB wheel upstream beside the cluster).
const FIRST_BOOTSTRAP_RETRY: Duration = Duration::from_millis(250);
/// How often, at most, once the retries have backed off.
const BOOTSTRAP_RETRY: Duration = Duration::from_secs(5);

/// The pause before the next bootstrap dial: doubled while the node stays
/// alone, up to `BOOTSTRAP_RETRY`; back to the first once it has a peer.
fn next_bootstrap_retry(last: Duration, still_alone: bool) -> Duration {
    if still_alone {
        (last * 2).min(BOOTSTRAP_RETRY)
    } else {
        FIRST_BOOTSTRAP_RETRY
    }
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    limits: connection_limits::Behaviour,
    kad: kad::Behaviour<ProviderStore>,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    mdns: Toggle<mdns::tokio::Behaviour>,
    stream: libp2p_stream::Behaviour,
}

fn kad_key(digest: &Sha256Digest) -> kad::RecordKey {
    kad::RecordKey::new(&digest.cid().to_bytes())
}

/// The DHT key under which nodes announce that they are fetching a blob:
/// never a CID, so an intent can never be taken for the content.
fn intent_key(digest: &Sha256Digest) -> kad::RecordKey {
    let mut key = b"peerpi/fetching/".to_vec();
    key.extend_from_slice(&digest.cid().to_bytes());
    kad::RecordKey::new(&key)
}

fn secure<S>(transport: Boxed<S>, noise: noise::Config) -> Boxed<(PeerId, StreamMuxerBox)>
where
    S: futures_util::AsyncRead + futures_util::AsyncWrite + Unpin + Send + 'static,
{
    transport
        .upgrade(Version::V1Lazy)
        .authenticate(noise)
        .multiplex(yamux::Config::default())
        .timeout(Duration::from_secs(20))
        .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
        .boxed()
}

fn transport(
    key: &libp2p::identity::Keypair,
    psk: Option<libp2p::pnet::PreSharedKey>,
) -> Result<Boxed<(PeerId, StreamMuxerBox)>, Box<dyn std::error::Error + Send + Sync>> {
    let noise = noise::Config::new(key)?;
    let tcp = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true));
    Ok(match psk {
        // QUIC has its own encryption and cannot carry the pnet layer, so a
        // private swarm is TCP only.
        Some(psk) => secure(
            tcp.and_then(move |socket, _| libp2p::pnet::PnetConfig::new(psk).handshake(socket))
                .boxed(),
            noise,
        ),
        None => {
            let quic = quic::tokio::Transport::new(quic::Config::new(key))
                .map(|(peer, connection), _| (peer, StreamMuxerBox::new(connection)));
            secure(tcp.boxed(), noise)
                .or_transport(quic)
                .map(|either, _| match either {
                    futures_util::future::Either::Left(out)
                    | futures_util::future::Either::Right(out) => out,
                })
                .boxed()
        }
    })
}

fn is_quic(addr: &libp2p::Multiaddr) -> bool {
    addr.iter()
        .any(|p| matches!(p, Protocol::QuicV1 | Protocol::Quic))
}

/// A private swarm cannot use QUIC: say so before anything starts.
fn check_private_addresses(config: &SwarmConfig) -> Result<(), SwarmError> {
    if config.swarm_key.is_none() {
        return Ok(());
    }
    match config
        .listen
        .iter()
        .chain(&config.bootstrap)
        .find(|a| is_quic(a))
    {
        Some(addr) => Err(SwarmError::Address {
            addr: addr.to_string(),
            reason:
                "QUIC cannot carry the private-network key; with --swarm-key use /tcp addresses"
                    .into(),
        }),
        None => Ok(()),
    }
}

pub(crate) async fn start(
    config: SwarmConfig,
    store: Arc<Store>,
) -> Result<SwarmHandle, SwarmError> {
    check_private_addresses(&config)?;
    let keypair = crate::load_or_create_keypair(&config.data_dir)?;
    let local_peer_id = keypair.public().to_peer_id();
    let agent = match &config.region {
        Some(r) => format!("{AGENT_PREFIX} region={r}"),
        None => AGENT_PREFIX.to_string(),
    };
    let psk = config.swarm_key;
    let mdns_on = config.mdns;
    let max_connections = config.max_connections;
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_other_transport(|key| transport(key, psk))
        .map_err(|e| SwarmError::Start(e.to_string()))?
        .with_dns()
        .map_err(|e| SwarmError::Start(e.to_string()))?
        .with_behaviour(|key| {
            let peer_id = key.public().to_peer_id();
            let store = ProviderStore::new(peer_id);
            let mut kad = kad::Behaviour::with_config(peer_id, store, crate::kademlia_config());
            kad.set_mode(Some(kad::Mode::Server));
            let mdns = if mdns_on {
                Some(mdns::tokio::Behaviour::new(
                    mdns::Config::default(),
                    peer_id,
                )?)
            } else {
                None
            };
            Ok(Behaviour {
                blocked: allow_block_list::Behaviour::default(),
                limits: connection_limits::Behaviour::new(
                    connection_limits::ConnectionLimits::default()
                        .with_max_established(Some(max_connections))
                        .with_max_established_per_peer(Some(4)),
                ),
                kad,
                identify: identify::Behaviour::new(
                    identify::Config::new("/peerpi/1".into(), key.public())
                        .with_agent_version(agent.clone()),
                ),
                ping: ping::Behaviour::new(
                    ping::Config::new().with_interval(Duration::from_secs(10)),
                ),
                mdns: Toggle::from(mdns),
                stream: libp2p_stream::Behaviour::new(),
            })
        })
        .map_err(|e| SwarmError::Start(e.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(300)))
        .build();

    let listen = if config.listen.is_empty() {
        vec!["/ip4/0.0.0.0/tcp/0"
            .parse()
            .map_err(|e: libp2p::multiaddr::Error| SwarmError::Start(e.to_string()))?]
    } else {
        config.listen.clone()
    };
    for addr in &listen {
        swarm
            .listen_on(addr.clone())
            .map_err(|e| SwarmError::Address {
                addr: addr.to_string(),
                reason: e.to_string(),
            })?;
    }
    for addr in &config.bootstrap {
        if let Some(Protocol::P2p(peer)) = addr.iter().last() {
            let mut without_peer = addr.clone();
            without_peer.pop();
            swarm.behaviour_mut().kad.add_address(&peer, without_peer);
        }
        if let Err(e) = swarm.dial(addr.clone()) {
            warn!(%addr, "cannot dial bootstrap peer: {e}");
        }
    }

    let mut control = swarm.behaviour().stream.new_control();
    let incoming = control
        .accept(crate::protocol::PROTOCOL)
        .map_err(|e| SwarmError::Start(e.to_string()))?;
    let latest_incoming = control
        .accept(crate::latest::PROTOCOL)
        .map_err(|e| SwarmError::Start(e.to_string()))?;
    let replicate_incoming = control
        .accept(crate::replicate::PROTOCOL)
        .map_err(|e| SwarmError::Start(e.to_string()))?;
    let (tx, rx) = mpsc::channel(1024);
    let bulk_listener =
        match config.bulk_listen {
            Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                SwarmError::Address {
                    addr: addr.to_string(),
                    reason: format!("cannot listen for the bulk channel: {e}"),
                }
            })?),
            None => None,
        };
    let bulk = match &bulk_listener {
        Some(listener) => {
            let addr = listener
                .local_addr()
                .map_err(|e| SwarmError::Start(e.to_string()))?;
            info!(%addr, "bulk channel listening");
            Some(crate::bulk::Channel::new(
                addr.port(),
                config.bulk_min_size,
                config.stream_timeout,
            ))
        }
        None => None,
    };
    let http = crate::bulk::client(config.stream_timeout)
        .map_err(|e| SwarmError::Start(format!("HTTP client for bulk transfers: {e}")))?;
    let shared = Arc::new(Shared {
        local_peer_id,
        region: config.region.clone(),
        commands: tx,
        control: Mutex::new(control),
        peers: Mutex::new(HashMap::new()),
        listen_addrs: Mutex::new(Vec::new()),
        counters: Default::default(),
        stream_timeout: config.stream_timeout,
        bulk,
        upload_limit: config.upload_limit.map(crate::limits::UploadLimit::new),
        fetching: Mutex::new(HashMap::new()),
        in_flight: Mutex::new(HashMap::new()),
        http,
        latest: Mutex::new(HashMap::new()),
        replica_asks: Mutex::new(None),
        #[cfg(feature = "adversary")]
        adversary: config.adversary,
    });
    tokio::spawn(crate::latest::accept_loop(latest_incoming, shared.clone()));
    tokio::spawn(crate::replicate::accept_loop(
        replicate_incoming,
        shared.clone(),
    ));
    if let Some(listener) = bulk_listener {
        tokio::spawn(crate::bulk::serve(listener, shared.clone()));
        tokio::spawn(crate::bulk::prune_tickets(
            Arc::downgrade(&shared),
            Duration::from_secs(1),
        ));
    }
    let limits = Arc::new(Limits::new(config.max_streams_per_peer, config.max_streams));
    tokio::spawn(accept_loop(incoming, shared.clone(), store.clone(), limits));
    let handle = SwarmHandle {
        shared: shared.clone(),
    };
    let mut runner = Runner {
        swarm,
        shared,
        lookups: HashMap::new(),
        provided: HashSet::new(),
        pending_provides: VecDeque::new(),
        provide_queries: HashSet::new(),
        psk_configured: psk.is_some(),
        bootstrap: config.bootstrap.clone(),
        announced_alone: HashSet::new(),
    };
    tokio::spawn(async move { runner.run(rx).await });
    tokio::spawn(reprovide(
        handle.clone(),
        store,
        config.reprovide_interval,
        config.provide_rate,
    ));
    info!(peer_id = %local_peer_id, "swarm started");
    Ok(handle)
}

/// Announces every blob in the store now and then every `interval`, at most
/// `rate` per second, so that 100,000 blobs become a steady trickle of DHT
/// walks rather than a burst.
async fn reprovide(handle: SwarmHandle, store: Arc<Store>, interval: Duration, rate: u32) {
    let pause = Duration::from_secs(1) / rate.max(1);
    loop {
        let digests = match store.digests() {
            Ok(d) => d,
            Err(e) => {
                warn!("cannot list blobs to announce: {e}");
                Vec::new()
            }
        };
        debug!(count = digests.len(), "announcing held blobs");
        for digest in digests {
            if handle.provide(digest).await.is_err() {
                return;
            }
            tokio::time::sleep(pause).await;
        }
        tokio::time::sleep(interval).await;
    }
}

struct Runner {
    swarm: Swarm<Behaviour>,
    shared: Arc<Shared>,
    lookups: HashMap<kad::QueryId, mpsc::UnboundedSender<PeerId>>,
    provided: HashSet<Sha256Digest>,
    pending_provides: VecDeque<Sha256Digest>,
    provide_queries: HashSet<kad::QueryId>,
    psk_configured: bool,
    /// Dialled again while this node has no peer at all (a bootstrap node
    /// that was not up yet when this one started).
    bootstrap: Vec<libp2p::Multiaddr>,
    /// Blobs announced while this node had no peer.
    announced_alone: HashSet<Sha256Digest>,
}

impl Runner {
    async fn run(&mut self, mut commands: mpsc::Receiver<Command>) {
        let mut retry = FIRST_BOOTSTRAP_RETRY;
        let redial = tokio::time::sleep(retry);
        tokio::pin!(redial);
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    Some(c) => self.command(c),
                    None => return,
                },
                event = self.swarm.select_next_some() => self.event(event),
                () = &mut redial => {
                    retry = next_bootstrap_retry(retry, self.redial_if_alone());
                    redial.as_mut().reset(tokio::time::Instant::now() + retry);
                }
            }
        }
    }

    /// Dials the bootstrap addresses when this node has no peer; whether it
    /// did.
    fn redial_if_alone(&mut self) -> bool {
        if self.bootstrap.is_empty() || self.swarm.connected_peers().next().is_some() {
            return false;
        }
        info!(
            count = self.bootstrap.len(),
            "no peers: dialling the bootstrap addresses again"
        );
        for addr in self.bootstrap.clone() {
            if let Err(e) = self.swarm.dial(addr.clone()) {
                debug!(%addr, "cannot dial bootstrap peer: {e}");
            }
        }
        true
    }

    /// Announcements made while this node had no peer reached no one:
    /// once it has one again, they are made again.
    fn reannounce(&mut self) {
        if self.announced_alone.is_empty() {
            return;
        }
        let again = std::mem::take(&mut self.announced_alone);
        info!(
            count = again.len(),
            "first peer connected: announcing again what was announced alone"
        );
        self.pending_provides.extend(again);
        self.start_provides();
    }

    fn command(&mut self, command: Command) {
        let kad = &mut self.swarm.behaviour_mut().kad;
        match command {
            Command::Provide(digest) => {
                self.pending_provides.push_back(digest);
                self.start_provides();
            }
            Command::Unprovide(digest) => {
                kad.stop_providing(&kad_key(&digest));
                self.provided.remove(&digest);
                self.announced_alone.remove(&digest);
                self.pending_provides.retain(|d| *d != digest);
            }
            Command::FindProviders(digest, tx) => {
                let id = kad.get_providers(kad_key(&digest));
                self.lookups.insert(id, tx);
            }
            Command::Intent(digest, true) => {
                if let Err(e) = kad.start_providing(intent_key(&digest)) {
                    debug!(%digest, "cannot announce the intent to fetch: {e}");
                }
            }
            Command::Intent(digest, false) => kad.stop_providing(&intent_key(&digest)),
            Command::FindIntents(digest, tx) => {
                let id = kad.get_providers(intent_key(&digest));
                self.lookups.insert(id, tx);
            }
            Command::Block(peer) => {
                self.swarm.behaviour_mut().blocked.block_peer(peer);
                self.swarm.behaviour_mut().kad.remove_peer(&peer);
                count(
                    &self.shared.counters.blocked_peers,
                    self.swarm.behaviour().blocked.blocked_peers().len() as u64,
                );
                warn!(%peer, "peer blocked");
            }
            Command::Unblock(peer) => {
                self.swarm.behaviour_mut().blocked.unblock_peer(peer);
                count(
                    &self.shared.counters.blocked_peers,
                    self.swarm.behaviour().blocked.blocked_peers().len() as u64,
                );
                info!(%peer, "peer suspension over");
            }
        }
        count(
            &self.shared.counters.provided_keys,
            self.provided.len() as u64,
        );
    }

    /// Starts queued announcements while fewer than `MAX_PROVIDE_QUERIES` run.
    fn start_provides(&mut self) {
        while self.provide_queries.len() < MAX_PROVIDE_QUERIES {
            let Some(digest) = self.pending_provides.pop_front() else {
                break;
            };
            match self
                .swarm
                .behaviour_mut()
                .kad
                .start_providing(kad_key(&digest))
            {
                Ok(id) => {
                    self.provide_queries.insert(id);
                    self.provided.insert(digest);
                    if self.swarm.connected_peers().next().is_none() {
                        self.announced_alone.insert(digest);
                    }
                }
                Err(e) => warn!(%digest, "cannot announce: {e}"),
            }
        }
        count(
            &self.shared.counters.provided_keys,
            self.provided.len() as u64,
        );
    }

    fn event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                if advertised(&address) {
                    // Provider records carry the provider's external
                    // addresses; a record without any is answered only by
                    // peers that happen to have the provider in their
                    // routing table, which in a swarm larger than a few
                    // k-buckets is most of them not (`testnet simulate`:
                    // 20 of 50 lookups found their provider among 100 nodes
                    // without, 48 of 50 with).
                    self.swarm.add_external_address(address.clone());
                }
                let full = address.with(Protocol::P2p(self.shared.local_peer_id));
                info!(address = %full, "p2p listening");
                lock(&self.shared.listen_addrs).push(full);
            }
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } => {
                // The first peer after none (at start, or after being cut off).
                if self.swarm.connected_peers().count() == 1 {
                    self.reannounce();
                }
                let addr = endpoint.get_remote_address().clone();
                let ip = addr.iter().find_map(|part| match part {
                    Protocol::Ip4(ip) => Some(std::net::IpAddr::V4(ip)),
                    Protocol::Ip6(ip) => Some(std::net::IpAddr::V6(ip)),
                    _ => None,
                });
                self.shared.peer_mut(peer_id, |p| {
                    p.connected = true;
                    if ip.is_some() {
                        p.ip = ip;
                    }
                    p.seen_at(addr);
                });
                self.count_connected();
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established,
                ..
            } => {
                if num_established == 0 {
                    self.shared.peer_mut(peer_id, |p| p.connected = false);
                }
                self.count_connected();
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                let denied = matches!(error, libp2p::swarm::DialError::Denied { .. });
                let handshake = match &error {
                    libp2p::swarm::DialError::Transport(attempts) => {
                        attempts.iter().any(|(_, e)| handshake_may_have_failed(e))
                    }
                    _ => false,
                };
                self.connection_failed(
                    peer_id.map(|p| p.to_string()),
                    &error.to_string(),
                    Failure::of(denied, handshake),
                );
            }
            SwarmEvent::IncomingConnectionError {
                send_back_addr,
                error,
                ..
            } => {
                let denied = matches!(error, libp2p::swarm::ListenError::Denied { .. });
                let handshake = match &error {
                    libp2p::swarm::ListenError::Transport(e) => handshake_may_have_failed(e),
                    _ => false,
                };
                self.connection_failed(
                    Some(send_back_addr.to_string()),
                    &error.to_string(),
                    Failure::of(denied, handshake),
                );
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                let region = info
                    .agent_version
                    .split_whitespace()
                    .find_map(|part| part.strip_prefix("region="))
                    .map(str::to_string);
                let remote_ip = self.shared.peer_mut(peer_id, |p| {
                    p.region = region;
                    p.ip
                });
                for addr in reachable_listen_addrs(remote_ip, info.listen_addrs) {
                    self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
                peer,
                result: Ok(rtt),
                ..
            })) => {
                self.shared.peer_mut(peer, |p| p.rtt = Some(rtt));
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                for (peer, addr) in found {
                    debug!(%peer, %addr, "found on the LAN");
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .add_address(&peer, addr.clone());
                    let _ = self.swarm.dial(addr);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                id,
                result: kad::QueryResult::StartProviding(_),
                step,
                ..
            })) if step.last && self.provide_queries.remove(&id) => self.start_provides(),
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                id,
                result: kad::QueryResult::GetProviders(result),
                step,
                ..
            })) => {
                if let (Ok(kad::GetProvidersOk::FoundProviders { providers, .. }), Some(tx)) =
                    (result, self.lookups.get(&id))
                {
                    for p in providers {
                        let _ = tx.send(p);
                    }
                }
                if step.last {
                    self.lookups.remove(&id);
                }
            }
            _ => {}
        }
    }

    fn count_connected(&self) {
        count(
            &self.shared.counters.connected_peers,
            self.swarm.connected_peers().count() as u64,
        );
    }

    fn connection_failed(&self, who: Option<String>, error: &str, failure: Failure) {
        let who = who.unwrap_or_else(|| "an unknown peer".into());
        match failure {
            // This node refused it: a blocked or suspended peer, or a limit.
            Failure::Denied => {
                debug!("connection with {who} refused here (blocked, suspended or over a limit): {error}")
            }
            Failure::Handshake => {
                let hint = if self.psk_configured {
                    "this node is in a private swarm: if this repeats with a peer that is up, \
                     it must use the same --swarm-key"
                } else {
                    "this node has no --swarm-key: it cannot reach a private swarm"
                };
                warn!("connection with {who} failed: {error} ({hint})");
            }
            Failure::Other => warn!("connection with {who} failed: {error}"),
        }
    }
}

/// Whether a transport error may be a handshake that failed (a swarm key
/// that differs ends in a reset or an early end of the stream); an address
/// nobody listens on, or one that cannot be reached, is the network's
/// trouble (a runner that went away), not the key's.
fn handshake_may_have_failed(error: &libp2p::TransportError<std::io::Error>) -> bool {
    match error {
        libp2p::TransportError::MultiaddrNotSupported(_) => false,
        libp2p::TransportError::Other(e) => !peer_not_there(e),
    }
}

/// Whether `error`, or an error it wraps, says nobody answered at the
/// address. Transports wrap the socket's error (several addresses, DNS),
/// not always as a source: their message is read too.
fn peer_not_there(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    const GONE: [ErrorKind; 7] = [
        ErrorKind::ConnectionRefused,
        ErrorKind::ConnectionAborted,
        ErrorKind::TimedOut,
        ErrorKind::HostUnreachable,
        ErrorKind::NetworkUnreachable,
        ErrorKind::AddrNotAvailable,
        ErrorKind::NotConnected,
    ];
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if GONE.contains(&io.kind()) {
                return true;
            }
            if let Some(inner) = io.get_ref() {
                next = Some(inner);
                continue;
            }
        }
        next = e.source();
    }
    let text = error.to_string().to_lowercase();
    [
        "connection refused",
        "timed out",
        "no route to host",
        "unreachable",
    ]
    .iter()
    .any(|gone| text.contains(gone))
}

/// Why a connection failed, for what its log line says.
enum Failure {
    /// This node's own rules refused it.
    Denied,
    /// The transport or its handshake failed (a swarm key that differs
    /// looks like this).
    Handshake,
    Other,
}

impl Failure {
    fn of(denied: bool, handshake: bool) -> Self {
        match (denied, handshake) {
            (true, _) => Failure::Denied,
            (false, true) => Failure::Handshake,
            (false, false) => Failure::Other,
        }
    }
}

fn is_loopback(addr: &libp2p::Multiaddr) -> bool {
    addr.iter().any(|part| match part {
        Protocol::Ip4(ip) => ip.is_loopback(),
        Protocol::Ip6(ip) => ip.is_loopback(),
        _ => false,
    })
}

/// Whether a listen address goes into this node's provider records: a
/// concrete, non-loopback one (a loopback address reaches the dialler
/// itself from any other host; peers on this machine find each other in
/// their routing tables anyway).
fn advertised(addr: &libp2p::Multiaddr) -> bool {
    let unspecified = addr.iter().any(|part| match part {
        Protocol::Ip4(ip) => ip.is_unspecified(),
        Protocol::Ip6(ip) => ip.is_unspecified(),
        _ => false,
    });
    !unspecified && !is_loopback(addr)
}

/// The listen addresses a peer announced that this node can reach it at. A
/// node listening on a wildcard address announces its loopback addresses
/// too; dialled from another host (or network namespace), those reach this
/// node itself, so Kademlia's dials fail ("unexpected peer id") and the
/// peer's routing entries are polluted. They are kept only for a peer that
/// is itself connected over loopback (nodes on one machine).
fn reachable_listen_addrs(
    remote_ip: Option<std::net::IpAddr>,
    listen_addrs: Vec<libp2p::Multiaddr>,
) -> Vec<libp2p::Multiaddr> {
    let remote_is_loopback = remote_ip.is_some_and(|ip| ip.is_loopback());
    listen_addrs
        .into_iter()
        .filter(|addr| remote_is_loopback || !is_loopback(addr))
        .collect()
}

#[cfg(test)]
mod listen_addr_tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use libp2p::Multiaddr;

    #[test]
    fn loopback_addresses_of_a_remote_peer_are_dropped() {
        let announced: Vec<Multiaddr> = [
            "/ip4/127.0.0.1/tcp/7504",
            "/ip4/10.1.0.2/tcp/7504",
            "/ip6/::1/tcp/7504",
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
        let remote = reachable_listen_addrs(Some("10.1.0.2".parse().unwrap()), announced.clone());
        assert_eq!(
            remote,
            vec!["/ip4/10.1.0.2/tcp/7504".parse::<Multiaddr>().unwrap()]
        );
        let local = reachable_listen_addrs(Some("127.0.0.1".parse().unwrap()), announced.clone());
        assert_eq!(local, announced, "peers on this machine keep them");
    }

    #[test]
    fn provider_records_carry_concrete_non_loopback_addresses() {
        let yes = |a: &str| advertised(&a.parse::<Multiaddr>().unwrap());
        assert!(yes("/ip4/10.1.0.2/tcp/7504"));
        assert!(yes("/ip6/2001:db8::1/udp/7504/quic-v1"));
        assert!(!yes("/ip4/127.0.0.1/tcp/7504"));
        assert!(!yes("/ip6/::1/tcp/7504"));
        assert!(!yes("/ip4/0.0.0.0/tcp/7504"));
    }
}

#[cfg(test)]
mod failure_tests {
    use std::io::{Error, ErrorKind};

    use super::*;

    /// A dial to a runner that went away is no hint at the swarm key; a
    /// connection reset in the handshake may be.
    #[test]
    fn only_a_failed_handshake_hints_at_the_swarm_key() {
        let transport = |kind| libp2p::TransportError::Other(Error::from(kind));
        for gone in [
            ErrorKind::ConnectionRefused,
            ErrorKind::ConnectionAborted,
            ErrorKind::TimedOut,
            ErrorKind::HostUnreachable,
            ErrorKind::NetworkUnreachable,
        ] {
            assert!(!handshake_may_have_failed(&transport(gone)), "{gone:?}");
        }
        for handshake in [ErrorKind::ConnectionReset, ErrorKind::UnexpectedEof] {
            assert!(
                handshake_may_have_failed(&transport(handshake)),
                "{handshake:?}"
            );
        }
        // As a dial over several addresses wraps them.
        let wrapped = Error::other(format!(
            "Multiple dial errors occurred:\n - {}",
            Error::from_raw_os_error(111)
        ));
        assert!(!handshake_may_have_failed(&libp2p::TransportError::Other(
            wrapped
        )));
        let nested = Error::other(Error::from(ErrorKind::ConnectionRefused));
        assert!(!handshake_may_have_failed(&libp2p::TransportError::Other(
            nested
        )));
    }
}

#[cfg(test)]
mod bootstrap_retry_tests {
    use super::*;

    /// A node alone dials again soon at first (its bootstrap peer may be
    /// starting at the same instant), then backs off to the cap; once it
    /// has had a peer, the next time alone starts soon again.
    #[test]
    fn bootstrap_retries_start_soon_and_back_off_to_the_cap() {
        let mut retry = FIRST_BOOTSTRAP_RETRY;
        let mut waits = vec![retry];
        for _ in 0..6 {
            retry = next_bootstrap_retry(retry, true);
            waits.push(retry);
        }
        let ms: Vec<u128> = waits.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [250, 500, 1000, 2000, 4000, 5000, 5000]);
        assert_eq!(next_bootstrap_retry(retry, false), FIRST_BOOTSTRAP_RETRY);
    }
}
