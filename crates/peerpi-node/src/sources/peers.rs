//! The peer source: providers found on the DHT, asked one at a time, each
//! transfer resumed at the offset reached when a peer breaks off, and every
//! byte verified with the whole blob before it is stored. The policy (order,
//! bounds, hold-back, blame) is written against [`PeerNetwork`], which the
//! swarm implements and the unit tests script.

use std::borrow::Cow;
use std::collections::{HashSet, VecDeque};
use std::fs::File;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use peerpi_core::Sha256Digest;
use peerpi_store::{BlobWriter, Origin, Store};
use peerpi_swarm::{PeerId, SwarmHandle};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::flight::{publish_progress, ranges_differ, CommitError, Flight};
use crate::metrics::{Metrics, Source};
use crate::reputation::{Misdeed, Verdict};
use crate::sources::hedge::Hedging;

/// Blobs of at least this many bytes (of a listed size) come from several
/// providers at once, in ranges of at least half of it: one provider's
/// uplink is shared by every runner that wants the file.
pub(crate) const SPLIT_MIN_SIZE: u64 = 32 << 20;

/// Providers a large blob comes from at once, at most (the first
/// transfer and the tails).
const MAX_RANGES: usize = 4;

/// Tail ranges start on a multiple of this.
const SPLIT_ALIGN: u64 = 1 << 20;

/// The least time a tail's provider is given to answer (the hedge delay
/// when longer): the first transfer's bytes queue up meanwhile.
const TAIL_ANSWER_MIN: Duration = Duration::from_millis(250);

/// Silence after which a tail transfer is given up.
const TAIL_SILENCE: Duration = Duration::from_secs(10);

/// Bytes from a peer gathered before one write to the temp file.
const PEER_WRITE_BATCH: usize = 1 << 20;

/// Chunks gathered for one write at most (a peer dripping single bytes would
/// otherwise make a batch of a million tiny chunks).
const MAX_BATCH_CHUNKS: usize = 4096;

/// Providers asked for one blob before the peer phase gives up.
pub(crate) const MAX_PROVIDERS_TRIED: usize = 8;

/// How long a peer transfer may run before its average rate is judged.
pub(crate) const MIN_RATE_GRACE: Duration = Duration::from_secs(3);

/// How long a transfer from a peer still fetching the blob runs before its
/// rate is judged: such a peer sends no faster than its own source, which
/// starts slowly (a connection to the index ramping up, or a relay of a
/// relay; on the rig one was judged too slow at 3 s and its receiver went
/// upstream beside it). A peer dripping bytes on purpose holds a client
/// this long at most, once: it is then suspended.
pub(crate) const IN_FLIGHT_RATE_GRACE: Duration = Duration::from_secs(10);

/// How long to gather providers after the first one arrives.
const PROVIDER_WINDOW: Duration = Duration::from_millis(25);

/// How long the intent lookup may run on after the provider lookup ended.
const INTENT_LOOKUP_WAIT: Duration = Duration::from_millis(500);

/// Peers fetching the blob (announced intents) that are waited for at most:
/// enough that a node missing a blob with many others sees the smallest of
/// them, who fetches it for all (see `poll_intents`).
const MAX_INTENT_HOLDERS: usize = 16;

/// How long a node that found no intent waits before looking once more
/// (an announcement's DHT round trip on a cluster network).
const INTENT_SETTLE: Duration = Duration::from_millis(100);

/// Blobs from this size on are worth that wait: below it, a second upstream
/// fetch costs less than every cold miss waiting.
const SETTLE_MIN_SIZE: u64 = 1 << 20;

/// How often a peer fetching the blob is asked again.
const INTENT_POLL: Duration = Duration::from_millis(250);

/// How long to wait for a peer fetching a blob of `size`: 10 s plus the
/// blob at 1 MiB/s, at most 2 minutes. Past it, fetching upstream too is
/// cheaper than waiting on.
pub(crate) fn intent_wait(size: Option<u64>) -> Duration {
    let transfer = size.unwrap_or(0) as f64 / f64::from(1u32 << 20);
    Duration::from_secs_f64(10.0 + transfer).min(Duration::from_secs(120))
}

/// What the peer phase needs of a peer-to-peer network.
pub(crate) trait PeerNetwork: Send + Sync {
    type Transfer: PeerTransfer + Send + 'static;

    fn local_peer_id(&self) -> PeerId;

    /// Starts a provider lookup; providers arrive as they are found and the
    /// channel closes when the lookup ends.
    fn find_providers(
        &self,
        digest: Sha256Digest,
    ) -> impl Future<Output = Result<mpsc::UnboundedReceiver<PeerId>, String>> + Send;

    /// Marks this node as waiting (or no longer) for another peer's intent.
    fn set_waiting(&self, digest: Sha256Digest, waiting: bool);

    /// Starts a lookup of peers fetching `digest` now (announced intents).
    fn find_intents(
        &self,
        digest: Sha256Digest,
    ) -> impl Future<Output = Result<mpsc::UnboundedReceiver<PeerId>, String>> + Send;

    /// False for a blocked or suspended peer.
    fn usable(&self, peer: &PeerId) -> bool;

    /// Puts the peers to ask in order, best first.
    fn order(&self, peers: &mut [PeerId]);

    /// Whether `peer` is known to be in this node's region.
    fn same_region(&self, peer: &PeerId) -> bool;

    /// Asks `peer` for `digest` from `offset`, up to its announced length.
    fn fetch(
        &self,
        peer: PeerId,
        digest: Sha256Digest,
        offset: u64,
    ) -> impl Future<Output = Result<Self::Transfer, NotStarted>> + Send;

    /// Applies a verdict to a peer.
    fn sentence(&self, peer: PeerId, verdict: Verdict) -> impl Future<Output = ()> + Send;
}

/// Why a peer transfer did not start.
#[derive(Debug)]
pub(crate) struct NotStarted {
    /// The peer is fetching the blob itself: ask again shortly.
    pub pending: bool,
    /// The peer waits for another peer fetching it, as this node may.
    pub waiting: bool,
    pub reason: String,
}

impl std::fmt::Display for NotStarted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

/// A blob arriving from one peer.
pub(crate) trait PeerTransfer {
    /// Bytes announced to follow the requested offset.
    fn remaining(&self) -> u64;

    /// How the bytes travel, for metrics and logs.
    fn channel(&self) -> &'static str;

    /// The peer is still fetching the blob: its bytes arrive as it gets
    /// them, and a transfer it ends early claims nothing about them.
    fn in_flight(&self) -> bool;

    /// The next piece; `None` at the announced end. Silence past the
    /// network's timeout and an early end are errors.
    fn next_chunk(&mut self) -> impl Future<Output = Result<Option<Bytes>, String>> + Send;
}

impl PeerNetwork for SwarmHandle {
    type Transfer = peerpi_swarm::PeerDownload;

    fn local_peer_id(&self) -> PeerId {
        SwarmHandle::local_peer_id(self)
    }

    async fn find_providers(
        &self,
        digest: Sha256Digest,
    ) -> Result<mpsc::UnboundedReceiver<PeerId>, String> {
        SwarmHandle::find_providers(self, digest)
            .await
            .map_err(|e| e.to_string())
    }

    fn set_waiting(&self, digest: Sha256Digest, waiting: bool) {
        SwarmHandle::set_waiting(self, digest, waiting);
    }

    async fn find_intents(
        &self,
        digest: Sha256Digest,
    ) -> Result<mpsc::UnboundedReceiver<PeerId>, String> {
        SwarmHandle::find_intents(self, digest)
            .await
            .map_err(|e| e.to_string())
    }

    fn usable(&self, peer: &PeerId) -> bool {
        !self.is_blocked(peer)
    }

    /// Same region first, then lower round-trip time, unknown last.
    fn order(&self, peers: &mut [PeerId]) {
        peers.sort_by_key(|peer| {
            let rtt = self
                .peer_info(peer)
                .and_then(|i| i.rtt)
                .unwrap_or(Duration::MAX);
            (!PeerNetwork::same_region(self, peer), rtt)
        });
    }

    fn same_region(&self, peer: &PeerId) -> bool {
        let Some(mine) = self.region() else {
            return false;
        };
        self.peer_info(peer)
            .and_then(|i| i.region)
            .is_some_and(|r| r == mine)
    }

    async fn fetch(
        &self,
        peer: PeerId,
        digest: Sha256Digest,
        offset: u64,
    ) -> Result<Self::Transfer, NotStarted> {
        SwarmHandle::fetch(self, peer, digest, offset)
            .await
            .map_err(|e| {
                let refused = match &e {
                    peerpi_swarm::FetchError::Refused { status, .. } => Some(*status),
                    _ => None,
                };
                NotStarted {
                    pending: refused == Some(peerpi_swarm::Status::Pending),
                    waiting: refused == Some(peerpi_swarm::Status::Waiting),
                    reason: e.to_string(),
                }
            })
    }

    async fn sentence(&self, peer: PeerId, verdict: Verdict) {
        let _ = match verdict {
            Verdict::Block => self.block(peer).await,
            Verdict::Suspend(duration) => self.suspend(peer, duration).await,
            Verdict::Acquit => self.lift_suspension(peer).await,
        };
    }
}

impl PeerTransfer for peerpi_swarm::PeerDownload {
    fn remaining(&self) -> u64 {
        self.remaining
    }

    fn channel(&self) -> &'static str {
        peerpi_swarm::PeerDownload::channel(self).as_str()
    }

    fn in_flight(&self) -> bool {
        self.in_flight
    }

    async fn next_chunk(&mut self) -> Result<Option<Bytes>, String> {
        peerpi_swarm::PeerDownload::next_chunk(self)
            .await
            .map_err(|e| e.to_string())
    }
}

/// The bounds of one peer phase.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PeerBounds {
    /// How long to wait for the first provider.
    pub first_provider: Duration,
    /// How long bytes are held back from clients before they are released.
    pub hold_back: Duration,
    /// Slowest average rate a transfer may keep after `min_rate_grace`.
    pub min_rate: u64,
    pub min_rate_grace: Duration,
    /// How long a peer that broke off or was too slow is left alone.
    pub suspension: Duration,
    /// The blob's listed size, or the cap when none is listed.
    pub size_cap: u64,
    /// How long to wait for a peer that is fetching the blob itself.
    pub intent_wait: Duration,
    /// A blob of a listed size at least this large is fetched from two
    /// providers at once, the second sending its second half.
    pub split_min: u64,
}

/// One peer phase of a flight.
pub(crate) struct PeerPhase<'a, N> {
    pub net: &'a N,
    pub store: &'a Store,
    pub bounds: PeerBounds,
    pub metrics: &'a Metrics,
    pub flight: &'a Flight,
    /// The node's hedging state (see `hedge`).
    pub hedging: &'a Hedging,
}

/// What a step of the peer phase leads to.
enum Step<T> {
    Go(T),
    /// Try the next peer.
    Retry,
    /// The phase ends: the next source continues from what was received.
    HandOver(Cow<'static, str>),
}

/// How one transfer ended, short of its verification.
#[derive(Debug, Default, Clone, Copy)]
struct Ended {
    /// What the peer did wrong, if the transfer failed.
    failed: Option<Misdeed>,
    /// The client's clock ran out: the next source takes over.
    handing_over: bool,
}

/// Where one peer phase stands between its attempts.
struct Attempts<T> {
    started: tokio::time::Instant,
    /// A transfer running at this instant is released to clients.
    release_at: tokio::time::Instant,
    /// No wait runs past it: before a release, the hold-back (or the
    /// first-provider deadline, if longer) from the start; after one,
    /// the hold-back of silence.
    client_deadline: tokio::time::Instant,
    /// Until when the lookup may name a (next) provider: `first_provider`
    /// again after each attempt ends.
    provider_deadline: tokio::time::Instant,
    attempt_ended: bool,
    /// Set at the first transfer: the blob's size at the minimum rate,
    /// plus the grace.
    phase_deadline: Option<tokio::time::Instant>,
    tried: HashSet<PeerId>,
    /// Providers found and not asked yet, best first.
    queue: Vec<PeerId>,
    /// A near peer still fetching is asked once per phase at most.
    near_asked: bool,
    providers: mpsc::UnboundedReceiver<PeerId>,
    intents: Option<IntentFeed>,
    /// A transfer started outside the provider queue (an intent, a near
    /// peer in flight), read next.
    ready: Option<(PeerId, T)>,
    received: Received,
}

/// Where each of `ranges` ranges of the `left` bytes from `offset` starts,
/// after the first (which starts at `offset`): evenly spaced, on
/// `SPLIT_ALIGN` boundaries.
fn range_starts(offset: u64, left: u64, ranges: usize) -> Vec<u64> {
    let ranges = ranges.max(1) as u64;
    let mut starts: Vec<u64> = Vec::new();
    for i in 1..ranges {
        let start = offset + (left / ranges * i) / SPLIT_ALIGN * SPLIT_ALIGN;
        if start > starts.last().copied().unwrap_or(offset) {
            starts.push(start);
        }
    }
    starts
}

/// Whether a transfer of `total` bytes may be the blob: the listed size, or,
/// none listed, within `cap`.
fn announced_size_fits(listed: Option<u64>, total: u64, cap: u64) -> bool {
    match listed {
        Some(expected) => total == expected,
        None => total <= cap,
    }
}

/// How asking for a transfer ended.
enum Started<T> {
    Transfer(PeerId, T),
    /// The peers asked did not start one (judged already); try the next.
    Failed,
    DeadlinePassed,
}

impl<N: PeerNetwork> PeerPhase<'_, N> {
    async fn sentence(&self, peer: PeerId, misdeed: Misdeed) {
        self.net
            .sentence(peer, misdeed.verdict(self.bounds.suspension))
            .await;
    }

    /// Fetches from peers that announce the CID, one at a time, resuming at
    /// the current offset when a peer stalls, drops or falls below the
    /// minimum rate. At most `MAX_PROVIDERS_TRIED` are asked; the whole
    /// phase ends once it has taken longer than the blob at the minimum rate
    /// (plus the grace); after a provider fails, the lookup has
    /// `first_provider` again to name another.
    ///
    /// **The client's clock bounds every wait.** A client has no response
    /// head until peer bytes are released, and pip does not retry a
    /// cut-short download. So everything before a release (lookups,
    /// answers, peers that say they are fetching it, transfers) must fit in
    /// `hold_back` (or `first_provider`, if longer) from the start of the
    /// flight, and a transfer running at `hold_back` is released; once bytes are
    /// released, no wait may outlast `hold_back` of silence. Past either,
    /// the phase ends and hands what it received to the next source, which
    /// continues the same file from that offset: a client reading released
    /// bytes gets the rest from there, not a cut response. A peer whose
    /// answer came late, or never, is suspended for a while.
    ///
    /// Bytes are released only when the blob's size is listed: a length
    /// that only a peer vouches for is never a client's `Content-Length`.
    ///
    /// `commit` verifies and stores a finished temp file. When bytes from
    /// several peers fail verification together, the hash cannot say who
    /// lied: their attempts go to `suspects`, to be judged against the
    /// verified blob once one is stored (see [`judge`]).
    pub(crate) async fn run<C, F>(
        &self,
        digest: Sha256Digest,
        origin: &Origin,
        suspects: &mut Vec<Attempt>,
        commit: C,
    ) -> Result<(Arc<File>, u64), Unfinished>
    where
        C: Fn(BlobWriter, u64) -> F,
        F: Future<Output = Result<(), CommitError>>,
    {
        let mut phase = self.begin(digest).await?;
        loop {
            let (peer, transfer) = match self.next_transfer(digest, &mut phase).await? {
                Step::Go(started) => started,
                Step::Retry => continue,
                Step::HandOver(reason) => return Err(phase.received.hand_over(reason).await),
            };
            let offset = phase.received.writer.len();
            self.metrics
                .peer_transfer(transfer.channel(), transfer.in_flight());
            let total = offset + transfer.remaining();
            if !self.admit(peer, digest, origin, total).await {
                continue;
            }
            let channel = transfer.channel();
            let ended = self
                .receive(&mut phase, peer, transfer, digest, origin, total)
                .await?;
            match self.after_transfer(&mut phase, peer, digest, ended).await? {
                Step::Go(()) => {}
                Step::Retry => continue,
                Step::HandOver(reason) => return Err(phase.received.hand_over(reason).await),
            }
            let finished = self
                .finish(&mut phase, peer, channel, digest, origin, suspects, &commit)
                .await?;
            if let Some(done) = finished {
                return Ok(done);
            }
        }
    }

    /// Starts the provider and intent lookups; the clocks start now.
    async fn begin(&self, digest: Sha256Digest) -> Result<Attempts<N::Transfer>, Unfinished> {
        let bounds = self.bounds;
        let started = tokio::time::Instant::now();
        let providers = self
            .net
            .find_providers(digest)
            .await
            .map_err(Unfinished::sources)?;
        // Beside it: peers fetching the blob right now, waited for
        // when no peer holds it (two runners missing the same file at once
        // would otherwise both fetch it upstream).
        let intents = self
            .net
            .find_intents(digest)
            .await
            .ok()
            .map(IntentFeed::new);
        Ok(Attempts {
            started,
            release_at: started + bounds.hold_back,
            client_deadline: started + bounds.hold_back.max(bounds.first_provider),
            provider_deadline: started + bounds.first_provider,
            attempt_ended: false,
            phase_deadline: None,
            tried: HashSet::new(),
            queue: Vec::new(),
            near_asked: false,
            providers,
            intents,
            ready: None,
            received: Received::new(self.store)?,
        })
    }

    /// The next transfer to read: a provider found by the lookup (in the
    /// network's order, hedged when slow to answer), a near peer still
    /// fetching the blob (asked once per phase), or, when the lookup names
    /// nobody more, a peer that announced it is fetching it. `Retry`: the
    /// peer taken was no use (already tried, unusable, refused); `HandOver`:
    /// the client's deadline passed or nobody is left.
    async fn next_transfer(
        &self,
        digest: Sha256Digest,
        phase: &mut Attempts<N::Transfer>,
    ) -> Result<Step<(PeerId, N::Transfer)>, Unfinished> {
        let (net, bounds) = (self.net, self.bounds);
        if std::mem::take(&mut phase.attempt_ended) {
            phase.provider_deadline = phase
                .provider_deadline
                .max(tokio::time::Instant::now() + bounds.first_provider);
        }
        if phase.ready.is_none() && phase.queue.is_empty() {
            let wait_until = phase.provider_deadline.min(phase.client_deadline);
            let ended = match tokio::time::timeout_at(wait_until, phase.providers.recv()).await {
                Ok(Some(p)) => {
                    phase.queue.push(p);
                    None
                }
                Ok(None) => Some("no (more) providers"),
                Err(_) if tokio::time::Instant::now() >= phase.client_deadline => {
                    return Ok(Step::HandOver(CLIENT_DEADLINE_PASSED.into()));
                }
                Err(_) => Some("no provider delivered before the peer deadline"),
            };
            if let Some(reason) = ended {
                let at = phase.received.writer.len();
                let intents = phase.intents.take();
                let intent = self
                    .wait_for_intent(digest, at, intents, &phase.tried, phase.client_deadline)
                    .await;
                return Ok(match intent {
                    Some(started) => {
                        phase.ready = Some(started);
                        Step::Retry
                    }
                    None => Step::HandOver(reason.into()),
                });
            }
            // Providers arrive one DHT response at a time: gather what
            // comes within a short window so that region and RTT can
            // choose among them, without waiting for the whole query.
            let _ = tokio::time::timeout(PROVIDER_WINDOW, async {
                while let Some(p) = phase.providers.recv().await {
                    phase.queue.push(p);
                }
            })
            .await;
            net.order(&mut phase.queue);
        }
        if let Some((peer, transfer)) = phase.ready.take() {
            phase.tried.insert(peer);
            phase.attempt_ended = true;
            return Ok(Step::Go((peer, transfer)));
        }
        let at = phase.received.writer.len();
        if !std::mem::replace(&mut phase.near_asked, true) {
            let next = &phase.queue[0];
            let near = self.near_in_flight(
                digest,
                at,
                next,
                phase.intents.as_mut(),
                &phase.tried,
                phase.client_deadline,
            );
            if let Some(started) = near.await {
                phase.ready = Some(started);
                return Ok(Step::Retry);
            }
        }
        let peer = phase.queue.remove(0);
        if peer == net.local_peer_id() || !net.usable(&peer) || !phase.tried.insert(peer) {
            return Ok(Step::Retry);
        }
        if phase.tried.len() > MAX_PROVIDERS_TRIED {
            let reason = format!("{MAX_PROVIDERS_TRIED} providers tried");
            return Ok(Step::HandOver(reason.into()));
        }
        phase.attempt_ended = true;
        let start = self.start_transfer(
            peer,
            digest,
            at,
            &mut phase.queue,
            &mut phase.tried,
            phase.client_deadline,
        );
        Ok(match start.await {
            Started::Transfer(peer, transfer) => Step::Go((peer, transfer)),
            Started::Failed => Step::Retry,
            Started::DeadlinePassed => Step::HandOver(CLIENT_DEADLINE_PASSED.into()),
        })
    }

    /// Whether a transfer announcing `total` bytes may be read: the listed
    /// size, or (none listed) within the cap and room in the store before
    /// a byte is written, since a claim must not fill the disk. A peer
    /// announcing another size is sentenced.
    async fn admit(&self, peer: PeerId, digest: Sha256Digest, origin: &Origin, total: u64) -> bool {
        let cap = self.bounds.size_cap;
        if !announced_size_fits(origin.size, total, cap) {
            warn!(%peer, %digest, announced = total, listed = ?origin.size, cap, "peer announces a size that is not the listed one, or over the cap");
            self.metrics.verification_failure(Source::Peer);
            self.sentence(peer, Misdeed::SizeLie).await;
            return false;
        }
        if origin.size.is_none() {
            if let Err(e) = self.store.room_for(total) {
                warn!(%peer, %digest, announced = total, "a peer's transfer cannot be held: {e}");
                return false;
            }
        }
        true
    }

    /// Reads one transfer of a blob of `total` bytes into the phase's temp
    /// file, with other providers sending later ranges meanwhile when the
    /// blob is large; releases its bytes to clients once it outlasts
    /// the hold-back; ends it when it breaks off, falls below the minimum
    /// rate, overruns the phase or goes silent past the client's clock.
    async fn receive(
        &self,
        phase: &mut Attempts<N::Transfer>,
        peer: PeerId,
        mut transfer: N::Transfer,
        digest: Sha256Digest,
        origin: &Origin,
        total: u64,
    ) -> Result<Ended, Unfinished> {
        let bounds = self.bounds;
        let min_rate = bounds.min_rate.max(1) as f64;
        let offset = phase.received.writer.len();
        let rate_grace = if transfer.in_flight() {
            bounds.min_rate_grace.max(IN_FLIGHT_RATE_GRACE)
        } else {
            bounds.min_rate_grace
        };
        // Other providers send later ranges meanwhile (dropped, which
        // cancels them, if this transfer ends first).
        let mut tails = if origin.size.is_some() && !transfer.in_flight() {
            self.start_tails(digest, offset, total, &mut phase.queue, &mut phase.tried)
                .await
        } else {
            VecDeque::new()
        };
        let phase_deadline = *phase.phase_deadline.get_or_insert_with(|| {
            tokio::time::Instant::now()
                + rate_grace
                + Duration::from_secs_f64(total as f64 / min_rate)
        });
        let received = &mut phase.received;
        received.parts.push(Part {
            peer,
            range: offset..offset,
            in_flight: transfer.in_flight(),
            broke_off: false,
        });
        let mut transfer_started = tokio::time::Instant::now();
        let mut received_here = 0u64;
        let mut ended = Ended::default();
        // Peer bytes are written in large batches, one at a time on
        // blocking threads while the next batch arrives; released bytes
        // at least every `PUBLISH_EVERY`, so a client sees them flow.
        let mut pending = Batch::default();
        let mut last_write = tokio::time::Instant::now();
        // Bytes of this transfer still to drop: it resumed past ranges that
        // tails delivered while it waited for them.
        let mut skip = 0u64;
        loop {
            let watch = if received.released {
                phase.client_deadline
            } else {
                phase.release_at.min(phase.client_deadline)
            };
            let wake = phase_deadline.min(watch);
            let chunk = match tokio::time::timeout_at(wake, transfer.next_chunk()).await {
                Err(_) if tokio::time::Instant::now() >= watch => {
                    if !received.released && origin.size.is_some() {
                        received.writer.push(std::mem::take(&mut pending)).await?;
                        received.released = true;
                        phase.client_deadline = tokio::time::Instant::now() + bounds.hold_back;
                        debug!(%digest, "peer transfer outlasts the hold-back; releasing its bytes to clients as they arrive");
                        received.publish(self.flight, total).await?;
                        continue;
                    }
                    // Released and silent for `hold_back`, or a blob of
                    // unlisted size not done in it: the next source
                    // continues from here.
                    if received.released {
                        warn!(%peer, %digest, "a released peer transfer went silent; continuing from the next source");
                        ended.failed = Some(Misdeed::TooSlow);
                    }
                    ended.handing_over = true;
                    break;
                }
                Err(_) => {
                    warn!(%peer, %digest, "the peer phase ran past its deadline");
                    ended.failed = Some(Misdeed::Overran);
                    break;
                }
                Ok(Ok(Some(chunk))) => chunk,
                Ok(Ok(None)) => break,
                Ok(Err(e)) => {
                    warn!(%peer, %digest, at = received.writer.len() + pending.len as u64, "peer transfer failed: {e}; resuming elsewhere");
                    ended.failed = Some(Misdeed::BrokeOff);
                    break;
                }
            };
            self.metrics.blob_bytes(Source::Peer, chunk.len() as u64);
            received_here += chunk.len() as u64;
            let mut chunk = chunk;
            if skip > 0 {
                let dropped = skip.min(chunk.len() as u64);
                skip -= dropped;
                chunk = chunk.slice(dropped as usize..);
                if chunk.is_empty() {
                    continue;
                }
            }
            pending.add(chunk);
            let have = received.writer.len() + pending.len as u64;
            if let Some(from) = tails.front().map(|t| t.from).filter(|from| have >= *from) {
                // This transfer reached the next tail: up to it, its bytes;
                // from it, the tails', as long as each is complete in time.
                let beyond = pending.split_off_beyond(have - from);
                if let Err(e) = received.writer.push(std::mem::take(&mut pending)).await {
                    return Err(self.write_failed(peer, origin, e).await);
                }
                received.close_part();
                let rate =
                    received_here as f64 / transfer_started.elapsed().as_secs_f64().max(1e-3);
                let waited_from = tokio::time::Instant::now();
                while tails
                    .front()
                    .is_some_and(|t| t.from == received.writer.len())
                {
                    let Some(tail) = tails.pop_front() else {
                        break;
                    };
                    // About what this transfer would take to send the
                    // range itself.
                    let alone =
                        Duration::from_secs_f64((tail.to - tail.from) as f64 / rate.max(1.0));
                    let wait = alone
                        .min(bounds.hold_back)
                        .min(phase_deadline.saturating_duration_since(tokio::time::Instant::now()));
                    let Some(done) = self.join_tail(tail, digest, wait).await else {
                        break;
                    };
                    if let Err(e) = self.append_tail(received, done, total).await {
                        return Err(self.write_failed(peer, origin, e).await);
                    }
                }
                if received.writer.len() == total {
                    break;
                }
                // This transfer goes on from where the tails left off,
                // dropping what it would resend of theirs.
                let resume_at = received.writer.len();
                received.parts.push(Part {
                    peer,
                    range: resume_at..resume_at,
                    in_flight: transfer.in_flight(),
                    broke_off: false,
                });
                match beyond {
                    Some(rest) if resume_at < have => {
                        pending.add(rest.slice((resume_at - from) as usize..));
                    }
                    _ => skip = resume_at.saturating_sub(have),
                }
                transfer_started += waited_from.elapsed();
            }
            if received.released {
                phase.client_deadline = tokio::time::Instant::now() + bounds.hold_back;
            }
            let full = pending.len >= PEER_WRITE_BATCH || pending.chunks.len() >= MAX_BATCH_CHUNKS;
            if full || (received.released && last_write.elapsed() >= PUBLISH_EVERY) {
                if let Err(e) = received.writer.push(std::mem::take(&mut pending)).await {
                    return Err(self.write_failed(peer, origin, e).await);
                }
                last_write = tokio::time::Instant::now();
                if origin.size.is_some() {
                    self.flight
                        .offer(&received.file, total, received.writer.written());
                }
                if received.released {
                    received.publish(self.flight, total).await?;
                }
            }
            let elapsed = transfer_started.elapsed();
            if elapsed >= rate_grace && (received_here as f64) < min_rate * elapsed.as_secs_f64() {
                warn!(%peer, %digest, received = received_here, ?elapsed, "peer transfer below the minimum rate; resuming elsewhere");
                ended.failed = Some(Misdeed::TooSlow);
                break;
            }
        }
        if let Err(e) = received.writer.push(pending).await {
            return Err(self.write_failed(peer, origin, e).await);
        }
        received.close_part();
        if let (Some(_), Some(last)) = (ended.failed, received.parts.last_mut()) {
            last.broke_off = last.peer == peer;
        }
        Ok(ended)
    }

    /// Sentences a transfer that failed. `Go`: it ended complete, on to
    /// verification; `Retry`: resume from the next provider; `HandOver`:
    /// the next source continues.
    async fn after_transfer(
        &self,
        phase: &mut Attempts<N::Transfer>,
        peer: PeerId,
        digest: Sha256Digest,
        ended: Ended,
    ) -> Result<Step<()>, Unfinished> {
        if let Some(misdeed) = ended.failed {
            // Another flight found this peer out while it was sending
            // here (a block also cuts its transfers): its bytes are no
            // base to resume on, and mixing them in would make the next,
            // honest provider a suspect.
            let condemned_elsewhere = !self.net.usable(&peer);
            self.sentence(peer, misdeed).await;
            if condemned_elsewhere && phase.received.writer.len() > 0 {
                debug!(%peer, %digest, "dropping the bytes of a peer blocked meanwhile");
                phase.received = Received::new(self.store)?;
            }
            if misdeed == Misdeed::Overran {
                return Ok(Step::HandOver(PHASE_DEADLINE_PASSED.into()));
            }
        }
        Ok(if ended.handing_over {
            Step::HandOver(CLIENT_DEADLINE_PASSED.into())
        } else if ended.failed.is_some() {
            Step::Retry
        } else {
            Step::Go(())
        })
    }

    /// Verifies and stores what the phase received, all of the blob. A
    /// mismatch blames the peer that sent it alone, or makes suspects of
    /// several (judged once a verified copy exists); the phase then starts
    /// over on a fresh temp file (`None`).
    #[allow(clippy::too_many_arguments)] // one call site, each argument named
    async fn finish<C, F>(
        &self,
        phase: &mut Attempts<N::Transfer>,
        peer: PeerId,
        channel: &'static str,
        digest: Sha256Digest,
        origin: &Origin,
        suspects: &mut Vec<Attempt>,
        commit: &C,
    ) -> Result<Option<(Arc<File>, u64)>, Unfinished>
    where
        C: Fn(BlobWriter, u64) -> F,
        F: Future<Output = Result<(), CommitError>>,
    {
        let started = phase.started;
        let len = phase.received.writer.len();
        let received_after = started.elapsed();
        let Received {
            writer,
            file,
            parts,
            ..
        } = std::mem::replace(&mut phase.received, Received::new(self.store)?);
        let finished = writer.finish().await?;
        let written = started.elapsed();
        match commit(finished, len).await {
            Ok(()) => {
                info!(
                    %digest, file = %origin.filename, len, from = %peer,
                    channel,
                    received_ms = received_after.as_millis() as u64,
                    written_ms = written.as_millis() as u64,
                    stored_ms = started.elapsed().as_millis() as u64,
                    "verified and stored from peers"
                );
                Ok(Some((file, len)))
            }
            Err(CommitError::Mismatch(e)) => {
                self.metrics.verification_failure(Source::Peer);
                // One peer sent the whole file: a complete transfer is
                // a claim about verified bytes, in flight or not.
                if let [Part { peer: liar, .. }] = parts[..] {
                    warn!(peer = %liar, %digest, "bad content from peer ({e})");
                    self.sentence(liar, Misdeed::BadBytes).await;
                } else {
                    for part in &parts {
                        warn!(peer = %part.peer, %digest, "bad content from several peers ({e}); suspended until a verified copy tells who lied");
                        self.sentence(part.peer, Misdeed::Suspect).await;
                    }
                    suspects.push(Attempt { file, parts });
                }
                Ok(None)
            }
            Err(CommitError::Other(e)) => Err(StoreFailure(e).into()),
        }
    }

    /// Asks the next usable providers in `queue` for the later ranges of a
    /// blob being fetched from `offset` (`total` bytes, at least `split_min`
    /// of them left): up to `MAX_RANGES` ranges in all, each at least half
    /// of `split_min`, starting on a `SPLIT_ALIGN` boundary. The providers
    /// are asked at once, each given no longer than the hedge delay (at
    /// least `TAIL_ANSWER_MIN`) to answer; each range's bytes go to a temp
    /// file of their own and end where the next answered range starts.
    async fn start_tails(
        &self,
        digest: Sha256Digest,
        offset: u64,
        total: u64,
        queue: &mut Vec<PeerId>,
        tried: &mut HashSet<PeerId>,
    ) -> VecDeque<Tail> {
        let left = total.saturating_sub(offset);
        let mut tails = VecDeque::new();
        if left < self.bounds.split_min {
            return tails;
        }
        let range_min = (self.bounds.split_min / 2).max(1);
        let most = usize::try_from(left / range_min)
            .unwrap_or(usize::MAX)
            .min(MAX_RANGES);
        let me = self.net.local_peer_id();
        let candidates: Vec<PeerId> = queue
            .iter()
            .filter(|p| **p != me && !tried.contains(*p) && self.net.usable(p))
            .take(most.saturating_sub(1))
            .copied()
            .collect();
        let starts = range_starts(offset, left, candidates.len() + 1);
        let asks: Vec<(PeerId, u64)> = candidates.into_iter().zip(starts).collect();
        for (peer, _) in &asks {
            queue.retain(|p| p != peer);
            tried.insert(*peer);
        }
        let answer_within = self.hedging.delay().max(TAIL_ANSWER_MIN);
        let answers = futures_util::future::join_all(asks.iter().map(|(peer, from)| {
            tokio::time::timeout(answer_within, self.net.fetch(*peer, digest, *from))
        }))
        .await;
        let mut started = Vec::new();
        for ((peer, from), answer) in asks.into_iter().zip(answers) {
            let transfer = match answer {
                Ok(Ok(transfer)) => transfer,
                Ok(Err(refused)) => {
                    debug!(%peer, %digest, from, "no range from this provider: {refused}");
                    self.metrics.peer_range("refused");
                    continue;
                }
                Err(_) => {
                    debug!(%peer, %digest, from, "no range: the provider did not answer within the hedge delay");
                    self.metrics.peer_range("refused");
                    continue;
                }
            };
            if from + transfer.remaining() != total || transfer.in_flight() {
                self.metrics.peer_range("refused");
                if !transfer.in_flight() {
                    warn!(%peer, %digest, announced = from + transfer.remaining(), listed = total, "peer announces a size that is not the listed one");
                    self.metrics.verification_failure(Source::Peer);
                    self.sentence(peer, Misdeed::SizeLie).await;
                }
                continue;
            }
            started.push((peer, from, transfer));
        }
        // Each range ends where the next that answered starts.
        let ends: Vec<u64> = started
            .iter()
            .skip(1)
            .map(|(_, from, _)| *from)
            .chain([total])
            .collect();
        for ((peer, from, transfer), to) in started.into_iter().zip(ends) {
            let Ok(received) = Received::new(self.store) else {
                break;
            };
            let channel = transfer.channel();
            let task = tokio::spawn(async move {
                let (writer, len) = receive_tail(transfer, received.writer, to - from).await?;
                Ok(TailDone {
                    peer,
                    channel,
                    writer,
                    file: received.file,
                    len,
                })
            });
            debug!(%peer, %digest, from, to, "a range comes from another provider");
            tails.push_back(Tail {
                peer,
                from,
                to,
                channel,
                task,
            });
        }
        tails
    }

    /// The tail once complete, waiting for it at most `wait` (about what
    /// the first transfer would take to send it); a tail that failed
    /// suspends its peer, one not done in time is cancelled.
    async fn join_tail(
        &self,
        mut tail: Tail,
        digest: Sha256Digest,
        wait: Duration,
    ) -> Option<TailDone> {
        match tokio::time::timeout(wait, &mut tail.task).await {
            Ok(Ok(Ok(done))) => {
                self.metrics.peer_range("appended");
                Some(done)
            }
            Ok(Ok(Err(e))) => {
                warn!(peer = %tail.peer, %digest, channel = tail.channel, "tail transfer failed: {e}; the first provider sends the rest");
                self.sentence(tail.peer, Misdeed::BrokeOff).await;
                self.metrics.peer_range("failed");
                None
            }
            Ok(Err(e)) => {
                warn!(peer = %tail.peer, %digest, "tail task failed: {e}");
                self.metrics.peer_range("failed");
                None
            }
            Err(_) => {
                debug!(peer = %tail.peer, %digest, "the tail was not done in time; the first provider sends the rest");
                self.metrics.peer_range("late");
                None
            }
        }
    }

    /// Appends a complete tail to the temp file (hashed in order like any
    /// bytes), as the tail peer's part, and offers it on.
    async fn append_tail(
        &self,
        received: &mut Received,
        done: TailDone,
        total: u64,
    ) -> Result<(), StoreFailure> {
        let from = received.writer.len();
        self.metrics.peer_transfer(done.channel, false);
        self.metrics.blob_bytes(Source::Peer, done.len);
        received.parts.push(Part {
            peer: done.peer,
            range: from..from,
            in_flight: false,
            broke_off: false,
        });
        let mut at = 0u64;
        while at < done.len {
            let n = (done.len - at).min(PEER_WRITE_BATCH as u64);
            let file = done.file.clone();
            let chunk = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; n as usize];
                std::os::unix::fs::FileExt::read_exact_at(&*file, &mut buf, at)
                    .map(|()| Bytes::from(buf))
            })
            .await
            .map_err(|e| StoreFailure(format!("read task failed: {e}")))?
            .map_err(|e| StoreFailure(format!("reading the tail's temp file: {e}")))?;
            let mut batch = Batch::default();
            batch.add(chunk);
            received.writer.push(batch).await?;
            at += n;
        }
        received.close_part();
        drop(done.writer);
        received.writer.settle().await?;
        self.flight
            .offer(&received.file, total, received.writer.written());
        if received.released {
            received.publish(self.flight, total).await?;
        }
        Ok(())
    }

    /// Asks `peer` for the blob from `at`. When it has not answered within
    /// the learned hedge delay and the node's budget allows, asks the next
    /// usable provider in `queue` too and keeps whichever starts a transfer
    /// first; the other request is dropped, which cancels it. A refusal
    /// after `first_provider` is judged late, as is a peer that had not
    /// answered when the client's `deadline` passed.
    async fn start_transfer(
        &self,
        peer: PeerId,
        digest: Sha256Digest,
        at: u64,
        queue: &mut Vec<PeerId>,
        tried: &mut HashSet<PeerId>,
        deadline: tokio::time::Instant,
    ) -> Started<N::Transfer> {
        let net = self.net;
        self.hedging.started();
        let asked = tokio::time::Instant::now();
        let first = net.fetch(peer, digest, at);
        tokio::pin!(first);
        let hedge_at = (asked + self.hedging.delay()).min(deadline);
        let second = match tokio::time::timeout_at(hedge_at, &mut first).await {
            Ok(answer) => return self.answered(peer, answer, asked).await,
            Err(_) if tokio::time::Instant::now() >= deadline => {
                self.late(peer, digest).await;
                return Started::DeadlinePassed;
            }
            Err(_) => self.hedge_candidate(queue, tried),
        };
        let Some(second) = second else {
            return match tokio::time::timeout_at(deadline, first).await {
                Ok(answer) => self.answered(peer, answer, asked).await,
                Err(_) => {
                    self.late(peer, digest).await;
                    Started::DeadlinePassed
                }
            };
        };
        self.metrics.peer_hedge();
        debug!(%peer, %second, %digest, "no answer within the hedge delay; asking a second provider too");
        let other = net.fetch(second, digest, at);
        tokio::pin!(other);
        let (mut first_open, mut other_open) = (true, true);
        while first_open || other_open {
            let next = async {
                tokio::select! {
                    answer = &mut first, if first_open => (peer, answer),
                    answer = &mut other, if other_open => (second, answer),
                }
            };
            let Ok((who, answer)) = tokio::time::timeout_at(deadline, next).await else {
                for (open, waiting) in [(first_open, peer), (other_open, second)] {
                    if open {
                        self.late(waiting, digest).await;
                    }
                }
                return Started::DeadlinePassed;
            };
            if who == peer {
                first_open = false;
            } else {
                other_open = false;
            }
            match self.answered(who, answer, asked).await {
                Started::Failed => continue,
                started => return started,
            }
        }
        Started::Failed
    }

    /// A provider's answer to a transfer request made at `asked`.
    async fn answered(
        &self,
        peer: PeerId,
        answer: Result<N::Transfer, NotStarted>,
        asked: tokio::time::Instant,
    ) -> Started<N::Transfer> {
        match answer {
            Ok(transfer) => {
                self.hedging.answered(asked.elapsed());
                Started::Transfer(peer, transfer)
            }
            Err(e) => {
                debug!(%peer, "peer fetch did not start: {e}");
                if asked.elapsed() > self.bounds.first_provider {
                    warn!(%peer, took = ?asked.elapsed(), "a peer answered late");
                    self.sentence(peer, Misdeed::Late).await;
                }
                Started::Failed
            }
        }
    }

    async fn late(&self, peer: PeerId, digest: Sha256Digest) {
        warn!(%peer, %digest, "a peer did not answer before the client's deadline");
        self.sentence(peer, Misdeed::Late).await;
    }

    /// The provider a hedge asks: the next usable, untried one in `queue`,
    /// if the attempt bound and the node's budget allow one.
    fn hedge_candidate(
        &self,
        queue: &mut Vec<PeerId>,
        tried: &mut HashSet<PeerId>,
    ) -> Option<PeerId> {
        if tried.len() >= MAX_PROVIDERS_TRIED {
            return None;
        }
        let own = self.net.local_peer_id();
        let at = queue
            .iter()
            .position(|p| *p != own && self.net.usable(p) && !tried.contains(p))?;
        if !self.hedging.take() {
            return None;
        }
        let peer = queue.remove(at);
        tried.insert(peer);
        Some(peer)
    }

    /// A write of peer bytes failed (a full disk, most often). With no
    /// listed size, the peer's claim is what made this node write: it is
    /// suspended. Its temp file goes with the returned value, freeing the
    /// space for the next source.
    async fn write_failed(&self, peer: PeerId, origin: &Origin, error: StoreFailure) -> Unfinished {
        if origin.size.is_none() {
            warn!(%peer, file = %origin.filename, "writing a peer's bytes of unlisted size failed ({error}); suspending it");
            self.sentence(peer, Misdeed::BrokeOff).await;
        }
        error.into()
    }

    /// When no peer holds the blob: waits for a peer that announced it is
    /// fetching it (asked every `INTENT_POLL`; it answers `Pending` until it
    /// holds the verified blob), for at most `intent_wait` and never past
    /// the client's deadline. `None` when there is no such peer, it gave up
    /// (it answers anything else), or the wait ran out, which suspends it:
    /// a peer must not hold others back with intents it does not fulfil.
    async fn wait_for_intent(
        &self,
        digest: Sha256Digest,
        offset: u64,
        intents: Option<IntentFeed>,
        tried: &HashSet<PeerId>,
        client_deadline: tokio::time::Instant,
    ) -> Option<(PeerId, N::Transfer)> {
        let net = self.net;
        let own = net.local_peer_id();
        let mut holders = self
            .holders(intents?, tried, client_deadline, |peer| *peer != own)
            .await;
        if holders.is_empty() && offset == 0 && self.bounds.size_cap >= SETTLE_MIN_SIZE {
            holders = self
                .intents_after_settle(digest, tried, client_deadline)
                .await;
        }
        if holders.is_empty() {
            return None;
        }
        debug!(%digest, holders = holders.len(), "waiting for peers fetching it");
        net.set_waiting(digest, true);
        let found = self
            .poll_intents(digest, offset, holders, client_deadline)
            .await;
        net.set_waiting(digest, false);
        found
    }

    /// Two nodes that miss a blob at the same instant each look for intents
    /// before the other's is visible, and both fetch it upstream. So a
    /// node that found none looks once more after `INTENT_SETTLE`, and
    /// defers only to peers with a smaller id: of two racing nodes exactly
    /// one goes upstream (the smaller), the other waits for it. A larger id
    /// seen now is ignored: that node waits for this one.
    async fn intents_after_settle(
        &self,
        digest: Sha256Digest,
        tried: &HashSet<PeerId>,
        client_deadline: tokio::time::Instant,
    ) -> Vec<PeerId> {
        let net = self.net;
        let settle_until = tokio::time::Instant::now() + INTENT_SETTLE;
        if settle_until >= client_deadline {
            return Vec::new();
        }
        tokio::time::sleep_until(settle_until).await;
        let Ok(intents) = net.find_intents(digest).await else {
            return Vec::new();
        };
        let intents = IntentFeed::new(intents);
        let own = net.local_peer_id();
        self.holders(intents, tried, client_deadline, |peer| *peer < own)
            .await
    }

    /// The peers an intent lookup names that `wanted` keeps and that are
    /// usable and not tried yet, at most `MAX_INTENT_HOLDERS`, gathered for
    /// at most `INTENT_LOOKUP_WAIT` (never past `client_deadline`).
    async fn holders(
        &self,
        mut intents: IntentFeed,
        tried: &HashSet<PeerId>,
        client_deadline: tokio::time::Instant,
        wanted: impl Fn(&PeerId) -> bool,
    ) -> Vec<PeerId> {
        let net = self.net;
        let mut holders = Vec::new();
        let mut keep = |peer: PeerId| {
            let keep = wanted(&peer)
                && net.usable(&peer)
                && !tried.contains(&peer)
                && !holders.contains(&peer);
            if keep && holders.len() < MAX_INTENT_HOLDERS {
                holders.push(peer);
            }
        };
        for peer in std::mem::take(&mut intents.seen) {
            keep(peer);
        }
        let lookup_until = client_deadline.min(tokio::time::Instant::now() + INTENT_LOOKUP_WAIT);
        let _ = tokio::time::timeout_at(lookup_until, async {
            while let Some(peer) = intents.rx.recv().await {
                keep(peer);
            }
        })
        .await;
        holders
    }

    /// A peer of this node's region still fetching the blob, asked before
    /// `next`, a provider in another region: its bytes are arriving on the
    /// cluster's own network, and every copy taken across regions is one
    /// more on the slow link. Only intents already found are asked, and
    /// only for as long as the hedge delay: a near peer that is slow to
    /// answer, or answers it has nothing yet, costs at most that and is
    /// not sentenced (it is asked again, like any intent, if no provider
    /// delivers). Once per phase: the caller keeps count.
    async fn near_in_flight(
        &self,
        digest: Sha256Digest,
        at: u64,
        next: &PeerId,
        intents: Option<&mut IntentFeed>,
        tried: &HashSet<PeerId>,
        client_deadline: tokio::time::Instant,
    ) -> Option<(PeerId, N::Transfer)> {
        let net = self.net;
        let intents = intents?;
        if net.same_region(next) {
            return None;
        }
        intents.drain_ready();
        let own = net.local_peer_id();
        let near = *intents.seen.iter().find(|peer| {
            **peer != own && net.same_region(peer) && net.usable(peer) && !tried.contains(peer)
        })?;
        let asked = net.fetch(near, digest, at);
        let until = client_deadline.min(tokio::time::Instant::now() + self.hedging.delay());
        match tokio::time::timeout_at(until, asked).await {
            Ok(Ok(transfer)) => {
                debug!(peer = %near, %digest, "a peer of this region fetching it is asked before a provider in another");
                Some((near, transfer))
            }
            Ok(Err(e)) => {
                debug!(peer = %near, %digest, "a peer of this region fetching it has nothing yet: {e}");
                None
            }
            Err(_) => None,
        }
    }

    /// Asks `holders` (all at once) every `INTENT_POLL` until one
    /// delivers, none is pending or waiting with a smaller id any more, or
    /// the wait runs out: `intent_wait`, or the client's deadline if that
    /// comes first. Those still pending then are suspended (for less time
    /// when it was the client's deadline that passed: an honest peer
    /// fetching a large blob is still at it).
    async fn poll_intents(
        &self,
        digest: Sha256Digest,
        offset: u64,
        mut holders: Vec<PeerId>,
        client_deadline: tokio::time::Instant,
    ) -> Option<(PeerId, N::Transfer)> {
        let net = self.net;
        let own_wait = tokio::time::Instant::now() + self.bounds.intent_wait;
        let deadline = own_wait.min(client_deadline);
        let own = net.local_peer_id();
        let mut first_round = true;
        loop {
            // Peers of this region first: a transfer from one crosses no
            // slow link. Those of other regions are asked in the same round
            // only when no smaller peer of this region is at it too
            // (waiting, or fetching with nothing to send yet, as a node
            // still looking for providers answers): that one takes the
            // blob from the other region, once, and this node takes it
            // from that one in flight.
            let (near, far): (Vec<PeerId>, Vec<PeerId>) =
                holders.into_iter().partition(|p| net.same_region(p));
            let asked_near = self.ask_holders(digest, offset, near, deadline, first_round);
            let mut answers = match asked_near.await {
                Ok(delivered) => return Some(delivered),
                Err(answers) => answers,
            };
            let smaller_near_at_it =
                !answers.smaller_waiting.is_empty() || answers.pending.iter().any(|p| *p < own);
            if !smaller_near_at_it {
                match self
                    .ask_holders(digest, offset, far, deadline, first_round)
                    .await
                {
                    Ok(delivered) => return Some(delivered),
                    Err(more) => answers.absorb(more),
                }
            } else {
                answers.not_asked = far;
            }
            let HolderAnswers {
                pending: still_pending,
                smaller_waiting,
                not_asked,
            } = answers;
            if still_pending.is_empty() && smaller_waiting.is_empty() {
                return None;
            }
            if tokio::time::Instant::now() + INTENT_POLL >= deadline {
                let misdeed = if deadline < own_wait {
                    Misdeed::Late
                } else {
                    Misdeed::TooSlow
                };
                // A smaller peer still waiting did nothing wrong: it waits
                // for another, as this node did.
                for peer in still_pending {
                    warn!(%peer, %digest, ?misdeed, "a peer fetching it did not deliver in time");
                    self.sentence(peer, misdeed).await;
                }
                return None;
            }
            first_round = false;
            holders = still_pending;
            holders.extend(smaller_waiting);
            holders.extend(not_asked);
            tokio::time::sleep(INTENT_POLL).await;
        }
    }

    /// Asks `holders` at once; the first transfer started wins (the
    /// requests still open are dropped, which cancels them). Otherwise who
    /// is still pending and who, with a smaller id than this node, answered
    /// it is waiting too, for a peer smaller still. Of
    /// all the nodes that missed the blob at once only the smallest goes
    /// upstream, and the others take its bytes in flight once it has them,
    /// each asking the smaller ones it sees again. (Deferring to a smaller
    /// holder only once sent every node that saw no smaller one among its
    /// first answers upstream: four fetches of one 200 MB wheel in the
    /// rig's herd.)
    async fn ask_holders(
        &self,
        digest: Sha256Digest,
        offset: u64,
        holders: Vec<PeerId>,
        deadline: tokio::time::Instant,
        first_round: bool,
    ) -> Result<(PeerId, N::Transfer), HolderAnswers> {
        let net = self.net;
        let own = net.local_peer_id();
        let mut answers = HolderAnswers::default();
        let mut asked: futures_util::stream::FuturesUnordered<_> = holders
            .into_iter()
            .map(|peer| async move {
                let answer =
                    tokio::time::timeout_at(deadline, net.fetch(peer, digest, offset)).await;
                (peer, answer)
            })
            .collect();
        while let Some((peer, answer)) = futures_util::StreamExt::next(&mut asked).await {
            match answer {
                Ok(Ok(transfer)) => return Ok((peer, transfer)),
                Ok(Err(e)) if e.pending => answers.pending.push(peer),
                Ok(Err(e)) => {
                    debug!(%peer, %digest, "not fetching it now: {e}");
                    // "Not found" from a smaller peer: an older node that
                    // waits answers so, but so does one whose fetch ended
                    // (its intent outlives it on the DHT); asked again in
                    // the next round only.
                    if peer < own && (e.waiting || first_round) {
                        answers.smaller_waiting.push(peer);
                    }
                }
                Err(_) => answers.pending.push(peer),
            }
        }
        Err(answers)
    }
}

/// What the peers fetching a blob answered in one round, when none started
/// a transfer.
#[derive(Default)]
struct HolderAnswers {
    pending: Vec<PeerId>,
    smaller_waiting: Vec<PeerId>,
    /// Not asked this round (peers of other regions, while a smaller one
    /// of this region waits).
    not_asked: Vec<PeerId>,
}

impl HolderAnswers {
    fn absorb(&mut self, other: HolderAnswers) {
        self.pending.extend(other.pending);
        self.smaller_waiting.extend(other.smaller_waiting);
        self.not_asked.extend(other.not_asked);
    }
}

/// The peers an intent lookup names, as they arrive; those already seen are
/// kept for the waits that come later.
pub(crate) struct IntentFeed {
    rx: mpsc::UnboundedReceiver<PeerId>,
    seen: Vec<PeerId>,
}

impl IntentFeed {
    fn new(rx: mpsc::UnboundedReceiver<PeerId>) -> Self {
        Self {
            rx,
            seen: Vec::new(),
        }
    }

    /// Takes what the lookup named so far, without waiting.
    fn drain_ready(&mut self) {
        while let Ok(peer) = self.rx.try_recv() {
            if !self.seen.contains(&peer) && self.seen.len() < MAX_SEEN_INTENTS {
                self.seen.push(peer);
            }
        }
    }
}

/// Intent holders remembered from one lookup at most.
const MAX_SEEN_INTENTS: usize = 64;

/// Why a phase ended when the client's clock ran out.
const PHASE_DEADLINE_PASSED: &str = "the peer phase ran past its deadline";
const CLIENT_DEADLINE_PASSED: &str =
    "no peer delivered within the client's deadline; continuing from the next source";

/// How often released peer bytes are made readable while they arrive.
const PUBLISH_EVERY: Duration = Duration::from_secs(1);

/// What the peer phase leaves when it did not deliver: why, and the bytes
/// it received, for the next source to continue from.
pub(crate) struct Unfinished {
    pub reason: String,
    pub partial: Option<Partial>,
    /// This node's store failed (a full disk): no other source would do
    /// better now.
    pub store_failed: bool,
}

impl Unfinished {
    /// The peers did not deliver; the next source may.
    fn sources(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            partial: None,
            store_failed: false,
        }
    }
}

/// The store could not write or keep peer bytes.
#[derive(Debug)]
pub(crate) struct StoreFailure(String);

impl std::fmt::Display for StoreFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<StoreFailure> for Unfinished {
    fn from(failure: StoreFailure) -> Self {
        Self {
            reason: format!("this node's store cannot write peer bytes ({failure}); retry once the disk has room"),
            partial: None,
            store_failed: true,
        }
    }
}

impl std::fmt::Debug for Unfinished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unfinished")
            .field("reason", &self.reason)
            .field("partial", &self.partial.as_ref().map(|p| p.writer.len()))
            .field("store_failed", &self.store_failed)
            .finish()
    }
}

impl std::fmt::Display for Unfinished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

/// Bytes `0..writer.len()` received from peers, not verified, in the temp
/// file clients are reading (they were released).
pub(crate) struct Partial {
    pub writer: BlobWriter,
    pub file: Arc<File>,
    /// Who sent which range.
    pub parts: Vec<Part>,
}

/// The range of a temp file one peer sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Part {
    pub peer: PeerId,
    pub range: std::ops::Range<u64>,
    /// Sent while the peer was still fetching the blob itself.
    pub in_flight: bool,
    /// Its transfer broke off (stalled, too slow, ended early) here, rather
    /// than ending at the blob's end or where the next part was asked of
    /// another peer: proved right, it stays suspended for breaking off.
    pub broke_off: bool,
}

impl Part {
    /// Whether the peer vouched for these bytes: it sent them from a
    /// verified blob, or, in flight, it sent the blob's last byte (which an
    /// honest peer does only once it verified the whole blob). A part in
    /// flight that ended early vouches for nothing: its peer relayed bytes
    /// its own source may have got wrong.
    fn vouched(&self, blob_len: u64) -> bool {
        !self.in_flight || self.range.end == blob_len
    }
}

/// The temp file a peer fetch writes, and who sent which range of it.
struct Received {
    writer: BackgroundWriter,
    file: Arc<File>,
    parts: Vec<Part>,
    /// Whether clients may read it before it verifies.
    released: bool,
}

impl Received {
    /// A fresh temp file; clients see none of it until it is released or
    /// verified.
    fn new(store: &Store) -> Result<Self, StoreFailure> {
        let writer = store.writer().map_err(|e| StoreFailure(e.to_string()))?;
        let file = writer.reader().map_err(|e| StoreFailure(e.to_string()))?;
        Ok(Self {
            writer: BackgroundWriter::new(writer, file.clone()),
            file,
            parts: Vec::new(),
            released: false,
        })
    }

    /// Lets clients read what is handed to the writer (once written), less
    /// the last byte.
    async fn publish(&mut self, flight: &Flight, total: u64) -> Result<(), StoreFailure> {
        self.writer.settle().await?;
        publish_progress(flight, &self.file, total, self.writer.written());
        Ok(())
    }

    /// Ends the current peer's range; a peer that sent nothing is no
    /// suspect in a failed verification.
    fn close_part(&mut self) {
        let len = self.writer.len();
        if let Some(part) = self.parts.last_mut() {
            part.range.end = len;
        }
        if self.parts.last().is_some_and(|part| part.range.is_empty()) {
            self.parts.pop();
        }
    }

    /// The phase ends without the blob: what it received goes to the next
    /// source when clients are reading it. Bytes never released are
    /// dropped: continuing them would release a peer's unverified bytes
    /// under the next source's name.
    async fn hand_over(self, reason: impl Into<String>) -> Unfinished {
        let reason = reason.into();
        if self.writer.len() == 0 || !self.released {
            return Unfinished::sources(reason);
        }
        match self.writer.finish().await {
            Ok(writer) => Unfinished {
                reason,
                partial: Some(Partial {
                    writer,
                    file: self.file,
                    parts: self.parts,
                }),
                store_failed: false,
            },
            Err(e) => Unfinished::sources(format!("{reason}; the bytes received are lost: {e}")),
        }
    }
}

/// Received chunks gathered for one append, without copying them together.
#[derive(Default)]
struct Batch {
    chunks: Vec<Bytes>,
    len: usize,
}

impl Batch {
    fn add(&mut self, chunk: Bytes) {
        self.len += chunk.len();
        self.chunks.push(chunk);
    }

    /// Takes the last `beyond` bytes off (all from the last chunk, which
    /// is longer), returning them.
    fn split_off_beyond(&mut self, beyond: u64) -> Option<Bytes> {
        let beyond = usize::try_from(beyond).ok().filter(|b| *b > 0)?;
        let last = self.chunks.last_mut()?;
        let keep = last.len().checked_sub(beyond)?;
        let rest = last.split_off(keep);
        self.len -= beyond;
        Some(rest)
    }
}

/// Another provider's transfer of a range of a blob, `from` to `to`, into
/// a temp file of its own; cancelled when dropped.
struct Tail {
    peer: PeerId,
    from: u64,
    to: u64,
    channel: &'static str,
    task: tokio::task::JoinHandle<Result<TailDone, String>>,
}

impl Drop for Tail {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A complete tail: its peer and bytes.
struct TailDone {
    peer: PeerId,
    channel: &'static str,
    writer: BackgroundWriter,
    file: Arc<File>,
    len: u64,
}

/// Receives the first `want` bytes of a tail transfer into `writer`, then
/// drops the transfer (the rest is another's range).
async fn receive_tail<T: PeerTransfer>(
    mut transfer: T,
    mut writer: BackgroundWriter,
    want: u64,
) -> Result<(BackgroundWriter, u64), String> {
    let mut got = 0u64;
    let mut pending = Batch::default();
    while got < want {
        let chunk = match tokio::time::timeout(TAIL_SILENCE, transfer.next_chunk()).await {
            Err(_) => return Err(format!("silent for {TAIL_SILENCE:?}")),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(None)) => break,
            Ok(Ok(Some(chunk))) => chunk,
        };
        let keep = (want - got).min(chunk.len() as u64);
        got += keep;
        pending.add(chunk.slice(..keep as usize));
        if pending.len >= PEER_WRITE_BATCH || pending.chunks.len() >= MAX_BATCH_CHUNKS {
            writer
                .push(std::mem::take(&mut pending))
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    drop(transfer);
    writer.push(pending).await.map_err(|e| e.to_string())?;
    writer.settle().await.map_err(|e| e.to_string())?;
    if got < want {
        return Err(format!("ended {} bytes early", want - got));
    }
    Ok((writer, got))
}

/// A temp-file writer whose appends (write and hash, in parallel) run on
/// blocking threads, one batch at a time, while the caller receives the next
/// batch. Every `SYNC_EVERY` bytes it also starts flushing what is written to
/// disk on another thread, so that the fsync before the commit finds little
/// left to do.
struct BackgroundWriter {
    idle: Option<BlobWriter>,
    /// The append running, and the length once it is done.
    busy: Option<(
        tokio::task::JoinHandle<Result<BlobWriter, peerpi_store::StoreError>>,
        u64,
    )>,
    file: Arc<File>,
    /// Bytes in the file (appends finished).
    written: u64,
    syncing: Option<tokio::task::JoinHandle<io::Result<()>>>,
    /// Bytes handed over, written or not yet.
    len: u64,
    synced_at: u64,
}

/// Bytes between background flushes of a peer download's temp file.
const SYNC_EVERY: u64 = 16 << 20;

impl BackgroundWriter {
    fn new(writer: BlobWriter, file: Arc<File>) -> Self {
        let len = writer.len();
        Self {
            idle: Some(writer),
            busy: None,
            file,
            written: len,
            syncing: None,
            len,
            synced_at: len,
        }
    }

    fn len(&self) -> u64 {
        self.len
    }

    fn written(&self) -> u64 {
        self.written
    }

    async fn push(&mut self, batch: Batch) -> Result<(), StoreFailure> {
        let mut writer = self.wait().await?;
        if batch.len == 0 {
            self.idle = Some(writer);
            return Ok(());
        }
        self.len += batch.len as u64;
        let task = tokio::task::spawn_blocking(move || {
            writer.append_batch(&batch.chunks).map(|()| writer)
        });
        self.busy = Some((task, self.len));
        let sync_idle = self.syncing.as_ref().is_none_or(|s| s.is_finished());
        if self.len - self.synced_at >= SYNC_EVERY && sync_idle {
            self.synced_at = self.len;
            let file = self.file.clone();
            // Errors surface in the commit's own fsync.
            self.syncing = Some(tokio::task::spawn_blocking(move || file.sync_data()));
        }
        Ok(())
    }

    /// Waits for the running append, so that `written` is all handed over.
    async fn settle(&mut self) -> Result<(), StoreFailure> {
        let writer = self.wait().await?;
        self.idle = Some(writer);
        Ok(())
    }

    /// The writer, once its last append finished.
    async fn wait(&mut self) -> Result<BlobWriter, StoreFailure> {
        if let Some((busy, len)) = self.busy.take() {
            let writer = busy
                .await
                .map_err(|e| StoreFailure(format!("write task failed: {e}")))?
                .map_err(|e| StoreFailure(e.to_string()))?;
            self.written = len;
            return Ok(writer);
        }
        // Invariant: one of `idle` and `busy` is set between calls; an error
        // above ends the fetch, which drops this writer.
        self.idle
            .take()
            .ok_or_else(|| StoreFailure("temp file writer used after a failed write".into()))
    }

    async fn finish(mut self) -> Result<BlobWriter, StoreFailure> {
        let writer = self.wait().await?;
        if let Some(syncing) = self.syncing.take() {
            let _ = syncing.await;
        }
        Ok(writer)
    }
}

/// A peer attempt that failed verification with bytes from several peers:
/// its temp file (unlinked, still open) and who sent which range.
pub(crate) struct Attempt {
    file: Arc<File>,
    parts: Vec<Part>,
}

impl Attempt {
    pub(crate) fn new(file: Arc<File>, parts: Vec<Part>) -> Self {
        Self { file, parts }
    }
}

/// Compares each suspect's range with the verified blob `good` and blocks
/// the peers whose bytes differ and who vouched for them (see
/// [`Part::vouched`]); a peer that relayed wrong bytes in flight and broke
/// off is only suspended. The others were honest: the last part's peer
/// finished its transfer and is acquitted; earlier ones stay suspended for
/// breaking off.
pub(crate) async fn judge<N: PeerNetwork>(
    net: &N,
    digest: Sha256Digest,
    attempts: Vec<Attempt>,
    good: Arc<File>,
    suspension: Duration,
) {
    let blob_len = good.metadata().map(|m| m.len()).unwrap_or(u64::MAX);
    for attempt in attempts {
        for part in attempt.parts {
            let (bad, good, range) = (attempt.file.clone(), good.clone(), part.range.clone());
            let differs = tokio::task::spawn_blocking(move || ranges_differ(&bad, &good, range))
                .await
                .unwrap_or(Ok(false));
            let peer = part.peer;
            match differs {
                Ok(true) if part.vouched(blob_len) => {
                    warn!(%peer, %digest, "its part of a failed transfer differs from the verified blob");
                    net.sentence(peer, Misdeed::BadBytes.verdict(Duration::ZERO))
                        .await;
                }
                Ok(true) => {
                    warn!(%peer, %digest, "bytes it relayed while fetching differ from the verified blob; suspended, not blocked: its source may have sent them");
                    net.sentence(peer, Misdeed::RelayedBadBytes.verdict(suspension))
                        .await;
                }
                Ok(false) => {
                    info!(%peer, %digest, "its part of a failed transfer was correct");
                    if !part.broke_off {
                        net.sentence(peer, Verdict::Acquit).await;
                    }
                }
                Err(e) => warn!(%peer, %digest, "cannot compare a failed transfer: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests;
