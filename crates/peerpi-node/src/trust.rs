//! A node's TUF client: which bytes are the signed page of a project. The
//! metadata is signed, so only its freshness matters, not its source: the
//! timestamp, whose expiry bounds freshness, and the small roles come from
//! the signer's `/tuf/`; the snapshot (the large file, named by its hash in
//! the timestamp) and the page bytes are blobs fetched by their signed
//! digest like any file (store, then peers, then the signer).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use peerpi_core::Sha256Digest;
use peerpi_store::Origin;
use peerpi_trust::fetch::{Fetch, FetchError};
use peerpi_trust::{Client, HttpFetcher, Limits, MetadataDir, TargetInfo, TrustError};
use tracing::{info, warn};
use url::Url;

use crate::metrics::Metrics;
use crate::metrics::Source;
use crate::signing::page_target;
use crate::{lock, NodeError, NodeSlot};

/// How a node decides which pages to trust.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrustMode {
    /// Every page must be a signed target; the node never talks to the
    /// upstream index itself (its files come from peers or the signer).
    Tuf,
    /// Signed pages where the project is a target; the upstream index over
    /// TLS for the others, and whenever the TUF metadata cannot be used.
    TufOrIndex,
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
    /// How often the timestamp is refreshed, at most.
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
    last_refresh: Mutex<Option<Instant>>,
    /// When the trusted metadata expires (seconds since the epoch; 0: none
    /// trusted).
    fresh_until: AtomicI64,
    asker: reqwest::Client,
    floor: Mutex<VersionFloor>,
}

impl PageTrust {
    pub(crate) fn open(
        config: TrustConfig,
        data_dir: &Path,
        node: NodeSlot,
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
        let floor = VersionFloor::check(data_dir, &MetadataDir::new(&dir)).map_err(fail)?;
        let metadata_url = config
            .url
            .join("metadata/")
            .map_err(|e| fail(format!("--tuf-url {}: {e}", config.url)))?;
        let fetcher = ClusterFetcher {
            http: HttpFetcher::new(Duration::from_secs(30)).map_err(|e| fail(e.to_string()))?,
            node,
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
            fresh_until: AtomicI64::new(0),
            asker,
            floor: Mutex::new(floor),
        })
    }

    pub(crate) fn config(&self) -> &TrustConfig {
        &self.config
    }

    /// The signed page of `project`: `Ok(None)` when no trusted role lists
    /// it. Refreshes the metadata when the last refresh is older than the
    /// cadence (or `force`).
    pub(crate) async fn signed(
        &self,
        project: &str,
        force: bool,
        metrics: &Metrics,
    ) -> Result<Option<TargetInfo>, TrustError> {
        let mut client = self.client.lock().await;
        self.refresh_if_due(&mut client, force, metrics).await?;
        client.lookup(&page_target(project)).await
    }

    /// Whether a refresh of the metadata is due.
    pub(crate) fn refresh_due(&self) -> bool {
        lock(&self.last_refresh).is_none_or(|at| at.elapsed() >= self.config.refresh)
    }

    /// Whether the metadata trusted now is unexpired (refreshing it first
    /// when due): a cached page is served under `tuf` only while it is.
    pub(crate) async fn ensure_current(&self, metrics: &Metrics) -> Result<(), TrustError> {
        if self.refresh_due() {
            let mut client = self.client.lock().await;
            self.refresh_if_due(&mut client, false, metrics).await?;
        }
        self.current()
    }

    /// Whether the metadata trusted now is unexpired, without refreshing.
    pub(crate) fn current(&self) -> Result<(), TrustError> {
        let until = self.fresh_until.load(Ordering::Relaxed);
        let now = jiff::Timestamp::now().as_second();
        if now >= until {
            return Err(TrustError::Expired {
                role: "the trusted metadata".into(),
                expires: jiff::Timestamp::from_second(until).unwrap_or(jiff::Timestamp::UNIX_EPOCH),
                now: jiff::Timestamp::from_second(now).unwrap_or(jiff::Timestamp::UNIX_EPOCH),
            });
        }
        Ok(())
    }

    async fn refresh_if_due(
        &self,
        client: &mut Client<ClusterFetcher>,
        force: bool,
        metrics: &Metrics,
    ) -> Result<(), TrustError> {
        let due =
            force || lock(&self.last_refresh).is_none_or(|at| at.elapsed() >= self.config.refresh);
        if !due {
            return Ok(());
        }
        *lock(&self.last_refresh) = Some(Instant::now());
        let outcome = client.refresh().await;
        metrics.tuf_refresh(if outcome.is_ok() { "ok" } else { "error" });
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
        if let Some(set) = client.trusted() {
            lock(&self.floor).raise(set);
        }
        if let Err(e) = outcome {
            warn!(error = %e, "TUF refresh failed");
            if client.trusted().is_none() {
                return Err(e);
            }
        }
        Ok(())
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
    node: NodeSlot,
}

impl ClusterFetcher {
    fn count(&self, source: &str, bytes: &[u8]) {
        if let Some(node) = self.node.node() {
            node.metrics()
                .tuf_metadata_bytes(source, bytes.len() as u64);
        }
    }
}

impl Fetch for ClusterFetcher {
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
        let Some(node) = self.node.node() else {
            return self.fetch(url, limit).await;
        };
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
        match node.small_blob(&digest, origin, limit).await {
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
