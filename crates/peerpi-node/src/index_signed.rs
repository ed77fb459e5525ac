//! Pages the index signed itself (PEP 458, `--trust index-signed`): the
//! index's TUF metadata lists one target per project, its normalised name,
//! with the length and `blake2b-256` of the project's HTML page. A node
//! serves a page only once its bytes match both. The bytes come from a peer
//! when one holds them, else from the index.
//!
//! Peers find each other's copies by the signed digest: a node that
//! verified a page keeps the bytes as a blob (under their SHA-256, as the
//! store is addressed), announces the `blake2b-256` on the DHT, and hands
//! the SHA-256 to peers that ask for `page/<blake2b-256 hex>` on
//! `/peerpi/latest/1`. An asker takes the blob by that SHA-256 like any
//! other, then checks it against the signed `blake2b-256` and length: a
//! peer that named other bytes is blocked for good.

use std::time::Duration;

use peerpi_core::{ProjectName, Sha256Digest};
use peerpi_store::Origin;
use peerpi_swarm::PeerId;
use peerpi_trust::TargetInfo;
use tracing::{debug, warn};

use crate::{lock, Node, NodeError};

/// The algorithm the index signs its pages with.
pub(crate) const PAGE_HASH: &str = "blake2b-256";
/// The format whose bytes the index signs.
const HTML: &str = "text/html";
/// How long providers of a page's digest are looked up for.
const PROVIDER_LOOKUP: Duration = Duration::from_secs(2);
/// Providers asked for a page at most.
const MAX_PROVIDERS: usize = 4;
/// Digest-to-blob entries remembered (then forgotten all at once: the
/// pages are asked for again and found again).
const MAX_REMEMBERED: usize = 65_536;

/// The name under which nodes hand each other the SHA-256 of a page they
/// verified against the index's `blake2b-256`.
fn document_name(key: &[u8; 32]) -> String {
    format!("page/{}", hex::encode(key))
}

/// The signed `blake2b-256` of a page target.
pub(crate) fn page_key(info: &TargetInfo) -> Option<[u8; 32]> {
    info.hashes
        .get(PAGE_HASH)
        .and_then(|digest| <[u8; 32]>::try_from(digest).ok())
}

impl Node {
    /// The bytes of the page the index signed for `name` (`info`), verified:
    /// this node's copy, a peer's, or the index's.
    pub(crate) async fn index_signed_bytes(
        &self,
        name: &ProjectName,
        info: &TargetInfo,
        key: [u8; 32],
    ) -> Result<Vec<u8>, NodeError> {
        if let Some(bytes) = self.own_signed_page(info, &key).await {
            return Ok(bytes);
        }
        let page_url = self
            .inner
            .blobs
            .upstream
            .page_url(name)
            .map_err(|e| NodeError::Upstream(e.to_string()))?;
        if let Some(bytes) = self
            .signed_page_from_peers(name, info, key, &page_url)
            .await
        {
            return Ok(bytes);
        }
        let max = self.inner.config.upstream.max_page_bytes;
        if info.length > max {
            return Err(NodeError::Upstream(format!(
                "the index signed a page of {} bytes for {name}, over this node's page limit \
                 of {max} bytes",
                info.length
            )));
        }
        let mismatch = || {
            NodeError::Upstream(format!(
                "the index's page of {name} is not the one its TUF metadata signs ({} bytes, \
                 {PAGE_HASH} {}); it may have changed since it was signed",
                info.length,
                hex::encode(key)
            ))
        };
        // Reading stops past the signed length: a longer page is not it.
        let fetched = match self
            .inner
            .blobs
            .upstream
            .fetch_page_bytes(name, HTML, info.length)
            .await
        {
            Ok(fetched) => fetched,
            Err(peerpi_upstream::UpstreamError::PageTooLarge { .. }) => return Err(mismatch()),
            Err(e) => return Err(NodeError::Upstream(e.to_string())),
        };
        let Some((bytes, _)) = fetched else {
            return Err(NodeError::Upstream(format!(
                "the index signed a page for {name} but has no such project now"
            )));
        };
        info.verify(&bytes).map_err(|_| mismatch())?;
        self.remember_signed_page(key, &bytes).await;
        Ok(bytes.to_vec())
    }

    /// This node's verified copy, if it still holds it.
    async fn own_signed_page(&self, info: &TargetInfo, key: &[u8; 32]) -> Option<Vec<u8>> {
        let digest = *lock(&self.inner.signed_pages).get(key)?;
        let opened = self.inner.blobs.store.open_blob(&digest).ok()??;
        let bytes = crate::flight::read_whole(opened).await.ok()?;
        info.verify(&bytes).is_ok().then_some(bytes)
    }

    /// A page from the peers that announced its signed digest: each names
    /// the SHA-256 of its copy, which is fetched as a blob and checked
    /// against what the index signed.
    async fn signed_page_from_peers(
        &self,
        name: &ProjectName,
        info: &TargetInfo,
        key: [u8; 32],
        page_url: &url::Url,
    ) -> Option<Vec<u8>> {
        let swarm = self.swarm()?.clone();
        let providers = self.providers_of(key).await;
        if providers.is_empty() {
            return None;
        }
        let answers = swarm
            .ask_latest_of(&providers, &document_name(&key), 32, PROVIDER_LOOKUP)
            .await;
        for (peer, named) in answers {
            let Ok(sha256) = <[u8; 32]>::try_from(named.as_ref()) else {
                self.refuse_page_peer(peer, name, "named a page digest of the wrong length")
                    .await;
                continue;
            };
            let digest = Sha256Digest::from_bytes(sha256);
            let origin = Origin {
                url: page_url.to_string(),
                filename: format!("{name}.html"),
                size: Some(info.length),
                metadata: None,
            };
            match self
                .inner
                .blobs
                .small_blob(&digest, origin, info.length)
                .await
            {
                Ok((bytes, _)) if info.verify(&bytes).is_ok() => {
                    self.remember_signed_page(key, &bytes).await;
                    return Some(bytes);
                }
                Ok(_) => {
                    self.refuse_page_peer(peer, name, "named a page the index did not sign")
                        .await
                }
                Err(e) => {
                    debug!(%peer, project = %name, error = %e, "a peer's page copy is unavailable")
                }
            }
        }
        None
    }

    /// Peers that announced `key`, as many as arrive within the lookup
    /// bound (at most `MAX_PROVIDERS`).
    async fn providers_of(&self, key: [u8; 32]) -> Vec<PeerId> {
        let Some(swarm) = self.swarm() else {
            return Vec::new();
        };
        let Ok(mut found) = swarm.find_providers(Sha256Digest::from_bytes(key)).await else {
            return Vec::new();
        };
        let own = swarm.local_peer_id();
        let deadline = tokio::time::Instant::now() + PROVIDER_LOOKUP;
        let mut providers = Vec::new();
        while providers.len() < MAX_PROVIDERS {
            match tokio::time::timeout_at(deadline, found.recv()).await {
                Ok(Some(peer)) if peer != own && !providers.contains(&peer) => providers.push(peer),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        providers
    }

    async fn refuse_page_peer(&self, peer: PeerId, name: &ProjectName, why: &str) {
        warn!(%peer, project = %name, "{why}: blocked");
        self.inner
            .blobs
            .metrics
            .tuf_page_refused("peer_page_not_signed");
        if let Some(swarm) = self.swarm() {
            let _ = swarm.block(peer).await;
        }
    }

    /// Keeps verified page bytes as a blob, and tells peers where to find
    /// them by the signed digest.
    async fn remember_signed_page(&self, key: [u8; 32], bytes: &[u8]) {
        let digest = self.inner.blobs.clone().keep_blob(bytes.to_vec()).await;
        {
            let mut remembered = lock(&self.inner.signed_pages);
            if remembered.len() >= MAX_REMEMBERED {
                remembered.clear();
            }
            remembered.insert(key, digest);
        }
        if let Some(swarm) = self.swarm() {
            let named = bytes::Bytes::copy_from_slice(digest.as_bytes());
            if let Err(e) = swarm.publish_latest(&document_name(&key), named) {
                warn!(error = %e, "cannot hand a page digest to peers");
            }
            let _ = swarm.provide(Sha256Digest::from_bytes(key)).await;
        }
    }
}
