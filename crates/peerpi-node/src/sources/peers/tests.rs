//! The peer phase against a scripted network: each peer serves the blob (or
//! lies about it) in a way the test chose, with real temp files and the
//! real store, so resume, blame, bounds and hold-back are checked without a
//! swarm.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::collections::HashMap;
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use super::*;
use crate::flight::FlightState;

/// How a scripted peer serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Script {
    Honest,
    /// The right bytes, `per_chunk` at a time with a pause before each.
    Slow {
        per_chunk: usize,
        pause_ms: u64,
    },
    /// Every byte flipped.
    Wrong,
    /// The right bytes up to this offset, then an early end.
    StopsAt(u64),
    /// Announces this many bytes more than it has.
    Overclaims(u64),
    /// Will not start a transfer.
    Refuses,
    /// Every byte flipped, the first after a pause of this many ms.
    WrongAfter(u64),
    /// Answers `Pending` (fetching it upstream) for this many ms from the
    /// start of the test, then serves the right bytes.
    PendingFor(u64),
    /// Answers `Pending` for ever.
    PendingForEver,
    /// Answers "waiting" (for another peer fetching it) for this many ms
    /// from the start of the test, then serves the right bytes.
    WaitingFor(u64),
    /// Answers "not found" after this many ms.
    RefusesAfter(u64),
    /// Starts the transfer after this many ms, then serves the right bytes.
    AnswersAfter(u64),
    /// The right bytes, 64 KiB every 50 ms, up to this offset; then silence.
    StallsAt(u64),
    /// Flipped bytes up to `at`, then the transfer breaks off; with
    /// `blocked_elsewhere`, because another flight blocked the peer (which
    /// cuts its transfers).
    WrongThenCut {
        at: u64,
        blocked_elsewhere: bool,
    },
}

struct ScriptedNet {
    blob: Bytes,
    providers: Vec<PeerId>,
    /// When the lookup names each provider, from its start; all at once
    /// (and the lookup over) when empty.
    arrivals: Vec<Duration>,
    /// Peers that announced an intent to fetch the blob upstream.
    intents: Vec<PeerId>,
    scripts: HashMap<PeerId, Script>,
    created: tokio::time::Instant,
    sentences: Arc<Mutex<Vec<(PeerId, Verdict)>>>,
    /// (peer, offset) of every transfer started.
    asked: Mutex<Vec<(PeerId, u64)>>,
    /// Peers that serve as nodes still fetching the blob.
    in_flight: Vec<PeerId>,
    /// Peers in this node's region.
    near: Vec<PeerId>,
    /// This node's id.
    me: PeerId,
}

impl ScriptedNet {
    fn new(blob: &[u8], peers: &[Script]) -> (Self, Vec<PeerId>) {
        let ids: Vec<PeerId> = peers.iter().map(|_| PeerId::random()).collect();
        let net = Self {
            blob: Bytes::copy_from_slice(blob),
            providers: ids.clone(),
            arrivals: Vec::new(),
            intents: Vec::new(),
            created: tokio::time::Instant::now(),
            scripts: ids.iter().copied().zip(peers.iter().copied()).collect(),
            sentences: Arc::default(),
            asked: Mutex::new(Vec::new()),
            in_flight: Vec::new(),
            near: Vec::new(),
            me: PeerId::random(),
        };
        (net, ids)
    }

    fn verdict(&self, peer: PeerId) -> Option<Verdict> {
        self.sentences
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|(p, _)| *p == peer)
            .map(|(_, v)| *v)
    }
}

struct ScriptedTransfer {
    peer: PeerId,
    sentences: Arc<Mutex<Vec<(PeerId, Verdict)>>>,
    rest: Bytes,
    announced: u64,
    script: Script,
    sent: u64,
    offset: u64,
    in_flight: bool,
}

impl PeerTransfer for ScriptedTransfer {
    fn remaining(&self) -> u64 {
        self.announced
    }

    fn channel(&self) -> &'static str {
        "stream"
    }

    fn in_flight(&self) -> bool {
        self.in_flight
    }

    async fn next_chunk(&mut self) -> Result<Option<Bytes>, String> {
        let chunk_len = match self.script {
            Script::Slow {
                per_chunk,
                pause_ms,
            } => {
                tokio::time::sleep(Duration::from_millis(pause_ms)).await;
                per_chunk
            }
            Script::StallsAt(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                64 * 1024
            }
            _ => 64 * 1024,
        };
        if let Script::StallsAt(at) = self.script {
            if self.offset + self.sent >= at {
                std::future::pending::<()>().await;
            }
        }
        if let Script::WrongAfter(pause_ms) = self.script {
            if self.sent == 0 {
                tokio::time::sleep(Duration::from_millis(pause_ms)).await;
            }
        }
        if let Script::StopsAt(at) = self.script {
            if self.offset + self.sent >= at {
                return Err("stream ended early".into());
            }
        }
        if let Script::WrongThenCut {
            at,
            blocked_elsewhere,
        } = self.script
        {
            if self.offset + self.sent >= at {
                if blocked_elsewhere {
                    let block = (self.peer, Verdict::Block);
                    self.sentences.lock().unwrap().push(block);
                }
                return Err("connection closed".into());
            }
        }
        if self.rest.is_empty() {
            return if self.sent == self.announced {
                Ok(None)
            } else {
                Err("stream ended early".into())
            };
        }
        let mut take = chunk_len.min(self.rest.len());
        if let Script::StopsAt(at) | Script::StallsAt(at) | Script::WrongThenCut { at, .. } =
            self.script
        {
            take = take.min((at - self.offset - self.sent) as usize);
        }
        let mut chunk = self.rest.split_to(take);
        if matches!(
            self.script,
            Script::Wrong | Script::WrongAfter(_) | Script::WrongThenCut { .. }
        ) {
            chunk = chunk.iter().map(|b| !b).collect::<Vec<u8>>().into();
        }
        self.sent += chunk.len() as u64;
        Ok(Some(chunk))
    }
}

impl PeerNetwork for ScriptedNet {
    type Transfer = ScriptedTransfer;

    fn local_peer_id(&self) -> PeerId {
        self.me
    }

    async fn find_providers(
        &self,
        _: Sha256Digest,
    ) -> Result<mpsc::UnboundedReceiver<PeerId>, String> {
        let (tx, rx) = mpsc::unbounded_channel();
        if self.arrivals.is_empty() {
            for p in &self.providers {
                let _ = tx.send(*p);
            }
        } else {
            let started = tokio::time::Instant::now();
            let timed: Vec<_> = self.arrivals.iter().zip(&self.providers).collect();
            let timed: Vec<(Duration, PeerId)> = timed.into_iter().map(|(t, p)| (*t, *p)).collect();
            tokio::spawn(async move {
                for (at, peer) in timed {
                    tokio::time::sleep_until(started + at).await;
                    let _ = tx.send(peer);
                }
            });
        }
        Ok(rx)
    }

    fn set_waiting(&self, _: Sha256Digest, _: bool) {}

    async fn find_intents(
        &self,
        _: Sha256Digest,
    ) -> Result<mpsc::UnboundedReceiver<PeerId>, String> {
        let (tx, rx) = mpsc::unbounded_channel();
        for p in &self.intents {
            let _ = tx.send(*p);
        }
        Ok(rx)
    }

    fn usable(&self, peer: &PeerId) -> bool {
        matches!(self.verdict(*peer), None | Some(Verdict::Acquit))
    }

    /// The order the test listed them in.
    fn order(&self, peers: &mut [PeerId]) {
        peers.sort_by_key(|p| self.providers.iter().position(|q| q == p));
    }

    fn same_region(&self, peer: &PeerId) -> bool {
        self.near.contains(peer)
    }

    async fn fetch(
        &self,
        peer: PeerId,
        _: Sha256Digest,
        offset: u64,
    ) -> Result<ScriptedTransfer, NotStarted> {
        self.asked.lock().unwrap().push((peer, offset));
        let mut script = self.scripts[&peer];
        let not_started = |pending: bool| NotStarted {
            pending,
            waiting: false,
            reason: if pending { "pending" } else { "refused" }.into(),
        };
        match script {
            Script::Refuses => return Err(not_started(false)),
            Script::RefusesAfter(ms) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                return Err(not_started(false));
            }
            Script::PendingForEver => return Err(not_started(true)),
            Script::AnswersAfter(ms) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                script = Script::Honest;
            }
            Script::PendingFor(ms) => {
                if self.created.elapsed() < Duration::from_millis(ms) {
                    return Err(not_started(true));
                }
                script = Script::Honest;
            }
            Script::WaitingFor(ms) => {
                if self.created.elapsed() < Duration::from_millis(ms) {
                    return Err(NotStarted {
                        pending: false,
                        waiting: true,
                        reason: "waiting".into(),
                    });
                }
                script = Script::Honest;
            }
            _ => {}
        }
        let rest = self.blob.slice(offset as usize..);
        let extra = match script {
            Script::Overclaims(n) => n,
            _ => 0,
        };
        Ok(ScriptedTransfer {
            peer,
            sentences: self.sentences.clone(),
            announced: rest.len() as u64 + extra,
            rest,
            script,
            sent: 0,
            offset,
            in_flight: self.in_flight.contains(&peer),
        })
    }

    async fn sentence(&self, peer: PeerId, verdict: Verdict) {
        self.sentences.lock().unwrap().push((peer, verdict));
    }
}

const SUSPENSION: Duration = Duration::from_secs(600);

/// Judges `suspects` against a verified copy of `bytes`.
async fn judge_against_a_verified_copy(net: &ScriptedNet, bytes: &[u8], suspects: Vec<Attempt>) {
    let good = tempfile::tempfile().unwrap();
    std::io::Write::write_all(&mut &good, bytes).unwrap();
    judge(net, digest_of(bytes), suspects, Arc::new(good), SUSPENSION).await;
}

/// A part sent from a verified blob.
fn part(peer: PeerId, range: std::ops::Range<u64>) -> Part {
    Part {
        peer,
        range,
        in_flight: false,
        broke_off: false,
    }
}

/// A part whose transfer broke off where it ends.
fn broken(peer: PeerId, range: std::ops::Range<u64>) -> Part {
    Part {
        broke_off: true,
        ..part(peer, range)
    }
}

fn bounds(size: u64) -> PeerBounds {
    PeerBounds {
        first_provider: Duration::from_secs(2),
        hold_back: Duration::from_secs(30),
        min_rate: 1024,
        min_rate_grace: Duration::from_millis(300),
        suspension: SUSPENSION,
        size_cap: size,
        intent_wait: Duration::from_secs(5),
        split_min: u64::MAX,
    }
}

fn blob(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

fn digest_of(bytes: &[u8]) -> Sha256Digest {
    Sha256Digest::from_bytes(Sha256::digest(bytes).into())
}

fn origin(size: Option<u64>) -> Origin {
    Origin {
        url: "http://index.invalid/f.whl".into(),
        filename: "f-1.0-py3-none-any.whl".into(),
        size,
        metadata: None,
    }
}

struct Outcome {
    result: Result<(Arc<File>, u64), String>,
    /// What the phase left for the next source.
    partial: Option<Partial>,
    suspects: Vec<Attempt>,
    store: Store,
    _dir: tempfile::TempDir,
}

async fn run_phase(
    net: &ScriptedNet,
    bytes: &[u8],
    size: Option<u64>,
    bounds: PeerBounds,
) -> Outcome {
    run_with_flight(net, bytes, size, bounds, &Flight::new()).await
}

async fn run_with_flight(
    net: &ScriptedNet,
    bytes: &[u8],
    size: Option<u64>,
    bounds: PeerBounds,
    flight: &Flight,
) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path(), 1 << 30).unwrap();
    let metrics = Metrics::new();
    let digest = digest_of(bytes);
    let hedging = Hedging::default();
    let phase = PeerPhase {
        net,
        store: &store,
        bounds,
        metrics: &metrics,
        flight,
        hedging: &hedging,
    };
    let mut suspects = Vec::new();
    let commit = |writer: BlobWriter, len: u64| {
        let committed = store.commit(writer, &digest, Some(len));
        async move {
            match committed {
                Ok(_) => Ok(()),
                Err(e @ peerpi_store::StoreError::DigestMismatch { .. }) => {
                    Err(CommitError::Mismatch(e.to_string()))
                }
                Err(e) => Err(CommitError::Other(e.to_string())),
            }
        }
    };
    let (result, partial) = match phase
        .run(digest, &origin(size), &mut suspects, commit)
        .await
    {
        Ok(done) => (Ok(done), None),
        Err(unfinished) => (Err(unfinished.reason), unfinished.partial),
    };
    Outcome {
        result,
        partial,
        suspects,
        store,
        _dir: dir,
    }
}

fn stored(outcome: &Outcome, bytes: &[u8]) -> bool {
    outcome
        .store
        .get(&digest_of(bytes))
        .unwrap()
        .is_some_and(|b| std::fs::read(b.path).unwrap() == bytes)
}

#[tokio::test]
async fn a_transfer_broken_off_resumes_at_its_offset_from_the_next_peer() {
    let bytes = blob(300_000);
    let (net, ids) = ScriptedNet::new(&bytes, &[Script::StopsAt(100_000), Script::Honest]);
    let outcome = run_phase(&net, &bytes, Some(300_000), bounds(300_000)).await;
    assert_eq!(outcome.result.as_ref().unwrap().1, 300_000);
    assert!(stored(&outcome, &bytes));
    assert_eq!(
        *net.asked.lock().unwrap(),
        vec![(ids[0], 0), (ids[1], 100_000)]
    );
    assert_eq!(net.verdict(ids[0]), Some(Verdict::Suspend(SUSPENSION)));
    assert_eq!(net.verdict(ids[1]), None, "the honest peer is left alone");
}

#[tokio::test]
async fn a_lone_liar_is_blocked_and_the_next_peer_delivers() {
    let bytes = blob(200_000);
    let (net, ids) = ScriptedNet::new(&bytes, &[Script::Wrong, Script::Honest]);
    let outcome = run_phase(&net, &bytes, Some(200_000), bounds(200_000)).await;
    assert!(outcome.result.is_ok());
    assert!(stored(&outcome, &bytes));
    assert_eq!(net.verdict(ids[0]), Some(Verdict::Block));
    assert!(outcome.suspects.is_empty());
}

#[tokio::test]
async fn bad_bytes_from_two_peers_make_suspects_judged_against_the_verified_copy() {
    let bytes = blob(200_000);
    let (net, ids) = ScriptedNet::new(&bytes, &[Script::StopsAt(80_000), Script::Wrong]);
    let outcome = run_phase(&net, &bytes, Some(200_000), bounds(200_000)).await;
    assert!(outcome.result.is_err(), "no honest peer left");
    assert_eq!(outcome.suspects.len(), 1);
    assert_eq!(
        outcome.suspects[0].parts,
        vec![broken(ids[0], 0..80_000), part(ids[1], 80_000..200_000)]
    );
    // Both suspended, none blocked, until a verified copy is there.
    for id in &ids {
        assert_eq!(net.verdict(*id), Some(Verdict::Suspend(SUSPENSION)));
    }
    judge_against_a_verified_copy(&net, &bytes, outcome.suspects).await;
    assert_eq!(net.verdict(ids[1]), Some(Verdict::Block), "the forger");
    assert_eq!(
        net.verdict(ids[0]),
        Some(Verdict::Suspend(SUSPENSION)),
        "its part was right"
    );
}

#[tokio::test]
async fn a_peer_that_sent_nothing_is_no_suspect() {
    let bytes = blob(100_000);
    let (net, ids) = ScriptedNet::new(&bytes, &[Script::StopsAt(0), Script::Wrong]);
    let outcome = run_phase(&net, &bytes, Some(100_000), bounds(100_000)).await;
    assert!(outcome.result.is_err());
    assert!(outcome.suspects.is_empty(), "one liar, known at once");
    assert_eq!(net.verdict(ids[1]), Some(Verdict::Block));
    assert_eq!(net.verdict(ids[0]), Some(Verdict::Suspend(SUSPENSION)));
}

#[tokio::test]
async fn a_transfer_below_the_minimum_rate_is_given_up_after_the_grace() {
    let bytes = blob(50_000);
    // 10 bytes every 20 ms: 500 B/s, under the 1 KiB/s minimum.
    let drip = Script::Slow {
        per_chunk: 10,
        pause_ms: 20,
    };
    let (net, ids) = ScriptedNet::new(&bytes, &[drip, Script::Honest]);
    let started = std::time::Instant::now();
    let outcome = run_phase(&net, &bytes, Some(50_000), bounds(50_000)).await;
    assert!(outcome.result.is_ok());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(net.verdict(ids[0]), Some(Verdict::Suspend(SUSPENSION)));
    let resumed_at = net.asked.lock().unwrap()[1].1;
    assert!(resumed_at > 0, "the drip's bytes were kept");
}

/// The minimum rate is judged as bytes arrive; a peer that goes silent
/// (and, on a real network, within its stream timeout) is stopped by the
/// phase deadline: the grace plus the blob at the minimum rate.
#[tokio::test]
async fn the_whole_phase_ends_at_the_blob_size_over_the_minimum_rate() {
    let bytes = blob(2000);
    let silent = Script::Slow {
        per_chunk: 10,
        pause_ms: 100_000,
    };
    let (net, ids) = ScriptedNet::new(&bytes, &[silent]);
    let mut b = bounds(2000);
    b.min_rate = 1000; // 2,000 bytes at 1,000 B/s: 2 s, plus 0.3 s of grace
    let started = std::time::Instant::now();
    let outcome = run_phase(&net, &bytes, Some(2000), b).await;
    let err = outcome.result.unwrap_err();
    assert!(err.contains("deadline"), "{err}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(6),
        "{took:?}"
    );
    assert_eq!(net.verdict(ids[0]), Some(Verdict::Suspend(SUSPENSION)));
}

#[tokio::test]
async fn at_most_eight_providers_are_asked() {
    let bytes = blob(1000);
    let (net, _) = ScriptedNet::new(&bytes, &[Script::Refuses; 12]);
    let outcome = run_phase(&net, &bytes, Some(1000), bounds(1000)).await;
    let err = outcome.result.unwrap_err();
    assert!(err.contains("8 providers"), "{err}");
    assert_eq!(net.asked.lock().unwrap().len(), MAX_PROVIDERS_TRIED);
}

#[tokio::test]
async fn a_size_over_the_cap_for_an_unsized_blob_blocks_before_any_byte() {
    let bytes = blob(1000);
    let (net, ids) = ScriptedNet::new(&bytes, &[Script::Overclaims(1 << 40), Script::Honest]);
    let outcome = run_phase(&net, &bytes, None, bounds(16 << 20)).await;
    assert!(outcome.result.is_ok());
    assert_eq!(net.verdict(ids[0]), Some(Verdict::Block));
}

#[tokio::test]
async fn a_transfer_that_outlasts_the_hold_back_is_released_before_it_verifies() {
    let bytes = blob(3 << 20);
    let slow = Script::Slow {
        per_chunk: 256 * 1024,
        pause_ms: 60,
    };
    let (net, _) = ScriptedNet::new(&bytes, &[slow]);
    let mut b = bounds(3 << 20);
    b.hold_back = Duration::from_millis(200);
    let flight = Flight::new();
    let mut states = flight.state.subscribe();
    let watcher = tokio::spawn(async move {
        let mut released_before_done = 0u64;
        while states.changed().await.is_ok() {
            if let FlightState::Streaming { readable, len, .. } = &*states.borrow() {
                assert_eq!(*len, Some(3 << 20));
                assert!(*readable < 3 << 20, "the last byte waits for verification");
                released_before_done = released_before_done.max(*readable);
            }
        }
        released_before_done
    });
    let outcome = run_with_flight(&net, &bytes, Some(3 << 20), b, &flight).await;
    assert!(outcome.result.is_ok());
    drop(flight);
    let released = watcher.await.unwrap();
    assert!(
        released > 1 << 20,
        "bytes flowed before the end: {released}"
    );
}

#[tokio::test]
async fn a_transfer_within_the_hold_back_releases_nothing_before_it_verifies() {
    let bytes = blob(1 << 20);
    let (net, _) = ScriptedNet::new(&bytes, &[Script::Honest]);
    let flight = Flight::new();
    let outcome = run_with_flight(&net, &bytes, Some(1 << 20), bounds(1 << 20), &flight).await;
    assert!(outcome.result.is_ok());
    assert!(
        matches!(&*flight.state.borrow(), FlightState::Connecting),
        "no response head before the blob verified"
    );
}

/// A lying provider whose transfer ends after the first-provider deadline
/// must not end the phase: the lookup names an honest provider later, and
/// it is waited for (the rig saw a runner take a file upstream here).
#[tokio::test]
async fn a_provider_named_after_a_slow_liar_failed_is_still_asked() {
    let bytes = blob(200_000);
    let (mut net, ids) = ScriptedNet::new(&bytes, &[Script::WrongAfter(600), Script::Honest]);
    // The liar at once; the honest peer after the liar's bytes failed.
    net.arrivals = vec![Duration::ZERO, Duration::from_millis(700)];
    let mut b = bounds(200_000);
    b.first_provider = Duration::from_millis(300);
    let outcome = run_phase(&net, &bytes, Some(200_000), b).await;
    assert!(outcome.result.is_ok(), "{:?}", outcome.result.err());
    assert!(stored(&outcome, &bytes));
    assert_eq!(net.verdict(ids[0]), Some(Verdict::Block));
    assert_eq!(net.verdict(ids[1]), None);
}

/// The wait for a next provider is bounded: `first_provider` after the
/// failed attempt, not until the lookup ends.
#[tokio::test]
async fn the_wait_for_a_next_provider_is_first_provider_after_the_failure() {
    let bytes = blob(200_000);
    let (mut net, _) = ScriptedNet::new(&bytes, &[Script::WrongAfter(600), Script::Honest]);
    net.arrivals = vec![Duration::ZERO, Duration::from_secs(30)];
    let mut b = bounds(200_000);
    b.first_provider = Duration::from_millis(300);
    let started = std::time::Instant::now();
    let outcome = run_phase(&net, &bytes, Some(200_000), b).await;
    let err = outcome.result.unwrap_err();
    assert!(err.contains("deadline"), "{err}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(850) && took < Duration::from_secs(5),
        "600 ms of lying, then 300 ms of waiting: {took:?}"
    );
}

/// A liar blocked by another flight while it sends here (uv fetches in
/// parallel) breaks off: its bytes are dropped and the next provider sends
/// the whole blob, so the honest peer is no suspect.
#[tokio::test]
async fn the_bytes_of_a_peer_blocked_meanwhile_are_dropped_not_resumed_on() {
    let bytes = blob(300_000);
    let (net, ids) = ScriptedNet::new(
        &bytes,
        &[
            Script::WrongThenCut {
                at: 100_000,
                blocked_elsewhere: true,
            },
            Script::Honest,
        ],
    );
    let outcome = run_phase(&net, &bytes, Some(300_000), bounds(300_000)).await;
    assert!(outcome.result.is_ok(), "{:?}", outcome.result.err());
    assert!(stored(&outcome, &bytes));
    assert_eq!(
        *net.asked.lock().unwrap(),
        vec![(ids[0], 0), (ids[1], 0)],
        "the honest peer sends from the start"
    );
    assert_eq!(net.verdict(ids[1]), None, "the honest peer is left alone");
    assert!(outcome.suspects.is_empty());
}

/// When bytes from a peer that broke off and from the peer that finished
/// fail together, the verified copy tells who lied: the liar is blocked and
/// the finisher, whose part was right, is acquitted at once instead of
/// staying suspended.
#[tokio::test]
async fn a_finisher_proved_right_by_the_verified_copy_is_acquitted() {
    let bytes = blob(200_000);
    let liar = Script::WrongThenCut {
        at: 64 * 1024,
        blocked_elsewhere: false,
    };
    let (net, ids) = ScriptedNet::new(&bytes, &[liar, Script::Honest]);
    let outcome = run_phase(&net, &bytes, Some(200_000), bounds(200_000)).await;
    assert!(outcome.result.is_err(), "no third provider");
    assert_eq!(net.verdict(ids[1]), Some(Verdict::Suspend(SUSPENSION)));
    judge_against_a_verified_copy(&net, &bytes, outcome.suspects).await;
    assert_eq!(net.verdict(ids[0]), Some(Verdict::Block));
    assert_eq!(net.verdict(ids[1]), Some(Verdict::Acquit));
    assert!(net.usable(&ids[1]));
}

/// Two runners miss the same blob at once: no peer holds it, but one is
/// fetching it upstream (it announced an intent and answers `Pending`). The
/// phase waits and takes the blob from it instead of fetching it upstream
/// too.
#[tokio::test]
async fn a_peer_fetching_the_blob_upstream_is_waited_for() {
    let bytes = blob(100_000);
    let (mut net, ids) = ScriptedNet::new(&bytes, &[Script::PendingFor(700)]);
    net.intents = std::mem::take(&mut net.providers);
    let outcome = run_phase(&net, &bytes, Some(100_000), bounds(100_000)).await;
    assert!(outcome.result.is_ok(), "{:?}", outcome.result.err());
    assert!(stored(&outcome, &bytes));
    let asked = net.asked.lock().unwrap().len();
    // Asked every 250 ms while pending: about 4 times in 700 ms, bounded.
    assert!((2..=8).contains(&asked), "asked {asked} times");
    assert_eq!(net.verdict(ids[0]), None);
}

/// The wait for a peer fetching upstream is bounded by `intent_wait`; a
/// peer that keeps answering `Pending` past it is suspended, and the phase
/// ends (the node then fetches upstream itself).
#[tokio::test]
async fn a_peer_pending_past_the_intent_wait_is_suspended() {
    let bytes = blob(10_000);
    let (mut net, ids) = ScriptedNet::new(&bytes, &[Script::PendingForEver]);
    net.intents = std::mem::take(&mut net.providers);
    let mut b = bounds(10_000);
    b.intent_wait = Duration::from_millis(600);
    let started = std::time::Instant::now();
    let outcome = run_phase(&net, &bytes, Some(10_000), b).await;
    assert!(outcome.result.is_err());
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(350) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert_eq!(net.verdict(ids[0]), Some(Verdict::Suspend(SUSPENSION)));
}

#[test]
fn the_intent_wait_grows_with_the_size_and_is_capped() {
    assert_eq!(intent_wait(None), Duration::from_secs(10));
    assert_eq!(intent_wait(Some(20 << 20)), Duration::from_secs(30));
    assert_eq!(intent_wait(Some(1 << 40)), Duration::from_secs(120));
}

/// Eight providers that each answer "not found" just before a stream
/// timeout held a client 75 s with no response head. The client's clock
/// (`hold_back` from the start of the flight) bounds every answer: the
/// phase ends at it, and the peers that had not answered (the first, and
/// the one hedged after the hedge delay) are suspended.
#[tokio::test]
async fn providers_answering_late_hold_the_client_no_longer_than_the_hold_back() {
    let bytes = blob(10_000);
    let (net, ids) = ScriptedNet::new(&bytes, &[Script::RefusesAfter(950); 8]);
    let mut b = bounds(10_000);
    b.hold_back = Duration::from_millis(500);
    b.first_provider = Duration::from_millis(300);
    let started = std::time::Instant::now();
    let outcome = run_phase(&net, &bytes, Some(10_000), b).await;
    let took = started.elapsed();
    let err = outcome.result.unwrap_err();
    assert!(err.contains("client's deadline"), "{err}");
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_millis(1500),
        "at most the hold-back, not 8 late answers: {took:?}"
    );
    assert_eq!(net.asked.lock().unwrap().len(), 2, "one hedge, no more");
    for late in &ids[..2] {
        assert_eq!(
            net.verdict(*late),
            Some(Verdict::Suspend(crate::reputation::LATE_SUSPENSION))
        );
    }
}

/// A peer that announced it is fetching the blob and answers `Pending` for
/// ever held a client up to `intent_wait` (2 minutes at most): now no
/// longer than the client's clock, and it is suspended for it.
#[tokio::test]
async fn a_fake_intent_holds_the_client_no_longer_than_the_hold_back() {
    let bytes = blob(10_000);
    let (mut net, ids) = ScriptedNet::new(&bytes, &[Script::PendingForEver]);
    net.intents = std::mem::take(&mut net.providers);
    let mut b = bounds(10_000);
    b.intent_wait = Duration::from_secs(30);
    b.hold_back = Duration::from_millis(600);
    b.first_provider = Duration::from_millis(300);
    let started = std::time::Instant::now();
    let outcome = run_phase(&net, &bytes, Some(10_000), b).await;
    assert!(outcome.result.is_err());
    let took = started.elapsed();
    assert!(took < Duration::from_millis(1500), "{took:?}");
    assert_eq!(
        net.verdict(ids[0]),
        Some(Verdict::Suspend(crate::reputation::LATE_SUSPENSION))
    );
}

/// A released transfer that goes silent is not waited on for a stream
/// timeout while the client reads nothing: after `hold_back` of silence the
/// phase hands its bytes to the next source, which continues the same file.
#[tokio::test]
async fn a_released_transfer_that_goes_silent_is_handed_over_with_its_bytes() {
    let bytes = blob(2 << 20);
    let (net, ids) = ScriptedNet::new(&bytes, &[Script::StallsAt(1 << 20)]);
    let mut b = bounds(2 << 20);
    b.hold_back = Duration::from_millis(200);
    let flight = Flight::new();
    let started = std::time::Instant::now();
    let outcome = run_with_flight(&net, &bytes, Some(2 << 20), b, &flight).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let err = outcome.result.as_ref().unwrap_err();
    assert!(err.contains("client's deadline"), "{err}");
    let partial = outcome.partial.expect("the bytes received are handed over");
    assert_eq!(partial.writer.len(), 1 << 20);
    assert_eq!(partial.parts, vec![broken(ids[0], 0..1 << 20)]);
    match &*flight.state.borrow() {
        FlightState::Streaming { file, readable, .. } => {
            assert!(Arc::ptr_eq(file, &partial.file), "clients read that file");
            assert!(*readable > 0, "its bytes were released");
        }
        _ => panic!("the transfer was released"),
    }
    assert_eq!(net.verdict(ids[0]), Some(Verdict::Suspend(SUSPENSION)));
}

/// With no listed size, the length is the peer's word: its bytes are never
/// released to a client (no `Content-Length` from a peer), and a transfer
/// that outlasts the hold-back is handed over to the next source.
#[tokio::test]
async fn bytes_of_an_unlisted_size_are_never_released_before_they_verify() {
    let bytes = blob(2 << 20);
    let slow = Script::Slow {
        per_chunk: 64 * 1024,
        pause_ms: 40,
    };
    let (net, _) = ScriptedNet::new(&bytes, &[slow]);
    let mut b = bounds(16 << 20);
    b.hold_back = Duration::from_millis(300);
    let flight = Flight::new();
    let outcome = run_with_flight(&net, &bytes, None, b, &flight).await;
    assert!(outcome.result.is_err());
    assert!(
        outcome.partial.is_none(),
        "unreleased bytes are not continued"
    );
    assert!(
        matches!(&*flight.state.borrow(), FlightState::Connecting),
        "nothing released"
    );
}

/// A size claim that the store could not hold (over its cap here; over
/// the free disk space alike) is refused before a byte is written, and the
/// next provider delivers.
#[tokio::test]
async fn a_claim_the_store_cannot_hold_is_refused_before_a_byte_is_written() {
    let bytes = blob(1000);
    let (net, ids) = ScriptedNet::new(&bytes, &[Script::Overclaims(2 << 30), Script::Honest]);
    let outcome = run_phase(&net, &bytes, None, bounds(4 << 30)).await;
    assert!(outcome.result.is_ok(), "{:?}", outcome.result.err());
    assert_eq!(
        net.verdict(ids[0]),
        None,
        "refused unread, not a transfer that broke off"
    );
    assert_eq!(*net.asked.lock().unwrap(), vec![(ids[0], 0), (ids[1], 0)]);
}

/// A provider slow to answer (stalled, overloaded) is hedged: once the
/// learned delay (50 ms before any answer) passes, the next provider is
/// asked too and the faster transfer kept; the slow one is dropped, not
/// sentenced. Before, the client waited on the slow peer's answer.
#[tokio::test]
async fn a_provider_slow_to_answer_is_hedged_by_the_next() {
    let bytes = blob(50_000);
    let (net, ids) = ScriptedNet::new(&bytes, &[Script::AnswersAfter(20_000), Script::Honest]);
    let started = std::time::Instant::now();
    let outcome = run_phase(&net, &bytes, Some(50_000), bounds(50_000)).await;
    assert!(outcome.result.is_ok());
    assert!(stored(&outcome, &bytes));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "waited on the slow provider: {:?}",
        started.elapsed()
    );
    assert_eq!(*net.asked.lock().unwrap(), vec![(ids[0], 0), (ids[1], 0)]);
    assert_eq!(net.verdict(ids[0]), None, "a hedged loser is not sentenced");
}

/// A hedge only where the budget allows: with none left, the phase waits
/// for the first provider's answer and asks nobody else.
#[tokio::test]
async fn no_hedge_without_budget() {
    let bytes = blob(50_000);
    let (net, ids) = ScriptedNet::new(&bytes, &[Script::AnswersAfter(300), Script::Honest]);
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path(), 1 << 30).unwrap();
    let metrics = Metrics::new();
    let hedging = Hedging::default();
    while hedging.take() {}
    let flight = Flight::new();
    let phase = PeerPhase {
        net: &net,
        store: &store,
        bounds: bounds(50_000),
        metrics: &metrics,
        flight: &flight,
        hedging: &hedging,
    };
    let digest = digest_of(&bytes);
    let commit = |writer: BlobWriter, len: u64| {
        let committed = store.commit(writer, &digest, Some(len));
        async move {
            committed
                .map(|_| ())
                .map_err(|e| CommitError::Other(e.to_string()))
        }
    };
    let started = std::time::Instant::now();
    let done = phase
        .run(digest, &origin(Some(50_000)), &mut Vec::new(), commit)
        .await;
    assert!(done.is_ok());
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(*net.asked.lock().unwrap(), vec![(ids[0], 0)]);
}

/// A peer still fetching the blob relays what its source sends. When it
/// broke off and its bytes prove wrong against the verified copy, it is
/// suspended, not blocked: it never sent the last byte, which is the claim
/// that it verified them. The same bytes from a peer serving a verified
/// blob block it, as before.
#[tokio::test]
async fn wrong_bytes_relayed_in_flight_and_broken_off_suspend_and_do_not_block() {
    let bytes = blob(200_000);
    let relay = Script::WrongThenCut {
        at: 64 * 1024,
        blocked_elsewhere: false,
    };
    for in_flight in [true, false] {
        let (mut net, ids) = ScriptedNet::new(&bytes, &[relay, Script::Honest]);
        if in_flight {
            net.in_flight.push(ids[0]);
        }
        let outcome = run_phase(&net, &bytes, Some(200_000), bounds(200_000)).await;
        assert!(outcome.result.is_err(), "no third provider");
        assert_eq!(outcome.suspects.len(), 1);
        assert_eq!(outcome.suspects[0].parts[0].in_flight, in_flight);
        judge_against_a_verified_copy(&net, &bytes, outcome.suspects).await;
        let expected = if in_flight {
            Verdict::Suspend(SUSPENSION)
        } else {
            Verdict::Block
        };
        assert_eq!(
            net.verdict(ids[0]),
            Some(expected),
            "in flight: {in_flight}"
        );
        assert_eq!(net.verdict(ids[1]), Some(Verdict::Acquit));
    }
}

/// A peer in flight that sent the whole blob, last byte included, vouched
/// for it: wrong bytes block it, alone or judged among several.
#[tokio::test]
async fn a_peer_in_flight_that_sent_the_last_byte_answers_for_every_byte() {
    let bytes = blob(200_000);
    let (mut net, ids) = ScriptedNet::new(&bytes, &[Script::Wrong, Script::Honest]);
    net.in_flight.push(ids[0]);
    let outcome = run_phase(&net, &bytes, Some(200_000), bounds(200_000)).await;
    assert!(outcome.result.is_ok());
    assert_eq!(net.verdict(ids[0]), Some(Verdict::Block));

    let (mut net, ids) = ScriptedNet::new(&bytes, &[Script::StopsAt(80_000), Script::Wrong]);
    net.in_flight.push(ids[1]);
    let outcome = run_phase(&net, &bytes, Some(200_000), bounds(200_000)).await;
    assert_eq!(outcome.suspects.len(), 1);
    judge_against_a_verified_copy(&net, &bytes, outcome.suspects).await;
    assert_eq!(
        net.verdict(ids[1]),
        Some(Verdict::Block),
        "the finisher lied"
    );
}

/// A provider in another region holds the blob, and a peer of this region
/// is still fetching it: the near peer is asked first, and its bytes in
/// flight are taken, so that the slow link carries no second copy. A near
/// peer with nothing yet costs a round trip and no sentence; a provider of
/// this region is asked directly.
#[tokio::test]
async fn a_peer_of_this_region_still_fetching_goes_before_a_provider_in_another() {
    let bytes = blob(300_000);
    let (mut net, ids) = ScriptedNet::new(&bytes, &[Script::Honest, Script::Honest]);
    let (far, near) = (ids[0], ids[1]);
    net.providers = vec![far];
    net.intents = vec![near];
    net.in_flight = vec![near];
    net.near = vec![near];
    let outcome = run_phase(&net, &bytes, Some(300_000), bounds(300_000)).await;
    assert!(stored(&outcome, &bytes));
    assert_eq!(*net.asked.lock().unwrap(), vec![(near, 0)]);

    // The near peer has no bytes yet: the far provider delivers.
    let (mut net, ids) = ScriptedNet::new(&bytes, &[Script::Honest, Script::PendingForEver]);
    let (far, near) = (ids[0], ids[1]);
    net.providers = vec![far];
    net.intents = vec![near];
    net.near = vec![near];
    let outcome = run_phase(&net, &bytes, Some(300_000), bounds(300_000)).await;
    assert!(stored(&outcome, &bytes));
    assert_eq!(*net.asked.lock().unwrap(), vec![(near, 0), (far, 0)]);
    assert_eq!(net.verdict(near), None, "nothing yet is no misdeed");

    // A provider of this region goes first.
    let (mut net, ids) = ScriptedNet::new(&bytes, &[Script::Honest, Script::Honest]);
    let (provider, fetching) = (ids[0], ids[1]);
    net.providers = vec![provider];
    net.intents = vec![fetching];
    net.near = vec![provider, fetching];
    let outcome = run_phase(&net, &bytes, Some(300_000), bounds(300_000)).await;
    assert!(stored(&outcome, &bytes));
    assert_eq!(*net.asked.lock().unwrap(), vec![(provider, 0)]);
}

/// Many nodes miss a blob at once and each finds the others' intents; all
/// of them wait, answering "waiting". Only the smallest id goes upstream;
/// the others keep asking the smaller ones they see until one has bytes
/// (here after 800 ms, longer than one poll round): none goes upstream
/// beside it. Deferring to a smaller holder for one round only sent four
/// runners of twelve upstream in the rig's herd.
#[tokio::test]
async fn nodes_missing_a_blob_together_wait_for_the_smallest_however_many_rounds() {
    let bytes = blob(2 << 20);
    let mut scripts = vec![Script::WaitingFor(800)];
    scripts.extend([Script::Refuses; 5]);
    let (mut net, mut ids) = ScriptedNet::new(&bytes, &scripts);
    // The waiting holder is the smallest of all; this node is the largest.
    ids.sort();
    let smallest = ids[0];
    let scripts: Vec<Script> = ids
        .iter()
        .map(|id| {
            if *id == smallest {
                Script::WaitingFor(800)
            } else {
                Script::Refuses
            }
        })
        .collect();
    net.scripts = ids.iter().copied().zip(scripts).collect();
    net.me = *ids.last().unwrap();
    net.providers = Vec::new();
    // The smallest is named last: a node that kept only its first few
    // answers would not see it.
    net.intents = ids[..ids.len() - 1].iter().rev().copied().collect();
    let outcome = run_phase(&net, &bytes, Some(2 << 20), bounds(2 << 20)).await;
    assert!(outcome.result.is_ok(), "{:?}", outcome.result.err());
    assert!(stored(&outcome, &bytes));
    assert!(
        net.asked
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| *p == smallest)
            .count()
            >= 3
    );
    assert_eq!(net.verdict(smallest), None);
}

/// Nodes of two regions miss a blob together, and one far away already has
/// bytes in flight. A smaller node of this region waits too: this node
/// leaves the far peer to it and takes the bytes from it once it has them,
/// so the slow link carries one copy into the region, not one per node.
#[tokio::test]
async fn a_smaller_node_of_this_region_fetches_across_regions_for_it() {
    let bytes = blob(2 << 20);
    // The smaller node of this region waits, or answers "pending" (it is
    // still looking for providers, or fetching with nothing to send).
    for near_script in [Script::WaitingFor(600), Script::PendingFor(600)] {
        let (mut net, mut ids) = ScriptedNet::new(&bytes, &[Script::Honest; 3]);
        ids.sort();
        let (near_smaller, far, me) = (ids[0], ids[1], ids[2]);
        net.scripts = [(near_smaller, near_script), (far, Script::Honest)]
            .into_iter()
            .collect();
        net.me = me;
        net.near = vec![near_smaller];
        net.in_flight = vec![near_smaller, far];
        net.providers = Vec::new();
        net.intents = vec![far, near_smaller];
        let outcome = run_phase(&net, &bytes, Some(2 << 20), bounds(2 << 20)).await;
        assert!(stored(&outcome, &bytes));
        let asked = net.asked.lock().unwrap().clone();
        assert!(
            asked.iter().all(|(p, _)| *p == near_smaller),
            "the far peer is left to the smaller near one ({near_script:?}): {asked:?}"
        );
    }

    // Without a smaller node of this region, the far peer is asked.
    let (mut net, mut ids) = ScriptedNet::new(&bytes, &[Script::Honest; 3]);
    ids.sort();
    let (far, me, near_larger) = (ids[0], ids[1], ids[2]);
    net.scripts = [(near_larger, Script::Refuses), (far, Script::Honest)]
        .into_iter()
        .collect();
    net.me = me;
    net.near = vec![near_larger];
    net.providers = Vec::new();
    net.intents = vec![near_larger, far];
    let outcome = run_phase(&net, &bytes, Some(2 << 20), bounds(2 << 20)).await;
    assert!(stored(&outcome, &bytes));
    assert!(net.asked.lock().unwrap().contains(&(far, 0)));
}

/// A peer still fetching the blob sends no faster than its own source:
/// below the minimum rate it is judged only after `IN_FLIGHT_RATE_GRACE`,
/// not after the usual grace, and here delivers the whole blob. The same
/// pace from a peer serving a stored blob is too slow.
#[tokio::test]
async fn a_slow_start_in_flight_is_given_longer_before_its_rate_is_judged() {
    let bytes = blob(2_000);
    let slow = Script::Slow {
        per_chunk: 256,
        pause_ms: 400,
    };
    for in_flight in [true, false] {
        let (mut net, ids) = ScriptedNet::new(&bytes, &[slow, Script::Honest]);
        if in_flight {
            net.in_flight.push(ids[0]);
        }
        let outcome = run_phase(&net, &bytes, Some(2_000), bounds(2_000)).await;
        assert!(stored(&outcome, &bytes));
        let verdict = net.verdict(ids[0]);
        if in_flight {
            assert_eq!(verdict, None, "it delivered");
            assert_eq!(*net.asked.lock().unwrap(), vec![(ids[0], 0)]);
        } else {
            assert_eq!(verdict, Some(Verdict::Suspend(SUSPENSION)), "too slow");
        }
    }
}

/// An intent outlives its fetch on the DHT: a smaller peer whose fetch ended
/// answers "not found", not "waiting". It is asked again once (an older
/// node that waits answers "not found" too), then given up, not polled
/// until the client's deadline.
#[tokio::test]
async fn a_smaller_peer_not_fetching_any_more_is_not_waited_for() {
    let bytes = blob(2 << 20);
    let (mut net, mut ids) = ScriptedNet::new(&bytes, &[Script::Refuses; 2]);
    ids.sort();
    let (stale, me) = (ids[0], ids[1]);
    net.scripts = [(stale, Script::Refuses)].into_iter().collect();
    net.me = me;
    net.providers = Vec::new();
    net.intents = vec![stale];
    let outcome = run_phase(&net, &bytes, Some(2 << 20), bounds(2 << 20)).await;
    assert!(outcome.result.is_err(), "nobody delivers");
    // Waited for until the deadline, it would be asked every 250 ms.
    let asked = net
        .asked
        .lock()
        .unwrap()
        .iter()
        .filter(|(p, _)| *p == stale)
        .count();
    assert_eq!(asked, 2, "asked, then once more");
    assert_eq!(net.verdict(stale), None);
}

/// A first provider that sends 4 MiB in about a third of a second: a
/// second provider's half arrives before it gets there.
const STEADY: Script = Script::Slow {
    per_chunk: 64 << 10,
    pause_ms: 5,
};

/// Bounds under which a blob of 1 MiB or more comes from several providers,
/// in ranges of 512 KiB or more.
fn split_bounds(size: u64) -> PeerBounds {
    PeerBounds {
        split_min: 1 << 20,
        ..bounds(size)
    }
}

/// A large blob comes in two halves from two providers: the second half from
/// the second provider, asked at the half, while the first sends the first
/// half. The first provider here goes silent right after the half, so the
/// blob could not be had from it alone.
#[tokio::test]
async fn a_large_blob_comes_in_halves_from_two_providers() {
    let len = 4 << 20;
    let bytes = blob(len);
    let half = 2 << 20;
    let (net, ids) = ScriptedNet::new(&bytes, &[Script::StallsAt(half), Script::Honest]);
    let outcome = run_phase(&net, &bytes, Some(len as u64), split_bounds(len as u64)).await;
    assert!(outcome.result.is_ok(), "{:?}", outcome.result.err());
    assert!(stored(&outcome, &bytes));
    assert_eq!(
        *net.asked.lock().unwrap(),
        vec![(ids[0], 0), (ids[1], half)]
    );
    assert_eq!(net.verdict(ids[0]), None);
    assert_eq!(net.verdict(ids[1]), None);
}

/// Under the size, or without a second provider, one provider sends all.
#[tokio::test]
async fn a_blob_under_the_split_size_comes_from_one_provider() {
    let len = (1 << 20) - 1;
    let bytes = blob(len);
    let (net, ids) = ScriptedNet::new(&bytes, &[Script::Honest, Script::Honest]);
    let outcome = run_phase(&net, &bytes, Some(len as u64), split_bounds(len as u64)).await;
    assert!(stored(&outcome, &bytes));
    assert_eq!(*net.asked.lock().unwrap(), vec![(ids[0], 0)]);

    let len = 4 << 20;
    let bytes = blob(len);
    let (net, ids) = ScriptedNet::new(&bytes, &[Script::Honest]);
    let outcome = run_phase(&net, &bytes, Some(len as u64), split_bounds(len as u64)).await;
    assert!(stored(&outcome, &bytes));
    assert_eq!(*net.asked.lock().unwrap(), vec![(ids[0], 0)]);
}

/// A range of wrong bytes fails the blob's verification with bytes from
/// four peers: all are suspended, the blob comes from a fifth, and the
/// verified copy then blocks the wrong range's peer alone.
#[tokio::test]
async fn a_wrong_range_is_blamed_on_its_peer_alone() {
    let len = 4 << 20;
    let bytes = blob(len);
    let scripts = [
        STEADY,
        Script::Wrong,
        Script::Honest,
        Script::Honest,
        Script::Honest,
    ];
    let (net, ids) = ScriptedNet::new(&bytes, &scripts);
    let outcome = run_phase(&net, &bytes, Some(len as u64), split_bounds(len as u64)).await;
    assert!(stored(&outcome, &bytes));
    let mib = 1u64 << 20;
    assert_eq!(
        net.asked.lock().unwrap()[..4],
        [
            (ids[0], 0),
            (ids[1], mib),
            (ids[2], 2 * mib),
            (ids[3], 3 * mib)
        ]
    );
    assert_eq!(outcome.suspects.len(), 1, "the ranges failed together");
    assert_eq!(
        outcome.suspects[0].parts,
        vec![
            part(ids[0], 0..mib),
            part(ids[1], mib..2 * mib),
            part(ids[2], 2 * mib..3 * mib),
            part(ids[3], 3 * mib..4 * mib),
        ]
    );
    judge_against_a_verified_copy(&net, &bytes, outcome.suspects).await;
    assert_eq!(net.verdict(ids[1]), Some(Verdict::Block));
    for honest in [ids[0], ids[2], ids[3]] {
        assert_eq!(net.verdict(honest), Some(Verdict::Acquit));
    }
    assert_eq!(net.verdict(ids[4]), None);
}

/// Fetches an 8 MiB blob from four providers scripted so: it must be
/// stored, each asked once, at its quarter.
async fn in_quarters(scripts: [Script; 4]) -> (ScriptedNet, Vec<PeerId>) {
    let len = 8 << 20;
    let bytes = blob(len);
    let (net, ids) = ScriptedNet::new(&bytes, &scripts);
    let outcome = run_phase(&net, &bytes, Some(len as u64), split_bounds(len as u64)).await;
    assert!(outcome.result.is_ok(), "{:?}", outcome.result.err());
    assert!(
        stored(&outcome, &bytes),
        "the bytes went in the right order"
    );
    let quarters: Vec<(PeerId, u64)> = ids.iter().copied().zip((0..4).map(|i| i << 21)).collect();
    assert_eq!(*net.asked.lock().unwrap(), quarters);
    (net, ids)
}

/// With four providers a large blob comes in four ranges at once; the first
/// provider here goes silent after its quarter, so it could not be had from
/// it alone.
#[tokio::test]
async fn a_large_blob_comes_in_ranges_from_four_providers() {
    let first_quarter_only = Script::StallsAt(2 << 20);
    let scripts = [
        first_quarter_only,
        Script::Honest,
        Script::Honest,
        Script::Honest,
    ];
    let (net, ids) = in_quarters(scripts).await;
    for id in &ids {
        assert_eq!(net.verdict(*id), None);
    }
}

/// A provider that refuses its range leaves it to the range before it,
/// which then runs on to the next range that was answered: the first
/// provider stalls past its quarter and nobody is asked again, so the
/// second sent 2 to 6 MiB.
#[tokio::test]
async fn a_refused_range_is_sent_by_the_range_before_it() {
    let first_quarter_only = Script::StallsAt(2 << 20);
    in_quarters([
        first_quarter_only,
        Script::Honest,
        Script::Refuses,
        Script::Honest,
    ])
    .await;
}

/// A range not done in time is sent by the first provider after all: it
/// drops what it would resend of the ranges already in, goes on from the
/// late range's start, and still takes the range after it from its peer.
#[tokio::test]
async fn a_range_not_done_in_time_is_sent_by_the_first_provider_from_its_start() {
    let crawl = Script::Slow {
        per_chunk: 1024,
        pause_ms: 50,
    };
    let (net, ids) = in_quarters([STEADY, Script::Honest, crawl, Script::Honest]).await;
    assert_eq!(net.verdict(ids[2]), None, "late, not broken: left alone");
}

#[test]
fn ranges_start_on_aligned_boundaries_and_never_twice() {
    let mib = 1u64 << 20;
    assert_eq!(range_starts(0, 8 * mib, 4), vec![2 * mib, 4 * mib, 6 * mib]);
    assert_eq!(range_starts(0, 4 * mib, 3), vec![mib, 2 * mib]);
    assert_eq!(range_starts(5, 4 * mib, 2), vec![5 + 2 * mib]);
    // Ranges under the alignment collapse rather than repeat a start.
    assert_eq!(range_starts(0, 3 * mib / 2, 3), vec![mib]);
    assert!(range_starts(0, mib / 2, 2).is_empty());
}

/// A tail that breaks off suspends its peer; the first provider sends the
/// rest, and the blob is whole.
#[tokio::test]
async fn a_tail_that_breaks_off_leaves_the_rest_to_the_first_provider() {
    let len = 4 << 20;
    let bytes = blob(len);
    let (net, ids) = ScriptedNet::new(&bytes, &[STEADY, Script::StopsAt(3 << 20)]);
    let outcome = run_phase(&net, &bytes, Some(len as u64), split_bounds(len as u64)).await;
    assert!(outcome.result.is_ok(), "{:?}", outcome.result.err());
    assert!(stored(&outcome, &bytes));
    assert_eq!(
        *net.asked.lock().unwrap(),
        vec![(ids[0], 0), (ids[1], 2 << 20)]
    );
    assert_eq!(net.verdict(ids[1]), Some(Verdict::Suspend(SUSPENSION)));
    assert_eq!(net.verdict(ids[0]), None);
}

/// The parts a peer phase is built from, for driving its steps one by one.
struct Parts {
    store: Store,
    metrics: Metrics,
    flight: Flight,
    hedging: Hedging,
    _dir: tempfile::TempDir,
}

impl Parts {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path(), 1 << 30).unwrap();
        Self {
            store,
            metrics: Metrics::new(),
            flight: Flight::new(),
            hedging: Hedging::default(),
            _dir: dir,
        }
    }

    fn phase<'a>(&'a self, net: &'a ScriptedNet, bounds: PeerBounds) -> PeerPhase<'a, ScriptedNet> {
        PeerPhase {
            net,
            store: &self.store,
            bounds,
            metrics: &self.metrics,
            flight: &self.flight,
            hedging: &self.hedging,
        }
    }
}

/// The peer the step chose, or what else it led to.
fn chosen<T>(step: Step<(PeerId, T)>) -> Result<PeerId, String> {
    match step {
        Step::Go((peer, _)) => Ok(peer),
        Step::Retry => Err("retry".into()),
        Step::HandOver(reason) => Err(format!("hand over: {reason}")),
    }
}

#[test]
fn an_announced_size_must_be_the_listed_one_or_within_the_cap() {
    assert!(announced_size_fits(Some(100), 100, 50));
    assert!(!announced_size_fits(Some(100), 101, 1_000));
    assert!(!announced_size_fits(Some(100), 99, 1_000));
    assert!(announced_size_fits(None, 1_000, 1_000));
    assert!(!announced_size_fits(None, 1_001, 1_000));
}

#[tokio::test]
async fn the_next_transfer_passes_over_a_refusal_then_takes_the_next_provider() {
    let bytes = blob(10_000);
    let (net, ids) = ScriptedNet::new(&bytes, &[Script::Refuses, Script::Honest]);
    let parts = Parts::new();
    let phase = parts.phase(&net, bounds(10_000));
    let digest = digest_of(&bytes);
    let mut attempts = phase.begin(digest).await.unwrap();
    let first = phase.next_transfer(digest, &mut attempts).await.unwrap();
    assert_eq!(chosen(first), Err("retry".into()), "the refusal");
    let second = phase.next_transfer(digest, &mut attempts).await.unwrap();
    assert_eq!(chosen(second), Ok(ids[1]));
    assert_eq!(attempts.tried, ids.iter().copied().collect());
}

#[tokio::test]
async fn the_next_transfer_hands_over_once_nobody_is_left() {
    let bytes = blob(10_000);
    let (net, _) = ScriptedNet::new(&bytes, &[Script::Refuses]);
    let parts = Parts::new();
    let phase = parts.phase(&net, bounds(10_000));
    let digest = digest_of(&bytes);
    let mut attempts = phase.begin(digest).await.unwrap();
    let _ = phase.next_transfer(digest, &mut attempts).await.unwrap();
    let last = phase.next_transfer(digest, &mut attempts).await.unwrap();
    assert_eq!(chosen(last), Err("hand over: no (more) providers".into()));
}

#[tokio::test]
async fn the_next_transfer_hands_over_past_the_providers_tried_bound() {
    let bytes = blob(10_000);
    let scripts = vec![Script::Refuses; MAX_PROVIDERS_TRIED + 1];
    let (net, _) = ScriptedNet::new(&bytes, &scripts);
    let parts = Parts::new();
    let phase = parts.phase(&net, bounds(10_000));
    let digest = digest_of(&bytes);
    let mut attempts = phase.begin(digest).await.unwrap();
    for _ in 0..MAX_PROVIDERS_TRIED {
        let step = phase.next_transfer(digest, &mut attempts).await.unwrap();
        assert_eq!(chosen(step), Err("retry".into()));
    }
    let step = phase.next_transfer(digest, &mut attempts).await.unwrap();
    assert_eq!(
        chosen(step),
        Err(format!("hand over: {MAX_PROVIDERS_TRIED} providers tried"))
    );
    assert_eq!(net.asked.lock().unwrap().len(), MAX_PROVIDERS_TRIED);
}

#[tokio::test]
async fn a_size_lie_is_not_admitted_and_sentenced() {
    let bytes = blob(10_000);
    let (net, ids) = ScriptedNet::new(&bytes, &[Script::Honest]);
    let parts = Parts::new();
    let phase = parts.phase(&net, bounds(10_000));
    let digest = digest_of(&bytes);
    let listed = origin(Some(10_000));
    assert!(phase.admit(ids[0], digest, &listed, 10_000).await);
    assert_eq!(net.verdict(ids[0]), None);
    assert!(!phase.admit(ids[0], digest, &listed, 10_001).await);
    assert_eq!(net.verdict(ids[0]), Some(Verdict::Block));
}

/// Starts the first transfer of a phase over `scripts` and receives it.
async fn receive_first(
    net: &ScriptedNet,
    parts: &Parts,
    bytes: &[u8],
) -> (Attempts<ScriptedTransfer>, PeerId, Ended) {
    let phase = parts.phase(net, bounds(bytes.len() as u64));
    let digest = digest_of(bytes);
    let listed = origin(Some(bytes.len() as u64));
    let mut attempts = phase.begin(digest).await.unwrap();
    let Step::Go((peer, transfer)) = phase.next_transfer(digest, &mut attempts).await.unwrap()
    else {
        panic!("a transfer starts");
    };
    let total = transfer.remaining();
    let ended = phase
        .receive(&mut attempts, peer, transfer, digest, &listed, total)
        .await
        .unwrap();
    (attempts, peer, ended)
}

#[tokio::test]
async fn a_whole_transfer_is_received_as_one_part() {
    let bytes = blob(100_000);
    let (net, _) = ScriptedNet::new(&bytes, &[Script::Honest]);
    let parts = Parts::new();
    let (attempts, peer, ended) = receive_first(&net, &parts, &bytes).await;
    assert!(ended.failed.is_none() && !ended.handing_over, "{ended:?}");
    assert_eq!(attempts.received.writer.len(), 100_000);
    assert_eq!(attempts.received.parts, vec![part(peer, 0..100_000)]);
}

#[tokio::test]
async fn a_transfer_that_ends_early_is_received_as_a_broken_part() {
    let bytes = blob(100_000);
    let (net, _) = ScriptedNet::new(&bytes, &[Script::StopsAt(40_000)]);
    let parts = Parts::new();
    let (attempts, peer, ended) = receive_first(&net, &parts, &bytes).await;
    assert_eq!(ended.failed, Some(Misdeed::BrokeOff));
    assert_eq!(attempts.received.parts, vec![broken(peer, 0..40_000)]);
}

#[tokio::test]
async fn after_a_failed_transfer_its_peer_is_sentenced_and_the_next_is_tried() {
    let bytes = blob(10_000);
    let (net, ids) = ScriptedNet::new(&bytes, &[Script::Honest]);
    let parts = Parts::new();
    let phase = parts.phase(&net, bounds(10_000));
    let digest = digest_of(&bytes);
    let mut attempts = phase.begin(digest).await.unwrap();
    let broke_off = Ended {
        failed: Some(Misdeed::BrokeOff),
        handing_over: false,
    };
    let step = phase
        .after_transfer(&mut attempts, ids[0], digest, broke_off)
        .await
        .unwrap();
    assert!(matches!(step, Step::Retry));
    assert_eq!(net.verdict(ids[0]), Some(Verdict::Suspend(SUSPENSION)));
    let overran = Ended {
        failed: Some(Misdeed::Overran),
        handing_over: false,
    };
    let step = phase
        .after_transfer(&mut attempts, ids[0], digest, overran)
        .await
        .unwrap();
    assert!(matches!(step, Step::HandOver(reason) if reason == PHASE_DEADLINE_PASSED));
    let complete = phase
        .after_transfer(&mut attempts, ids[0], digest, Ended::default())
        .await
        .unwrap();
    assert!(matches!(complete, Step::Go(())));
}

#[tokio::test]
async fn finishing_blames_one_sender_alone_and_makes_suspects_of_several() {
    let bytes = blob(50_000);
    let digest = digest_of(&bytes);
    let listed = origin(Some(50_000));
    let commit = |writer: BlobWriter, _len: u64| {
        // Every file is the wrong one here.
        drop(writer);
        async { Err(CommitError::Mismatch("digest mismatch".into())) }
    };
    for senders in [1usize, 2] {
        let (net, ids) = ScriptedNet::new(&bytes, &vec![Script::Honest; senders]);
        let parts = Parts::new();
        let phase = parts.phase(&net, bounds(50_000));
        let mut attempts = phase.begin(digest).await.unwrap();
        let mut batch = Batch::default();
        batch.add(Bytes::copy_from_slice(&bytes));
        attempts.received.writer.push(batch).await.unwrap();
        let share = 50_000 / senders as u64;
        attempts.received.parts = (0..senders)
            .map(|i| part(ids[i], i as u64 * share..(i as u64 + 1) * share))
            .collect();
        let mut suspects = Vec::new();
        let done = phase
            .finish(
                &mut attempts,
                ids[0],
                "test",
                digest,
                &listed,
                &mut suspects,
                &commit,
            )
            .await
            .unwrap();
        assert!(done.is_none(), "nothing stored");
        assert_eq!(attempts.received.writer.len(), 0, "a fresh temp file");
        if senders == 1 {
            assert_eq!(net.verdict(ids[0]), Some(Verdict::Block));
            assert!(suspects.is_empty());
        } else {
            for id in &ids {
                assert_eq!(net.verdict(*id), Some(Verdict::Suspend(SUSPENSION)));
            }
            assert_eq!(suspects.len(), 1);
        }
    }
}
