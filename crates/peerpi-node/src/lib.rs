//! A peerpi node: the resolver that answers for project pages and blobs
//! (local store first, then upstream, verifying every byte against a trusted
//! digest before it is stored or released as a complete file) and the axum
//! HTTP front that serves the Simple Repository API to pip and uv.

mod blobs;
mod error;
mod flight;
mod http;
mod index_signed;
pub mod metrics;
mod pages;
mod replication;
mod reputation;
pub mod scrub;
pub mod signing;
mod sources;
mod status;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(test)]
mod tests;
pub mod trust;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use peerpi_core::Sha256Digest;
use peerpi_store::{OpenedBlob, Origin, ReconcileReport, Store};
use peerpi_swarm::SwarmHandle;
use peerpi_upstream::{Upstream, UpstreamConfig};

pub use blobs::BlobBody;
pub use error::NodeError;
pub use pages::CacheStatus;
pub use replication::ReplicationConfig;

/// Everything a node needs to run.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub data_dir: PathBuf,
    /// Cap on the bytes of blobs kept on disk.
    pub cache_size: u64,
    /// How long a cached page is served before it is revalidated upstream.
    pub page_ttl: Duration,
    /// How long an upstream 404 is remembered.
    pub negative_ttl: Duration,
    /// Estimated bytes of project pages kept in memory (every page is also
    /// in the catalog on disk).
    pub page_memory: u64,
    /// `Cache-Control: max-age` sent to clients with pages.
    pub page_max_age: Duration,
    /// How long to wait for a peer to start delivering a blob before
    /// going upstream.
    pub peer_deadline: Duration,
    /// How long a peer that broke off or stalled a transfer is left alone
    /// (bad content blocks it for good).
    pub peer_suspension: Duration,
    /// Slowest average rate a peer transfer may keep (after a short grace)
    /// before it is given up and resumed elsewhere; also bounds the whole
    /// peer phase to about the blob's size at this rate.
    pub peer_min_rate: u64,
    /// How long bytes from peers are held back before the client is sent
    /// anything: within it a lying peer costs the client nothing (the next
    /// source takes over unseen); past it, bytes of a blob whose size is
    /// listed are released as they arrive (last byte after verification) so
    /// that a large file from a slow honest peer keeps the client's read
    /// timeout at bay. It is also the client's clock: no wait of the peer
    /// phase outlasts it before a release (or `peer_deadline`, if longer),
    /// nor as silence after one; then the next source takes over, continuing
    /// released bytes from their offset.
    pub peer_hold_back: Duration,
    /// A blob of a listed size at least this large comes from several
    /// peers at once (up to four ranges of at least half of it each).
    pub peer_split_min: u64,
    /// Largest file accepted when its size is not known in advance (no
    /// size listed, none announced); core-metadata files have their own,
    /// smaller cap.
    pub max_file_size: u64,
    pub upstream: UpstreamConfig,
    /// When set, this node signs the pages it fetches into a TUF repository
    /// and serves it at `/tuf/`.
    pub signer: Option<signing::SignerConfig>,
    /// When set, pages are checked against TUF metadata (see `trust`).
    pub trust: Option<trust::TrustConfig>,
    /// The background scrub of the store.
    pub scrub: scrub::ScrubConfig,
    /// Second copies of large files in the region.
    pub replication: ReplicationConfig,
}

impl NodeConfig {
    pub fn new(data_dir: PathBuf, upstream: UpstreamConfig) -> Self {
        Self {
            data_dir,
            cache_size: 20 << 30,
            page_ttl: Duration::from_secs(600),
            negative_ttl: Duration::from_secs(60),
            page_memory: 64 << 20,
            page_max_age: Duration::from_secs(60),
            peer_deadline: Duration::from_secs(2),
            peer_suspension: Duration::from_secs(600),
            peer_min_rate: 256 << 10,
            peer_hold_back: Duration::from_secs(5),
            peer_split_min: sources::peers::SPLIT_MIN_SIZE,
            max_file_size: 16 << 30,
            upstream,
            signer: None,
            trust: None,
            scrub: scrub::ScrubConfig::default(),
            replication: ReplicationConfig::default(),
        }
    }
}

/// A running node's shared state; cheap to clone.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

struct Inner {
    config: NodeConfig,
    /// The blob path (store, swarm, upstream, metrics, downloads).
    blobs: Arc<blobs::Blobs>,
    pages: pages::PageState,
    signer: Option<Arc<signing::PageSigner>>,
    trust: Option<trust::PageTrust>,
    /// Under `--trust index-signed`: each verified page's signed
    /// `blake2b-256` and the SHA-256 it is stored under.
    signed_pages: Mutex<HashMap<[u8; 32], peerpi_core::Sha256Digest>>,
}

/// A handle to the node for a background loop it starts (second copies):
/// weak, so that the loop does not keep a node that shut down alive.
#[derive(Clone)]
pub(crate) struct WeakNode(std::sync::Weak<Inner>);

impl WeakNode {
    pub(crate) fn node(&self) -> Option<Node> {
        let inner = self.0.upgrade()?;
        Some(Node { inner })
    }
}

/// The runtime a background loop (`what`) is spawned on; `None`, and
/// `what` is off, without one.
pub(crate) fn background_runtime(what: &str) -> Option<tokio::runtime::Handle> {
    let runtime = tokio::runtime::Handle::try_current();
    if runtime.is_err() {
        tracing::warn!("no tokio runtime: {what} is off");
    }
    runtime.ok()
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Node {
    /// Opens the store (reconciling it with the disk) and prepares a node
    /// without peers.
    pub fn open(config: NodeConfig) -> Result<(Self, ReconcileReport), NodeError> {
        let (store, report) = Self::open_store(&config)?;
        Ok((Self::new(config, store, None)?, report))
    }

    /// Opens (creating if needed) the node's store, reconciling it with the
    /// disk. A swarm serves from it, so it is opened first: store, swarm,
    /// then [`Node::new`].
    pub fn open_store(config: &NodeConfig) -> Result<(Arc<Store>, ReconcileReport), NodeError> {
        let (store, report) = Store::open(&config.data_dir, config.cache_size).map_err(|e| {
            NodeError::Internal(format!(
                "opening the store in {}: {e}",
                config.data_dir.display()
            ))
        })?;
        Ok((Arc::new(store), report))
    }

    /// A node over an open store; with a swarm, blobs are looked for on
    /// peers before upstream, and announced once stored.
    pub fn new(
        config: NodeConfig,
        store: Arc<Store>,
        swarm: Option<SwarmHandle>,
    ) -> Result<Self, NodeError> {
        let upstream = Upstream::new(config.upstream.clone())
            .map_err(|e| NodeError::Internal(e.to_string()))?;
        let pages = pages::PageState::new(config.page_memory, config.negative_ttl);
        let (stored_tx, stored_rx) = replication::watch_stored(&config.replication, &swarm);
        let blobs = blobs::Blobs::new(
            store,
            swarm,
            upstream,
            blobs::FetchSettings::from(&config),
            stored_tx,
        );
        let signer = config
            .signer
            .clone()
            .map(|s| signing::PageSigner::start(s, Arc::downgrade(&blobs)))
            .transpose()?;
        let trust = config
            .trust
            .clone()
            .map(|t| trust::PageTrust::open(t, &config.data_dir, config.page_ttl, blobs.clone()))
            .transpose()?;
        let node = Self {
            inner: Arc::new(Inner {
                config,
                blobs,
                pages,
                signer,
                trust,
                signed_pages: Mutex::new(HashMap::new()),
            }),
        };
        scrub::start(&node.inner.blobs, node.inner.config.scrub);
        replication::start(&node, stored_rx);
        status::start_sampler(&node.inner.blobs);
        Ok(node)
    }

    pub fn config(&self) -> &NodeConfig {
        &self.inner.config
    }

    pub fn store(&self) -> &Store {
        &self.inner.blobs.store
    }

    pub fn swarm(&self) -> Option<&SwarmHandle> {
        self.inner.blobs.swarm.as_ref()
    }

    /// The blob path.
    pub(crate) fn blobs(&self) -> &Arc<blobs::Blobs> {
        &self.inner.blobs
    }

    pub(crate) fn downgrade(&self) -> WeakNode {
        WeakNode(Arc::downgrade(&self.inner))
    }

    /// Where the blob with this digest can be fetched from, from a page seen earlier.
    pub fn origin(&self, digest: &Sha256Digest) -> Result<Option<Origin>, NodeError> {
        self.inner.blobs.origin(digest)
    }

    /// The blob with `digest`: from the store, or joined to / starting its
    /// download. Fails when it is unknown or no source could start sending.
    pub async fn blob(&self, digest: &Sha256Digest) -> Result<BlobBody, NodeError> {
        self.inner.blobs.blob(digest).await
    }

    /// The blob once it is verified and stored: waits for its download (if
    /// one runs) to end.
    pub async fn verified_blob(&self, digest: &Sha256Digest) -> Result<OpenedBlob, NodeError> {
        self.inner.blobs.verified_blob(digest).await
    }

    /// The TUF repository this node signs into, on a signer node.
    pub fn tuf_repo(&self) -> Option<&std::path::Path> {
        self.inner.signer.as_deref().map(signing::PageSigner::repo)
    }

    pub fn metrics(&self) -> &metrics::Metrics {
        &self.inner.blobs.metrics
    }

    /// The status page (HTML).
    pub fn status_page(&self) -> String {
        status::render(self)
    }

    /// The HTTP front: Simple API, files, `/metrics`, `/healthz`.
    pub fn router(&self) -> axum::Router {
        http::router(self.clone())
    }

    /// Writes the catalog to disk; call on shutdown.
    pub fn flush(&self) -> Result<(), NodeError> {
        self.inner
            .blobs
            .store
            .flush()
            .map_err(|e| NodeError::Internal(format!("flushing the catalog: {e}")))
    }
}
