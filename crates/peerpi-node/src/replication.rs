//! A second copy of a large file that only one node of a region holds, so
//! that the region keeps it when that node is restarted empty.
//!
//! The holder's side: `check_after` once this node stored a blob of at least
//! `min_size` bytes, and on a sweep of what it holds (`check_after` after a
//! peer of its region disconnected, and every `sweep_every`), it looks the
//! blob up on the DHT; when no other node of its region that is connected
//! provides it (a record outlives its node: a runner restarted empty comes
//! back under a new peer id), it asks a peer of the region to keep a copy
//! (`/peerpi/replicate/1`), peers chosen in rendezvous order so that second
//! copies spread over the region.
//!
//! The asked side: one copy at a time, within an hourly byte budget, and
//! only into room under the cache cap (a copy for the region never evicts
//! what this node's own clients fetched). The copy is fetched from peers
//! only (never upstream: nobody here asked for it), by digest, and only
//! once this node's own trusted copy of the project's page lists that
//! digest: an ask is never a reason to trust bytes.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use peerpi_core::{DistFilename, ProjectName, Sha256Digest};
use peerpi_swarm::{PeerId, ReplicaAnswer, ReplicaAsk};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::blobs::Stored;
use crate::{background_runtime, lock, Node, NodeError, WeakNode};

/// When and how much to copy for the region.
#[derive(Debug, Clone, Copy)]
pub struct ReplicationConfig {
    /// Files at least this large get a second copy in the region; 0: off
    /// (this node neither asks nor accepts).
    pub min_size: u64,
    /// How long after a large file is stored its copies are counted: peers
    /// of the region that want it meanwhile make the second copy anyway.
    pub check_after: Duration,
    /// Bytes this node fetches for peers' asks per hour at most.
    pub bytes_per_hour: u64,
    /// How often every large file held is checked again (a second holder
    /// may have been restarted empty since).
    pub sweep_every: Duration,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        Self {
            min_size: 8 << 20,
            check_after: Duration::from_secs(10),
            bytes_per_hour: 32 << 30,
            sweep_every: Duration::from_secs(600),
        }
    }
}

/// Peers asked in turn for one second copy at most.
const MAX_ASKED: usize = 3;
/// How long a provider lookup may take before the providers found count.
const LOOKUP_WITHIN: Duration = Duration::from_secs(5);
/// Stored blobs queued for a check; past it a check waits for the sweep.
const STORED_BACKLOG: usize = 1024;

/// A peer as the choice of a second holder sees it.
#[derive(Debug, Clone)]
pub(crate) struct Neighbour {
    pub peer: PeerId,
    pub same_region: bool,
    /// Connected and not blocked: it can be asked.
    pub reachable: bool,
}

/// Whom to ask, in order, for a second copy of `digest`: nobody when a
/// reachable peer of this region provides it; otherwise reachable peers of
/// the region that do not, by rendezvous score (each blob has its own order,
/// so copies spread over the region), at most [`MAX_ASKED`].
pub(crate) fn second_holders(
    digest: &Sha256Digest,
    providers: &[PeerId],
    neighbours: &[Neighbour],
) -> Vec<PeerId> {
    let region_holds = neighbours
        .iter()
        .any(|n| n.same_region && n.reachable && providers.contains(&n.peer));
    if region_holds {
        return Vec::new();
    }
    let mut candidates: Vec<(Vec<u8>, PeerId)> = neighbours
        .iter()
        .filter(|n| n.same_region && n.reachable && !providers.contains(&n.peer))
        .map(|n| {
            let mut score = Sha256::new();
            score.update(digest.as_bytes());
            score.update(n.peer.to_bytes());
            (score.finalize().to_vec(), n.peer)
        })
        .collect();
    candidates.sort();
    candidates
        .into_iter()
        .take(MAX_ASKED)
        .map(|(_, p)| p)
        .collect()
}

/// What the asked node knows when it decides.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AskContext {
    pub min_size: u64,
    /// The blob is stored here or being fetched.
    pub held: bool,
    /// A copy for a peer is being fetched already.
    pub busy: bool,
    pub budget_left: u64,
    pub room_under_cap: u64,
}

/// The answer to an ask for `size` bytes, with the reason of a refusal.
pub(crate) fn decide(size: u64, cx: AskContext) -> (ReplicaAnswer, &'static str) {
    if cx.held {
        (ReplicaAnswer::Held, "held")
    } else if cx.min_size == 0 || size < cx.min_size {
        (ReplicaAnswer::Declined, "under this node's size threshold")
    } else if cx.busy {
        (ReplicaAnswer::Declined, "copying another file")
    } else if size > cx.budget_left {
        (ReplicaAnswer::Declined, "over the hourly budget")
    } else if size > cx.room_under_cap {
        (ReplicaAnswer::Declined, "no room under the cache cap")
    } else {
        (ReplicaAnswer::Accepted, "accepted")
    }
}

/// Bytes fetched for peers in the current hour.
#[derive(Debug)]
struct Budget {
    window_start: Instant,
    spent: u64,
}

impl Budget {
    fn left(&mut self, per_hour: u64, now: Instant) -> u64 {
        if now.duration_since(self.window_start) >= Duration::from_secs(3600) {
            self.window_start = now;
            self.spent = 0;
        }
        per_hour.saturating_sub(self.spent)
    }
}

/// The feed of stored blobs that second copies watch: none when they are
/// off or the node has no swarm.
pub(crate) fn watch_stored(
    config: &ReplicationConfig,
    swarm: &Option<peerpi_swarm::SwarmHandle>,
) -> (Option<mpsc::Sender<Stored>>, Option<mpsc::Receiver<Stored>>) {
    if config.min_size == 0 || swarm.is_none() {
        return (None, None);
    }
    let (tx, rx) = mpsc::channel(STORED_BACKLOG);
    (Some(tx), Some(rx))
}

/// Starts taking peers' asks, the checks after each store, and the sweep,
/// when replication is on and the node has a swarm.
pub(crate) fn start(node: &Node, stored: Option<mpsc::Receiver<Stored>>) {
    let config = node.inner.config.replication;
    let (Some(swarm), Some(stored)) = (node.inner.blobs.swarm.as_ref(), stored) else {
        return;
    };
    let Some(runtime) = background_runtime("copying for the region") else {
        return;
    };
    let weak = node.downgrade();
    runtime.spawn(take_asks(weak.clone(), swarm.replica_asks(), config));
    runtime.spawn(check_stored(weak.clone(), stored, config));
    runtime.spawn(sweep(weak, config));
}

/// A large blob just stored is checked for a second copy in the region
/// once `check_after` has passed.
async fn check_stored(
    weak: WeakNode,
    mut stored: mpsc::Receiver<Stored>,
    config: ReplicationConfig,
) {
    while let Some(Stored {
        digest,
        filename,
        len,
    }) = stored.recv().await
    {
        if len < config.min_size {
            continue;
        }
        let Ok(dist) = DistFilename::parse(&filename) else {
            continue;
        };
        let weak = weak.clone();
        tokio::spawn(async move {
            tokio::time::sleep(config.check_after).await;
            if let Some(node) = weak.node() {
                node.ensure_second_copy(digest, len, &dist.name).await;
            }
        });
    }
}

impl Node {
    /// Asks a peer of the region to keep `digest` unless one provides it.
    async fn ensure_second_copy(&self, digest: Sha256Digest, size: u64, project: &ProjectName) {
        let Some(swarm) = self.inner.blobs.swarm.as_ref() else {
            return;
        };
        if !matches!(self.inner.blobs.store.get(&digest), Ok(Some(_))) {
            return;
        }
        let mut providers = Vec::new();
        if let Ok(mut found) = swarm.find_providers(digest).await {
            let _ = tokio::time::timeout(LOOKUP_WITHIN, async {
                while let Some(peer) = found.recv().await {
                    providers.push(peer);
                }
            })
            .await;
        }
        let mine = swarm.region();
        let neighbours: Vec<Neighbour> = swarm
            .peers()
            .into_iter()
            .filter_map(|info| {
                let peer = info.peer_id.parse::<PeerId>().ok()?;
                Some(Neighbour {
                    peer,
                    same_region: info.region.as_deref() == mine,
                    reachable: info.connected && !info.blocked,
                })
            })
            .collect();
        for peer in second_holders(&digest, &providers, &neighbours) {
            match swarm
                .ask_to_replicate(peer, digest, size, project.as_str())
                .await
            {
                Ok(ReplicaAnswer::Accepted) => {
                    info!(%digest, %peer, size, "asked a peer of this region for a second copy");
                    self.inner.blobs.metrics.replica("requested");
                    return;
                }
                Ok(ReplicaAnswer::Held) => return,
                Ok(ReplicaAnswer::Declined) => debug!(%digest, %peer, "second copy declined"),
                Err(e) => debug!(%digest, %peer, "asking for a second copy: {e}"),
            }
        }
    }

    /// Fetches a blob a peer asked this node to keep: from peers only, once
    /// this node's trusted page of `project` lists it.
    async fn make_replica(&self, digest: Sha256Digest, project: &str) -> Result<(), NodeError> {
        let name = ProjectName::new(project)
            .map_err(|e| NodeError::BadRequest(format!("the ask names no project: {e}")))?;
        self.project_page(&name).await?;
        if self.origin(&digest)?.is_none() {
            return Err(NodeError::NotFound(format!(
                "{digest} is not listed on the trusted page of {name}"
            )));
        }
        self.inner.blobs.fetch_from_peers_only(&digest).await
    }
}

/// Answers peers' asks, one copy at a time.
async fn take_asks(
    slot: WeakNode,
    mut asks: mpsc::Receiver<ReplicaAsk>,
    config: ReplicationConfig,
) {
    let busy = Arc::new(AtomicBool::new(false));
    let budget = Mutex::new(Budget {
        window_start: Instant::now(),
        spent: 0,
    });
    while let Some(ask) = asks.recv().await {
        let Some(node) = slot.node() else { return };
        let held = matches!(node.inner.blobs.store.get(&ask.digest), Ok(Some(_)))
            || node.inner.blobs.fetching(&ask.digest);
        let cx = AskContext {
            min_size: config.min_size,
            held,
            busy: busy.load(Ordering::Acquire),
            budget_left: lock(&budget).left(config.bytes_per_hour, Instant::now()),
            room_under_cap: node.inner.blobs.store.room_under_cap(),
        };
        let (answer, reason) = decide(ask.size, cx);
        let (digest, size, project, from) = (ask.digest, ask.size, ask.project.clone(), ask.from);
        ask.answer(answer);
        if answer != ReplicaAnswer::Accepted {
            if answer == ReplicaAnswer::Declined {
                node.inner.blobs.metrics.replica("declined");
            }
            debug!(%digest, %from, reason, "a peer's ask for a copy");
            continue;
        }
        lock(&budget).spent += size;
        busy.store(true, Ordering::Release);
        let busy = busy.clone();
        tokio::spawn(async move {
            match node.make_replica(digest, &project).await {
                Ok(()) => {
                    info!(%digest, %from, size, "kept a second copy for the region");
                    node.inner.blobs.metrics.replica("made");
                }
                Err(e) => {
                    warn!(%digest, %from, "a copy for the region failed: {e}");
                    node.inner.blobs.metrics.replica("failed");
                }
            }
            busy.store(false, Ordering::Release);
        });
    }
}

/// Peers of this node's region connected now.
fn connected_in_region(node: &Node) -> HashSet<String> {
    let Some(swarm) = node.inner.blobs.swarm.as_ref() else {
        return HashSet::new();
    };
    let mine = swarm.region();
    swarm
        .peers()
        .into_iter()
        .filter(|p| p.connected && p.region.as_deref() == mine)
        .map(|p| p.peer_id)
        .collect()
}

/// Checks every large file held `check_after` after a peer of the region
/// disconnected (it may have held the other copy), and every `sweep_every`.
async fn sweep(slot: WeakNode, config: ReplicationConfig) {
    let poll = config.check_after.max(Duration::from_secs(1));
    let mut connected = HashSet::new();
    let mut lost_a_peer = false;
    let mut last_sweep = Instant::now();
    loop {
        tokio::time::sleep(poll).await;
        let Some(node) = slot.node() else { return };
        let now_connected = connected_in_region(&node);
        let due = lost_a_peer || last_sweep.elapsed() >= config.sweep_every;
        lost_a_peer = connected.difference(&now_connected).next().is_some();
        connected = now_connected;
        drop(node);
        if !due {
            continue;
        }
        last_sweep = Instant::now();
        let Some(digests) = slot.node().and_then(|n| n.inner.blobs.store.digests().ok()) else {
            return;
        };
        for digest in digests {
            let Some(node) = slot.node() else { return };
            let size = match node.inner.blobs.store.get(&digest) {
                Ok(Some(blob)) if blob.size >= config.min_size => blob.size,
                _ => continue,
            };
            let Ok(Some(origin)) = node.origin(&digest) else {
                continue;
            };
            let Ok(dist) = DistFilename::parse(&origin.filename) else {
                continue;
            };
            node.ensure_second_copy(digest, size, &dist.name).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> PeerId {
        PeerId::random()
    }

    fn near(peer: PeerId) -> Neighbour {
        Neighbour {
            peer,
            same_region: true,
            reachable: true,
        }
    }

    #[test]
    fn a_second_copy_is_asked_only_where_no_peer_of_the_region_holds_one() {
        let digest = Sha256Digest::from_bytes([5; 32]);
        let (a, b, c, far) = (peer(), peer(), peer(), peer());
        let mut neighbours = vec![
            near(a),
            near(b),
            near(c),
            Neighbour {
                peer: far,
                same_region: false,
                reachable: true,
            },
        ];
        // A far provider does not count, nor is a far peer asked.
        let asked = second_holders(&digest, &[far], &neighbours);
        assert_eq!(asked.len(), 3);
        assert!(!asked.contains(&far));
        // A near provider does, while it is connected (a runner restarted
        // empty comes back under a new id; its record stays).
        assert!(second_holders(&digest, &[far, b], &neighbours).is_empty());
        neighbours[1].reachable = false;
        assert_eq!(second_holders(&digest, &[far, b], &neighbours).len(), 2);
        neighbours[1].reachable = true;
        // Unreachable peers are not asked.
        neighbours[0].reachable = false;
        neighbours[1].reachable = false;
        assert_eq!(second_holders(&digest, &[], &neighbours), vec![c]);
        neighbours[2].reachable = false;
        assert!(second_holders(&digest, &[], &neighbours).is_empty());
    }

    #[test]
    fn second_holders_are_spread_over_the_region_blob_by_blob() {
        let neighbours: Vec<Neighbour> = (0..8).map(|_| near(peer())).collect();
        let first = |d: u8| second_holders(&Sha256Digest::from_bytes([d; 32]), &[], &neighbours)[0];
        // The same blob, the same order (every holder would pick alike).
        assert_eq!(first(1), first(1));
        let distinct: std::collections::HashSet<PeerId> = (0..64).map(first).collect();
        assert!(
            distinct.len() >= 4,
            "64 blobs went to {} of 8 peers",
            distinct.len()
        );
    }

    #[test]
    fn an_ask_is_taken_only_within_size_budget_room_and_one_at_a_time() {
        let open = AskContext {
            min_size: 100,
            held: false,
            busy: false,
            budget_left: 1000,
            room_under_cap: 1000,
        };
        assert_eq!(decide(500, open).0, ReplicaAnswer::Accepted);
        assert_eq!(decide(99, open).0, ReplicaAnswer::Declined);
        let off = AskContext {
            min_size: 0,
            ..open
        };
        assert_eq!(decide(500, off).0, ReplicaAnswer::Declined);
        let held = AskContext { held: true, ..open };
        assert_eq!(decide(500, held).0, ReplicaAnswer::Held);
        let busy = AskContext { busy: true, ..open };
        assert_eq!(decide(500, busy).0, ReplicaAnswer::Declined);
        let spent = AskContext {
            budget_left: 499,
            ..open
        };
        assert_eq!(
            decide(500, spent),
            (ReplicaAnswer::Declined, "over the hourly budget")
        );
        let full = AskContext {
            room_under_cap: 499,
            ..open
        };
        assert_eq!(
            decide(500, full),
            (ReplicaAnswer::Declined, "no room under the cache cap")
        );
    }

    #[test]
    fn the_budget_refills_each_hour() {
        let start = Instant::now();
        let mut budget = Budget {
            window_start: start,
            spent: 0,
        };
        assert_eq!(budget.left(100, start), 100);
        budget.spent = 80;
        assert_eq!(budget.left(100, start + Duration::from_secs(60)), 20);
        assert_eq!(budget.left(100, start + Duration::from_secs(3600)), 100);
    }
}
