//! The HTTP front: the Simple Repository API (PEP 503 HTML, PEP 691 JSON),
//! files and their PEP 658 metadata by digest, `/metrics` and `/healthz`.
//! Every error is a status with a plain-text message. See specs/http-api.md.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{MatchedPath, Path, RawQuery, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures_util::StreamExt;
use peerpi_core::filename::check_safe_filename;
use peerpi_core::{negotiate, PageFormat, ProjectName, Sha256Digest};
use peerpi_store::OpenedBlob;

mod gateway;

use crate::metrics::{Source, SwarmSample};
use crate::{BlobBody, Node, NodeError};

/// Files are named by content: they never change.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

pub fn router(node: Node) -> Router {
    Router::new()
        .route("/", get(home))
        .route(
            "/simple",
            get(|| async { redirect("/simple/".to_string()) }),
        )
        .route("/simple/", get(project_list))
        .route("/simple/{project}", get(project_without_slash))
        .route("/simple/{project}/", get(project_page))
        .route("/files/{sha256}/{filename}", get(file))
        .route("/ipfs/{*cid}", get(gateway::ipfs))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/tuf/{*path}", get(tuf_file))
        .route("/peers", get(peers))
        .route("/pins/{sha256}", axum::routing::put(pin).delete(unpin))
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "no such endpoint: the index is at /simple/",
            )
        })
        .layer(middleware::from_fn_with_state(node.clone(), count_requests))
        .with_state(node)
}

async fn count_requests(State(node): State<Node>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let response = next.run(request).await;
    node.metrics()
        .http_request(&route, response.status().as_u16());
    response
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{message}\n"),
    )
        .into_response()
}

impl IntoResponse for NodeError {
    fn into_response(self) -> Response {
        error(self.status(), self)
    }
}

fn redirect(location: String) -> Response {
    match HeaderValue::from_str(&location) {
        Ok(v) => (StatusCode::MOVED_PERMANENTLY, [(header::LOCATION, v)]).into_response(),
        Err(_) => error(StatusCode::BAD_REQUEST, "cannot redirect to that location"),
    }
}

fn path_error(rejection: PathRejection) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        format!("bad path: {}", rejection.body_text()),
    )
}

/// `ok`, or 503 with the reason while the store cannot write (what it holds
/// is still served; a readiness probe, not a liveness one: a restart would
/// not free the disk).
async fn healthz(State(node): State<Node>) -> Response {
    match node.store().degraded() {
        None => "ok\n".into_response(),
        Some(reason) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("degraded: {reason}; cached files are still served"),
        ),
    }
}

/// The signer's TUF repository, read-only. Versioned metadata and targets
/// (named by version or hash) never change; `timestamp.json` and
/// `root.json` do.
async fn tuf_file(State(node): State<Node>, Path(path): Path<String>) -> Response {
    let Some(repo) = node.tuf_repo() else {
        return error(
            StatusCode::NOT_FOUND,
            "this node is not a TUF signer (see --signer)",
        );
    };
    let relative = std::path::Path::new(&path);
    let plain = relative
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)));
    if !plain || !(path.starts_with("metadata/") || path.starts_with("targets/")) {
        return error(StatusCode::NOT_FOUND, "no such TUF file");
    }
    match tokio::fs::read(repo.join(relative)).await {
        Ok(bytes) => {
            let mutable = path == "metadata/timestamp.json" || path == "metadata/root.json";
            let cache = if mutable {
                "no-cache"
            } else {
                "public, max-age=31536000, immutable"
            };
            (
                [
                    (header::CONTENT_TYPE, "application/octet-stream"),
                    (header::CACHE_CONTROL, cache),
                ],
                bytes,
            )
                .into_response()
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            error(StatusCode::NOT_FOUND, "no such TUF file")
        }
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("reading {path}: {e}"),
        ),
    }
}

/// `PUT /pins/<sha256>`: keeps a stored blob from eviction (only from this
/// machine: any job could otherwise pin half the cache).
async fn pin(
    State(node): State<Node>,
    connect: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    Path(sha256): Path<String>,
) -> Response {
    set_pin(&node, connect, &sha256, true)
}

/// `DELETE /pins/<sha256>`: lets the blob be evicted again.
async fn unpin(
    State(node): State<Node>,
    connect: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    Path(sha256): Path<String>,
) -> Response {
    set_pin(&node, connect, &sha256, false)
}

fn set_pin(
    node: &Node,
    connect: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    sha256: &str,
    pinned: bool,
) -> Response {
    let local = connect.is_some_and(|c| c.0 .0.ip().is_loopback());
    if !local {
        return error(
            StatusCode::FORBIDDEN,
            "pins are set from the node's own machine only (127.0.0.1 or ::1)",
        );
    }
    let digest = match Sha256Digest::from_hex(sha256) {
        Ok(d) => d,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad digest in path: {e}")),
    };
    match node.store().set_pinned(&digest, pinned) {
        Ok(peerpi_store::Pin::Done) => StatusCode::NO_CONTENT.into_response(),
        Ok(peerpi_store::Pin::NotStored) => error(
            StatusCode::NOT_FOUND,
            format!("no blob with sha256 {digest} is stored here: fetch it first"),
        ),
        Ok(peerpi_store::Pin::OverLimit { limit, pinned }) => error(
            StatusCode::INSUFFICIENT_STORAGE,
            format!(
                "pins may take half the store ({limit} bytes); {pinned} bytes are pinned: \
                 unpin some, or raise --cache-size"
            ),
        ),
        Err(e) => NodeError::from(e).into_response(),
    }
}

/// The status page.
async fn home(State(node): State<Node>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        node.status_page(),
    )
        .into_response()
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn query_format(query: Option<&str>) -> Option<String> {
    url::form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == "format")
        .map(|(_, v)| v.into_owned())
}

fn choose_format(headers: &HeaderMap, query: Option<&str>) -> Result<PageFormat, NodeError> {
    negotiate(
        header_str(headers, header::ACCEPT),
        query_format(query).as_deref(),
    )
    .map_err(|e| NodeError::NotAcceptable(e.to_string()))
}

fn accepts_gzip(headers: &HeaderMap) -> bool {
    header_str(headers, header::ACCEPT_ENCODING).is_some_and(|value| {
        value.split(',').any(|item| {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim();
            let q_zero = parts.any(|p| {
                p.split_once('=').is_some_and(|(k, v)| {
                    k.trim() == "q" && v.trim().parse::<f32>().is_ok_and(|q| q <= 0.0)
                })
            });
            (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !q_zero
        })
    })
}

/// Weak comparison (RFC 9110 §13.1.2), as GET allows.
fn etag_matches(headers: &HeaderMap, etag: &str) -> bool {
    header_str(headers, header::IF_NONE_MATCH).is_some_and(|value| {
        value
            .split(',')
            .map(|t| t.trim().trim_start_matches("W/"))
            .any(|t| t == "*" || t == etag)
    })
}

async fn project_list(
    State(node): State<Node>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let format = match choose_format(&headers, query.as_deref()) {
        Ok(f) => f,
        Err(e) => return e.into_response(),
    };
    let names = match node.cached_projects() {
        Ok(n) => n,
        Err(e) => return e.into_response(),
    };
    let body = if format.is_json() {
        peerpi_core::json::render_project_list(&names)
    } else {
        peerpi_core::html::render_project_list(&names)
    };
    (
        [
            (header::CONTENT_TYPE, format.content_type()),
            (header::VARY, "Accept"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn project_without_slash(
    path: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Response {
    let raw = match path {
        Ok(Path(raw)) => raw,
        Err(r) => return path_error(r),
    };
    match ProjectName::new(&raw) {
        Ok(name) => redirect(with_query(format!("/simple/{name}/"), query.as_deref())),
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

fn with_query(path: String, query: Option<&str>) -> String {
    match query {
        Some(q) if !q.is_empty() => format!("{path}?{q}"),
        _ => path,
    }
}

async fn project_page(
    State(node): State<Node>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let raw = match path {
        Ok(Path(raw)) => raw,
        Err(r) => return path_error(r),
    };
    let name = match ProjectName::new(&raw) {
        Ok(n) => n,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    if name.as_str() != raw {
        return redirect(with_query(format!("/simple/{name}/"), query.as_deref()));
    }
    let format = match choose_format(&headers, query.as_deref()) {
        Ok(f) => f,
        Err(e) => return e.into_response(),
    };
    let view = match node.project_page(&name).await {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let gzip = accepts_gzip(&headers);
    // Rendering a large page is heavy CPU work: off the runtime threads,
    // so that other requests (and `/healthz`) are answered meanwhile.
    let variant = match view.entry.rendered(format, gzip) {
        Some(v) => v,
        None => {
            let entry = view.entry.clone();
            match tokio::task::spawn_blocking(move || entry.variant(format, gzip)).await {
                Ok(v) => v,
                Err(e) => {
                    return error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("rendering the page failed: {e}"),
                    )
                }
            }
        }
    };
    let max_age = format!("max-age={}", node.config().page_max_age.as_secs());
    let mut response = if etag_matches(&headers, &variant.etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut r = Response::new(Body::from(variant.body.clone()));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(format.content_type()),
        );
        if gzip {
            r.headers_mut()
                .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        r
    };
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&variant.etag) {
        h.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&max_age) {
        h.insert(header::CACHE_CONTROL, v);
    }
    h.insert(
        header::VARY,
        HeaderValue::from_static("Accept, Accept-Encoding"),
    );
    h.insert(
        "x-peerpi-cache",
        HeaderValue::from_static(view.status.as_str()),
    );
    if let Some(reason) = &view.stale_reason {
        let reason: String = reason
            .chars()
            .filter(|c| !c.is_control())
            .take(300)
            .collect();
        if let Ok(v) = HeaderValue::from_str(&reason) {
            h.insert("x-peerpi-stale-reason", v);
        }
    }
    response
}

async fn file(
    State(node): State<Node>,
    method: Method,
    version: axum::http::Version,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
) -> Response {
    let (sha_text, filename) = match path {
        Ok(Path(p)) => p,
        Err(r) => return path_error(r),
    };
    let digest = match Sha256Digest::from_hex(&sha_text) {
        Ok(d) => d,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad digest in path: {e}")),
    };
    if let Err(e) = check_safe_filename(&filename) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("bad filename in path: {e}"),
        );
    }
    let digest = if filename.ends_with(".metadata") {
        match node.origin(&digest) {
            Ok(Some(origin)) => match origin.metadata {
                Some(m) => m,
                None => {
                    return error(
                        StatusCode::NOT_FOUND,
                        format!(
                            "no core metadata with a known digest for {}",
                            origin.filename
                        ),
                    )
                }
            },
            Ok(None) => {
                return error(
                    StatusCode::NOT_FOUND,
                    format!(
                    "no file with sha256 {digest} is known here: request its project page first"
                ),
                )
            }
            Err(e) => return e.into_response(),
        }
    } else {
        digest
    };
    let etag = format!("\"sha256-{digest}\"");
    if etag_matches(&headers, &etag) {
        return file_headers(StatusCode::NOT_MODIFIED.into_response(), &etag, "local");
    }
    if method == Method::HEAD {
        return head(&node, &digest, &etag);
    }
    match node.blob(&digest).await {
        Ok(BlobBody::Stored(blob)) => serve_stored(&node, blob, &headers, &etag).await,
        // HTTP/1.0 has no chunked encoding: a body of unknown length ends at
        // the close, so a download cut short for failing verification would
        // look complete. Such a client gets the file once it verified.
        Ok(BlobBody::Fetching { len: None, .. }) if version < axum::http::Version::HTTP_11 => {
            match node.verified_blob(&digest).await {
                Ok(blob) => serve_stored(&node, blob, &headers, &etag).await,
                Err(e) => e.into_response(),
            }
        }
        Ok(BlobBody::Fetching { len, stream }) => {
            let mut r = Response::new(Body::from_stream(stream));
            if let Some(len) = len {
                r.headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            }
            file_headers(r, &etag, "miss")
        }
        Err(e) => e.into_response(),
    }
}

/// HEAD never starts a download: it answers from the store or the index's listing.
fn head(node: &Node, digest: &Sha256Digest, etag: &str) -> Response {
    let (len, source) = match node.store().get(digest) {
        Ok(Some(blob)) => (Some(blob.size), "local"),
        Ok(None) => match node.origin(digest) {
            Ok(Some(origin)) => (origin.size, "miss"),
            Ok(None) => {
                return error(
                    StatusCode::NOT_FOUND,
                    format!("no file with sha256 {digest} is known here"),
                )
            }
            Err(e) => return e.into_response(),
        },
        Err(e) => return NodeError::from(e).into_response(),
    };
    let mut r = StatusCode::OK.into_response();
    if let Some(len) = len {
        r.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    file_headers(r, etag, source)
}

fn file_headers(mut r: Response, etag: &str, source: &'static str) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(IMMUTABLE));
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    h.insert("x-peerpi-source", HeaderValue::from_static(source));
    r
}

/// The byte range to send: `Ok(None)` for the whole file.
fn requested_range(headers: &HeaderMap, size: u64) -> Result<Option<(u64, u64)>, String> {
    let Some(value) = headers.get(header::RANGE) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| "Range header is not ASCII".to_string())?;
    peerpi_core::range::byte_range(value, size).map_err(|e| e.to_string())
}

async fn serve_stored(node: &Node, blob: OpenedBlob, headers: &HeaderMap, etag: &str) -> Response {
    let (status, start, len) = match requested_range(headers, blob.size) {
        Ok(None) => (StatusCode::OK, 0, blob.size),
        Ok(Some((start, len))) => (StatusCode::PARTIAL_CONTENT, start, len),
        Err(message) => {
            let mut r = error(StatusCode::RANGE_NOT_SATISFIABLE, message);
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{}", blob.size)) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return r;
        }
    };
    let file = blob.file;
    let counter = node.clone();
    let stream = peerpi_store::read_range(Arc::new(file), start, len).inspect(move |chunk| {
        if let Ok(c) = chunk {
            counter.metrics().blob_bytes(Source::Local, c.len() as u64);
        }
    });
    let mut r = Response::new(Body::from_stream(stream));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if status == StatusCode::PARTIAL_CONTENT {
        if let Ok(v) =
            HeaderValue::from_str(&format!("bytes {start}-{}/{}", start + len - 1, blob.size))
        {
            r.headers_mut().insert(header::CONTENT_RANGE, v);
        }
    }
    file_headers(r, etag, "local")
}

async fn metrics(State(node): State<Node>) -> Response {
    let store = node.store();
    let swarm = node
        .swarm()
        .map(|s| {
            let c = s.counters();
            SwarmSample {
                connected_peers: c.connected_peers.load(Ordering::Relaxed),
                blocked_peers: c.blocked_peers.load(Ordering::Relaxed),
                provided_keys: c.provided_keys.load(Ordering::Relaxed),
                bytes_served: c.bytes_served.load(Ordering::Relaxed),
                in_flight_served: c.in_flight_served.load(Ordering::Relaxed),
            }
        })
        .unwrap_or_default();
    let text = node.metrics().render(
        store.total_bytes(),
        store.blob_count() as u64,
        store.page_bytes(),
        store.cap_bytes(),
        swarm,
    );
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// The swarm's view of its peers, as JSON (for `peerpi peers`).
async fn peers(State(node): State<Node>) -> Response {
    let Some(swarm) = node.swarm() else {
        return error(
            StatusCode::NOT_FOUND,
            "this node runs without a swarm (peer-to-peer is off)",
        );
    };
    let peers: Vec<serde_json::Value> = swarm
        .peers()
        .into_iter()
        .map(|p| {
            serde_json::json!({
                "peer_id": p.peer_id,
                "addrs": p.addrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "region": p.region,
                "rtt_ms": p.rtt.map(|d| d.as_secs_f64() * 1000.0),
                "bytes_in": p.bytes_in,
                "bytes_out": p.bytes_out,
                "connected": p.connected,
                "blocked": p.blocked,
                "blocked_for_s": p.blocked_until.map(|u| {
                    u.saturating_duration_since(std::time::Instant::now()).as_secs()
                }),
            })
        })
        .collect();
    let body = serde_json::json!({
        "peer_id": swarm.local_peer_id().to_string(),
        "region": swarm.region(),
        "listen": swarm.listen_addrs().iter().map(ToString::to_string).collect::<Vec<_>>(),
        "bulk_port": swarm.bulk_port(),
        "peers": peers,
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}
