//! The tests of the `peerpi` binary and of nodes driven as clients and
//! operators use them, one module per area, in one test binary: each
//! binary links libp2p, sled, axum and tough, and fourteen of them cost
//! minutes of linking in CI.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

mod clients;
mod doctor;
mod examples;
mod hardening;
mod in_flight;
mod index_signed;
mod peers;
mod prefetch;
mod process;
mod replication;
mod scrub;
mod tuf_cli;
mod tuf_cluster;
mod tuf_signer;
