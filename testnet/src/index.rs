//! The index inside the rig: the fake upstream (test support from
//! `peerpi-testkit`) serving a package set shaped like what CI jobs install
//! (a few application graphs over shared libraries, wheels and sdists,
//! sizes from 10 KB to 200 MB), plus `/_stats`: how often each file was sent, from
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
    /// 56 projects, 346 files from 10 KB to 200 MB: 40 libraries (3
    /// releases each, every seventh an sdist), 2 projects with 100 releases,
    /// 12 applications over them and a trainer that pulls 250 MB.
    Default,
}

/// Libraries in the default set.
const LIBS: usize = 40;
/// Applications in the default set (the last one is the trainer).
const APPS: usize = 12;

/// The libraries application `app` of the default set requires.
fn app_libs(app: usize) -> Vec<usize> {
    let mut libs: Vec<usize> = (0..4 + app % 3).map(|j| (app * 3 + j * 7) % LIBS).collect();
    libs.sort_unstable();
    libs.dedup();
    libs
}

/// Size of library `i`'s current release: 10 KB growing 22% a step (23 MB
/// for the last).
fn lib_bytes(i: usize) -> u64 {
    (10_240.0 * 1.22f64.powi(i as i32)) as u64
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
        PackageSet::Default => vec![
            vec!["app0"],
            vec!["app1", "app2"],
            vec!["app3"],
            vec!["app4", "app5"],
            vec!["app6"],
            vec!["app7", "app8"],
            vec!["app9", "app10"],
            vec!["app11"],
        ],
    }
}

fn default_files() -> Vec<FakeFile> {
    let mut files = Vec::new();
    for i in 0..LIBS {
        let name = format!("lib{i}");
        for (version, bytes) in [("0.9", 10_240), ("1.0", 10_240), ("1.1", lib_bytes(i))] {
            let spec = DistSpec::new(&name, version);
            files.push(if i % 7 == 3 {
                sdist(&spec)
            } else {
                wheel(&spec.padded(bytes))
            });
        }
    }
    for name in ["hista", "histb"] {
        for minor in 0..100 {
            let spec = DistSpec::new(name, &format!("1.{minor}")).padded(1024);
            files.push(wheel(&spec));
        }
    }
    for app in 0..APPS {
        for (version, current) in [("1.0", false), ("2.0", true)] {
            let mut spec = DistSpec::new(&format!("app{app}"), version).padded(50 << 10);
            if current {
                for lib in app_libs(app) {
                    spec = spec.requires(&format!("lib{lib}"));
                }
                spec = spec.requires(if app % 2 == 0 { "hista" } else { "histb" });
                if app == APPS - 1 {
                    spec = spec.requires("weights").requires("tokenizer");
                }
            }
            files.push(wheel(&spec));
        }
    }
    files.push(wheel(&DistSpec::new("weights", "1.0").padded(200 << 20)));
    files.push(wheel(&DistSpec::new("tokenizer", "1.0").padded(50 << 20)));
    files
}

pub fn files(set: PackageSet) -> Vec<FakeFile> {
    match set {
        PackageSet::Default => default_files(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_set_has_the_shape_the_issue_names() {
        let files = files(PackageSet::Default);
        let projects: std::collections::HashSet<&str> = files
            .iter()
            .map(|f| f.filename.split('-').next().unwrap_or_default())
            .collect();
        assert!((50..=70).contains(&projects.len()), "{}", projects.len());
        assert!((280..=360).contains(&files.len()), "{}", files.len());
        let largest = files.iter().map(|f| f.len).max().unwrap_or_default();
        let smallest = files.iter().map(|f| f.len).min().unwrap_or_default();
        assert!(
            largest >= 200 << 20 && smallest <= 12 << 10,
            "{smallest}..{largest}"
        );
        assert!(files.iter().any(|f| f.filename.ends_with(".tar.gz")));
        // Every project a requirement set names is in the set.
        for set in requirement_sets(PackageSet::Default) {
            for project in set {
                assert!(projects.contains(project), "{project}");
            }
        }
    }
}
