//! A trustless gateway view (the IPFS HTTP trustless gateway
//! specification) of the blobs this node holds: `GET /ipfs/<cid>` answers a
//! raw block (`application/vnd.ipld.raw`) or a CAR holding it
//! (`application/vnd.ipld.car`), so that IPFS tooling can fetch what a node
//! announces and verify it by its CID. Only raw sha2-256 CIDs (the ones
//! peerpi announces), only what the store holds (the gateway never fetches),
//! no paths: a raw block has none.

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use peerpi_core::{car, Cid, Sha256Digest};

use super::{error, etag_matches, IMMUTABLE};
use crate::metrics::Source;
use crate::Node;

const RAW: &str = "application/vnd.ipld.raw";
const CAR: &str = "application/vnd.ipld.car";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Raw,
    Car,
}

/// `?format=raw|car` wins; else the `Accept` header names one.
fn format_of(query: Option<&str>, headers: &HeaderMap) -> Option<Format> {
    let asked = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|pair| pair.strip_prefix("format="));
    match asked {
        Some("raw") => return Some(Format::Raw),
        Some("car") => return Some(Format::Car),
        _ => {}
    }
    let accept = headers.get(header::ACCEPT)?.to_str().ok()?;
    accept
        .split(',')
        .find_map(|item| match item.split(';').next().map(str::trim) {
            Some(RAW) => Some(Format::Raw),
            Some(CAR) => Some(Format::Car),
            _ => None,
        })
}

pub(super) async fn ipfs(
    State(node): State<Node>,
    Path(rest): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let (cid_text, path) = rest.split_once('/').unwrap_or((&rest, ""));
    if !path.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "a raw block has no paths: ask for /ipfs/<cid> alone",
        );
    }
    let cid = match Cid::try_from(cid_text) {
        Ok(cid) => cid,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("not a CID: {e}")),
    };
    let Some(digest) = Sha256Digest::from_cid(&cid) else {
        return error(
            StatusCode::NOT_IMPLEMENTED,
            "this gateway serves CIDv1 raw (0x55) sha2-256 blocks, the CIDs peerpi announces",
        );
    };
    let Some(format) = format_of(query.as_deref(), &headers) else {
        return error(
            StatusCode::NOT_ACCEPTABLE,
            format!("a trustless gateway: ask for {RAW} or {CAR} (Accept, or ?format=raw|car)"),
        );
    };
    let blob = match node.store().open_blob(&digest) {
        Ok(Some(blob)) => blob,
        Ok(None) => {
            return error(
                StatusCode::NOT_FOUND,
                format!("{cid} is not held by this node (the gateway serves what it holds and fetches nothing)"),
            )
        }
        Err(e) => return crate::NodeError::from(e).into_response(),
    };
    let etag = format!(
        "\"{cid}.{}\"",
        if format == Format::Raw { "raw" } else { "car" }
    );
    let mut response = if etag_matches(&headers, &etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let counter = node.clone();
        let bytes = peerpi_store::read_range(std::sync::Arc::new(blob.file), 0, blob.size).inspect(
            move |chunk| {
                if let Ok(c) = chunk {
                    counter.metrics().blob_bytes(Source::Local, c.len() as u64);
                }
            },
        );
        let (framing, content_type) = match format {
            Format::Raw => (Vec::new(), RAW),
            Format::Car => {
                let mut framing = car::header(&cid);
                framing.extend(car::section_prefix(&cid, blob.size));
                (framing, "application/vnd.ipld.car; version=1")
            }
        };
        let length = framing.len() as u64 + blob.size;
        let head = futures_util::stream::once(async move {
            Ok::<_, std::io::Error>(bytes::Bytes::from(framing))
        });
        let mut r = Response::new(Body::from_stream(head.chain(bytes)));
        let h = r.headers_mut();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        r
    };
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(IMMUTABLE));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::VARY, HeaderValue::from_static("Accept"));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("/ipfs/{cid}")) {
        h.insert("x-ipfs-path", v);
    }
    response
}
