//! The index inside the rig: the fake upstream (test support from
//! `peerpi-testkit`) serving a package set shaped like what CI jobs install
//! (a few application graphs over shared libraries, wheels and sdists,
//! sizes from 10 KB up), plus `/_stats`: how often each file was sent, from
//! which the report computes upstream egress against unique bytes.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::routing::get;
use clap::{Args, ValueEnum};
use peerpi_testkit::server::{router, IndexState};
use peerpi_testkit::{sdist, wheel, DistSpec, FakeFile};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PackageSet {
    /// 12 projects, a few MB in all: the CI scenario.
    Small,
}

#[derive(Debug, Clone, Args)]
pub struct IndexArgs {
    #[arg(long)]
    pub listen: SocketAddr,
    #[arg(long, value_enum, default_value_t = PackageSet::Small)]
    pub set: PackageSet,
    /// Stop after this many seconds.
    #[arg(long, default_value_t = 3600)]
    pub lifetime_s: u64,
}

/// The requirement sets jobs install: overlapping graphs.
pub fn requirement_sets(set: PackageSet) -> Vec<Vec<&'static str>> {
    match set {
        PackageSet::Small => vec![
            vec!["webapp"],
            vec!["etl"],
            vec!["mlkit"],
            vec!["webapp", "etl"],
        ],
    }
}

pub fn files(set: PackageSet) -> Vec<FakeFile> {
    match set {
        PackageSet::Small => {
            let lib = |name: &str, kib: u64| wheel(&DistSpec::new(name, "1.0").padded(kib << 10));
            vec![
                wheel(
                    &DistSpec::new("webapp", "2.1")
                        .requires("httpcore")
                        .requires("templating")
                        .requires("orm")
                        .padded(40 << 10),
                ),
                wheel(
                    &DistSpec::new("etl", "0.9")
                        .requires("orm")
                        .requires("dataframes")
                        .requires("compression")
                        .padded(30 << 10),
                ),
                wheel(
                    &DistSpec::new("mlkit", "3.0")
                        .requires("dataframes")
                        .requires("linalg")
                        .padded(60 << 10),
                ),
                lib("httpcore", 120),
                lib("templating", 80),
                wheel(
                    &DistSpec::new("orm", "1.4")
                        .requires("dbdriver")
                        .padded(300 << 10),
                ),
                sdist(&DistSpec::new("dbdriver", "0.3")),
                wheel(
                    &DistSpec::new("dataframes", "2.0")
                        .requires("linalg")
                        .padded(2 << 20),
                ),
                lib("linalg", 1500),
                lib("compression", 10),
                // Older releases jobs do not pick: on the pages, never fetched.
                lib("oldlib", 50),
                wheel(&DistSpec::new("linalg", "0.9").padded(1 << 20)),
            ]
        }
    }
}

pub fn serve(args: &IndexArgs) -> Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(async {
            let state = IndexState::new(files(args.set));
            let stats_state = state.clone();
            let app = router(state).route(
                "/_stats",
                get(move || {
                    let state = stats_state.clone();
                    async move {
                        (
                            [(axum::http::header::CONTENT_TYPE, "application/json")],
                            stats(&state).to_string(),
                        )
                    }
                }),
            );
            let listener = tokio::net::TcpListener::bind(args.listen)
                .await
                .with_context(|| format!("binding {}", args.listen))?;
            println!("index on http://{}/simple/", args.listen);
            let server = axum::serve(listener, app);
            let lifetime = std::time::Duration::from_secs(args.lifetime_s);
            match tokio::time::timeout(lifetime, server).await {
                Ok(result) => result.context("serving"),
                Err(_) => Ok(()),
            }
        })
}

/// Each file, its length and how often it was sent.
fn stats(state: &Arc<IndexState>) -> serde_json::Value {
    let files: Vec<serde_json::Value> = state
        .files()
        .iter()
        .map(|f| {
            serde_json::json!({
                "filename": f.filename,
                "len": f.len,
                "requests": state.count(&format!("/files/{}", f.filename)),
            })
        })
        .collect();
    serde_json::json!({ "files": files })
}
