//! Tests of a whole node in this process (real HTTP, a real store, the fake
//! upstream index, a real swarm on loopback where they need peers), beside
//! the unit tests of each module. Tests that run the `peerpi` binary or
//! drive pip and uv live in the workspace's suite (`tests/suite`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod cache;
mod http_api;
mod status_page;
