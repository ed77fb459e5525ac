//! Bounded downloads of metadata and targets. Every read stops at a limit
//! the caller names (the signed length, or a fixed maximum for files whose
//! length is not signed), so a repository or a man in the middle cannot feed
//! a client endless data.

use std::future::Future;
use std::time::Duration;

use url::Url;

use crate::error::{Result, TrustError};

/// What went wrong with one download.
#[derive(Debug)]
pub enum FetchError {
    /// The server answered 403 or 404: the file does not exist (this ends a
    /// root rotation; any other failure fails it).
    NotFound,
    /// More than the limit arrived.
    TooLarge { limit: u64 },
    /// Anything else: a status, a reset connection, a timeout.
    Other(String),
}

/// Something that downloads a URL, reading at most `limit` bytes.
pub trait Fetch {
    fn fetch(
        &self,
        url: &Url,
        limit: u64,
    ) -> impl Future<Output = std::result::Result<Vec<u8>, FetchError>> + Send;

    /// Downloads a file whose SHA-256 and length (`limit`) the trusted
    /// metadata names (the snapshot, through the timestamp). Since its
    /// bytes are fixed by the hash, a fetcher may take them from anywhere (a
    /// node asks its peers); the caller still verifies them. By default,
    /// like [`Fetch::fetch`].
    fn fetch_hashed(
        &self,
        url: &Url,
        limit: u64,
        sha256: [u8; 32],
    ) -> impl Future<Output = std::result::Result<Vec<u8>, FetchError>> + Send {
        let _ = sha256;
        self.fetch(url, limit)
    }

    /// Copies of the timestamp that others hold (a node's peers), each at
    /// most `limit` bytes, asked for when the repository cannot be reached.
    /// Unverified: the client keeps the newest that verifies and is not
    /// older than the one it trusts. By default, none.
    fn timestamps_from_peers(&self, limit: u64) -> impl Future<Output = Vec<Vec<u8>>> + Send {
        let _ = limit;
        std::future::ready(Vec::new())
    }
}

/// Downloads over HTTP(S) with reqwest.
#[derive(Clone)]
pub struct HttpFetcher {
    client: reqwest::Client,
}

impl HttpFetcher {
    /// `timeout` bounds each whole download.
    pub fn new(timeout: Duration) -> Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            // Signed lengths and hashes are of the bytes as published.
            .no_gzip()
            .build()
            .map_err(|e| TrustError::Fetch {
                url: String::new(),
                reason: format!("building the HTTP client: {e}"),
            })?;
        Ok(HttpFetcher { client })
    }
}

impl Fetch for HttpFetcher {
    async fn fetch(&self, url: &Url, limit: u64) -> std::result::Result<Vec<u8>, FetchError> {
        let mut response = self
            .client
            .get(url.clone())
            .send()
            .await
            .map_err(|e| FetchError::Other(e.to_string()))?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND || status == reqwest::StatusCode::FORBIDDEN {
            return Err(FetchError::NotFound);
        }
        if !status.is_success() {
            return Err(FetchError::Other(format!("HTTP {status}")));
        }
        if response.content_length().is_some_and(|n| n > limit) {
            return Err(FetchError::TooLarge { limit });
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| FetchError::Other(e.to_string()))?
        {
            if body.len() as u64 + chunk.len() as u64 > limit {
                return Err(FetchError::TooLarge { limit });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

/// Turns a fetch failure into the trust error for `what` at `url`.
pub(crate) fn fetch_failed(what: &str, url: &Url, error: FetchError) -> TrustError {
    match error {
        FetchError::TooLarge { limit } => TrustError::TooLarge {
            what: what.to_string(),
            limit,
        },
        FetchError::NotFound => TrustError::Fetch {
            url: url.to_string(),
            reason: "not found".into(),
        },
        FetchError::Other(reason) => TrustError::Fetch {
            url: url.to_string(),
            reason,
        },
    }
}
