//! The node's disk: blobs by CID under `blobs/`, written through a hashing
//! temp file and renamed into place only when their digest matches, and a sled
//! catalog beside them (blobs with sizes and access times, cached project
//! pages, and where each digest can be fetched from). Eviction keeps the blobs
//! under a size cap, least recently used first; opening the store removes
//! leftover temp files and reconciles the catalog with the disk.

mod catalog;
mod read;
mod writer;

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

#[cfg(test)]
use peerpi_core::ProjectPage;
use peerpi_core::Sha256Digest;
use sha2::{Digest, Sha256};
use tracing::{debug, info, warn};

pub use catalog::{BlobRecord, CachedPage, Origin};
pub use read::{read_exact_at, read_range, READ_CHUNK};
pub use writer::BlobWriter;

/// How long an access time may lag in the catalog; bounds catalog writes on
/// hot blobs to one per blob per interval.
const ACCESS_PERSIST_INTERVAL_MS: u64 = 60_000;

/// Project pages may take at most this fraction (one in eight) of the
/// cache cap; they count against the cap with the blobs.
pub const PAGE_SHARE: u64 = 8;

/// Free space a download whose size a peer claims may not take.
pub const ROOM_KEPT_FREE: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("catalog database error: {0}")]
    Db(#[from] sled::Error),
    #[error("the catalog is unavailable: {0}")]
    Unavailable(String),
    #[error("catalog record for {key} is unreadable: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("digest mismatch: expected sha256 {expected}, got {actual}")]
    DigestMismatch {
        expected: Sha256Digest,
        actual: Sha256Digest,
    },
    #[error("length mismatch for sha256 {digest}: expected {expected} bytes, got {actual}")]
    LengthMismatch {
        digest: Sha256Digest,
        expected: u64,
        actual: u64,
    },
}

pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> StoreError {
    let context = context.into();
    move |source| StoreError::Io { context, source }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A blob present in the store.
#[derive(Debug, Clone)]
pub struct StoredBlob {
    pub path: PathBuf,
    pub size: u64,
}

/// A blob opened for reading: the handle stays valid even if eviction
/// removes the file afterwards.
#[derive(Debug)]
pub struct OpenedBlob {
    pub file: fs::File,
    pub size: u64,
}

/// What opening the store found and repaired.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReconcileReport {
    pub temp_files_removed: usize,
    pub records_dropped: usize,
    pub orphans_adopted: usize,
    pub orphans_removed: usize,
}

/// What [`Store::set_pinned`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pin {
    Done,
    /// The store does not hold the blob.
    NotStored,
    /// Pinning it would take pins over `limit` bytes (`pinned` now).
    OverLimit {
        limit: u64,
        pinned: u64,
    },
}

/// What [`Store::scrub_blob`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scrub {
    /// The file matches its digest and length.
    Good { bytes: u64 },
    /// It did not (or was missing): removed.
    Corrupt { reason: String },
    /// The store no longer holds it (evicted meanwhile).
    Gone,
}

pub struct Store {
    blobs_dir: PathBuf,
    tmp_dir: PathBuf,
    catalog: catalog::Catalog,
    cap_bytes: u64,
    total_bytes: AtomicU64,
    /// Bytes in temp files of running downloads: they count against the cap.
    in_progress: std::sync::Arc<AtomicU64>,
    /// Bytes of the page records in the catalog: they count against the
    /// cap too, and may take at most `1 / PAGE_SHARE` of it.
    page_bytes: AtomicU64,
    last_persisted_access: Mutex<HashMap<Sha256Digest, u64>>,
    eviction: Mutex<()>,
}

impl Store {
    /// Opens (creating if needed) the store under `root`, capped at `cap_bytes`
    /// of blobs, and reconciles it with what is on disk.
    pub fn open(root: &Path, cap_bytes: u64) -> Result<(Self, ReconcileReport), StoreError> {
        let blobs_dir = root.join("blobs");
        let tmp_dir = root.join("tmp");
        for dir in [&blobs_dir, &tmp_dir] {
            fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
        }
        let catalog_path = root.join("catalog");
        let catalog = match catalog::Catalog::open(&catalog_path) {
            Err(e) if catalog::is_corruption(&e) => {
                // The blobs are named by CID and re-verified when adopted, so
                // the catalog can be rebuilt from them; pages are fetched again.
                let aside = root.join(format!("catalog.corrupt-{}", now_ms()));
                warn!(error = %e, moved_to = %aside.display(), "the catalog is damaged; rebuilding it from the blob files");
                fs::rename(&catalog_path, &aside).map_err(io_err(format!(
                    "moving the damaged catalog aside (remove {} by hand and start again)",
                    catalog_path.display()
                )))?;
                catalog::Catalog::open(&catalog_path)?
            }
            other => other?,
        };
        let store = Self {
            blobs_dir,
            tmp_dir,
            catalog,
            cap_bytes,
            total_bytes: AtomicU64::new(0),
            in_progress: std::sync::Arc::new(AtomicU64::new(0)),
            page_bytes: AtomicU64::new(0),
            last_persisted_access: Mutex::new(HashMap::new()),
            eviction: Mutex::new(()),
        };
        let report = store.reconcile(true)?;
        store
            .page_bytes
            .store(store.catalog.page_bytes()?, Ordering::Relaxed);
        info!(
            blobs = store.catalog.blob_count(),
            bytes = store.total_bytes(),
            ?report,
            "store opened"
        );
        Ok((store, report))
    }

    pub fn cap_bytes(&self) -> u64 {
        self.cap_bytes
    }

    pub fn total_bytes(&self) -> u64 {
        self.total_bytes.load(Ordering::Relaxed)
    }

    /// Bytes written so far by downloads that have not finished.
    pub fn in_progress_bytes(&self) -> u64 {
        self.in_progress.load(Ordering::Relaxed)
    }

    /// Bytes of the project pages in the catalog.
    pub fn page_bytes(&self) -> u64 {
        self.page_bytes.load(Ordering::Relaxed)
    }

    /// The most bytes project pages may take: a share of the cap.
    pub fn page_cap(&self) -> u64 {
        self.cap_bytes / PAGE_SHARE
    }

    /// Stored blobs, running downloads and pages together, as the cap
    /// counts them.
    fn used_bytes(&self) -> u64 {
        self.total_bytes() + self.in_progress_bytes() + self.page_bytes()
    }

    /// Bytes that could be stored without evicting anything.
    pub fn room_under_cap(&self) -> u64 {
        self.cap_bytes.saturating_sub(self.used_bytes())
    }

    /// Whether a download that claims `bytes` could be kept: within the
    /// cache cap, and within the free space of the temp directory less
    /// [`ROOM_KEPT_FREE`]. Asked before the first byte of a transfer whose
    /// size only its sender vouches for, so that a claim cannot fill the disk.
    pub fn room_for(&self, bytes: u64) -> Result<(), String> {
        if bytes > self.cap_bytes {
            return Err(format!(
                "{bytes} bytes would not fit the {}-byte cache cap",
                self.cap_bytes
            ));
        }
        let free = fs2::available_space(&self.tmp_dir)
            .map_err(|e| format!("cannot tell the free space of the store: {e}"))?;
        if bytes.saturating_add(ROOM_KEPT_FREE) > free {
            return Err(format!(
                "{bytes} bytes would not fit the {free} bytes free on the store's disk"
            ));
        }
        Ok(())
    }

    pub fn blob_count(&self) -> usize {
        self.catalog.blob_count()
    }

    /// The blob's path: `blobs/<last two CID chars>/<CID>` (the CID's leading
    /// characters are the same for every blob, its tail spreads evenly).
    pub fn blob_path(&self, digest: &Sha256Digest) -> PathBuf {
        let cid = digest.cid().to_string();
        let shard = &cid[cid.len() - 2..];
        self.blobs_dir.join(shard).join(cid)
    }

    /// The blob if the store holds it; records the access for eviction.
    pub fn get(&self, digest: &Sha256Digest) -> Result<Option<StoredBlob>, StoreError> {
        self.reconcile_if_reopened();
        let Some(record) = self.catalog.blob(digest)? else {
            return Ok(None);
        };
        // An access time that cannot be written (a full disk) must not stop
        // the blob from being served.
        if let Err(e) = self.touch(digest, record) {
            tracing::debug!(%digest, "access time not recorded: {e}");
        }
        Ok(Some(StoredBlob {
            path: self.blob_path(digest),
            size: record.size,
        }))
    }

    /// The blob opened for reading, if the store holds it. A record whose
    /// file is gone (evicted a moment ago, or removed by hand) counts as
    /// absent, so the caller fetches the blob again instead of failing.
    pub fn open_blob(&self, digest: &Sha256Digest) -> Result<Option<OpenedBlob>, StoreError> {
        let Some(blob) = self.get(digest)? else {
            return Ok(None);
        };
        match fs::File::open(&blob.path) {
            Ok(file) => Ok(Some(OpenedBlob {
                file,
                size: blob.size,
            })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                warn!(%digest, "catalog record without its file; dropping the record");
                if self.catalog.remove_blob(digest)?.is_some() {
                    self.total_bytes.fetch_sub(blob.size, Ordering::Relaxed);
                }
                Ok(None)
            }
            Err(e) => Err(io_err(format!("opening {}", blob.path.display()))(e)),
        }
    }

    fn touch(&self, digest: &Sha256Digest, record: BlobRecord) -> Result<(), StoreError> {
        let now = now_ms();
        let mut persisted = lock(&self.last_persisted_access);
        let last = persisted
            .get(digest)
            .copied()
            .unwrap_or(record.last_access_ms);
        if now.saturating_sub(last) >= ACCESS_PERSIST_INTERVAL_MS {
            persisted.insert(*digest, now);
            drop(persisted);
            // Conditional: eviction may have removed the record since `get`
            // read it, and an unconditional write would bring back a record
            // without a file.
            if !self.catalog.touch_blob(digest, &record, now)? {
                lock(&self.last_persisted_access).remove(digest);
            }
        }
        Ok(())
    }

    /// A new temp file in the store's temp directory, hashing what is written.
    /// Whether the disk under the store has room for `bytes` more now
    /// (what the file system says is free, beside the cache cap that
    /// eviction keeps): a download the disk cannot hold is refused before
    /// it starts rather than cut short.
    pub fn disk_room_for(&self, bytes: u64) -> Result<(), StoreError> {
        let free = fs2::available_space(&self.tmp_dir).map_err(|e| StoreError::Io {
            context: format!("free space of {}", self.tmp_dir.display()),
            source: e,
        })?;
        if free < bytes {
            return Err(StoreError::Io {
                context: format!(
                    "{} has {free} bytes free, {bytes} needed",
                    self.tmp_dir.display()
                ),
                source: io::Error::from(io::ErrorKind::StorageFull),
            });
        }
        Ok(())
    }

    pub fn writer(&self) -> Result<BlobWriter, StoreError> {
        BlobWriter::new(&self.tmp_dir, self.in_progress.clone())
    }

    /// Moves a verified writer's file into place and records it. Fails, and
    /// removes the temp file, unless its sha256 is `expected` (and its length
    /// `expected_len`, when given). Returns the digests evicted to make room.
    pub fn commit(
        &self,
        writer: BlobWriter,
        expected: &Sha256Digest,
        expected_len: Option<u64>,
    ) -> Result<Vec<Sha256Digest>, StoreError> {
        self.reconcile_if_reopened();
        let (temp, actual, len) = writer.finish()?;
        if actual != *expected {
            return Err(StoreError::DigestMismatch {
                expected: *expected,
                actual,
            });
        }
        if let Some(expected_len) = expected_len.filter(|&l| l != len) {
            return Err(StoreError::LengthMismatch {
                digest: *expected,
                expected: expected_len,
                actual: len,
            });
        }
        temp.as_file()
            .sync_all()
            .map_err(io_err("syncing a verified blob"))?;
        let path = self.blob_path(expected);
        let shard_dir = path.parent().unwrap_or(&self.blobs_dir).to_path_buf();
        fs::create_dir_all(&shard_dir)
            .map_err(io_err(format!("creating {}", shard_dir.display())))?;
        temp.persist(&path).map_err(|e| StoreError::Io {
            context: format!("renaming a verified blob to {}", path.display()),
            source: e.error,
        })?;
        sync_dir(&shard_dir)?;
        let previous = self.catalog.put_blob(
            expected,
            &BlobRecord {
                size: len,
                last_access_ms: now_ms(),
                pinned: false,
            },
        )?;
        if previous.is_some_and(|p| p.pinned) {
            // The same bytes again (two downloads raced): stay pinned.
            self.catalog.put_blob(
                expected,
                &BlobRecord {
                    size: len,
                    last_access_ms: now_ms(),
                    pinned: true,
                },
            )?;
        }
        if previous.is_none() {
            self.total_bytes.fetch_add(len, Ordering::Relaxed);
        }
        self.evict_to_cap(Some(expected))
    }

    /// Removes least recently used blobs until the store, running downloads
    /// included, is within its cap. `keep` is never evicted (the blob just
    /// committed).
    pub fn evict_to_cap(
        &self,
        keep: Option<&Sha256Digest>,
    ) -> Result<Vec<Sha256Digest>, StoreError> {
        if self.used_bytes() <= self.cap_bytes {
            return Ok(Vec::new());
        }
        let _guard = lock(&self.eviction);
        let mut candidates = self.catalog.blobs()?;
        candidates.retain(|(_, record)| !record.pinned);
        candidates.sort_by_key(|(digest, record)| (record.last_access_ms, *digest));
        let mut evicted = Vec::new();
        for (digest, record) in candidates {
            if self.used_bytes() <= self.cap_bytes {
                break;
            }
            if Some(&digest) == keep {
                continue;
            }
            self.remove(&digest, record.size)?;
            evicted.push(digest);
        }
        if !evicted.is_empty() {
            info!(
                count = evicted.len(),
                total = self.total_bytes(),
                cap = self.cap_bytes,
                "evicted blobs"
            );
        }
        Ok(evicted)
    }

    fn remove(&self, digest: &Sha256Digest, size: u64) -> Result<(), StoreError> {
        // Catalog first: a crash in between leaves an orphan file, which the
        // next open re-verifies, never a record without a file.
        if self.catalog.remove_blob(digest)?.is_some() {
            self.total_bytes.fetch_sub(size, Ordering::Relaxed);
        }
        lock(&self.last_persisted_access).remove(digest);
        let path = self.blob_path(digest);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(format!("removing {}", path.display()))(e)),
        }
    }

    /// Pins or unpins a stored blob: a pinned blob is never evicted. Pins
    /// may take at most half the cap, so that eviction always has room to
    /// work with.
    pub fn set_pinned(&self, digest: &Sha256Digest, pinned: bool) -> Result<Pin, StoreError> {
        let Some(record) = self.catalog.blob(digest)? else {
            return Ok(Pin::NotStored);
        };
        if pinned && !record.pinned {
            let limit = self.cap_bytes / 2;
            let already = self.pinned_bytes()?;
            if already + record.size > limit {
                return Ok(Pin::OverLimit {
                    limit,
                    pinned: already,
                });
            }
        }
        self.catalog
            .put_blob(digest, &BlobRecord { pinned, ..record })?;
        Ok(Pin::Done)
    }

    /// Bytes of pinned blobs.
    pub fn pinned_bytes(&self) -> Result<u64, StoreError> {
        Ok(self
            .catalog
            .blobs()?
            .iter()
            .filter(|(_, r)| r.pinned)
            .map(|(_, r)| r.size)
            .sum())
    }

    /// Re-hashes a stored blob's file against its digest and recorded
    /// length (bit rot, a disk error, a hand edit). A bad or missing file is
    /// removed with its record, so the blob is fetched and verified again on
    /// its next request. Does not count as an access for eviction.
    pub fn scrub_blob(&self, digest: &Sha256Digest) -> Result<Scrub, StoreError> {
        let Some(record) = self.catalog.blob(digest)? else {
            return Ok(Scrub::Gone);
        };
        let path = self.blob_path(digest);
        let outcome = match hash_file(&path) {
            Ok((actual, len)) if actual == *digest && len == record.size => {
                return Ok(Scrub::Good { bytes: len })
            }
            Ok((actual, len)) => Scrub::Corrupt {
                reason: if len == record.size {
                    format!("its bytes hash to sha256 {actual}")
                } else {
                    format!("{len} bytes on disk, {} recorded", record.size)
                },
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => Scrub::Corrupt {
                reason: "its file is missing".into(),
            },
            Err(e) => return Err(io_err(format!("reading {}", path.display()))(e)),
        };
        warn!(%digest, ?outcome, "scrub: removing a damaged blob");
        self.remove(digest, record.size)?;
        Ok(outcome)
    }

    /// Every digest the store holds.
    pub fn digests(&self) -> Result<Vec<Sha256Digest>, StoreError> {
        Ok(self.catalog.blobs()?.into_iter().map(|(d, _)| d).collect())
    }

    pub fn page(&self, project: &str) -> Result<Option<CachedPage>, StoreError> {
        self.catalog.page(project)
    }

    /// Stores a page; when the pages outgrow their share of the cap, those
    /// stored longest ago are removed (they are fetched again when asked
    /// for).
    pub fn put_page(&self, project: &str, page: &CachedPage) -> Result<(), StoreError> {
        let (old, new) = self.catalog.put_page(project, page)?;
        self.page_bytes.fetch_add(new, Ordering::Relaxed);
        self.page_bytes
            .fetch_sub(old.min(self.page_bytes()), Ordering::Relaxed);
        if self.page_bytes() > self.page_cap() {
            let target = self.page_cap() / 10 * 9;
            for oldest in self.catalog.oldest_pages()? {
                if self.page_bytes() <= target {
                    break;
                }
                if oldest == project {
                    continue;
                }
                let freed = self.catalog.remove_page(&oldest)?;
                self.page_bytes
                    .fetch_sub(freed.min(self.page_bytes()), Ordering::Relaxed);
                debug!(project = %oldest, freed, "page removed: the pages outgrew their share of the cache");
            }
        }
        Ok(())
    }

    pub fn projects(&self) -> Result<Vec<String>, StoreError> {
        self.catalog.projects()
    }

    pub fn origin(&self, digest: &Sha256Digest) -> Result<Option<Origin>, StoreError> {
        self.catalog.origin(digest)
    }

    pub fn put_origins(&self, origins: &[(Sha256Digest, Origin)]) -> Result<(), StoreError> {
        self.catalog.put_origins(origins)
    }

    /// Writes the catalog to disk (sled also does so on its own every 500 ms).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.catalog.flush()
    }

    /// Why the store cannot record new blobs or pages now, if it cannot
    /// (what it holds is still served).
    pub fn degraded(&self) -> Option<String> {
        self.catalog.recover_if_room();
        self.reconcile_if_reopened();
        self.catalog.degraded()
    }

    /// After the catalog was reopened (it lost what it had not flushed),
    /// records and files are matched up again.
    fn reconcile_if_reopened(&self) {
        if self.catalog.take_reopened() {
            match self.reconcile(false) {
                Ok(report) => info!(?report, "store reconciled after the catalog reopened"),
                Err(e) => warn!("reconciling after the catalog reopened: {e}"),
            }
        }
    }

    /// Matches the catalog with the files. At start (`at_start`), leftover
    /// temp files are removed too; later they belong to running downloads.
    fn reconcile(&self, at_start: bool) -> Result<ReconcileReport, StoreError> {
        let mut report = ReconcileReport::default();
        // 1. Temp files are downloads that never finished: never trusted.
        let temp_files =
            fs::read_dir(&self.tmp_dir).map_err(io_err("listing the temp directory"))?;
        for entry in temp_files.filter(|_| at_start) {
            let entry = entry.map_err(io_err("listing the temp directory"))?;
            if fs::remove_file(entry.path()).is_ok() {
                report.temp_files_removed += 1;
            }
        }
        // 2. Records whose file is gone or has the wrong size are dropped.
        let mut total = 0u64;
        for (digest, record) in self.catalog.blobs()? {
            match fs::metadata(self.blob_path(&digest)) {
                Ok(meta) if meta.len() == record.size => total += record.size,
                _ => {
                    warn!(%digest, "catalog record without a matching file; dropping it");
                    self.catalog.remove_blob(&digest)?;
                    report.records_dropped += 1;
                }
            }
        }
        // 3. Files without a record (a crash between rename and catalog write)
        //    are re-hashed: adopted if the content matches its name, else removed.
        for shard in fs::read_dir(&self.blobs_dir).map_err(io_err("listing blobs"))? {
            let shard = shard.map_err(io_err("listing blobs"))?.path();
            if !shard.is_dir() {
                continue;
            }
            for entry in fs::read_dir(&shard).map_err(io_err("listing a blob shard"))? {
                let path = entry.map_err(io_err("listing a blob shard"))?.path();
                let named = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(digest_from_cid_name);
                let known = match named {
                    Some(d) => self.catalog.blob(&d)?.is_some() && self.blob_path(&d) == path,
                    None => false,
                };
                if known {
                    continue;
                }
                match named.map(|d| (d, hash_file(&path))) {
                    Some((digest, Ok((actual, len))))
                        if actual == digest && self.blob_path(&digest) == path =>
                    {
                        self.catalog.put_blob(
                            &digest,
                            &BlobRecord {
                                size: len,
                                last_access_ms: now_ms(),
                                pinned: false,
                            },
                        )?;
                        total += len;
                        report.orphans_adopted += 1;
                    }
                    _ => {
                        warn!(path = %path.display(), "unrecorded file in the blob directory does not match its name; removing it");
                        let _ = fs::remove_file(&path);
                        report.orphans_removed += 1;
                    }
                }
            }
        }
        self.total_bytes.store(total, Ordering::Relaxed);
        self.catalog.flush()?;
        Ok(report)
    }
}

fn digest_from_cid_name(name: &str) -> Option<Sha256Digest> {
    let cid: peerpi_core::digest::Cid = name.parse().ok()?;
    let bytes: [u8; 32] = cid.hash().digest().try_into().ok()?;
    let digest = Sha256Digest::from_bytes(bytes);
    (digest.cid() == cid).then_some(digest)
}

fn hash_file(path: &Path) -> io::Result<(Sha256Digest, u64)> {
    let mut file = fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let len = io::copy(&mut file, &mut hasher)?;
    Ok((Sha256Digest::from_bytes(hasher.finalize().into()), len))
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(format!("syncing directory {}", dir.display())))
}

#[cfg(test)]
mod tests;
