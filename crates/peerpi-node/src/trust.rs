//! A node's TUF client: which bytes are the signed page of a project. The
//! metadata is signed, so only its freshness matters, not its source: the
//! timestamp, whose expiry bounds freshness, and the small roles come from
//! the signer's `/tuf/`; the snapshot (the large file, named by its hash in
//! the timestamp) and the page bytes are blobs fetched by their signed
//! digest like any file (store, then peers, then the signer).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use peerpi_core::Sha256Digest;
use peerpi_store::Origin;
use peerpi_trust::fetch::{Fetch, FetchError};
use peerpi_trust::{
    Client, HttpFetcher, Limits, MetadataDir, TargetInfo, TimestampSource, TrustError,
};
use tracing::{info, warn};
use url::Url;

use crate::blobs::Blobs;
use crate::metrics::Metrics;
use crate::metrics::Source;
use crate::signing::page_target;
use crate::{lock, NodeError};

/// How a node decides which pages to trust.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrustMode {
    /// Every page must be a signed target; the node never talks to the
    /// upstream index itself (its files come from peers or the signer).
    Tuf,
    /// Signed pages where the project is a target; the upstream index over
    /// TLS for the others, and whenever the TUF metadata cannot be used.
    TufOrIndex,
    /// The index's own TUF metadata (PEP 458), no signer: a project's
    /// target is its normalised name, signed with the `blake2b-256` of the
    /// index's HTML page; the node serves only pages whose bytes match.
    IndexSigned,
}

/// TUF settings of a node.
#[derive(Debug, Clone)]
pub struct TrustConfig {
    pub mode: TrustMode,
    /// The root the operator installed (copied into the node's metadata
    /// directory on first start; later roots come by rotation).
    pub root: PathBuf,
    /// The signer's repository, e.g. `http://signer:7503/tuf/`.
    pub url: Url,
    /// How often the timestamp is refreshed at most, except for a project
    /// not known yet. At least, it is refreshed when a page's verification
    /// is older than the page TTL (see `PageTrust::refresh_due`).
    pub refresh: Duration,
    /// How long a request for a project the signer has not signed yet
    /// waits for its signature (`tuf` mode).
    pub wait: Duration,
}

impl TrustConfig {
    /// The signer node's own base URL (its `/simple/` and `/files/`).
    pub fn signer_base(&self) -> Url {
        self.url.join("../").unwrap_or_else(|_| self.url.clone())
    }
}

pub(crate) struct PageTrust {
    config: TrustConfig,
    client: tokio::sync::Mutex<Client<ClusterFetcher>>,
    /// When the last refresh started, as an instant and in milliseconds
    /// since the epoch (compared with when a page was verified).
    last_refresh: Mutex<Option<(Instant, u64)>>,
    /// Metadata older than this is refreshed before a page is served on it
    /// (the page TTL: a page is verified again when its TTL has passed).
    max_age: Duration,
    /// When the trusted metadata expires (seconds since the epoch; 0: none
    /// trusted).
    fresh_until: AtomicI64,
    /// The client's clock floor at the last refresh (seconds since the
    /// epoch): a clock set back does not revive expired metadata.
    clock_floor: AtomicI64,
    asker: reqwest::Client,
    floor: Mutex<VersionFloor>,
    /// The trusted timestamp after the last refresh, for the status page.
    timestamp: Mutex<Option<TimestampStatus>>,
    /// The signer could not be reached at the last refresh (whether or not
    /// peers then had a timestamp).
    signer_unreachable: std::sync::atomic::AtomicBool,
    dir: PathBuf,
    blobs: Arc<Blobs>,
}

/// What the status page says of the trusted timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TimestampStatus {
    pub version: u64,
    pub expires: jiff::Timestamp,
    /// `Peers`: the signer could not be reached at the last refresh.
    pub source: TimestampSource,
}

/// The name under which nodes hand each other their trusted timestamp.
pub(crate) const TIMESTAMP_DOCUMENT: &str = "tuf/timestamp";
/// Peers asked at once for their timestamp when the signer is unreachable.
const TIMESTAMP_PEERS: usize = 8;
/// How long those peers are waited for: a refresh runs while a page
/// request waits (for at most 2 s, see `pages`).
const TIMESTAMP_PEERS_WAIT: Duration = Duration::from_millis(1_500);

impl PageTrust {
    /// `page_ttl`: how old the metadata may be before it is refreshed (at
    /// a page request or a cache hit).
    pub(crate) fn open(
        config: TrustConfig,
        data_dir: &Path,
        page_ttl: Duration,
        blobs: Arc<Blobs>,
    ) -> Result<Self, NodeError> {
        let dir = data_dir.join("tuf-client");
        let fail = |what: String| NodeError::Internal(format!("TUF client: {what}"));
        std::fs::create_dir_all(&dir).map_err(|e| fail(format!("{}: {e}", dir.display())))?;
        let installed = dir.join("root.json");
        if !installed.exists() {
            std::fs::copy(&config.root, &installed).map_err(|e| {
                fail(format!(
                    "--tuf-root {}: {e} (copy the repository's 1.root.json from the signer's \
                     operator, never from the network)",
                    config.root.display()
                ))
            })?;
            info!(root = %config.root.display(), "installed the trusted TUF root");
        }
        // A root that does not parse or is not signed by its own keys is
        // refused now, not at the first page request.
        let root =
            std::fs::read(&installed).map_err(|e| fail(format!("{}: {e}", installed.display())))?;
        peerpi_trust::trusted::TrustedSet::new(&root, jiff::Timestamp::now()).map_err(|e| {
            fail(format!(
                "{} is not a usable TUF root: {e} (install the repository's 1.root.json)",
                installed.display()
            ))
        })?;
        let max_age = page_ttl.max(config.refresh);
        let floor = VersionFloor::check(data_dir, &MetadataDir::new(&dir)).map_err(fail)?;
        let metadata_url = config
            .url
            .join("metadata/")
            .map_err(|e| fail(format!("--tuf-url {}: {e}", config.url)))?;
        let fetcher = ClusterFetcher {
            http: HttpFetcher::new(Duration::from_secs(30)).map_err(|e| fail(e.to_string()))?,
            blobs: blobs.clone(),
        };
        let client = Client::new(
            MetadataDir::new(&dir),
            fetcher,
            &metadata_url,
            Limits::default(),
        )
        .and_then(|c| c.with_clock_file(dir.join("clock")))
        .map_err(|e| fail(e.to_string()))?;
        let asker = reqwest::Client::builder()
            .timeout(config.wait)
            .build()
            .map_err(|e| fail(e.to_string()))?;
        Ok(PageTrust {
            config,
            client: tokio::sync::Mutex::new(client),
            last_refresh: Mutex::new(None),
            max_age,
            fresh_until: AtomicI64::new(0),
            clock_floor: AtomicI64::new(0),
            asker,
            floor: Mutex::new(floor),
            timestamp: Mutex::new(None),
            signer_unreachable: Default::default(),
            dir,
            blobs,
        })
    }

    /// The trusted timestamp after the last refresh, if any.
    pub(crate) fn timestamp_status(&self) -> Option<TimestampStatus> {
        lock(&self.timestamp).clone()
    }

    pub(crate) fn config(&self) -> &TrustConfig {
        &self.config
    }

    /// The target that signs `project`'s page: the normalised name in the
    /// index's repository (PEP 458), the canonical JSON page in a signer's.
    fn target_of(&self, project: &str) -> String {
        match self.config.mode {
            TrustMode::IndexSigned => project.to_string(),
            TrustMode::Tuf | TrustMode::TufOrIndex => page_target(project),
        }
    }

    /// Who publishes the metadata, in a word or two: "the signer" or "the
    /// index".
    pub(crate) fn publisher_name(&self) -> &'static str {
        match self.config.mode {
            TrustMode::IndexSigned => "the index",
            TrustMode::Tuf | TrustMode::TufOrIndex => "the signer",
        }
    }

    /// Who publishes the metadata, for messages.
    fn publisher(&self) -> String {
        match self.config.mode {
            TrustMode::IndexSigned => format!("the index's TUF repository at {}", self.config.url),
            TrustMode::Tuf | TrustMode::TufOrIndex => {
                format!("the signer at {}", self.config.signer_base())
            }
        }
    }

    /// The signed page of `project`: `Ok(None)` when no trusted role lists
    /// it. `verified_at_ms`: when the copy being revalidated was verified
    /// (milliseconds since the epoch), if there is one. Refreshes the
    /// metadata when due (see [`PageTrust::refresh_due`]) or on `force`.
    pub(crate) async fn signed(
        &self,
        project: &str,
        verified_at_ms: Option<u64>,
        force: bool,
        metrics: &Metrics,
    ) -> Result<Option<TargetInfo>, TrustError> {
        let mut client = self.client.lock().await;
        if force || self.refresh_due(verified_at_ms) {
            self.refresh_now(&mut client, metrics).await?;
        }
        client.lookup(&self.target_of(project)).await
    }

    /// Whether a refresh of the metadata is due: never within `refresh` (10
    /// s) of the last one; otherwise when none was made yet, when the last
    /// is older than the page TTL, or when it is not newer than the page
    /// being revalidated (`verified_at_ms`), which was verified on it. So a
    /// node serving pages refreshes about once per page TTL, not on every
    /// burst of requests, and downloads a new snapshot only then.
    pub(crate) fn refresh_due(&self, verified_at_ms: Option<u64>) -> bool {
        let Some((at, at_ms)) = *lock(&self.last_refresh) else {
            return true;
        };
        let age = at.elapsed();
        age >= self.config.refresh
            && (age >= self.max_age || verified_at_ms.is_some_and(|verified| at_ms <= verified))
    }

    /// Whether the metadata trusted now is unexpired (refreshing it first
    /// when due): a cached page is served under `tuf` only while it is.
    pub(crate) async fn ensure_current(&self, metrics: &Metrics) -> Result<(), TrustError> {
        if self.refresh_due(None) {
            let mut client = self.client.lock().await;
            // Another request may have refreshed while this one waited.
            if self.refresh_due(None) {
                self.refresh_now(&mut client, metrics).await?;
            }
        }
        self.current()
    }

    /// Whether the metadata trusted now is unexpired, without refreshing.
    pub(crate) fn current(&self) -> Result<(), TrustError> {
        let until = self.fresh_until.load(Ordering::Relaxed);
        let now = jiff::Timestamp::now()
            .as_second()
            .max(self.clock_floor.load(Ordering::Relaxed));
        if now >= until {
            return Err(TrustError::Expired {
                role: "the trusted metadata".into(),
                expires: jiff::Timestamp::from_second(until).unwrap_or(jiff::Timestamp::UNIX_EPOCH),
                now: jiff::Timestamp::from_second(now).unwrap_or(jiff::Timestamp::UNIX_EPOCH),
            });
        }
        Ok(())
    }

    async fn refresh_now(
        &self,
        client: &mut Client<ClusterFetcher>,
        metrics: &Metrics,
    ) -> Result<(), TrustError> {
        let now_ms = u64::try_from(jiff::Timestamp::now().as_millisecond()).unwrap_or(0);
        *lock(&self.last_refresh) = Some((Instant::now(), now_ms));
        let outcome = client.refresh().await;
        let from_peers = client.timestamp_source() == TimestampSource::Peers;
        self.signer_unreachable.store(from_peers, Ordering::Relaxed);
        metrics.tuf_timestamp_from_peers(from_peers);
        metrics.tuf_refresh(match (&outcome, from_peers) {
            (Ok(()), false) => "ok",
            (Ok(()), true) => "from_peers",
            (Err(_), _) => "error",
        });
        let mut until = 0;
        if let Some(set) = client.trusted() {
            let now = jiff::Timestamp::now().as_second();
            let mut expiries = vec![("root", set.root().expires)];
            if let Some(t) = set.timestamp() {
                expiries.push(("timestamp", t.expires));
            }
            if let Some(s) = set.snapshot() {
                expiries.push(("snapshot", s.expires));
            }
            if let Some(t) = set.targets("targets") {
                expiries.push(("targets", t.expires));
            }
            until = expiries
                .iter()
                .map(|(_, e)| e.as_second())
                .min()
                .unwrap_or(0);
            for (role, expires) in expiries {
                metrics.tuf_expires(role, expires.as_second() - now);
            }
        }
        self.fresh_until.store(until, Ordering::Relaxed);
        self.clock_floor
            .store(client.latest_time().as_second(), Ordering::Relaxed);
        if let Some(set) = client.trusted() {
            lock(&self.floor).raise(set);
            self.note_timestamp(set, client.timestamp_source());
        }
        if let Err(e) = outcome {
            warn!(error = %e, "TUF refresh failed");
            if client.trusted().is_none() {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Records the trusted timestamp for the status page and the metrics,
    /// says in the log when its source changed, and hands the verified
    /// bytes to peers that ask (so a node that cannot reach the signer
    /// takes the newest timestamp the cluster holds).
    fn note_timestamp(&self, set: &peerpi_trust::trusted::TrustedSet, source: TimestampSource) {
        let Some(timestamp) = set.timestamp() else {
            return;
        };
        let status = TimestampStatus {
            version: timestamp.version.get(),
            expires: timestamp.expires,
            source,
        };
        let previous = lock(&self.timestamp).replace(status.clone());
        if previous.as_ref().map(|p| p.source) != Some(source) {
            match source {
                TimestampSource::Peers => warn!(
                    version = status.version,
                    expires = %status.expires,
                    "the signer cannot be reached: the TUF timestamp is the newest peers hold; \
                     pages are served until it expires"
                ),
                TimestampSource::Repository if previous.is_some() => {
                    info!(version = status.version, "the signer is reachable again")
                }
                TimestampSource::Repository => {}
            }
        }
        if previous.as_ref().map(|p| p.version) == Some(status.version) {
            return;
        }
        // The stored file holds exactly the bytes that verified; it is
        // written only while unexpired.
        let stored = MetadataDir::new(&self.dir).read("timestamp");
        if let (Some(swarm), Ok(Some(bytes))) = (self.blobs.swarm.as_ref(), stored) {
            if let Err(e) = swarm.publish_latest(TIMESTAMP_DOCUMENT, bytes.into()) {
                warn!(error = %e, "cannot hand the TUF timestamp to peers");
            }
        }
    }

    /// Why the page of `project` cannot be verified, by its real cause (a
    /// 503's body): signed metadata that could not be fetched is not
    /// metadata that expired, and an operator fixes the two differently.
    pub(crate) fn refusal(&self, project: &str, error: &TrustError) -> String {
        let publisher = self.publisher();
        let from_peers = self.signer_unreachable.load(Ordering::Relaxed);
        match error {
            TrustError::Fetch { .. } | TrustError::TooLarge { .. } => format!(
                "the page of {project} cannot be verified: signed metadata it needs could not be \
                 fetched ({error}). The metadata this node trusts has not expired, and pages it \
                 verified before are still served; this one needs {publisher}"
            ),
            TrustError::Expired { .. } if from_peers => format!(
                "the page of {project} cannot be verified: {error}. {publisher} cannot be \
                 reached, and no peer holds newer signed metadata; pages are refused until it \
                 publishes fresh metadata"
            ),
            TrustError::Expired { .. } => format!(
                "the page of {project} cannot be verified: {error}; pages are refused until \
                 {publisher} publishes fresh metadata"
            ),
            _ => format!(
                "the page of {project} cannot be verified: {error}; pages are refused until \
                 {publisher} publishes metadata that verifies"
            ),
        }
    }

    /// Where the signer publishes the page's bytes.
    pub(crate) fn target_url(&self, info: &TargetInfo) -> Result<Url, TrustError> {
        let base = self
            .config
            .url
            .join("targets/")
            .map_err(|e| TrustError::Fetch {
                url: self.config.url.to_string(),
                reason: e.to_string(),
            })?;
        peerpi_trust::client::target_url(&base, info, true)
    }

    /// Asks the signer for `project`'s page, which makes it fetch the page
    /// from upstream and sign it within its cadence. `false` when the
    /// signer says there is no such project.
    pub(crate) async fn ask_signer(&self, project: &str) -> bool {
        let url = self.page_url(project);
        match self.asker.get(url.clone()).send().await {
            Ok(response) => response.status() != reqwest::StatusCode::NOT_FOUND,
            Err(e) => {
                warn!(%url, error = %e, "cannot ask the signer for a page");
                true
            }
        }
    }

    /// Tells the signer, without waiting, that `project` is still in use:
    /// its GET makes the signer revalidate the page with upstream (within
    /// its own page TTL) and sign a changed page. Without it the signer
    /// would never learn of a new release of a project that only `tuf`
    /// nodes ask for.
    pub(crate) fn nudge_signer(&self, project: &str) {
        let url = self.page_url(project);
        let asker = self.asker.clone();
        tokio::spawn(async move {
            if let Err(e) = asker.get(url.clone()).send().await {
                tracing::debug!(%url, error = %e, "cannot nudge the signer");
            }
        });
    }

    /// The page's URL on the signer: relative file links resolve against it.
    pub(crate) fn page_url(&self, project: &str) -> Url {
        let base = self.config.signer_base();
        base.join(&format!("simple/{project}/")).unwrap_or(base)
    }
}

/// The TUF client's downloads on a node: metadata named by its hash (the
/// snapshot) through the node's blob path, so from the store or a peer
/// before the signer; the rest from the signer over HTTP. Bytes are counted
/// by source in `peerpi_tuf_metadata_bytes_total`.
pub(crate) struct ClusterFetcher {
    http: HttpFetcher,
    blobs: Arc<Blobs>,
}

impl ClusterFetcher {
    fn count(&self, source: &str, bytes: &[u8]) {
        self.blobs
            .metrics
            .tuf_metadata_bytes(source, bytes.len() as u64);
    }
}

impl Fetch for ClusterFetcher {
    async fn timestamps_from_peers(&self, limit: u64) -> Vec<Vec<u8>> {
        let Some(swarm) = self.blobs.swarm.as_ref() else {
            return Vec::new();
        };
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let copies = swarm
            .ask_latest(
                TIMESTAMP_DOCUMENT,
                limit,
                TIMESTAMP_PEERS,
                TIMESTAMP_PEERS_WAIT,
            )
            .await;
        copies
            .into_iter()
            .map(|(_, bytes)| {
                self.count("peer", &bytes);
                bytes.to_vec()
            })
            .collect()
    }

    async fn fetch(&self, url: &Url, limit: u64) -> Result<Vec<u8>, FetchError> {
        let bytes = self.http.fetch(url, limit).await?;
        self.count("signer", &bytes);
        Ok(bytes)
    }

    async fn fetch_hashed(
        &self,
        url: &Url,
        limit: u64,
        sha256: [u8; 32],
    ) -> Result<Vec<u8>, FetchError> {
        let filename = url
            .path_segments()
            .and_then(|mut segments| segments.next_back())
            .unwrap_or("metadata.json")
            .to_string();
        let origin = Origin {
            url: url.to_string(),
            filename,
            size: Some(limit),
            metadata: None,
        };
        let digest = Sha256Digest::from_bytes(sha256);
        match self.blobs.small_blob(&digest, origin, limit).await {
            Ok((bytes, source)) => {
                let source = match source {
                    Source::Local => "store",
                    Source::Peer => "peer",
                    Source::Upstream => "signer",
                };
                self.count(source, &bytes);
                Ok(bytes)
            }
            Err(e) => {
                warn!(%url, error = %e, "metadata by hash failed; asking the signer directly");
                self.fetch(url, limit).await
            }
        }
    }
}

/// The highest versions this node has trusted, kept outside the metadata
/// directory. The stored timestamp and snapshot are what protects a node
/// against rollback; a metadata directory rolled back by hand (a restored
/// backup, a directory copied from another node, files deleted) would lower
/// that protection silently. Comparing the two at start finds it. It does
/// not find a rollback of the whole data directory.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct VersionFloor {
    root: u64,
    timestamp: u64,
    snapshot: u64,
    /// Where it is kept (not serialized).
    #[serde(skip)]
    path: PathBuf,
}

/// The floor's file in the data directory.
const FLOOR_FILE: &str = "tuf-versions.json";

impl VersionFloor {
    /// Reads the floor and checks the metadata directory against it.
    fn check(data_dir: &Path, dir: &MetadataDir) -> Result<Self, String> {
        let path = data_dir.join(FLOOR_FILE);
        let mut floor: VersionFloor = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| format!("{} is damaged ({e}); delete it", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => VersionFloor::default(),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        floor.path = path;
        for (role, trusted) in [
            ("root", floor.root),
            ("timestamp", floor.timestamp),
            ("snapshot", floor.snapshot),
        ] {
            let stored = stored_version(dir, role)?;
            if stored < trusted {
                let found = if stored == 0 {
                    "none".to_string()
                } else {
                    format!("version {stored}")
                };
                return Err(format!(
                    "the TUF metadata in {} was rolled back: this node trusted {role} version \
                     {trusted}, the directory holds {found}. Restore the directory (or delete \
                     it together with {} if the older metadata is intended: the node then \
                     starts over from the installed root)",
                    dir.path().display(),
                    floor.path.display()
                ));
            }
        }
        Ok(floor)
    }

    /// Records the versions of `set` when they are higher.
    fn raise(&mut self, set: &peerpi_trust::trusted::TrustedSet) {
        let next = VersionFloor {
            root: set.root().version.get().max(self.root),
            timestamp: set
                .timestamp()
                .map_or(0, |t| t.version.get())
                .max(self.timestamp),
            snapshot: set
                .snapshot()
                .map_or(0, |s| s.version.get())
                .max(self.snapshot),
            path: self.path.clone(),
        };
        if next == *self {
            return;
        }
        let written = serde_json::to_vec(&next)
            .map_err(|e| e.to_string())
            .and_then(|bytes| {
                peerpi_trust::datastore::write_atomically(&self.path, &bytes)
                    .map_err(|e| e.to_string())
            });
        match written {
            Ok(()) => *self = next,
            Err(e) => {
                warn!(path = %self.path.display(), error = %e, "cannot record the trusted TUF versions")
            }
        }
    }
}

/// The version of `role` stored in `dir` (0: none), read without
/// verifying: only compared with what the node trusted before.
fn stored_version(dir: &MetadataDir, role: &str) -> Result<u64, String> {
    let Some(bytes) = dir.read(role).map_err(|e| e.to_string())? else {
        return Ok(0);
    };
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| format!("{}: not JSON ({e})", dir.file(role).display()))?;
    Ok(value["signed"]["version"].as_u64().unwrap_or(0))
}
