//! The sled catalog: one tree per kind of record, values as JSON so that a
//! record's shape can grow without a migration.

use std::path::Path;

use peerpi_core::{ProjectPage, Sha256Digest};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::StoreError;

/// A blob the store holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRecord {
    pub size: u64,
    pub last_access_ms: u64,
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

pub(crate) struct Catalog {
    db: sled::Db,
    blobs: sled::Tree,
    pages: sled::Tree,
    origins: sled::Tree,
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

impl Catalog {
    pub(crate) fn open(path: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new().path(path).open()?;
        Ok(Self {
            blobs: db.open_tree("blobs")?,
            pages: db.open_tree("pages")?,
            origins: db.open_tree("origins")?,
            db,
        })
    }

    pub(crate) fn blob(&self, digest: &Sha256Digest) -> Result<Option<BlobRecord>, StoreError> {
        self.blobs
            .get(digest.as_bytes())?
            .map(|v| decode(digest.to_hex().as_bytes(), &v))
            .transpose()
    }

    pub(crate) fn put_blob(
        &self,
        digest: &Sha256Digest,
        record: &BlobRecord,
    ) -> Result<Option<BlobRecord>, StoreError> {
        self.blobs
            .insert(digest.as_bytes(), encode(record))?
            .map(|v| decode(digest.to_hex().as_bytes(), &v))
            .transpose()
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
        let swapped = self.blobs.compare_and_swap(
            digest.as_bytes(),
            Some(encode(seen)),
            Some(encode(&updated)),
        )?;
        Ok(swapped.is_ok())
    }

    pub(crate) fn remove_blob(
        &self,
        digest: &Sha256Digest,
    ) -> Result<Option<BlobRecord>, StoreError> {
        self.blobs
            .remove(digest.as_bytes())?
            .map(|v| decode(digest.to_hex().as_bytes(), &v))
            .transpose()
    }

    pub(crate) fn blob_count(&self) -> usize {
        self.blobs.len()
    }

    pub(crate) fn blobs(&self) -> Result<Vec<(Sha256Digest, BlobRecord)>, StoreError> {
        let mut out = Vec::with_capacity(self.blobs.len());
        for item in self.blobs.iter() {
            let (k, v) = item?;
            let bytes: [u8; 32] = k.as_ref().try_into().map_err(|_| StoreError::Corrupt {
                key: hex::encode(&k),
                reason: "blob key is not 32 bytes".into(),
            })?;
            out.push((Sha256Digest::from_bytes(bytes), decode(&k, &v)?));
        }
        Ok(out)
    }

    pub(crate) fn page(&self, project: &str) -> Result<Option<CachedPage>, StoreError> {
        self.pages
            .get(project.as_bytes())?
            .map(|v| decode(project.as_bytes(), &v))
            .transpose()
    }

    pub(crate) fn put_page(&self, project: &str, page: &CachedPage) -> Result<(), StoreError> {
        self.pages.insert(project.as_bytes(), encode(page))?;
        Ok(())
    }

    pub(crate) fn projects(&self) -> Result<Vec<String>, StoreError> {
        self.pages
            .iter()
            .keys()
            .map(|k| Ok(String::from_utf8_lossy(&k?).into_owned()))
            .collect()
    }

    pub(crate) fn origin(&self, digest: &Sha256Digest) -> Result<Option<Origin>, StoreError> {
        self.origins
            .get(digest.as_bytes())?
            .map(|v| decode(digest.to_hex().as_bytes(), &v))
            .transpose()
    }

    pub(crate) fn put_origins(&self, origins: &[(Sha256Digest, Origin)]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for (digest, origin) in origins {
            batch.insert(digest.as_bytes(), encode(origin));
        }
        self.origins.apply_batch(batch)?;
        Ok(())
    }

    pub(crate) fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }
}
