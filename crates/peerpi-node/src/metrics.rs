//! Prometheus metrics of a node, exposed at `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Where blob bytes came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    Local,
    Peer,
    Upstream,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Local => "local",
            Source::Peer => "peer",
            Source::Upstream => "upstream",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ChannelLabels {
    pub channel: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub kind: String,
    pub outcome: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct HttpLabels {
    pub route: String,
    pub status: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RoleLabels {
    pub role: String,
}

pub struct Metrics {
    registry: Registry,
    tuf_refreshes: Family<OutcomeLabels, Counter>,
    tuf_pages_refused: Family<ReasonLabels, Counter>,
    tuf_metadata_bytes: Family<SourceLabels, Counter>,
    scrubbed_bytes: Counter,
    scrub_damaged: Counter,
    tuf_expires: Family<RoleLabels, Gauge>,
    tuf_timestamp_from_peers: Gauge,
    blob_bytes: Family<SourceLabels, Counter>,
    blob_hits: Family<SourceLabels, Counter>,
    verification_failures: Family<SourceLabels, Counter>,
    fetch_seconds: Family<SourceLabels, Histogram, fn() -> Histogram>,
    peer_transfers: Family<ChannelLabels, Counter>,
    peer_hedges: Counter,
    peer_ranges: Family<OutcomeLabels, Counter>,
    replicas: Family<OutcomeLabels, Counter>,
    peer_in_flight_transfers: Counter,
    upstream_bytes_saved: Counter,
    upstream_requests: Family<UpstreamLabels, Counter>,
    http_requests: Family<HttpLabels, Counter>,
    cache_bytes: Gauge,
    cache_blobs: Gauge,
    page_catalog_bytes: Gauge,
    cache_cap_bytes: Gauge,
    connected_peers: Gauge,
    blocked_peers: Gauge,
    provided_keys: Gauge,
    peer_bytes_served: Gauge,
    peer_in_flight_served: Gauge,
}

/// Swarm figures sampled when metrics are scraped.
#[derive(Debug, Default, Clone, Copy)]
pub struct SwarmSample {
    pub connected_peers: u64,
    pub blocked_peers: u64,
    pub provided_keys: u64,
    pub bytes_served: u64,
    pub in_flight_served: u64,
}

fn count_outcome(family: &Family<OutcomeLabels, Counter>, outcome: &str) {
    family
        .get_or_create(&OutcomeLabels {
            outcome: outcome.to_string(),
        })
        .inc();
}

fn source(s: Source) -> SourceLabels {
    SourceLabels {
        source: s.as_str().to_string(),
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("peerpi");
        let m = Self {
            tuf_refreshes: Family::default(),
            tuf_pages_refused: Family::default(),
            tuf_metadata_bytes: Family::default(),
            scrubbed_bytes: Counter::default(),
            scrub_damaged: Counter::default(),
            tuf_expires: Family::default(),
            tuf_timestamp_from_peers: Gauge::default(),
            blob_bytes: Family::default(),
            blob_hits: Family::default(),
            verification_failures: Family::default(),
            // 1 ms to about 65 s.
            fetch_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 17))
            }),
            peer_transfers: Family::default(),
            peer_hedges: Counter::default(),
            peer_ranges: Family::default(),
            replicas: Family::default(),
            peer_in_flight_transfers: Counter::default(),
            upstream_bytes_saved: Counter::default(),
            upstream_requests: Family::default(),
            http_requests: Family::default(),
            cache_bytes: Gauge::default(),
            cache_blobs: Gauge::default(),
            page_catalog_bytes: Gauge::default(),
            cache_cap_bytes: Gauge::default(),
            connected_peers: Gauge::default(),
            blocked_peers: Gauge::default(),
            provided_keys: Gauge::default(),
            peer_bytes_served: Gauge::default(),
            peer_in_flight_served: Gauge::default(),
            // Replaced below by the registry the metrics are registered in.
            registry: Registry::default(),
        };
        registry.register(
            "blob_bytes",
            "Blob bytes obtained, by source: local (read from the store for a client), peer or upstream (received)",
            m.blob_bytes.clone(),
        );
        registry.register(
            "blob_hits",
            "Blob requests answered from the store (local), and downloads completed from peers or upstream",
            m.blob_hits.clone(),
        );
        registry.register(
            "verification_failures",
            "Blobs whose bytes did not match the trusted digest or length, by source",
            m.verification_failures.clone(),
        );
        registry.register(
            "blob_fetch_seconds",
            "Time from starting a download to the verified blob in the store, by the source that completed it",
            m.fetch_seconds.clone(),
        );
        registry.register(
            "peer_transfers",
            "Transfers started from peers, by channel: stream (libp2p) or bulk (HTTP with a ticket)",
            m.peer_transfers.clone(),
        );
        registry.register(
            "peer_hedges",
            "Transfer requests hedged: a provider had not answered within the learned delay, so a second was asked too",
            m.peer_hedges.clone(),
        );
        registry.register(
            "peer_ranges",
            "Later ranges of large files asked of other providers, by outcome: appended, late (not done in time: the first transfer sent it), failed (broke off), refused (not started)",
            m.peer_ranges.clone(),
        );
        registry.register(
            "replicas",
            "Second copies of large files in the region, by outcome: requested (this node asked a peer, which accepted), made (this node kept one a peer asked for), declined, failed",
            m.replicas.clone(),
        );
        registry.register(
            "peer_in_flight_transfers",
            "Transfers started from peers that were still fetching the blob (its bytes shared as they arrived)",
            m.peer_in_flight_transfers.clone(),
        );
        registry.register(
            "upstream_bytes_saved",
            "Bytes of verified blobs that came from peers instead of upstream",
            m.upstream_bytes_saved.clone(),
        );
        registry.register(
            "upstream_requests",
            "Requests to the upstream index, by kind (page, file) and outcome",
            m.upstream_requests.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests served, by route and status",
            m.http_requests.clone(),
        );
        registry.register(
            "cache_size_bytes",
            "Bytes of blobs in the store",
            m.cache_bytes.clone(),
        );
        registry.register("cache_blobs", "Blobs in the store", m.cache_blobs.clone());
        registry.register(
            "page_catalog_bytes",
            "Bytes of project pages in the catalog (counted against the cache cap)",
            m.page_catalog_bytes.clone(),
        );
        registry.register(
            "cache_capacity_bytes",
            "The store's size cap",
            m.cache_cap_bytes.clone(),
        );
        registry.register(
            "connected_peers",
            "Peers with an open connection",
            m.connected_peers.clone(),
        );
        registry.register(
            "blocked_peers",
            "Peers blocked for serving bad data",
            m.blocked_peers.clone(),
        );
        registry.register(
            "provided_keys",
            "CIDs this node announces on the DHT",
            m.provided_keys.clone(),
        );
        registry.register(
            "peer_served_bytes",
            "Blob bytes this node served to other peers",
            m.peer_bytes_served.clone(),
        );
        registry.register(
            "peer_in_flight_served",
            "Transfers this node served to peers from a blob it was still fetching",
            m.peer_in_flight_served.clone(),
        );
        registry.register(
            "tuf_refresh",
            "TUF metadata refreshes, by outcome (ok; from_peers: the signer could not be reached and the timestamp came from peers; error)",
            m.tuf_refreshes.clone(),
        );
        registry.register(
            "tuf_pages_refused",
            "Pages refused under TUF, by reason (unverifiable: the metadata cannot be trusted; not_signed: the signer did not sign it in time, or the index does not sign it; peer_page_not_signed: a peer named a page the index did not sign)",
            m.tuf_pages_refused.clone(),
        );
        registry.register(
            "scrubbed_bytes",
            "Bytes of stored blobs re-hashed by the background scrub and found intact",
            m.scrubbed_bytes.clone(),
        );
        registry.register(
            "scrub_damaged_blobs",
            "Stored blobs the background scrub found damaged on disk (removed and withdrawn)",
            m.scrub_damaged.clone(),
        );
        registry.register(
            "tuf_metadata_bytes",
            "TUF metadata bytes received, by source (signer: over HTTP or as the last source of a blob; peer; store: already held as a blob)",
            m.tuf_metadata_bytes.clone(),
        );
        registry.register(
            "tuf_expires_seconds",
            "Seconds until the trusted TUF metadata of each top-level role expires",
            m.tuf_expires.clone(),
        );
        registry.register(
            "tuf_timestamp_from_peers",
            "1 when the signer could not be reached at the last TUF refresh and the timestamp is the newest peers hold (freshness then rests on its expiry alone), else 0",
            m.tuf_timestamp_from_peers.clone(),
        );
        Self { registry, ..m }
    }

    pub fn tuf_refresh(&self, outcome: &str) {
        self.tuf_refreshes
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// Blob requests answered and bytes obtained so far, by source.
    pub fn by_source(&self) -> [(Source, u64, u64); 3] {
        [Source::Local, Source::Peer, Source::Upstream].map(|s| {
            let labels = source(s);
            (
                s,
                self.blob_hits.get_or_create(&labels).get(),
                self.blob_bytes.get_or_create(&labels).get(),
            )
        })
    }

    /// Bytes of verified blobs that came from peers instead of upstream.
    pub fn bytes_saved(&self) -> u64 {
        self.upstream_bytes_saved.get()
    }

    pub fn scrubbed(&self, bytes: u64) {
        self.scrubbed_bytes.inc_by(bytes);
    }

    pub fn scrub_damaged(&self) {
        self.scrub_damaged.inc();
    }

    pub fn tuf_metadata_bytes(&self, source: &str, bytes: u64) {
        self.tuf_metadata_bytes
            .get_or_create(&SourceLabels {
                source: source.to_string(),
            })
            .inc_by(bytes);
    }

    pub fn tuf_page_refused(&self, reason: &str) {
        self.tuf_pages_refused
            .get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn tuf_expires(&self, role: &str, seconds: i64) {
        self.tuf_expires
            .get_or_create(&RoleLabels {
                role: role.to_string(),
            })
            .set(seconds);
    }

    pub fn tuf_timestamp_from_peers(&self, from_peers: bool) {
        self.tuf_timestamp_from_peers.set(i64::from(from_peers));
    }

    pub fn blob_bytes(&self, s: Source, bytes: u64) {
        self.blob_bytes.get_or_create(&source(s)).inc_by(bytes);
    }

    pub fn blob_hit(&self, s: Source) {
        self.blob_hits.get_or_create(&source(s)).inc();
    }

    pub fn verification_failure(&self, s: Source) {
        self.verification_failures.get_or_create(&source(s)).inc();
    }

    pub fn blob_fetched(&self, s: Source, seconds: f64) {
        self.fetch_seconds
            .get_or_create(&source(s))
            .observe(seconds);
    }

    pub fn upstream_bytes_saved(&self, bytes: u64) {
        self.upstream_bytes_saved.inc_by(bytes);
    }

    pub fn peer_hedge(&self) {
        self.peer_hedges.inc();
    }

    /// A step of a second copy for the region (see `replication`).
    pub fn replica(&self, outcome: &str) {
        count_outcome(&self.replicas, outcome);
    }

    /// What became of a range of a large file asked of another provider.
    pub fn peer_range(&self, outcome: &str) {
        count_outcome(&self.peer_ranges, outcome);
    }

    pub fn peer_transfer(&self, channel: &str, in_flight: bool) {
        self.peer_transfers
            .get_or_create(&ChannelLabels {
                channel: channel.to_string(),
            })
            .inc();
        if in_flight {
            self.peer_in_flight_transfers.inc();
        }
    }

    pub fn upstream_request(&self, kind: &str, outcome: &str) {
        self.upstream_requests
            .get_or_create(&UpstreamLabels {
                kind: kind.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
    }

    pub fn http_request(&self, route: &str, status: u16) {
        self.http_requests
            .get_or_create(&HttpLabels {
                route: route.to_string(),
                status: status.to_string(),
            })
            .inc();
    }

    /// The text exposition, with the cache gauges set from the store.
    pub fn render(
        &self,
        cache_bytes: u64,
        cache_blobs: u64,
        page_bytes: u64,
        cap_bytes: u64,
        swarm: SwarmSample,
    ) -> String {
        self.page_catalog_bytes.set(page_bytes as i64);
        self.connected_peers.set(swarm.connected_peers as i64);
        self.blocked_peers.set(swarm.blocked_peers as i64);
        self.provided_keys.set(swarm.provided_keys as i64);
        self.peer_bytes_served.set(swarm.bytes_served as i64);
        self.peer_in_flight_served
            .set(swarm.in_flight_served as i64);
        self.cache_bytes.set(cache_bytes as i64);
        self.cache_blobs.set(cache_blobs as i64);
        self.cache_cap_bytes.set(cap_bytes as i64);
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
