//! Every setting of `peerpi serve`, declared once. One struct is read by
//! clap (a flag and a `PEERPI_*` variable each) and by serde (a
//! `peerpi.toml` key each, named as the flag, `mdns`/`p2p` for the `no-`
//! switches); `layered!` gives it `or`, which takes each setting from the
//! higher layer where set. Defaults are not here: they are the library
//! configs' (`NodeConfig::new`, `SwarmConfig::new`, …) or, for what only the
//! binary has, `config::serve`'s constants; `config::serve::defaults` shows
//! them in `--help` and the README's table is checked against them.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use serde::Deserialize;

use super::values::{switched_off, BulkListen, P2pAddr, Size, Span};

/// Declares a struct of optional settings and its `or`: each setting from
/// `self` where set, else from `lower` (flags and variables over the file).
macro_rules! layered {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $(
                $(#[$field_meta:meta])*
                pub $field:ident: Option<$ty:ty>,
            )*
        }
    ) => {
        $(#[$meta])*
        pub struct $name {
            $(
                $(#[$field_meta])*
                pub $field: Option<$ty>,
            )*
        }

        impl $name {
            /// Each setting from `self` where set, else from `lower`.
            pub fn or(self, lower: Self) -> Self {
                Self { $($field: self.$field.or(lower.$field),)* }
            }
        }
    };
}

layered! {
    /// Where a node is: what every command that talks to a node or opens
    /// its store needs.
    #[derive(Debug, Clone, Default, Args, Deserialize)]
    #[serde(rename_all = "kebab-case")]
    pub struct NodePlace {
        /// Address the HTTP index listens on.
        #[arg(long, env = "PEERPI_LISTEN", value_name = "ADDR")]
        pub listen: Option<String>,

        /// Where blobs and the catalog live [default: $XDG_CACHE_HOME/peerpi].
        #[arg(long, env = "PEERPI_DATA_DIR", value_name = "DIR")]
        pub data_dir: Option<PathBuf>,
    }
}

/// What every command that reads the node's configuration takes.
#[derive(Debug, Clone, Default, Args)]
pub struct CommonArgs {
    /// Configuration file (TOML). Default: ./peerpi.toml, then
    /// $XDG_CONFIG_HOME/peerpi/peerpi.toml, when they exist.
    #[arg(long, env = "PEERPI_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(flatten)]
    pub place: NodePlace,
}

layered! {
    /// The settings of a running node beyond where it is.
    #[derive(Debug, Clone, Default, Args, Deserialize)]
    #[serde(rename_all = "kebab-case")]
    pub struct ServeOptions {
        /// Upstream Simple API base URL. Default: inherited from UV_DEFAULT_INDEX,
        /// UV_INDEX_URL, PIP_INDEX_URL or pip's config file (global.index-url).
        #[arg(long, env = "PEERPI_UPSTREAM", value_name = "URL")]
        pub upstream: Option<String>,

        /// Size cap of the blob store, e.g. 20GiB or 500MB.
        #[arg(long, env = "PEERPI_CACHE_SIZE", value_name = "SIZE")]
        pub cache_size: Option<Size>,

        /// Re-hash stored blobs in the background at most this many bytes per
        /// second (a pass 10 minutes after start, then daily; damaged blobs are
        /// removed and withdrawn), or 0 for never.
        #[arg(long, env = "PEERPI_SCRUB_RATE", value_name = "BYTES")]
        pub scrub_rate: Option<Size>,

        /// How long a cached page is served before revalidation, e.g. 10m.
        #[arg(long, env = "PEERPI_PAGE_TTL", value_name = "DURATION")]
        pub page_ttl: Option<Span>,

        /// Cache-Control max-age sent to clients with pages.
        #[arg(long, env = "PEERPI_PAGE_MAX_AGE", value_name = "DURATION")]
        pub page_max_age: Option<Span>,

        /// Limit on one upstream page request.
        #[arg(long, env = "PEERPI_UPSTREAM_TIMEOUT", value_name = "DURATION")]
        pub upstream_timeout: Option<Span>,

        /// How long in-flight responses may take to finish on shutdown.
        #[arg(long, env = "PEERPI_SHUTDOWN_TIMEOUT", value_name = "DURATION")]
        pub shutdown_timeout: Option<Span>,

        /// Log format.
        #[arg(long, env = "PEERPI_LOG_FORMAT", value_enum)]
        pub log_format: Option<LogFormat>,

        /// libp2p listen address, repeatable.
        #[arg(
            long = "p2p-listen",
            env = "PEERPI_P2P_LISTEN",
            value_name = "MULTIADDR",
            value_delimiter = ','
        )]
        pub p2p_listen: Option<Vec<P2pAddr>>,

        /// A peer to join the swarm through, repeatable, e.g.
        /// /dns/node-a.example/tcp/7504/p2p/<peer id> (see `peerpi id`).
        #[arg(
            long,
            env = "PEERPI_BOOTSTRAP",
            value_name = "MULTIADDR",
            value_delimiter = ','
        )]
        pub bootstrap: Option<Vec<P2pAddr>>,

        /// Do not look for peers on the LAN with mDNS (file: `mdns = false`)
        /// [default: on in an open swarm, off in a private one].
        #[arg(
            long = "no-mdns",
            env = "PEERPI_NO_MDNS",
            num_args = 0,
            default_missing_value = "true",
            value_parser = switched_off
        )]
        pub mdns: Option<bool>,

        /// Run without peer-to-peer, upstream only (file: `p2p = false`).
        #[arg(
            long = "no-p2p",
            env = "PEERPI_NO_P2P",
            num_args = 0,
            default_missing_value = "true",
            value_parser = switched_off
        )]
        pub p2p: Option<bool>,

        /// Region name advertised to peers; same-region peers are preferred.
        #[arg(long, env = "PEERPI_REGION", value_name = "NAME")]
        pub region: Option<String>,

        /// Private swarm key file: only nodes with the same key connect
        /// (create one with `peerpi keygen --swarm-key FILE`).
        #[arg(long, env = "PEERPI_SWARM_KEY", value_name = "FILE")]
        pub swarm_key: Option<PathBuf>,

        /// How long to wait for a peer to start delivering before going upstream.
        #[arg(long, env = "PEERPI_PEER_DEADLINE", value_name = "DURATION")]
        pub peer_deadline: Option<Span>,

        /// How long a peer that broke off or stalled a transfer is not asked
        /// again; a peer that sent bad bytes is blocked for good.
        #[arg(long, env = "PEERPI_PEER_SUSPENSION", value_name = "DURATION")]
        pub peer_suspension: Option<Span>,

        /// Silence after which a peer transfer counts as stalled.
        #[arg(long, env = "PEERPI_PEER_TIMEOUT", value_name = "DURATION")]
        pub peer_timeout: Option<Span>,

        /// Where peers fetch large blobs over plain HTTP with a one-time ticket
        /// from the swarm, or `off` to send everything on libp2p streams.
        #[arg(long, env = "PEERPI_BULK_LISTEN", value_name = "HOST:PORT|off")]
        pub bulk_listen: Option<BulkListen>,

        /// Upload to peers at most this many bytes per second in all, e.g.
        /// 50MiB, or 0 for unlimited [default: unlimited].
        #[arg(long, env = "PEERPI_UPLOAD_LIMIT", value_name = "BYTES")]
        pub upload_limit: Option<Size>,

        /// Files at least this large that only this node holds in its region
        /// are copied to a second node of the region, and this node keeps
        /// such copies for its peers; 0 turns both off.
        #[arg(long, env = "PEERPI_REPLICATE_MIN_SIZE", value_name = "BYTES")]
        pub replicate_min_size: Option<Size>,

        /// How long after a large file is stored the region's copies of it
        /// are counted (peers that want it meanwhile make the second copy).
        #[arg(long, env = "PEERPI_REPLICATE_AFTER", value_name = "DURATION")]
        pub replicate_after: Option<Span>,

        /// Sign every fetched page into a TUF repository and serve it at
        /// /tuf/: the directory holding the repository's online key
        /// (online.pk8, from `peerpi tuf init`) [default: not a signer].
        #[arg(long, env = "PEERPI_SIGNER", value_name = "KEYDIR")]
        pub signer: Option<PathBuf>,

        /// The TUF repository a signer signs into [default: DATA_DIR/tuf].
        #[arg(long, env = "PEERPI_TUF_REPO", value_name = "DIR")]
        pub tuf_repo: Option<PathBuf>,

        /// How often a signer signs the pages it fetched.
        #[arg(long, env = "PEERPI_SIGN_INTERVAL", value_name = "DURATION")]
        pub sign_interval: Option<Span>,

        /// Which pages to trust: `tuf` (only pages a TUF signer signed; no
        /// upstream), `tuf-or-index` (signed pages where there are, the upstream
        /// index otherwise), `index` (the upstream index over TLS).
        #[arg(long, env = "PEERPI_TRUST", value_enum)]
        pub trust: Option<TrustArg>,

        /// The TUF root to trust (the repository's 1.root.json, installed by
        /// the operator) [required with --trust tuf or tuf-or-index].
        #[arg(long, env = "PEERPI_TUF_ROOT", value_name = "FILE")]
        pub tuf_root: Option<PathBuf>,

        /// The signer's TUF repository, e.g. http://signer:7503/tuf/ [required
        /// with --trust tuf or tuf-or-index].
        #[arg(long, env = "PEERPI_TUF_URL", value_name = "URL")]
        pub tuf_url: Option<String>,
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TrustArg {
    Tuf,
    TufOrIndex,
    /// The index's own TUF metadata (PEP 458), no signer.
    IndexSigned,
    #[default]
    Index,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}
