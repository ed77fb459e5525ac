//! peerpi's trust layer: a TUF client that walks delegations lazily (only
//! the roles on a target's path are fetched) and a signer for a
//! PEP-458-shaped repository (top-level targets delegating to hashed bins).
//! Both use `tough`'s schema types for the metadata (targets metadata has
//! its own, in `schema`, where `tough`'s is narrower than the
//! specification); verification, the walk and the writing are here,
//! because `tough`'s loader fetches every role.
//! See `specs/tuf-layout.md`.

pub mod client;
pub mod datastore;
pub mod envelope;
pub mod error;
pub mod fetch;
pub mod keys;
pub mod paths;
pub mod schema;
pub mod signer;
pub mod trusted;

pub use client::{Client, Limits, TargetInfo, TimestampSource};
pub use datastore::MetadataDir;
pub use error::{Result, TrustError};
pub use fetch::{Fetch, FetchError, HttpFetcher};
