//! What peers may ask of this node: streams open at once per peer and in
//! all (transfers and unredeemed tickets), requests per second per peer,
//! and bytes per second to all peers together.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use libp2p::PeerId;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::lock;

/// Requests one peer may make per second, on average.
const REQUESTS_PER_SECOND: f64 = 100.0;
/// Requests one peer may make at once after a quiet spell.
const REQUEST_BURST: f64 = 200.0;
/// Peers remembered before idle ones are forgotten.
const MAX_TRACKED_PEERS: usize = 4096;
/// Streams one IP address may hold, as a multiple of the per-peer bound:
/// identities are free to make, addresses are not (17 identities on one
/// host held all 128 slots).
const ADDRESS_SHARE: usize = 4;

/// Per-peer and global limits on what peers may ask of this node: streams
/// open at once (transfers, unredeemed tickets included) and the rate of
/// requests. Over a limit the answer is BUSY.
pub(crate) struct Limits {
    per_peer: usize,
    all: Arc<Semaphore>,
    peers: Mutex<HashMap<PeerId, PeerLimits>>,
    /// Streams per remote IP address, `ADDRESS_SHARE` × `per_peer` each.
    addresses: Mutex<HashMap<IpAddr, Arc<Semaphore>>>,
}

struct PeerLimits {
    streams: Arc<Semaphore>,
    requests: TokenBucket,
}

/// A token bucket: `rate` tokens per second, at most `burst` saved up.
struct TokenBucket {
    tokens: f64,
    last: std::time::Instant,
}

impl TokenBucket {
    fn new(now: std::time::Instant) -> Self {
        Self {
            tokens: REQUEST_BURST,
            last: now,
        }
    }

    fn refill(&mut self, now: std::time::Instant) {
        let earned = now.saturating_duration_since(self.last).as_secs_f64() * REQUESTS_PER_SECOND;
        self.tokens = (self.tokens + earned).min(REQUEST_BURST);
        self.last = now;
    }

    fn take(&mut self, now: std::time::Instant) -> bool {
        self.refill(now);
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }

    fn is_full(&mut self, now: std::time::Instant) -> bool {
        self.refill(now);
        self.tokens >= REQUEST_BURST
    }
}

impl Limits {
    pub(crate) fn new(per_peer: usize, all: usize) -> Self {
        Self {
            per_peer,
            all: Arc::new(Semaphore::new(all)),
            peers: Mutex::new(HashMap::new()),
            addresses: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one request against `peer`'s rate; false when over it.
    pub(crate) fn admit(&self, peer: PeerId) -> bool {
        self.admit_at(peer, std::time::Instant::now())
    }

    fn admit_at(&self, peer: PeerId, now: std::time::Instant) -> bool {
        let mut peers = lock(&self.peers);
        if peers.len() >= MAX_TRACKED_PEERS && !peers.contains_key(&peer) {
            // Forget peers with nothing open and nothing owed.
            let per_peer = self.per_peer;
            peers.retain(|_, l| {
                l.streams.available_permits() < per_peer || !l.requests.is_full(now)
            });
        }
        self.limits_of(&mut peers, peer, now).requests.take(now)
    }

    fn limits_of<'a>(
        &self,
        peers: &'a mut HashMap<PeerId, PeerLimits>,
        peer: PeerId,
        now: std::time::Instant,
    ) -> &'a mut PeerLimits {
        peers.entry(peer).or_insert_with(|| PeerLimits {
            streams: Arc::new(Semaphore::new(self.per_peer)),
            requests: TokenBucket::new(now),
        })
    }

    /// Stream permits for one transfer of `peer`'s (connected from `ip`):
    /// one of its own, one of its address's and one of the node's; `None`
    /// when any is used up.
    pub(crate) fn permits(&self, peer: PeerId, ip: Option<IpAddr>) -> Option<Permits> {
        let streams = {
            let mut peers = lock(&self.peers);
            self.limits_of(&mut peers, peer, std::time::Instant::now())
                .streams
                .clone()
        };
        let peer_permit = streams.try_acquire_owned().ok()?;
        let address_permit = match ip {
            Some(ip) => Some(self.address_streams(ip).try_acquire_owned().ok()?),
            None => None,
        };
        let all_permit = self.all.clone().try_acquire_owned().ok()?;
        Some((peer_permit, all_permit, address_permit))
    }

    fn address_streams(&self, ip: IpAddr) -> Arc<Semaphore> {
        let share = self.per_peer.saturating_mul(ADDRESS_SHARE);
        let mut addresses = lock(&self.addresses);
        if addresses.len() >= MAX_TRACKED_PEERS && !addresses.contains_key(&ip) {
            addresses.retain(|_, s| s.available_permits() < share);
        }
        addresses
            .entry(ip)
            .or_insert_with(|| Arc::new(Semaphore::new(share)))
            .clone()
    }

    #[cfg(test)]
    fn acquire_at(&self, peer: PeerId, now: std::time::Instant) -> Option<Permits> {
        if !self.admit_at(peer, now) {
            return None;
        }
        self.permits(peer, None)
    }
}

/// The stream permits held while a transfer (or its unredeemed ticket)
/// lives: the peer's, the node's, and the address's when it is known.
pub(crate) type Permits = (
    OwnedSemaphorePermit,
    OwnedSemaphorePermit,
    Option<OwnedSemaphorePermit>,
);

/// Upload pacing shared by every transfer: bytes per second in all.
pub(crate) struct UploadLimit {
    bytes_per_second: u64,
    next_free: Mutex<tokio::time::Instant>,
}

impl UploadLimit {
    pub(crate) fn new(bytes_per_second: u64) -> Self {
        Self {
            bytes_per_second: bytes_per_second.max(1),
            next_free: Mutex::new(tokio::time::Instant::now()),
        }
    }

    /// Waits until `n` more bytes may go out.
    pub(crate) async fn take(&self, n: usize) {
        let start = {
            let mut next_free = lock(&self.next_free);
            let start = (*next_free).max(tokio::time::Instant::now());
            *next_free = start + Duration::from_secs_f64(n as f64 / self.bytes_per_second as f64);
            start
        };
        tokio::time::sleep_until(start).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn a_peer_gets_a_burst_then_the_steady_rate() {
        let limits = Limits::new(usize::MAX >> 4, usize::MAX >> 4);
        let (peer, other) = (PeerId::random(), PeerId::random());
        let start = Instant::now();
        let mut held = Vec::new();
        for _ in 0..REQUEST_BURST as usize {
            held.push(limits.acquire_at(peer, start).expect("within the burst"));
        }
        assert!(limits.acquire_at(peer, start).is_none(), "burst spent");
        assert!(
            limits.acquire_at(other, start).is_some(),
            "limits are per peer"
        );
        let later = start + Duration::from_millis(100);
        let allowed = (0..100)
            .filter(|_| limits.acquire_at(peer, later).is_some())
            .count();
        assert_eq!(
            allowed,
            (REQUESTS_PER_SECOND / 10.0) as usize,
            "0.1 s earns 10"
        );
    }

    #[test]
    fn streams_are_limited_per_peer_and_in_all() {
        let limits = Limits::new(2, 3);
        let (a, b) = (PeerId::random(), PeerId::random());
        let now = Instant::now();
        let first = limits.acquire_at(a, now).unwrap();
        let _second = limits.acquire_at(a, now).unwrap();
        assert!(limits.acquire_at(a, now).is_none(), "two per peer");
        let _third = limits.acquire_at(b, now).unwrap();
        assert!(limits.acquire_at(b, now).is_none(), "three in all");
        drop(first);
        assert!(
            limits.acquire_at(b, now).is_some(),
            "a finished transfer frees its permits"
        );
    }

    #[test]
    fn one_address_holds_at_most_its_share_of_the_streams_whatever_its_identities() {
        let limits = Limits::new(8, 128);
        let host: IpAddr = "10.0.0.7".parse().unwrap();
        let mut held = Vec::new();
        for _ in 0..17 {
            let identity = PeerId::random();
            while let Some(p) = limits.permits(identity, Some(host)) {
                held.push(p);
            }
        }
        assert_eq!(held.len(), 8 * ADDRESS_SHARE, "not all 128");
        let honest: IpAddr = "10.0.0.8".parse().unwrap();
        assert!(limits.permits(PeerId::random(), Some(honest)).is_some());
    }
}
