//! The HTTP client for the upstream Simple API index: project pages asked for
//! as JSON first (HTML understood too), revalidated with ETags, read up to a
//! size limit; file downloads streamed from a byte offset exactly as sent
//! (never decoded: the digest is over the bytes the index listed). URLs in
//! errors carry no credentials.

use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use peerpi_core::simple::PageParseError;
use peerpi_core::{ProjectName, ProjectPage};
use reqwest::header::{ACCEPT, ACCEPT_ENCODING, CONTENT_TYPE, ETAG, IF_NONE_MATCH, RANGE};
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
    /// Largest project page accepted, after decompression (a gzip bomb
    /// stops here).
    pub max_page_bytes: u64,
    /// Another host whose files may be fetched even on a private address:
    /// the TUF signer node, whose signed pages link files on itself.
    pub signer: Option<Url>,
}

impl UpstreamConfig {
    pub fn new(base: Url) -> Self {
        Self {
            base,
            page_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            max_page_bytes: 64 << 20,
            signer: None,
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
    /// The page's bytes do not match what signed metadata vouches for, or
    /// could not be had to check.
    #[error("the page at {url} cannot be verified: {reason}")]
    Unverified { url: String, reason: String },
    #[error("upstream {url} sent a page larger than {limit} bytes")]
    PageTooLarge { url: String, limit: u64 },
    #[error("bad upstream URL {0:?}")]
    BadUrl(String),
    #[error("refusing file URL {url}: {reason}")]
    ForbiddenHost { url: String, reason: String },
    #[error("building the HTTP client: {0}")]
    Client(String),
}

/// `url` without its user name, password and query string: safe for an
/// error message, a header or a log line.
pub fn redacted(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut parsed) => {
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            if parsed.query().is_some() {
                parsed.set_query(Some("…"));
            }
            parsed.to_string()
        }
        // Not a URL: keep only what cannot be a secret.
        Err(_) => url
            .rsplit_once('@')
            .map_or_else(|| url.to_string(), |(_, rest)| format!("…@{rest}")),
    }
}

/// Whether connections to `ip` could reach something other than the public
/// internet (this host, its LAN, link-local services such as a cloud
/// metadata endpoint).
pub fn is_non_global(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.octets()[0] == 0
                || (v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64) // 100.64/10
        }
        std::net::IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_non_global(v4.into());
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local
                || (first & 0xffc0) == 0xfe80 // link-local
        }
    }
}

impl UpstreamError {
    fn from_reqwest(url: &str, e: reqwest::Error) -> Self {
        let url = redacted(url);
        // The error's own text would repeat the URL, credentials included.
        let e = e.without_url();
        if e.is_timeout() {
            UpstreamError::Timeout { url }
        } else {
            let mut reason = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                reason = format!("{reason}: {s}");
                source = s.source();
            }
            UpstreamError::Unreachable { url, reason }
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

/// Most redirects followed for one upstream request.
const MAX_REDIRECTS: usize = 5;

/// Where upstream requests may go: anything public, and on this machine or
/// its private networks only the configured upstream's and signer's own
/// origins (scheme, host and port). The same rule is applied to the first
/// URL, to every redirect, and to the addresses a name resolves to when the
/// connection is made, so neither a page, a redirect nor a DNS answer can
/// turn the node into a proxy for what sits behind it.
#[derive(Debug, Clone)]
struct Reach {
    /// Origins allowed whatever their address.
    trusted: Vec<(url::Host<String>, Option<u16>)>,
}

impl Reach {
    fn new(config: &UpstreamConfig) -> Self {
        let origin = |u: &Url| u.host().map(|h| (h.to_owned(), u.port_or_known_default()));
        Self {
            trusted: std::iter::once(&config.base)
                .chain(config.signer.as_ref())
                .filter_map(origin)
                .collect(),
        }
    }

    fn is_trusted(&self, url: &Url) -> bool {
        url.host().is_some_and(|host| {
            self.trusted
                .iter()
                .any(|(h, port)| *h == host.to_owned() && *port == url.port_or_known_default())
        })
    }

    /// Names whose resolved addresses are not checked: the trusted
    /// origins' host names (their port is checked on the URL).
    fn trusted_names(&self) -> Vec<String> {
        self.trusted
            .iter()
            .filter_map(|(h, _)| match h {
                url::Host::Domain(name) => Some(name.to_ascii_lowercase()),
                _ => None,
            })
            .collect()
    }

    /// Why `url` may not be fetched, if it may not.
    fn refusal(&self, url: &Url) -> Option<&'static str> {
        if !matches!(url.scheme(), "http" | "https") {
            return Some("not an http(s) URL");
        }
        if self.is_trusted(url) {
            return None;
        }
        let address = match url.host() {
            Some(url::Host::Ipv4(ip)) => Some(std::net::IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(std::net::IpAddr::V6(ip)),
            _ => None,
        };
        if address.is_some_and(is_non_global) {
            return Some("a non-public address that is not the upstream's");
        }
        match url.host() {
            Some(url::Host::Domain(name))
                if name.eq_ignore_ascii_case("localhost")
                    || name.to_ascii_lowercase().ends_with(".localhost") =>
            {
                Some("this machine, which is not the upstream's host")
            }
            None => Some("no host"),
            _ => None,
        }
    }

    /// A redirect policy that checks every hop.
    fn redirects(&self) -> reqwest::redirect::Policy {
        let reach = self.clone();
        reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= MAX_REDIRECTS {
                return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
            }
            match reach.refusal(attempt.url()) {
                None => attempt.follow(),
                Some(reason) => {
                    let to = redacted(attempt.url().as_str());
                    attempt.error(format!("refusing a redirect to {to}: {reason}"))
                }
            }
        })
    }
}

/// Resolves host names, dropping the addresses that are not public unless
/// the name is a trusted origin's: a public name that answers with
/// `127.0.0.1` (DNS rebinding) reaches nothing.
struct GuardedResolver {
    trusted_names: Vec<String>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_ascii_lowercase();
        let trusted = self.trusted_names.contains(&host);
        Box::pin(async move {
            let addresses = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let kept: Vec<std::net::SocketAddr> = addresses
                .filter(|a| trusted || !is_non_global(a.ip()))
                .collect();
            if kept.is_empty() {
                let refused: Box<dyn std::error::Error + Send + Sync> =
                    format!("{host} resolves only to non-public addresses").into();
                return Err(refused);
            }
            let addrs: reqwest::dns::Addrs = Box::new(kept.into_iter());
            Ok(addrs)
        })
    }
}

#[derive(Clone)]
pub struct Upstream {
    config: UpstreamConfig,
    reach: Reach,
    /// For pages: compressed transfer welcome (bounded after decoding).
    pages: reqwest::Client,
    /// For files: asks for and takes the bytes as stored.
    files: reqwest::Client,
}

impl Upstream {
    pub fn new(mut config: UpstreamConfig) -> Result<Self, UpstreamError> {
        if !config.base.path().ends_with('/') {
            let path = format!("{}/", config.base.path());
            config.base.set_path(&path);
        }
        let reach = Reach::new(&config);
        let builder = || {
            reqwest::Client::builder()
                .user_agent(concat!("peerpi/", env!("CARGO_PKG_VERSION")))
                .connect_timeout(config.connect_timeout)
                .read_timeout(config.read_timeout)
                .redirect(reach.redirects())
                .referer(false)
                .dns_resolver(std::sync::Arc::new(GuardedResolver {
                    trusted_names: reach.trusted_names(),
                }))
        };
        let build = |b: reqwest::ClientBuilder| {
            b.build()
                .map_err(|e| UpstreamError::Client(e.without_url().to_string()))
        };
        let pages = build(builder())?;
        let files = build(builder().no_gzip())?;
        Ok(Self {
            config,
            reach,
            pages,
            files,
        })
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

    /// Sends the request for a project page; any status but success, 304
    /// and 404/410 is an error.
    async fn page_response(
        &self,
        project: &ProjectName,
        accept: &str,
        etag: Option<&str>,
    ) -> Result<PageResponse, UpstreamError> {
        let url = self.page_url(project)?;
        let url_text = redacted(url.as_str());
        let mut request = self
            .pages
            .get(url.clone())
            .header(ACCEPT, accept)
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
            StatusCode::NOT_MODIFIED => Ok(PageResponse::NotModified),
            StatusCode::NOT_FOUND | StatusCode::GONE => Ok(PageResponse::NotFound),
            s if !s.is_success() => Err(UpstreamError::Status {
                url: url_text,
                status: s.as_u16(),
            }),
            _ => Ok(PageResponse::Body(response, url_text)),
        }
    }

    /// The bytes of a project page as the index serves them in the format
    /// `accept` names (the HTML page whose digest the index's TUF metadata
    /// signs), at most `limit` bytes, and the URL they came from. `Ok(None)`:
    /// the index has no such project.
    pub async fn fetch_page_bytes(
        &self,
        project: &ProjectName,
        accept: &str,
        limit: u64,
    ) -> Result<Option<(Bytes, Url)>, UpstreamError> {
        match self.page_response(project, accept, None).await? {
            PageResponse::Body(response, url_text) => {
                let url = response.url().clone();
                let body = read_limited(response, limit, &url_text).await?;
                Ok(Some((body, url)))
            }
            PageResponse::NotFound | PageResponse::NotModified => Ok(None),
        }
    }

    /// Fetches a project page, revalidating with `etag` when given.
    pub async fn fetch_page(
        &self,
        project: &ProjectName,
        etag: Option<&str>,
    ) -> Result<PageFetch, UpstreamError> {
        let (response, url_text) = match self.page_response(project, PAGE_ACCEPT, etag).await? {
            PageResponse::NotModified => return Ok(PageFetch::NotModified),
            PageResponse::NotFound => return Ok(PageFetch::NotFound),
            PageResponse::Body(response, url_text) => (response, url_text),
        };
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
        let body = read_limited(response, self.config.max_page_bytes, &url_text).await?;
        // Parsing a page of up to `max_page_bytes` is heavy CPU work: off
        // the runtime threads, so the node answers other requests meanwhile.
        let project_name = project.as_str().to_string();
        let parsed = tokio::task::spawn_blocking(move || {
            if content_type.contains("json") {
                peerpi_core::json::parse_project_page(&body, &final_url)
            } else {
                peerpi_core::html::parse_project_page(&body, &final_url, &project_name)
            }
        })
        .await
        .map_err(|e| UpstreamError::Client(format!("parsing the page failed: {e}")))?;
        let page = parsed.map_err(|source| UpstreamError::BadPage {
            url: url_text,
            source,
        })?;
        Ok(PageFetch::Fresh {
            page,
            etag: new_etag,
        })
    }

    /// Starts downloading `url` from byte `offset`. A URL whose host is an
    /// address on this machine or its private networks is refused unless it
    /// is the configured upstream's own host: a page must not turn the node
    /// into a proxy for what sits behind it.
    pub async fn fetch_file(&self, url: &str, offset: u64) -> Result<FileDownload, UpstreamError> {
        let shown = redacted(url);
        let parsed = Url::parse(url).map_err(|_| UpstreamError::BadUrl(shown.clone()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(UpstreamError::BadUrl(shown));
        }
        self.check_file_host(&parsed, &shown)?;
        let mut request = self.files.get(parsed).header(ACCEPT_ENCODING, "identity");
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
                url: shown,
                status: status.as_u16(),
            });
        }
        let content_length = response.content_length();
        let body = response
            .bytes_stream()
            .map(move |chunk| chunk.map_err(|e| UpstreamError::from_reqwest(&shown, e)))
            .boxed();
        Ok(FileDownload {
            content_length,
            body,
        })
    }

    fn check_file_host(&self, url: &Url, shown: &str) -> Result<(), UpstreamError> {
        match self.reach.refusal(url) {
            None => Ok(()),
            Some(reason) => Err(UpstreamError::ForbiddenHost {
                url: shown.to_string(),
                reason: reason.to_string(),
            }),
        }
    }
}

/// What the index answered to a page request.
enum PageResponse {
    NotModified,
    NotFound,
    /// A success, with the URL as shown in logs.
    Body(reqwest::Response, String),
}

/// The whole body, failing once more than `limit` bytes arrived (counted
/// after any content decoding).
async fn read_limited(
    response: reqwest::Response,
    limit: u64,
    url: &str,
) -> Result<Bytes, UpstreamError> {
    if response.content_length().is_some_and(|len| len > limit) {
        return Err(UpstreamError::PageTooLarge {
            url: url.to_string(),
            limit,
        });
    }
    let mut body = Vec::new();
    let mut chunks = response.bytes_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|e| UpstreamError::from_reqwest(url, e))?;
        if body.len() as u64 + chunk.len() as u64 > limit {
            return Err(UpstreamError::PageTooLarge {
                url: url.to_string(),
                limit,
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacted_urls_carry_no_credentials() {
        let shown = redacted("https://user:s3cret@index.example/simple/?token=abc");
        assert!(!shown.contains("s3cret") && !shown.contains("user") && !shown.contains("abc"));
        assert!(
            shown.starts_with("https://index.example/simple/"),
            "{shown}"
        );
        assert_eq!(redacted("not a url user:pw@host"), "…@host");
    }

    /// A name that resolves to this machine (DNS rebinding does the same
    /// with a public name) reaches nothing unless it is the upstream's own.
    #[tokio::test]
    async fn names_resolving_to_non_public_addresses_are_refused_at_connect_time() {
        use reqwest::dns::Resolve;
        let guarded = GuardedResolver {
            trusted_names: vec!["localhost".into()],
        };
        let trusted = guarded.resolve("localhost".parse().unwrap()).await;
        assert!(
            trusted.is_ok_and(|mut a| a.next().is_some()),
            "the upstream's own name"
        );
        let other = GuardedResolver {
            trusted_names: vec!["index.example".into()],
        };
        let refused = other.resolve("localhost".parse().unwrap()).await;
        let reason = refused.err().expect("refused").to_string();
        assert!(reason.contains("non-public"), "{reason}");
    }

    #[test]
    fn file_hosts_on_private_networks_are_refused_unless_upstream() {
        let upstream = Upstream::new(UpstreamConfig::new(
            "http://10.1.2.3:8080/simple/".parse().unwrap(),
        ))
        .unwrap();
        let check = |u: &str| upstream.check_file_host(&u.parse().unwrap(), u);
        assert!(
            check("http://10.1.2.3:8080/files/f.whl").is_ok(),
            "the upstream's own origin"
        );
        for refused in [
            "http://10.1.2.3:9999/f.whl",
            "http://127.0.0.1/f.whl",
            "http://169.254.169.254/latest/meta-data",
            "http://192.168.1.1/f.whl",
            "http://[::1]/f.whl",
            "http://[fe80::1]/f.whl",
            "http://[::ffff:127.0.0.1]/f.whl",
            "http://localhost:8080/f.whl",
            "http://100.64.0.1/f.whl",
        ] {
            assert!(
                matches!(check(refused), Err(UpstreamError::ForbiddenHost { .. })),
                "{refused}"
            );
        }
        assert!(check("https://files.example/f.whl").is_ok());
        assert!(check("http://93.184.216.34/f.whl").is_ok());
    }
}
