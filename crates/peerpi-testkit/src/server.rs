//! The fake upstream index: an axum server on loopback that serves the
//! projects it is given as PEP 691 JSON or PEP 503 HTML, files and their
//! PEP 658 metadata, counts requests per path and injects faults.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use futures_util::stream;
use sha2::{Digest, Sha256};

use crate::dist::{Content, FakeFile, SyntheticGen};

/// A fault to inject on requests whose path starts with a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this status and no body.
    Status(u16),
    /// Never answer.
    Hang,
    /// Answer normally after this long.
    Delay(Duration),
    /// Send file bodies `chunk` bytes at a time with `delay` between chunks.
    Slow { chunk: usize, delay: Duration },
    /// Announce the full length but close after `after` bytes of a file body.
    Truncate { after: u64 },
    /// Serve file bodies with one byte changed.
    WrongBytes,
    /// Serve file bodies as they are, labelled `Content-Encoding: gzip`
    /// (as misconfigured servers do with `.tar.gz` files).
    LabelGzip,
    /// Answer `302 Found` pointing at this URL (a hostile index sending the
    /// node somewhere else).
    Redirect(String),
}

/// Everything the fake index serves, and what it has seen.
#[derive(Default)]
pub struct IndexState {
    projects: RwLock<BTreeMap<String, Vec<FakeFile>>>,
    counts: Mutex<HashMap<String, u64>>,
    faults: Mutex<Vec<(String, Fault)>>,
    html_only: AtomicBool,
    /// Where pages say files are (`None`: relative `../../files/` URLs).
    file_base: RwLock<Option<String>>,
    /// Send file bodies chunked, without `Content-Length`.
    unknown_length: AtomicBool,
    /// PEP 792 status (and reason) per normalised project name.
    statuses: RwLock<HashMap<String, (String, Option<String>)>>,
}

/// The PEP 503 form of `name`; names the product would refuse are kept
/// lowercased so tests can still serve them.
fn normalise(name: &str) -> String {
    peerpi_core::ProjectName::new(name)
        .map(|n| n.to_string())
        .unwrap_or_else(|_| name.to_ascii_lowercase())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl IndexState {
    pub fn new(files: impl IntoIterator<Item = FakeFile>) -> Arc<Self> {
        let state = Arc::new(Self::default());
        for f in files {
            state.add(f);
        }
        state
    }

    /// Adds a file to its project (creating the project).
    pub fn add(&self, file: FakeFile) {
        let mut projects = self.projects.write().unwrap_or_else(|p| p.into_inner());
        projects
            .entry(normalise(&file.project))
            .or_default()
            .push(file);
    }

    /// Every file served, of every project.
    pub fn files(&self) -> Vec<FakeFile> {
        let projects = self.projects.read().unwrap_or_else(|p| p.into_inner());
        projects.values().flatten().cloned().collect()
    }

    pub fn file(&self, filename: &str) -> Option<FakeFile> {
        let projects = self.projects.read().unwrap_or_else(|p| p.into_inner());
        projects
            .values()
            .flatten()
            .find(|f| f.filename == filename)
            .cloned()
    }

    /// Requests seen for exactly this path.
    pub fn count(&self, path: &str) -> u64 {
        lock(&self.counts).get(path).copied().unwrap_or(0)
    }

    /// Requests seen for paths starting with `prefix`.
    pub fn count_prefix(&self, prefix: &str) -> u64 {
        lock(&self.counts)
            .iter()
            .filter(|(p, _)| p.starts_with(prefix))
            .map(|(_, n)| n)
            .sum()
    }

    pub fn reset_counts(&self) {
        lock(&self.counts).clear();
    }

    /// Injects `fault` on paths starting with `prefix` ("/" for every path).
    pub fn set_fault(&self, prefix: &str, fault: Fault) {
        let mut faults = lock(&self.faults);
        faults.retain(|(p, _)| p != prefix);
        faults.push((prefix.to_string(), fault));
    }

    pub fn clear_faults(&self) {
        lock(&self.faults).clear();
    }

    /// List files at `<base>/files/<filename>` (absolute URLs, e.g. on
    /// another host name) instead of relative URLs.
    pub fn set_file_base(&self, base: Option<String>) {
        *self.file_base.write().unwrap_or_else(|p| p.into_inner()) = base;
    }

    fn file_url(&self, filename: &str, relative_prefix: &str) -> String {
        match &*self.file_base.read().unwrap_or_else(|p| p.into_inner()) {
            Some(base) => format!("{base}/files/{filename}"),
            None => format!("{relative_prefix}{filename}"),
        }
    }

    /// Send file bodies without `Content-Length` (chunked), as some servers
    /// and proxies do.
    pub fn set_unknown_length(&self, yes: bool) {
        self.unknown_length.store(yes, Ordering::Relaxed);
    }

    /// Serve only HTML pages, as a legacy index would.
    /// Marks `project` with a PEP 792 status; a quarantined one lists no
    /// files, as the index does.
    pub fn set_status(&self, project: &str, status: &str, reason: Option<&str>) {
        self.statuses
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                normalise(project),
                (status.into(), reason.map(String::from)),
            );
    }

    fn status(&self, project: &str) -> Option<(String, Option<String>)> {
        self.statuses
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&normalise(project))
            .cloned()
    }

    /// The HTML page of `project` exactly as the index serves it now
    /// (`None`: no such project).
    pub fn html_page_of(&self, project: &str) -> Option<Vec<u8>> {
        let files = self.listed_files(project)?;
        Some(html_page(self, project, &files))
    }

    /// The files a project page lists (none while it is quarantined).
    fn listed_files(&self, project: &str) -> Option<Vec<FakeFile>> {
        let files = {
            let projects = self.projects.read().unwrap_or_else(|p| p.into_inner());
            projects.get(&normalise(project))?.clone()
        };
        let quarantined = self
            .status(project)
            .is_some_and(|(status, _)| status == "quarantined");
        Some(if quarantined { Vec::new() } else { files })
    }

    pub fn set_html_only(&self, yes: bool) {
        self.html_only.store(yes, Ordering::Relaxed);
    }

    fn fault_for(&self, path: &str) -> Option<Fault> {
        lock(&self.faults)
            .iter()
            .find(|(p, _)| path.starts_with(p.as_str()))
            .map(|(_, f)| f.clone())
    }
}

/// A running fake index; stops when dropped.
pub struct FakeIndex {
    pub addr: SocketAddr,
    pub state: Arc<IndexState>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeIndex {
    /// Serves `state` on an ephemeral loopback port.
    pub async fn start(state: Arc<IndexState>) -> std::io::Result<Self> {
        Self::start_on(
            state,
            "127.0.0.1:0".parse().unwrap_or_else(|_| unreachable!()),
        )
        .await
    }

    pub async fn start_on(state: Arc<IndexState>, addr: SocketAddr) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let app = router(state.clone());
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!("fake index stopped: {e}");
            }
        });
        Ok(Self { addr, state, task })
    }

    /// The Simple API base URL, with a trailing slash.
    pub fn simple_url(&self) -> String {
        format!("http://{}/simple/", self.addr)
    }

    /// Stops serving: connections are refused from now on.
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for FakeIndex {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn router(state: Arc<IndexState>) -> Router {
    Router::new()
        .route("/simple/", get(root_page))
        .route("/simple/{project}/", get(project_page))
        .route("/files/{filename}", get(file))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_and_fault,
        ))
        .with_state(state)
}

async fn count_and_fault(
    State(state): State<Arc<IndexState>>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path().to_string();
    *lock(&state.counts).entry(path.clone()).or_default() += 1;
    match state.fault_for(&path) {
        Some(Fault::Status(code)) => StatusCode::from_u16(code)
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            .into_response(),
        Some(Fault::Hang) => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            StatusCode::GATEWAY_TIMEOUT.into_response()
        }
        Some(Fault::Delay(delay)) => {
            tokio::time::sleep(delay).await;
            next.run(request).await
        }
        Some(Fault::Redirect(to)) => (StatusCode::FOUND, [(header::LOCATION, to)]).into_response(),
        _ => next.run(request).await,
    }
}

async fn root_page(State(state): State<Arc<IndexState>>) -> Response {
    let projects = state.projects.read().unwrap_or_else(|p| p.into_inner());
    let mut html = String::from("<!DOCTYPE html><html><body>\n");
    for name in projects.keys() {
        html.push_str(&format!("<a href=\"{name}/\">{name}</a>\n"));
    }
    html.push_str("</body></html>\n");
    ([(header::CONTENT_TYPE, "text/html")], html).into_response()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn json_page(state: &IndexState, name: &str, files: &[FakeFile]) -> Vec<u8> {
    let mut versions: Vec<String> = Vec::new();
    let files: Vec<serde_json::Value> = files
        .iter()
        .map(|f| {
            let version = f.filename.split('-').nth(1).unwrap_or("0").trim_end_matches(".tar.gz").to_string();
            if !versions.contains(&version) {
                versions.push(version);
            }
            let mut v = serde_json::json!({
                "filename": f.filename,
                "url": state.file_url(&f.filename, "../../files/"),
                "hashes": { "sha256": f.sha256 },
                "requires-python": f.requires_python,
                "size": f.len,
                "upload-time": "2024-01-01T00:00:00.000000Z",
                "yanked": match &f.yanked { None => serde_json::json!(false), Some(r) if r.is_empty() => serde_json::json!(true), Some(r) => serde_json::json!(r) },
            });
            if let Some(m) = &f.metadata {
                v["core-metadata"] = serde_json::json!({ "sha256": hex::encode(Sha256::digest(m)) });
            }
            v
        })
        .collect();
    let mut page = serde_json::json!({ "meta": { "api-version": "1.1" }, "name": name, "files": files, "versions": versions });
    if let Some((status, reason)) = state.status(name) {
        page["meta"]["api-version"] = serde_json::json!("1.4");
        page["project-status"] = serde_json::json!({ "status": status, "reason": reason });
    }
    page.to_string().into_bytes()
}

fn html_page(state: &IndexState, name: &str, files: &[FakeFile]) -> Vec<u8> {
    let status = state.status(name).map(|(status, reason)| {
        let reason = reason.map(|r| {
            format!(
                "<meta name=\"pypi:project-status-reason\" content=\"{}\">",
                escape(&r)
            )
        });
        format!(
            "<meta name=\"pypi:project-status\" content=\"{}\">{}",
            escape(&status),
            reason.unwrap_or_default()
        )
    });
    let mut html = format!(
        "<!DOCTYPE html><html><head>{}<title>Links for {name}</title></head><body>\n",
        status.unwrap_or_default()
    );
    for f in files {
        html.push_str(&format!(
            "<a href=\"{}#sha256={}\"",
            state.file_url(&f.filename, "/files/"),
            f.sha256
        ));
        if let Some(rp) = &f.requires_python {
            html.push_str(&format!(" data-requires-python=\"{}\"", escape(rp)));
        }
        if let Some(reason) = &f.yanked {
            html.push_str(&format!(" data-yanked=\"{}\"", escape(reason)));
        }
        if let Some(m) = &f.metadata {
            html.push_str(&format!(
                " data-dist-info-metadata=\"sha256={}\"",
                hex::encode(Sha256::digest(m))
            ));
        }
        html.push_str(&format!(">{}</a><br/>\n", f.filename));
    }
    html.push_str("</body></html>\n");
    html.into_bytes()
}

async fn project_page(
    State(state): State<Arc<IndexState>>,
    Path(project): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(files) = state.listed_files(&project) else {
        return (StatusCode::NOT_FOUND, "no such project").into_response();
    };
    let wants_json = !state.html_only.load(Ordering::Relaxed)
        && headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("application/vnd.pypi.simple.v1+json"));
    let (body, content_type) = if wants_json {
        (
            json_page(&state, &project, &files),
            "application/vnd.pypi.simple.v1+json",
        )
    } else {
        (html_page(&state, &project, &files), "text/html")
    };
    let etag = format!("\"{}\"", &hex::encode(Sha256::digest(&body))[..16]);
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        == Some(etag.as_str())
    {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
    }
    (
        [
            (header::CONTENT_TYPE, content_type.to_string()),
            (header::ETAG, etag),
        ],
        body,
    )
        .into_response()
}

fn range_start(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::RANGE)?
        .to_str()
        .ok()?
        .strip_prefix("bytes=")?
        .strip_suffix('-')?
        .parse()
        .ok()
}

async fn file(
    State(state): State<Arc<IndexState>>,
    Path(filename): Path<String>,
    headers: HeaderMap,
) -> Response {
    let (wanted, is_metadata) = match filename.strip_suffix(".metadata") {
        Some(dist) => (dist.to_string(), true),
        None => (filename.clone(), false),
    };
    let Some(file) = state.file(&wanted) else {
        return (StatusCode::NOT_FOUND, "no such file").into_response();
    };
    if is_metadata {
        return match file.metadata {
            Some(m) => m.into_response(),
            None => (StatusCode::NOT_FOUND, "no metadata").into_response(),
        };
    }
    let fault = state.fault_for(&format!("/files/{filename}"));
    let start = range_start(&headers).unwrap_or(0).min(file.len);
    let total = file.len - start;
    let chunks = body_chunks(file.content.clone(), file.len, fault.clone());
    let truncate_after = match fault {
        Some(Fault::Truncate { after }) => Some(after),
        _ => None,
    };
    let delay = match fault {
        Some(Fault::Slow { delay, .. }) => Some(delay),
        _ => None,
    };
    // State: the chunks, the offset of the next chunk, the bytes sent so far.
    // Chunks before the range start are skipped; truncation stops early.
    let body_stream = stream::unfold(
        (chunks, 0u64, 0u64),
        move |(mut chunks, mut offset, mut sent)| async move {
            loop {
                let chunk = chunks.next()?;
                let chunk_start = offset;
                offset += chunk.len() as u64;
                if offset <= start {
                    continue;
                }
                let from = start.saturating_sub(chunk_start) as usize;
                let mut piece = chunk.slice(from..);
                if let Some(limit) = truncate_after {
                    if sent >= limit {
                        return Some((
                            Err(std::io::Error::other("truncated by fault injection")),
                            (chunks, offset, sent),
                        ));
                    }
                    piece.truncate((limit - sent).min(piece.len() as u64) as usize);
                }
                sent += piece.len() as u64;
                if let Some(d) = delay {
                    tokio::time::sleep(d).await;
                }
                return Some((Ok::<_, std::io::Error>(piece), (chunks, offset, sent)));
            }
        },
    );
    let mut response = Response::new(Body::from_stream(body_stream));
    let h = response.headers_mut();
    if !state.unknown_length.load(Ordering::Relaxed) {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(total));
    }
    if fault == Some(Fault::LabelGzip) {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if start > 0 {
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
        if let Ok(v) =
            HeaderValue::from_str(&format!("bytes {start}-{}/{}", file.len - 1, file.len))
        {
            response.headers_mut().insert(header::CONTENT_RANGE, v);
        }
    }
    response
}

/// The file's content as chunks, with the fault's changes applied.
fn body_chunks(
    content: Content,
    len: u64,
    fault: Option<Fault>,
) -> Box<dyn Iterator<Item = Bytes> + Send> {
    let chunk_size = match fault {
        Some(Fault::Slow { chunk, .. }) => chunk.max(1),
        _ => 64 * 1024,
    };
    let corrupt_at = matches!(fault, Some(Fault::WrongBytes)).then_some(len / 2);
    let mut position = 0u64;
    let corrupt = move |mut chunk: Vec<u8>| {
        if let Some(at) = corrupt_at {
            if at >= position && at < position + chunk.len() as u64 {
                chunk[(at - position) as usize] ^= 0xff;
            }
        }
        position += chunk.len() as u64;
        Bytes::from(chunk)
    };
    match content {
        Content::Bytes(b) => {
            let pieces: Vec<Vec<u8>> = b.chunks(chunk_size).map(<[u8]>::to_vec).collect();
            Box::new(pieces.into_iter().map(corrupt))
        }
        Content::Synthetic { len, seed } => {
            let mut gen = SyntheticGen::new(seed);
            let mut left = len;
            Box::new(
                std::iter::from_fn(move || {
                    (left > 0).then(|| {
                        let mut c = gen.next_chunk();
                        c.truncate(left.min(c.len() as u64) as usize);
                        left -= c.len() as u64;
                        c
                    })
                })
                .map(corrupt),
            )
        }
    }
}
