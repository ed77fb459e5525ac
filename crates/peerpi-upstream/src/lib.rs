//! The HTTP client for the upstream Simple API index: project pages asked for
//! as JSON first (HTML understood too), revalidated with ETags, and file
//! downloads streamed from a byte offset.

use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use peerpi_core::simple::PageParseError;
use peerpi_core::{ProjectName, ProjectPage};
use reqwest::header::{ACCEPT, CONTENT_TYPE, ETAG, IF_NONE_MATCH, RANGE};
use reqwest::StatusCode;
use tracing::debug;
use url::Url;

/// What pip sends, minus nothing: JSON preferred, both HTML forms accepted.
const PAGE_ACCEPT: &str = "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.01";

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// The Simple API base, e.g. `https://index.example/simple/`.
    pub base: Url,
    /// Whole-request limit for a project page.
    pub page_timeout: Duration,
    /// Limit on connecting, and on silence between body chunks of a file.
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
}

impl UpstreamConfig {
    pub fn new(base: Url) -> Self {
        Self {
            base,
            page_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream {url} timed out")]
    Timeout { url: String },
    #[error("cannot reach upstream {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("upstream {url} answered {status}")]
    Status { url: String, status: u16 },
    #[error("upstream {url} sent an unusable page: {source}")]
    BadPage {
        url: String,
        #[source]
        source: PageParseError,
    },
    #[error("bad upstream URL {0:?}")]
    BadUrl(String),
    #[error("building the HTTP client: {0}")]
    Client(String),
}

impl UpstreamError {
    fn from_reqwest(url: &str, e: reqwest::Error) -> Self {
        if e.is_timeout() {
            UpstreamError::Timeout {
                url: url.to_string(),
            }
        } else {
            let mut reason = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                reason = format!("{reason}: {s}");
                source = s.source();
            }
            UpstreamError::Unreachable {
                url: url.to_string(),
                reason,
            }
        }
    }
}

/// The outcome of asking upstream for a project page.
#[derive(Debug)]
pub enum PageFetch {
    Fresh {
        page: ProjectPage,
        etag: Option<String>,
    },
    /// The cached page (whose ETag was sent) is still current.
    NotModified,
    NotFound,
}

/// A file download in progress.
pub struct FileDownload {
    /// Length of the body (from `offset`), when upstream says it.
    pub content_length: Option<u64>,
    pub body: BoxStream<'static, Result<Bytes, UpstreamError>>,
}

#[derive(Clone)]
pub struct Upstream {
    config: UpstreamConfig,
    client: reqwest::Client,
}

impl Upstream {
    pub fn new(mut config: UpstreamConfig) -> Result<Self, UpstreamError> {
        if !config.base.path().ends_with('/') {
            let path = format!("{}/", config.base.path());
            config.base.set_path(&path);
        }
        let client = reqwest::Client::builder()
            .user_agent(concat!("peerpi/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(config.connect_timeout)
            .read_timeout(config.read_timeout)
            .build()
            .map_err(|e| UpstreamError::Client(e.to_string()))?;
        Ok(Self { config, client })
    }

    pub fn base(&self) -> &Url {
        &self.config.base
    }

    /// The URL of a project's page upstream.
    pub fn page_url(&self, project: &ProjectName) -> Result<Url, UpstreamError> {
        self.config
            .base
            .join(&format!("{project}/"))
            .map_err(|_| UpstreamError::BadUrl(format!("{}{project}/", self.config.base)))
    }

    /// Fetches a project page, revalidating with `etag` when given.
    pub async fn fetch_page(
        &self,
        project: &ProjectName,
        etag: Option<&str>,
    ) -> Result<PageFetch, UpstreamError> {
        let url = self.page_url(project)?;
        let url_text = url.to_string();
        let mut request = self
            .client
            .get(url.clone())
            .header(ACCEPT, PAGE_ACCEPT)
            .timeout(self.config.page_timeout);
        if let Some(etag) = etag {
            request = request.header(IF_NONE_MATCH, etag);
        }
        let response = request
            .send()
            .await
            .map_err(|e| UpstreamError::from_reqwest(&url_text, e))?;
        let status = response.status();
        debug!(url = %url_text, %status, "upstream page");
        match status {
            StatusCode::NOT_MODIFIED => return Ok(PageFetch::NotModified),
            StatusCode::NOT_FOUND | StatusCode::GONE => return Ok(PageFetch::NotFound),
            s if !s.is_success() => {
                return Err(UpstreamError::Status {
                    url: url_text,
                    status: s.as_u16(),
                })
            }
            _ => {}
        }
        let final_url = response.url().clone();
        let new_etag = response
            .headers()
            .get(ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        let body = response
            .bytes()
            .await
            .map_err(|e| UpstreamError::from_reqwest(&url_text, e))?;
        let parsed = if content_type.contains("json") {
            peerpi_core::json::parse_project_page(&body, &final_url)
        } else {
            peerpi_core::html::parse_project_page(&body, &final_url, project.as_str())
        };
        let page = parsed.map_err(|source| UpstreamError::BadPage {
            url: url_text,
            source,
        })?;
        Ok(PageFetch::Fresh {
            page,
            etag: new_etag,
        })
    }

    /// Starts downloading `url` from byte `offset`.
    pub async fn fetch_file(&self, url: &str, offset: u64) -> Result<FileDownload, UpstreamError> {
        let parsed = Url::parse(url).map_err(|_| UpstreamError::BadUrl(url.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(UpstreamError::BadUrl(url.to_string()));
        }
        let mut request = self.client.get(parsed);
        if offset > 0 {
            request = request.header(RANGE, format!("bytes={offset}-"));
        }
        let response = request
            .send()
            .await
            .map_err(|e| UpstreamError::from_reqwest(url, e))?;
        let status = response.status();
        let expected = if offset > 0 {
            StatusCode::PARTIAL_CONTENT
        } else {
            StatusCode::OK
        };
        if status != expected {
            return Err(UpstreamError::Status {
                url: url.to_string(),
                status: status.as_u16(),
            });
        }
        let content_length = response.content_length();
        let url_owned = url.to_string();
        let body = response
            .bytes_stream()
            .map(move |chunk| chunk.map_err(|e| UpstreamError::from_reqwest(&url_owned, e)))
            .boxed();
        Ok(FileDownload {
            content_length,
            body,
        })
    }
}
