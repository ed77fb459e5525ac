//! A signer node's half of TUF: the canonical bytes of every project page
//! this node fetches from upstream (the PEP 691 JSON it serves) are queued,
//! and on a cadence signed into the node's TUF repository as the target
//! `simple/<name>/index.json`; the repository is served at `/tuf/`. Only the
//! online key is on the node: root and targets keys stay offline.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use peerpi_trust::keys::SigningKey;
use peerpi_trust::signer::{Keys, Lifetimes, NewTarget, Repository};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::blobs::Blobs;
use crate::{lock, NodeError};

/// Pages waiting to be signed, at most; more are dropped (and signed the
/// next time they are fetched).
const MAX_PENDING: usize = 65_536;
/// Last signed digest per project, at most; when full it is cleared, which
/// costs one redundant signature per project.
const MAX_REMEMBERED: usize = 262_144;
/// Every this many batches, roles near expiry are re-signed and the
/// repository is pruned.
const RESIGN_EVERY: u32 = 60;
/// Superseded metadata and unlisted page files are kept this long: a node
/// asks for the snapshot, bins and pages a timestamp names within seconds
/// of fetching it (and a page also comes from peers, by digest).
const PRUNE_AFTER: Duration = Duration::from_secs(3600);
/// Urgent pages (projects new to the signer, asked for by someone waiting)
/// are signed at once, but at most once per this gap, so that a burst of
/// cold requests makes a few batches, not one snapshot per page.
const URGENT_GAP: Duration = Duration::from_secs(1);

/// Where the repository is and how often to sign.
#[derive(Debug, Clone)]
pub struct SignerConfig {
    /// A repository made by `peerpi tuf init`.
    pub repo: PathBuf,
    /// The repository's online key (timestamp, snapshot, bins).
    pub online_key: PathBuf,
    /// How often queued pages are signed.
    pub interval: Duration,
}

impl SignerConfig {
    /// How often queued pages are signed unless told otherwise.
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);

    pub fn new(repo: PathBuf, online_key: PathBuf) -> Self {
        Self {
            repo,
            online_key,
            interval: Self::DEFAULT_INTERVAL,
        }
    }
}

/// The TUF target path of a project's page.
pub fn page_target(project: &str) -> String {
    format!("simple/{project}/index.json")
}

pub(crate) struct PageSigner {
    config: SignerConfig,
    /// The online key, read once at start.
    keys: Keys,
    pending: Mutex<HashMap<String, Vec<u8>>>,
    signed: Mutex<HashMap<String, [u8; 32]>>,
    /// Wakes the signing loop before its next tick.
    urgent: tokio::sync::Notify,
    /// The blob path, which keeps and announces each new snapshot (weak:
    /// the signing loop outlives no node).
    blobs: Weak<Blobs>,
}

impl PageSigner {
    /// Checks the repository and the key, then signs on a cadence for as
    /// long as the runtime runs.
    pub(crate) fn start(config: SignerConfig, blobs: Weak<Blobs>) -> Result<Arc<Self>, NodeError> {
        let signer_error = |e: peerpi_trust::TrustError| {
            NodeError::Internal(format!("the TUF signer cannot start: {e}"))
        };
        Repository::open(&config.repo).map_err(signer_error)?;
        let keys = Keys {
            online: Some(SigningKey::load(&config.online_key).map_err(signer_error)?),
            ..Keys::default()
        };
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| NodeError::Internal("the TUF signer needs a tokio runtime".into()))?;
        let signer = Arc::new(PageSigner {
            config,
            keys,
            pending: Mutex::new(HashMap::new()),
            signed: Mutex::new(HashMap::new()),
            urgent: tokio::sync::Notify::new(),
            blobs,
        });
        runtime.spawn(signer.clone().run());
        info!(repo = %signer.config.repo.display(), interval = ?signer.config.interval, "TUF signer on: pages are signed and served at /tuf/");
        Ok(signer)
    }

    pub(crate) fn repo(&self) -> &Path {
        &self.config.repo
    }

    /// Queues `project`'s canonical page bytes (unless they are what was
    /// signed last). `urgent`: someone is waiting for this page's first
    /// signature (a cold project); it is signed within `URGENT_GAP`, not at
    /// the next tick.
    pub(crate) fn queue(&self, project: &str, canonical: Vec<u8>, urgent: bool) {
        let digest: [u8; 32] = Sha256::digest(&canonical).into();
        if lock(&self.signed).get(project) == Some(&digest) {
            return;
        }
        let mut pending = lock(&self.pending);
        if pending.len() >= MAX_PENDING && !pending.contains_key(project) {
            warn!(
                project,
                "signing queue full; the page is signed when next fetched"
            );
            return;
        }
        pending.insert(project.to_string(), canonical);
        drop(pending);
        if urgent {
            self.urgent.notify_one();
        }
    }

    async fn run(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(self.config.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batches = 0u32;
        let mut last_batch = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = self.urgent.notified() => {
                    tokio::time::sleep_until(last_batch + URGENT_GAP).await;
                }
            }
            last_batch = tokio::time::Instant::now();
            batches = batches.wrapping_add(1);
            let batch = std::mem::take(&mut *lock(&self.pending));
            let resign = batches % RESIGN_EVERY == 0;
            if batch.is_empty() && !resign {
                continue;
            }
            let this = self.clone();
            let outcome = tokio::task::spawn_blocking(move || this.sign(batch, resign)).await;
            match outcome {
                Ok(Ok(None)) => {}
                Ok(Ok(Some(snapshot))) => self.keep_snapshot(snapshot).await,
                Ok(Err(e)) => {
                    warn!(error = %e, "signing failed; the pages are signed when next fetched")
                }
                Err(e) => warn!(error = %e, "the signing task failed"),
            }
        }
    }

    /// Keeps the snapshot just published as a blob, announced, so that
    /// nodes fetch it (named by its hash in the timestamp) from peers
    /// rather than all from this node.
    async fn keep_snapshot(&self, version: u64) {
        let Some(blobs) = self.blobs.upgrade() else {
            return;
        };
        let path =
            Repository::metadata_dir_of(&self.config.repo).join(format!("{version}.snapshot.json"));
        match tokio::fs::read(&path).await {
            Ok(bytes) => {
                blobs.keep_blob(bytes).await;
            }
            Err(e) => warn!(path = %path.display(), error = %e, "cannot read the new snapshot"),
        }
    }

    /// Signs a batch; the version of the snapshot it published, if any.
    fn sign(
        &self,
        batch: HashMap<String, Vec<u8>>,
        resign: bool,
    ) -> Result<Option<u64>, NodeError> {
        let fail = |e: peerpi_trust::TrustError| NodeError::Internal(e.to_string());
        let keys = &self.keys;
        let repo = Repository::open(&self.config.repo).map_err(fail)?;
        let mut targets = Vec::with_capacity(batch.len());
        for (project, bytes) in &batch {
            let sha256: [u8; 32] = Sha256::digest(bytes).into();
            let file = repo
                .targets_dir()
                .join("simple")
                .join(project)
                .join(format!("{}.index.json", hex::encode(sha256)));
            peerpi_trust::datastore::write_atomically(&file, bytes).map_err(fail)?;
            targets.push(NewTarget {
                path: page_target(project),
                length: bytes.len() as u64,
                sha256,
            });
        }
        let mut snapshot = None;
        if !targets.is_empty() {
            let changes = repo
                .add(&targets, keys, Lifetimes::default())
                .map_err(fail)?;
            info!(pages = targets.len(), bins = changes.bins_signed, snapshot = ?changes.snapshot_version, "signed pages");
            snapshot = changes.snapshot_version;
            let mut signed = lock(&self.signed);
            if signed.len() + targets.len() > MAX_REMEMBERED {
                signed.clear();
            }
            for (project, target) in batch.keys().zip(&targets) {
                signed.insert(project.clone(), target.sha256);
            }
        }
        if resign {
            let (changes, _) = repo.sign(keys, Lifetimes::default()).map_err(fail)?;
            if changes.timestamp_version.is_some() {
                info!(?changes, "re-signed roles near expiry");
            }
            snapshot = changes.snapshot_version.or(snapshot);
            match repo.prune(PRUNE_AFTER) {
                Ok(pruned) if pruned != Default::default() => {
                    info!(?pruned, "pruned the repository")
                }
                Ok(_) => {}
                Err(e) => warn!(error = %e, "pruning the repository failed"),
            }
        }
        Ok(snapshot)
    }
}
