//! Project pages: served from memory or the catalog while fresh, revalidated
//! upstream with the stored ETag after the TTL, served stale when upstream
//! fails, remembered as missing for a short time after a 404. Concurrent
//! misses for one project share one upstream request. Pages are rewritten so
//! that every file URL points at this node by digest, and each rendered form
//! (JSON, HTML, gzip or not) is kept with its strong ETag.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt, Shared};
use peerpi_core::filename::check_safe_filename;
use peerpi_core::{CoreMetadata, DistFilename, PageFormat, ProjectName, ProjectPage, Sha256Digest};
use peerpi_store::{CachedPage, Origin};
use peerpi_trust::TargetInfo;
use peerpi_upstream::PageFetch;

use crate::trust::{PageTrust, TrustMode};

/// The ETag a node records for a page it verified under TUF: the signed
/// digest, so that a refresh that finds the same digest is a revalidation.
const TUF_ETAG: &str = "tuf:";
use sha2::{Digest, Sha256};
use tracing::{debug, warn};

use crate::{lock, Node, NodeError};

/// Projects remembered as missing upstream (after a 404) at most; the
/// least recently used are forgotten first.
const MAX_NEGATIVE_ENTRIES: u64 = 16_384;

/// The longest a page request waits for a due refresh of the TUF metadata.
const TRUST_REFRESH_WAIT: Duration = Duration::from_secs(2);

/// How the page being served was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// Fresh in the cache.
    Hit,
    /// Fetched from upstream now.
    Miss,
    /// Upstream confirmed the cached page (304).
    Revalidated,
    /// Upstream failed; the last good page is served.
    Stale,
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "hit",
            CacheStatus::Miss => "miss",
            CacheStatus::Revalidated => "revalidated",
            CacheStatus::Stale => "stale",
        }
    }
}

/// One rendered form of a page.
#[derive(Clone)]
pub struct Variant {
    pub body: Bytes,
    pub etag: String,
}

/// A page in memory with its rendered forms.
pub struct PageEntry {
    pub cached: CachedPage,
    variants: Mutex<HashMap<(PageFormat, bool), Variant>>,
    /// Estimated bytes in memory, rendered forms included.
    weight: u32,
}

/// The page served for one request.
#[derive(Clone)]
pub struct PageView {
    pub entry: Arc<PageEntry>,
    pub status: CacheStatus,
    pub stale_reason: Option<String>,
}

type PageFuture = Shared<BoxFuture<'static, Result<PageView, NodeError>>>;

/// Pages in memory (bounded by an estimate of their bytes, least recently
/// used out first; every page is also in the catalog), refreshes in flight,
/// and projects recently found missing upstream (bounded by count).
pub struct PageState {
    entries: moka::sync::Cache<ProjectName, Arc<PageEntry>>,
    inflight: Mutex<HashMap<ProjectName, PageFuture>>,
    negative: moka::sync::Cache<ProjectName, ()>,
}

impl PageState {
    pub fn new(memory_bytes: u64, negative_ttl: Duration) -> Self {
        Self {
            entries: moka::sync::Cache::builder()
                .max_capacity(memory_bytes)
                .weigher(|_, entry: &Arc<PageEntry>| entry.weight)
                .build(),
            inflight: Mutex::new(HashMap::new()),
            negative: moka::sync::Cache::builder()
                .max_capacity(MAX_NEGATIVE_ENTRIES)
                .time_to_live(negative_ttl)
                .build(),
        }
    }
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl PageEntry {
    fn new(cached: CachedPage, variants: HashMap<(PageFormat, bool), Variant>) -> Arc<Self> {
        Arc::new(Self {
            weight: estimated_weight(&cached.page),
            cached,
            variants: Mutex::new(variants),
        })
    }

    /// The page in `format` if it was rendered already.
    pub fn rendered(&self, format: PageFormat, gzip: bool) -> Option<Variant> {
        lock(&self.variants).get(&(format, gzip)).cloned()
    }

    /// The page rendered in `format`, gzipped if asked, with its strong ETag.
    pub fn variant(&self, format: PageFormat, gzip: bool) -> Variant {
        if let Some(v) = self.rendered(format, gzip) {
            return v;
        }
        let view = client_view(&self.cached.page);
        let plain = if format.is_json() {
            peerpi_core::json::render_project_page(&view)
        } else {
            peerpi_core::html::render_project_page(&view)
        };
        let hash = hex::encode(Sha256::digest(&plain));
        let (body, etag) = if gzip {
            (gzip_bytes(&plain), format!("\"{}-gz\"", &hash[..32]))
        } else {
            (plain, format!("\"{}\"", &hash[..32]))
        };
        let variant = Variant {
            body: body.into(),
            etag,
        };
        lock(&self.variants).insert((format, gzip), variant.clone());
        variant
    }
}

/// The bytes a page takes in memory with its (up to four) rendered forms:
/// about three times its listed text, which every form repeats.
fn estimated_weight(page: &ProjectPage) -> u32 {
    let text: usize = page
        .files
        .iter()
        .map(|f| 200 + f.filename.len() * 2 + f.url.len())
        .sum();
    u32::try_from(text.saturating_mul(3)).unwrap_or(u32::MAX)
}

fn gzip_bytes(plain: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(plain.len() / 4),
        flate2::Compression::fast(),
    );
    // Compressing into memory cannot fail.
    let _ = encoder.write_all(plain);
    encoder.finish().unwrap_or_default()
}

/// Percent-encodes everything but unreserved characters and `+`/`!`.
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'!') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The page as clients see it: only files with a sha256 and a safe name,
/// each at `../../files/<sha256>/<filename>` (relative, so a path prefix in
/// front of the node keeps working), with only the sha256 this node verifies,
/// core metadata only where its own sha256 is known, and PEP 700 versions
/// derived from filenames when upstream did not list them. The PEP 792
/// status passes through; a quarantined project lists no files, whatever
/// a cached copy held. PEP 740 `provenance` links are dropped: they point
/// at the index's integrity endpoint, which a client of this node may not
/// reach, and no digest on the page lets the node vouch for what it serves
/// (`specs/http-api.md`).
pub fn client_view(page: &ProjectPage) -> ProjectPage {
    if page.is_quarantined() {
        return ProjectPage {
            name: page.name.clone(),
            files: Vec::new(),
            versions: Some(Vec::new()),
            status: page.status.clone(),
        };
    }
    let mut files = Vec::with_capacity(page.files.len());
    for f in &page.files {
        let Some(sha) = f.sha256() else {
            debug!(file = %f.filename, "no sha256 upstream; not offered (it could not be verified)");
            continue;
        };
        if check_safe_filename(&f.filename).is_err() {
            warn!(file = %f.filename.escape_default(), "unsafe filename upstream; not offered");
            continue;
        }
        let mut file = f.clone();
        file.provenance = None;
        file.url = format!("../../files/{sha}/{}", encode_segment(&f.filename));
        file.hashes = [("sha256".to_string(), sha.to_hex())].into();
        file.core_metadata = match f.core_metadata.sha256() {
            Some(m) => CoreMetadata::Available {
                hashes: [("sha256".to_string(), m.to_hex())].into(),
            },
            None => CoreMetadata::Absent,
        };
        files.push(file);
    }
    let versions = page.versions.clone().or_else(|| {
        // A set beside the list: a linear `contains` per file made a page
        // of 400k files take quadratic time.
        let mut seen = std::collections::HashSet::new();
        let mut versions: Vec<String> = Vec::new();
        for f in &files {
            if let Ok(parsed) = DistFilename::parse(&f.filename) {
                if seen.insert(parsed.version.clone()) {
                    versions.push(parsed.version);
                }
            }
        }
        Some(versions)
    });
    ProjectPage {
        name: page.name.clone(),
        files,
        versions,
        status: page.status.clone(),
    }
}

/// Where each verifiable file (and its metadata file) can be fetched.
fn origins(page: &ProjectPage) -> Vec<(Sha256Digest, Origin)> {
    let mut out = Vec::with_capacity(page.files.len() * 2);
    for f in &page.files {
        let Some(sha) = f.sha256() else { continue };
        let metadata = f.core_metadata.sha256();
        if let Some(m) = metadata {
            out.push((
                m,
                Origin {
                    url: format!("{}.metadata", f.url),
                    filename: format!("{}.metadata", f.filename),
                    size: None,
                    metadata: None,
                },
            ));
        }
        out.push((
            sha,
            Origin {
                url: f.url.clone(),
                filename: f.filename.clone(),
                size: f.size,
                metadata,
            },
        ));
    }
    out
}

/// A digest of the page's content, hashed as it is serialised: a page of
/// hundreds of thousands of files is not copied into one more buffer.
fn content_id(page: &ProjectPage) -> String {
    struct Hashing(Sha256);
    impl Write for Hashing {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.update(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut hashing = Hashing(Sha256::new());
    // Serialising plain data into a hasher cannot fail.
    let _ = serde_json::to_writer(&mut hashing, page);
    hex::encode(&hashing.0.finalize()[..16])
}

impl Node {
    /// The project's page, from cache or upstream (see the module doc).
    pub async fn project_page(&self, name: &ProjectName) -> Result<PageView, NodeError> {
        let pages = &self.inner.pages;
        if pages.negative.contains_key(name) {
            return Err(not_found(name));
        }
        // Read the catalog only when memory has no entry: no lock is held here
        // (a guard alive across `remember` deadlocked a node after restarts).
        let entry = match pages.entries.get(name) {
            Some(e) => Some(e),
            None => match self.inner.blobs.store.page(name.as_str())? {
                Some(cached) => {
                    let e = PageEntry::new(cached, HashMap::new());
                    self.remember(name, e.clone());
                    Some(e)
                }
                None => None,
            },
        };
        if let Some(entry) = &entry {
            let age_ms = now_ms().saturating_sub(entry.cached.fetched_at_ms);
            if u128::from(age_ms) < self.inner.config.page_ttl.as_millis() {
                if let Some(trust) = &self.inner.trust {
                    if trust.config().mode != TrustMode::TufOrIndex {
                        if let Err(e) = self.trust_current(trust).await {
                            self.inner.blobs.metrics.tuf_page_refused("unverifiable");
                            return Err(NodeError::Unavailable(trust.refusal(name.as_str(), &e)));
                        }
                    }
                }
                return Ok(PageView {
                    entry: entry.clone(),
                    status: CacheStatus::Hit,
                    stale_reason: None,
                });
            }
        }
        let future = lock(&pages.inflight)
            .entry(name.clone())
            .or_insert_with(|| {
                // A spawned task: the refresh completes (and stores its page)
                // even when every client that asked has gone away.
                let task = tokio::spawn(self.clone().refresh(name.clone(), entry));
                async move {
                    task.await.unwrap_or_else(|e| {
                        Err(NodeError::Internal(format!(
                            "page refresh task failed: {e}"
                        )))
                    })
                }
                .boxed()
                .shared()
            })
            .clone();
        future.await
    }

    /// Whether the trusted metadata is unexpired, refreshing it when due;
    /// a refresh runs as its own task and holds a page request at most
    /// `TRUST_REFRESH_WAIT` (a slow or dripping signer cost 30 s on every
    /// request), after which the metadata trusted now decides.
    async fn trust_current(&self, trust: &PageTrust) -> Result<(), peerpi_trust::TrustError> {
        if !trust.refresh_due(None) {
            return trust.current();
        }
        let node = self.clone();
        let refresh = tokio::spawn(async move {
            match &node.inner.trust {
                Some(trust) => trust.ensure_current(&node.inner.blobs.metrics).await,
                None => Ok(()),
            }
        });
        match tokio::time::timeout(TRUST_REFRESH_WAIT, refresh).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) | Err(_) => trust.current(),
        }
    }

    fn remember(&self, name: &ProjectName, entry: Arc<PageEntry>) {
        self.inner.pages.entries.insert(name.clone(), entry);
    }

    async fn refresh(
        self,
        name: ProjectName,
        cached: Option<Arc<PageEntry>>,
    ) -> Result<PageView, NodeError> {
        let etag = cached.as_ref().and_then(|c| c.cached.etag.clone());
        let verified_at_ms = cached.as_ref().map(|c| c.cached.fetched_at_ms);
        let result = match &self.inner.trust {
            None => {
                self.inner
                    .blobs
                    .upstream
                    .fetch_page(&name, etag.as_deref())
                    .await
            }
            Some(trust) => match self
                .fetch_trusted_page(trust, &name, etag.as_deref(), verified_at_ms)
                .await
            {
                Ok(result) => result,
                Err(refused) => {
                    // Not served stale: expired or unverifiable metadata
                    // must not keep old pages alive (freeze attack).
                    lock(&self.inner.pages.inflight).remove(&name);
                    return Err(refused);
                }
            },
        };
        // Hashing, recording and indexing a large page is heavy work: off
        // the runtime threads.
        let node = self.clone();
        let applied = name.clone();
        let view = tokio::task::spawn_blocking(move || node.apply_fetch(&applied, cached, result))
            .await
            .unwrap_or_else(|e| {
                Err(NodeError::Internal(format!(
                    "recording the page failed: {e}"
                )))
            });
        lock(&self.inner.pages.inflight).remove(&name);
        view
    }

    fn apply_fetch(
        &self,
        name: &ProjectName,
        cached: Option<Arc<PageEntry>>,
        result: Result<PageFetch, peerpi_upstream::UpstreamError>,
    ) -> Result<PageView, NodeError> {
        let metrics = &self.inner.blobs.metrics;
        match result {
            Ok(PageFetch::Fresh { page, etag }) => {
                metrics.upstream_request("page", "ok");
                let fresh = CachedPage {
                    content_id: content_id(&page),
                    page,
                    etag,
                    fetched_at_ms: now_ms(),
                };
                // A page is served only once its files' origins are recorded
                // (else its links would lead nowhere); if the store cannot
                // write, the last good page is the better answer.
                let stored = self
                    .inner
                    .blobs
                    .store
                    .put_origins(&origins(&fresh.page))
                    .and_then(|()| self.inner.blobs.store.put_page(name.as_str(), &fresh));
                if let Err(e) = stored {
                    warn!(project = %name, error = %e, "cannot record the fresh page");
                    return match cached {
                        Some(entry) => Ok(PageView {
                            entry,
                            status: CacheStatus::Stale,
                            stale_reason: Some(format!(
                                "the store cannot record the new page: {e}"
                            )),
                        }),
                        None => Err(e.into()),
                    };
                }
                let urgent = cached.is_none();
                let cached = fresh;
                self.queue_for_signing(name, &cached.page, urgent);
                let entry = PageEntry::new(cached, HashMap::new());
                self.remember(name, entry.clone());
                Ok(PageView {
                    entry,
                    status: CacheStatus::Miss,
                    stale_reason: None,
                })
            }
            Ok(PageFetch::NotModified) => {
                metrics.upstream_request("page", "not_modified");
                let Some(old) = cached else {
                    return Err(NodeError::Upstream(format!(
                        "upstream answered 304 for {name} without a cached copy"
                    )));
                };
                let refreshed = CachedPage {
                    fetched_at_ms: now_ms(),
                    ..old.cached.clone()
                };
                if let Err(e) = self.inner.blobs.store.put_page(name.as_str(), &refreshed) {
                    // Served all the same: only the revalidation time is lost.
                    warn!(project = %name, error = %e, "cannot record the revalidation");
                }
                // Pages cached before the signer was turned on are signed
                // on their next revalidation.
                self.queue_for_signing(name, &refreshed.page, false);
                let entry = PageEntry::new(refreshed, lock(&old.variants).clone());
                self.remember(name, entry.clone());
                Ok(PageView {
                    entry,
                    status: CacheStatus::Revalidated,
                    stale_reason: None,
                })
            }
            Ok(PageFetch::NotFound) => {
                metrics.upstream_request("page", "not_found");
                self.inner.pages.negative.insert(name.clone(), ());
                Err(not_found(name))
            }
            Err(e) => {
                metrics.upstream_request("page", "error");
                match cached {
                    Some(entry) => {
                        warn!(project = %name, error = %e, "upstream failed; serving the last good page");
                        Ok(PageView {
                            entry,
                            status: CacheStatus::Stale,
                            stale_reason: Some(e.to_string()),
                        })
                    }
                    None => Err(NodeError::Upstream(format!(
                        "project {name} is not cached and upstream failed: {e}"
                    ))),
                }
            }
        }
    }

    /// The page under TUF (see `trust`): the signed target's bytes, fetched
    /// by digest; in `tuf-or-index` mode the upstream index where TUF has
    /// no answer. `Err` refuses the page outright.
    async fn fetch_trusted_page(
        &self,
        trust: &PageTrust,
        name: &ProjectName,
        etag: Option<&str>,
        verified_at_ms: Option<u64>,
    ) -> Result<Result<PageFetch, peerpi_upstream::UpstreamError>, NodeError> {
        let mode = trust.config().mode;
        let index_etag = etag.filter(|e| !e.starts_with(TUF_ETAG));
        let signer = trust.config().signer_base();
        let metrics = &self.inner.blobs.metrics;
        match trust
            .signed(name.as_str(), verified_at_ms, false, metrics)
            .await
        {
            Ok(Some(info)) if mode == TrustMode::IndexSigned => {
                Ok(self.index_signed_page(name, &info, etag).await)
            }
            Ok(Some(info)) => {
                trust.nudge_signer(name.as_str());
                Ok(self.signed_page(trust, name, &info, etag).await)
            }
            Ok(None) if mode == TrustMode::TufOrIndex => {
                Ok(self.inner.blobs.upstream.fetch_page(name, index_etag).await)
            }
            Err(e) if mode == TrustMode::TufOrIndex => {
                warn!(project = %name, error = %e, "TUF metadata unusable; using the index");
                Ok(self.inner.blobs.upstream.fetch_page(name, index_etag).await)
            }
            Err(e) => {
                metrics.tuf_page_refused("unverifiable");
                Err(NodeError::Unavailable(trust.refusal(name.as_str(), &e)))
            }
            Ok(None) if mode == TrustMode::IndexSigned => {
                metrics.tuf_page_refused("not_signed");
                Err(NodeError::Unavailable(format!(
                    "the index's TUF metadata does not sign {name}: a page it does not vouch \
                     for is not served under --trust index-signed"
                )))
            }
            Ok(None) => {
                if !trust.ask_signer(name.as_str()).await {
                    return Ok(Ok(PageFetch::NotFound));
                }
                let deadline = std::time::Instant::now() + trust.config().wait;
                while std::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    match trust.signed(name.as_str(), None, true, metrics).await {
                        Ok(Some(info)) => {
                            return Ok(self.signed_page(trust, name, &info, etag).await)
                        }
                        Ok(None) => {}
                        Err(e) => {
                            metrics.tuf_page_refused("unverifiable");
                            return Err(NodeError::Unavailable(trust.refusal(name.as_str(), &e)));
                        }
                    }
                }
                metrics.tuf_page_refused("not_signed");
                Err(NodeError::Unavailable(format!(
                    "{name} is not signed yet: the signer at {signer} was asked and did not \
                     sign it within {:?}; retry shortly",
                    trust.config().wait
                )))
            }
        }
    }

    /// The page whose bytes `info` signs, unless it is the cached one.
    async fn signed_page(
        &self,
        trust: &PageTrust,
        name: &ProjectName,
        info: &TargetInfo,
        etag: Option<&str>,
    ) -> Result<PageFetch, peerpi_upstream::UpstreamError> {
        let page_url = trust.page_url(name.as_str());
        let unreachable = |reason: String| peerpi_upstream::UpstreamError::Unreachable {
            url: page_url.to_string(),
            reason,
        };
        // The store is addressed by SHA-256; peerpi's signer always lists it.
        let digest = info.sha256().map(Sha256Digest::from_bytes).ok_or_else(|| {
            unreachable(format!(
                "the signed target {} lists no sha256 (only {}), which this node's store needs",
                info.path,
                info.hashes.algorithms().collect::<Vec<_>>().join(", ")
            ))
        })?;
        let tag = format!("{TUF_ETAG}{}", digest.to_hex());
        if etag == Some(tag.as_str()) {
            return Ok(PageFetch::NotModified);
        }
        let bytes = self
            .signed_page_bytes(trust, name, info, &digest)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let page = peerpi_core::json::parse_project_page(&bytes, &page_url);
        signed_fetch(page, &page_url, tag)
    }

    /// The page the index signed itself (`--trust index-signed`): its HTML
    /// bytes, verified against the signed `blake2b-256` and length, then
    /// parsed.
    async fn index_signed_page(
        &self,
        name: &ProjectName,
        info: &TargetInfo,
        etag: Option<&str>,
    ) -> Result<PageFetch, peerpi_upstream::UpstreamError> {
        let page_url = self.inner.blobs.upstream.page_url(name)?;
        let unreachable = |reason: String| peerpi_upstream::UpstreamError::Unverified {
            url: page_url.to_string(),
            reason,
        };
        let key = crate::index_signed::page_key(info).ok_or_else(|| {
            unreachable(format!(
                "the index's target {} lists no {} (only {})",
                info.path,
                crate::index_signed::PAGE_HASH,
                info.hashes.algorithms().collect::<Vec<_>>().join(", ")
            ))
        })?;
        let tag = format!("{TUF_ETAG}{}", hex::encode(key));
        if etag == Some(tag.as_str()) {
            return Ok(PageFetch::NotModified);
        }
        let bytes = self
            .index_signed_bytes(name, info, key)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let project = name.as_str().to_string();
        let url = page_url.clone();
        let parsed = tokio::task::spawn_blocking(move || {
            peerpi_core::html::parse_project_page(&bytes, &url, &project)
        })
        .await
        .map_err(|e| unreachable(format!("parsing the page failed: {e}")))?;
        signed_fetch(parsed, &page_url, tag)
    }

    /// The signed page's bytes, fetched by digest like any blob (store,
    /// peers, then the signer) and so verified, stored and announced.
    async fn signed_page_bytes(
        &self,
        trust: &PageTrust,
        name: &ProjectName,
        info: &TargetInfo,
        digest: &Sha256Digest,
    ) -> Result<Vec<u8>, NodeError> {
        let url = trust
            .target_url(info)
            .map_err(|e| NodeError::Internal(e.to_string()))?;
        let origin = Origin {
            url: url.to_string(),
            filename: format!("{name}.index.json"),
            size: Some(info.length),
            metadata: None,
        };
        let max = self.inner.config.upstream.max_page_bytes;
        let (bytes, _) = self.inner.blobs.small_blob(digest, origin, max).await?;
        Ok(bytes)
    }

    /// On a signer node, queues the page's canonical bytes (the PEP 691
    /// JSON every node renders from it) for signing.
    /// `urgent` for a project new to this node: whoever asked may be a
    /// `tuf` node waiting for the first signature.
    fn queue_for_signing(&self, name: &ProjectName, page: &ProjectPage, urgent: bool) {
        if let Some(signer) = &self.inner.signer {
            let canonical = peerpi_core::json::render_project_page(&client_view(page));
            tokio::spawn(self.blobs().clone().keep_blob(canonical.clone()));
            signer.queue(name.as_str(), canonical, urgent);
        }
    }

    /// Names of the projects this node has pages for.
    pub fn cached_projects(&self) -> Result<Vec<String>, NodeError> {
        Ok(self.inner.blobs.store.projects()?)
    }
}

fn not_found(name: &ProjectName) -> NodeError {
    NodeError::NotFound(format!("project {name} was not found upstream"))
}

/// A signed page's parse, as a fresh fetch tagged with its signed digest.
fn signed_fetch(
    parsed: Result<ProjectPage, peerpi_core::simple::PageParseError>,
    page_url: &url::Url,
    tag: String,
) -> Result<PageFetch, peerpi_upstream::UpstreamError> {
    let page = parsed.map_err(|source| peerpi_upstream::UpstreamError::BadPage {
        url: page_url.to_string(),
        source,
    })?;
    Ok(PageFetch::Fresh {
        page,
        etag: Some(tag),
    })
}
