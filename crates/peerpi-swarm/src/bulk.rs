//! The bulk channel: large blob bodies over plain HTTP on a TCP port of their
//! own. The libp2p blob protocol (authenticated by noise, inside the private
//! network when there is one) decides who may fetch and hands out one-time
//! tickets; the body then moves without noise and yamux framing, which on
//! loopback is several times faster (BENCHMARKS.md). Integrity never depended
//! on the channel: the requester verifies the whole blob against the digest
//! from the index, whichever way its bytes came.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use libp2p::PeerId;
use peerpi_core::Sha256Digest;
use tokio::time::Instant;
use tracing::debug;

use crate::protocol::Ticket;
use crate::provider::{outgoing, Grant};
use crate::{lock, FetchError, Shared};

/// Where tickets are redeemed.
const PATH_PREFIX: &str = "/peerpi/blobs/";

/// A ticket's grant, until it is redeemed or expires.
struct Issued {
    grant: Grant,
    expires: Instant,
}

/// This node's side of the bulk channel.
pub(crate) struct Channel {
    pub(crate) port: u16,
    /// Smaller transfers stay on the libp2p stream: for them the extra
    /// connection costs more than the framing.
    pub(crate) min_size: u64,
    ttl: Duration,
    issued: Mutex<HashMap<Ticket, Issued>>,
}

impl Channel {
    pub(crate) fn new(port: u16, min_size: u64, ttl: Duration) -> Self {
        Self {
            port,
            min_size,
            ttl,
            issued: Mutex::new(HashMap::new()),
        }
    }

    /// A one-time ticket for `grant`. The stream permits travel with it, so an
    /// unredeemed ticket counts against the limits until it expires.
    pub(crate) fn issue(&self, grant: Grant) -> Result<Ticket, getrandom::Error> {
        let mut ticket = [0u8; 32];
        getrandom::fill(&mut ticket)?;
        let now = Instant::now();
        let mut issued = lock(&self.issued);
        issued.retain(|_, i| i.expires > now);
        issued.insert(
            ticket,
            Issued {
                grant,
                expires: now + self.ttl,
            },
        );
        Ok(ticket)
    }

    /// Drops expired tickets, giving their stream permits back.
    fn prune(&self, now: Instant) {
        lock(&self.issued).retain(|_, i| i.expires > now);
    }

    fn redeem(&self, ticket: &Ticket) -> Option<Grant> {
        let issued = lock(&self.issued).remove(ticket)?;
        (issued.expires > Instant::now()).then_some(issued.grant)
    }
}

/// Gives the permits of unredeemed tickets back once they expire, whether or
/// not another ticket is issued (in a two-node swarm a peer that never
/// redeems would otherwise wedge serving for good). Ends with the swarm.
pub(crate) async fn prune_tickets(shared: std::sync::Weak<Shared>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if let Some(channel) = shared.bulk.as_ref() {
            channel.prune(Instant::now());
        }
    }
}

/// Connections the bulk channel keeps open at once: every transfer holds a
/// stream permit too, so more than the global stream limit is never useful.
const MAX_CONNECTIONS: usize = 256;

/// Serves redeemed tickets. Connections are capped on their own, so a flood
/// of idle connections here (no ticket needed to connect) cannot starve the
/// node's HTTP front; idle ones close after the header timeout.
pub(crate) async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    let router = Router::new()
        .route(&format!("{PATH_PREFIX}{{digest}}"), get(redeem))
        .with_state(shared);
    let limits = peerpi_http::Limits {
        max_connections: MAX_CONNECTIONS,
        ..peerpi_http::Limits::default()
    };
    peerpi_http::serve(listener, router, limits, std::future::pending()).await;
}

fn refuse(status: StatusCode, message: &str) -> Response {
    (status, format!("{message}\n")).into_response()
}

async fn redeem(
    State(shared): State<Arc<Shared>>,
    Path(digest): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(channel) = shared.bulk.as_ref() else {
        return refuse(StatusCode::NOT_FOUND, "the bulk channel is off");
    };
    let Ok(digest) = digest.parse::<Sha256Digest>() else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "the path must end in a sha256 digest (64 hex digits)",
        );
    };
    let ticket = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|t| hex::decode(t.trim()).ok())
        .and_then(|t| Ticket::try_from(t.as_slice()).ok());
    let Some(ticket) = ticket else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "a ticket is required (Authorization: Bearer <64 hex digits>); \
             peers get one by asking for the blob over /peerpi/blob/2",
        );
    };
    let Some(grant) = channel.redeem(&ticket) else {
        return refuse(StatusCode::FORBIDDEN, "unknown, used or expired ticket");
    };
    if grant.digest != digest {
        return refuse(StatusCode::FORBIDDEN, "this ticket is for another blob");
    }
    debug!(peer = %grant.peer, %digest, offset = grant.offset, len = grant.len, "bulk transfer");
    let len = grant.len;
    (
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
        ],
        Body::from_stream(outgoing(shared.clone(), grant)),
    )
        .into_response()
}

/// The HTTP client for the requesting side: never through a proxy (peers
/// are addressed directly), never decompressing.
pub(crate) fn client(connect_timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .no_proxy()
        .no_gzip()
        .tcp_nodelay(true)
        .connect_timeout(connect_timeout)
        .pool_idle_timeout(Duration::from_secs(60))
        .build()
}

/// Redeems `ticket` at `peer`'s bulk channel; the response body carries
/// exactly `remaining` bytes.
pub(crate) async fn fetch(
    shared: &Shared,
    peer: PeerId,
    ip: IpAddr,
    port: u16,
    digest: &Sha256Digest,
    ticket: &Ticket,
    remaining: u64,
) -> Result<reqwest::Response, FetchError> {
    let protocol = |reason: String| FetchError::Protocol { peer, reason };
    let url = format!("http://{}{PATH_PREFIX}{digest}", SocketAddr::new(ip, port));
    let response = tokio::time::timeout(
        shared.stream_timeout,
        shared
            .http
            .get(&url)
            .bearer_auth(hex::encode(ticket))
            .send(),
    )
    .await
    .map_err(|_| FetchError::Timeout { peer })?
    .map_err(|e| FetchError::Open {
        peer,
        reason: format!("bulk channel {url}: {e}"),
    })?;
    if response.status() != StatusCode::OK {
        return Err(protocol(format!(
            "bulk channel answered {}",
            response.status()
        )));
    }
    if response.content_length() != Some(remaining) {
        return Err(protocol(format!(
            "bulk channel announced {:?} bytes, the stream said {remaining}",
            response.content_length()
        )));
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::Permits;
    use std::fs::File;
    use tokio::sync::Semaphore;

    const TTL: Duration = Duration::from_millis(200);

    fn permits() -> Permits {
        let s = Arc::new(Semaphore::new(2));
        (
            s.clone().try_acquire_owned().unwrap(),
            s.try_acquire_owned().unwrap(),
            None,
        )
    }

    fn file() -> Arc<File> {
        Arc::new(tempfile::tempfile().unwrap())
    }

    #[tokio::test]
    async fn tickets_are_single_use_and_expire() {
        let channel = Channel::new(1, 0, TTL);
        let peer = PeerId::random();
        let digest = Sha256Digest::from_bytes([3; 32]);
        let grant = |offset| Grant {
            peer,
            digest,
            file: file(),
            offset,
            len: 10,
            follower: None,
            permits: permits(),
        };
        let ticket = channel.issue(grant(5)).unwrap();
        let issued = channel.redeem(&ticket).expect("first use");
        assert_eq!(
            (issued.peer, issued.digest, issued.offset, issued.len),
            (peer, digest, 5, 10)
        );
        assert!(channel.redeem(&ticket).is_none(), "second use");

        let late = channel.issue(grant(0)).unwrap();
        tokio::time::sleep(TTL * 2).await;
        assert!(channel.redeem(&late).is_none(), "expired");
    }

    #[tokio::test]
    async fn expired_tickets_give_back_their_stream_permits() {
        let channel = Channel::new(1, 0, TTL);
        let limit = Arc::new(Semaphore::new(1));
        let held = (
            limit.clone().try_acquire_owned().unwrap(),
            Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap(),
            None,
        );
        let digest = Sha256Digest::from_bytes([4; 32]);
        let grant = |permits| Grant {
            peer: PeerId::random(),
            digest,
            file: file(),
            offset: 0,
            len: 1,
            follower: None,
            permits,
        };
        channel.issue(grant(held)).unwrap();
        assert_eq!(
            limit.available_permits(),
            0,
            "an open ticket holds its permit"
        );
        tokio::time::sleep(TTL * 2).await;
        // Issuing prunes expired tickets.
        channel.issue(grant(permits())).unwrap();
        assert_eq!(limit.available_permits(), 1);
    }

    #[tokio::test]
    async fn pruning_alone_gives_back_the_permits_of_expired_tickets() {
        let channel = Channel::new(1, 0, TTL);
        let limit = Arc::new(Semaphore::new(1));
        let held = (
            limit.clone().try_acquire_owned().unwrap(),
            Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap(),
            None,
        );
        channel
            .issue(Grant {
                peer: PeerId::random(),
                digest: Sha256Digest::from_bytes([5; 32]),
                file: file(),
                offset: 0,
                len: 1,
                follower: None,
                permits: held,
            })
            .unwrap();
        channel.prune(Instant::now());
        assert_eq!(limit.available_permits(), 0, "not expired yet");
        channel.prune(Instant::now() + TTL * 2);
        assert_eq!(limit.available_permits(), 1);
    }
}
