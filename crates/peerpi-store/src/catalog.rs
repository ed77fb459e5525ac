//! The sled catalog: one tree per kind of record, values as JSON so that a
//! record's shape can grow without a migration.
//!
//! sled stops accepting writes for good after one I/O error (a full disk,
//! say). The catalog notes that it is degraded, keeps answering reads from
//! the database it has, and once the disk has room again reopens it, so a
//! node recovers without a restart.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use peerpi_core::{ProjectPage, Sha256Digest};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::StoreError;

/// A blob the store holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRecord {
    pub size: u64,
    pub last_access_ms: u64,
    /// Kept from eviction (`peerpi prefetch --pin`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pinned: bool,
}

/// A project page as last fetched from upstream, with its validators.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedPage {
    pub page: ProjectPage,
    pub etag: Option<String>,
    pub fetched_at_ms: u64,
    /// Changes exactly when the page's content does (not on revalidation).
    #[serde(default)]
    pub content_id: String,
}

/// Where the content with a digest can be fetched from upstream, learnt from
/// a project page. For a distribution file, `metadata` names its PEP 658
/// metadata file's digest, which has an origin of its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub url: String,
    pub filename: String,
    pub size: Option<u64>,
    pub metadata: Option<Sha256Digest>,
}

fn decode<T: DeserializeOwned>(key: &[u8], value: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(value).map_err(|e| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: e.to_string(),
    })
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // The record types are plain data with string keys: serialising cannot fail.
    serde_json::to_vec(value).unwrap_or_else(|_| unreachable!("plain records serialise"))
}

/// The open database and its trees.
struct Trees {
    db: sled::Db,
    blobs: sled::Tree,
    pages: sled::Tree,
    /// When each page was last stored (ms since the epoch, big-endian), so
    /// that the oldest go first when the pages outgrow their share.
    page_times: sled::Tree,
    origins: sled::Tree,
}

impl Trees {
    fn open(path: &Path) -> Result<Self, sled::Error> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(CATALOG_CACHE_BYTES)
            .open()?;
        Ok(Self {
            blobs: db.open_tree("blobs")?,
            pages: db.open_tree("pages")?,
            page_times: db.open_tree("page_times")?,
            origins: db.open_tree("origins")?,
            db,
        })
    }
}

/// Why writes fail now, and when recovery was last tried.
#[derive(Default)]
struct Degraded {
    reason: Option<String>,
    last_attempt: Option<Instant>,
}

/// Memory sled may use to cache the catalog's pages (its default is 1 GiB,
/// which a soak run watched it grow towards).
const CATALOG_CACHE_BYTES: u64 = 64 << 20;

/// Free bytes the data directory needs before a degraded catalog reopens.
const ROOM_TO_RECOVER: u64 = 16 << 20;
/// How often a degraded catalog tries to recover, at most.
const RECOVERY_INTERVAL: Duration = Duration::from_secs(1);

pub(crate) struct Catalog {
    path: PathBuf,
    trees: RwLock<Option<Arc<Trees>>>,
    degraded: Mutex<Degraded>,
    /// Mirrors `degraded.reason.is_some()`, so that the healthy path of
    /// every catalog operation costs a load, not a lock.
    is_degraded: std::sync::atomic::AtomicBool,
    /// Set on a reopen: writes since the last flush may be lost, so the
    /// store reconciles with the disk.
    reopened: std::sync::atomic::AtomicBool,
}

/// Whether `e` means the database files are damaged (not in use, not
/// unreadable for permissions).
pub(crate) fn is_corruption(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::Db(
            sled::Error::Corruption { .. }
                | sled::Error::Unsupported(_)
                | sled::Error::ReportableBug(_)
        )
    )
}

fn unavailable(reason: &str) -> StoreError {
    StoreError::Unavailable(reason.to_string())
}

/// Whether opening failed because another process holds the database.
fn is_locked(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock
        || io.to_string().contains("lock"))
}

/// How long an open waits for the database's file lock.
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// Opens the trees, waiting up to `LOCK_WAIT` while the file lock is held:
/// sled releases it only once its background threads let go of a dropped
/// database (a store reopened in the same process, a catalog reopened after
/// a full disk), or once a previous process finished exiting (a quick
/// restart).
fn open_trees(path: &Path) -> Result<Trees, sled::Error> {
    let started = Instant::now();
    loop {
        match Trees::open(path) {
            Err(e) if is_locked(&e) && started.elapsed() < LOCK_WAIT => {
                std::thread::sleep(Duration::from_millis(20));
            }
            opened => return opened,
        }
    }
}

impl Catalog {
    pub(crate) fn open(path: &Path) -> Result<Self, StoreError> {
        let trees = open_trees(path).map_err(|e| {
            if is_locked(&e) {
                StoreError::Unavailable(format!(
                    "the catalog {} is in use by another process (is another peerpi running on this data directory?): {e}",
                    path.display()
                ))
            } else {
                StoreError::Db(e)
            }
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            trees: RwLock::new(Some(Arc::new(trees))),
            degraded: Mutex::new(Degraded::default()),
            is_degraded: std::sync::atomic::AtomicBool::new(false),
            reopened: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// True once after each reopen.
    pub(crate) fn take_reopened(&self) -> bool {
        self.reopened
            .swap(false, std::sync::atomic::Ordering::AcqRel)
    }

    /// Why the catalog cannot record anything now, if it cannot.
    pub(crate) fn degraded(&self) -> Option<String> {
        crate::lock(&self.degraded).reason.clone()
    }

    fn trees(&self) -> Result<Arc<Trees>, StoreError> {
        self.trees
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| {
                unavailable(
                    &self
                        .degraded()
                        .unwrap_or_else(|| "the catalog is being reopened".into()),
                )
            })
    }

    /// Runs a read.
    fn read<T>(&self, op: impl FnOnce(&Trees) -> Result<T, StoreError>) -> Result<T, StoreError> {
        self.recover_if_room();
        op(&*self.trees()?)
    }

    /// Runs a write; a database error marks the catalog degraded.
    fn write<T>(&self, op: impl FnOnce(&Trees) -> Result<T, StoreError>) -> Result<T, StoreError> {
        self.recover_if_room();
        let result = op(&*self.trees()?);
        if let Err(StoreError::Db(e)) = &result {
            let mut degraded = crate::lock(&self.degraded);
            if degraded.reason.is_none() {
                tracing::error!(error = %e, "the catalog cannot write; serving what it holds until the disk has room");
                degraded.reason = Some(format!("the catalog cannot write: {e}"));
                degraded.last_attempt = Some(Instant::now());
                self.is_degraded
                    .store(true, std::sync::atomic::Ordering::Release);
            }
        }
        result
    }

    /// Reopens a degraded catalog once its disk has room again (checked at
    /// most once per `RECOVERY_INTERVAL`). Returns whether it reopened.
    pub(crate) fn recover_if_room(&self) -> bool {
        if !self.is_degraded.load(std::sync::atomic::Ordering::Acquire) {
            return false;
        }
        {
            let mut degraded = crate::lock(&self.degraded);
            if degraded.reason.is_none()
                || degraded
                    .last_attempt
                    .is_some_and(|t| t.elapsed() < RECOVERY_INTERVAL)
            {
                return false;
            }
            degraded.last_attempt = Some(Instant::now());
        }
        let room = fs2::available_space(&self.path).unwrap_or(0);
        if room < ROOM_TO_RECOVER {
            return false;
        }
        let mut slot = self.trees.write().unwrap_or_else(|p| p.into_inner());
        // Ours is dropped here; in-flight readers let go of theirs shortly,
        // and only then does sled release its file lock.
        *slot = None;
        match open_trees(&self.path) {
            Ok(trees) => {
                *slot = Some(Arc::new(trees));
                crate::lock(&self.degraded).reason = None;
                self.is_degraded
                    .store(false, std::sync::atomic::Ordering::Release);
                self.reopened
                    .store(true, std::sync::atomic::Ordering::Release);
                tracing::info!(room, "the catalog is writable again");
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "reopening the catalog failed; will retry");
                crate::lock(&self.degraded).reason =
                    Some(format!("the catalog cannot be reopened: {e}"));
                false
            }
        }
    }

    pub(crate) fn blob(&self, digest: &Sha256Digest) -> Result<Option<BlobRecord>, StoreError> {
        self.read(|t| {
            t.blobs
                .get(digest.as_bytes())?
                .map(|v| decode(digest.to_hex().as_bytes(), &v))
                .transpose()
        })
    }

    pub(crate) fn put_blob(
        &self,
        digest: &Sha256Digest,
        record: &BlobRecord,
    ) -> Result<Option<BlobRecord>, StoreError> {
        self.write(|t| {
            t.blobs
                .insert(digest.as_bytes(), encode(record))?
                .map(|v| decode(digest.to_hex().as_bytes(), &v))
                .transpose()
        })
    }

    /// Records an access to a blob only if its record is still `seen`: a
    /// record that eviction removed (or a commit replaced) in the meantime is
    /// left as it is. Returns whether the access was recorded.
    pub(crate) fn touch_blob(
        &self,
        digest: &Sha256Digest,
        seen: &BlobRecord,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let updated = BlobRecord {
            last_access_ms: now_ms,
            ..*seen
        };
        self.write(|t| {
            let swapped = t.blobs.compare_and_swap(
                digest.as_bytes(),
                Some(encode(seen)),
                Some(encode(&updated)),
            )?;
            Ok(swapped.is_ok())
        })
    }

    pub(crate) fn remove_blob(
        &self,
        digest: &Sha256Digest,
    ) -> Result<Option<BlobRecord>, StoreError> {
        self.write(|t| {
            t.blobs
                .remove(digest.as_bytes())?
                .map(|v| decode(digest.to_hex().as_bytes(), &v))
                .transpose()
        })
    }

    pub(crate) fn blob_count(&self) -> usize {
        self.trees().map_or(0, |t| t.blobs.len())
    }

    pub(crate) fn blobs(&self) -> Result<Vec<(Sha256Digest, BlobRecord)>, StoreError> {
        self.read(|t| {
            let mut out = Vec::with_capacity(t.blobs.len());
            for item in t.blobs.iter() {
                let (k, v) = item?;
                let bytes: [u8; 32] = k.as_ref().try_into().map_err(|_| StoreError::Corrupt {
                    key: hex::encode(&k),
                    reason: "blob key is not 32 bytes".into(),
                })?;
                out.push((Sha256Digest::from_bytes(bytes), decode(&k, &v)?));
            }
            Ok(out)
        })
    }

    pub(crate) fn page(&self, project: &str) -> Result<Option<CachedPage>, StoreError> {
        self.read(|t| {
            t.pages
                .get(project.as_bytes())?
                .map(|v| decode(project.as_bytes(), &v))
                .transpose()
        })
    }

    /// Stores a page; returns the bytes of the record it replaced and of
    /// the new one.
    pub(crate) fn put_page(
        &self,
        project: &str,
        page: &CachedPage,
    ) -> Result<(u64, u64), StoreError> {
        let record = encode(page);
        let new = record.len() as u64;
        self.write(|t| {
            let old = t.pages.insert(project.as_bytes(), record)?;
            t.page_times
                .insert(project.as_bytes(), &page.fetched_at_ms.to_be_bytes())?;
            Ok((old.map_or(0, |o| o.len() as u64), new))
        })
    }

    /// Removes a page; returns the bytes of its record.
    pub(crate) fn remove_page(&self, project: &str) -> Result<u64, StoreError> {
        self.write(|t| {
            t.page_times.remove(project.as_bytes())?;
            Ok(t.pages
                .remove(project.as_bytes())?
                .map_or(0, |o| o.len() as u64))
        })
    }

    /// Bytes of every page record together.
    pub(crate) fn page_bytes(&self) -> Result<u64, StoreError> {
        self.read(|t| {
            let mut total = 0u64;
            for value in t.pages.iter().values() {
                total += value?.len() as u64;
            }
            Ok(total)
        })
    }

    /// Projects whose pages were stored longest ago, oldest first.
    pub(crate) fn oldest_pages(&self) -> Result<Vec<String>, StoreError> {
        self.read(|t| {
            let mut by_time = Vec::new();
            for entry in t.page_times.iter() {
                let (key, value) = entry?;
                let ms = <[u8; 8]>::try_from(value.as_ref()).map_or(0, u64::from_be_bytes);
                by_time.push((ms, String::from_utf8_lossy(&key).into_owned()));
            }
            by_time.sort();
            Ok(by_time.into_iter().map(|(_, project)| project).collect())
        })
    }

    pub(crate) fn projects(&self) -> Result<Vec<String>, StoreError> {
        self.read(|t| {
            t.pages
                .iter()
                .keys()
                .map(|k| Ok(String::from_utf8_lossy(&k?).into_owned()))
                .collect()
        })
    }

    pub(crate) fn origin(&self, digest: &Sha256Digest) -> Result<Option<Origin>, StoreError> {
        self.read(|t| {
            t.origins
                .get(digest.as_bytes())?
                .map(|v| decode(digest.to_hex().as_bytes(), &v))
                .transpose()
        })
    }

    pub(crate) fn put_origins(&self, origins: &[(Sha256Digest, Origin)]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for (digest, origin) in origins {
            batch.insert(digest.as_bytes(), encode(origin));
        }
        self.write(|t| {
            t.origins.apply_batch(batch)?;
            Ok(())
        })
    }

    pub(crate) fn flush(&self) -> Result<(), StoreError> {
        self.write(|t| {
            t.db.flush()?;
            Ok(())
        })
    }
}
