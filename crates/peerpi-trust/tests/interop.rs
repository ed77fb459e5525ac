//! Interoperability with the TUF reference implementation (python-tuf), both
//! ways, over real HTTP on loopback: a repository written with python-tuf's
//! Metadata API is read by peerpi's client, and a repository written by
//! peerpi's signer is read by python-tuf's `ngclient.Updater`.
//!
//! Needs a Python with `tuf` and `cryptography` (the README's test command
//! installs them); `PEERPI_TEST_PYTHON` names the interpreter (default
//! `python3`). Missing packages fail the test with the fix, never skip it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use peerpi_testkit::repo_server::RepoServer;
use peerpi_trust::keys::SigningKey;
use peerpi_trust::signer::{InitOptions, Keys, Lifetimes, NewTarget, Repository};
use peerpi_trust::{Client, HttpFetcher, Limits, MetadataDir};
use sha2::{Digest, Sha256};
use url::Url;

fn python() -> String {
    let python = std::env::var("PEERPI_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let probe = Command::new(&python)
        .args(["-c", "import tuf.ngclient, cryptography"])
        .output()
        .unwrap_or_else(|e| panic!("{python}: {e}"));
    assert!(
        probe.status.success(),
        "{python} lacks python-tuf: run `{python} -m pip install tuf cryptography` \
         (or set PEERPI_TEST_PYTHON): {}",
        String::from_utf8_lossy(&probe.stderr)
    );
    python
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(name)
}

async fn read_with_peerpi(keytype: &str) {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let made = Command::new(python())
        .arg(script("make_repo.py"))
        .arg(&repo)
        .arg(keytype)
        .args([
            "pkgs/x/a-1.0-py3-none-any.whl=wheel bytes",
            "top-level.txt=top",
        ])
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let server = RepoServer::start(&repo).await.unwrap();
    let store = dir.path().join("client");
    std::fs::create_dir_all(&store).unwrap();
    std::fs::copy(repo.join("metadata/1.root.json"), store.join("root.json")).unwrap();
    let mut client = Client::new(
        MetadataDir::new(&store),
        HttpFetcher::new(Duration::from_secs(10)).unwrap(),
        &Url::parse(&server.url("metadata/")).unwrap(),
        Limits::default(),
    )
    .unwrap();
    client.refresh().await.unwrap();
    let base = Url::parse(&server.url("targets/")).unwrap();
    for (target, content) in [
        ("pkgs/x/a-1.0-py3-none-any.whl", &b"wheel bytes"[..]),
        ("top-level.txt", b"top"),
    ] {
        let info = client.lookup(target).await.unwrap().expect("target listed");
        let file = client
            .download(&info, &base, &dir.path().join("out"))
            .await
            .unwrap();
        assert_eq!(std::fs::read(file).unwrap(), content);
    }
    assert!(client.lookup("absent").await.unwrap().is_none());
}

#[tokio::test]
async fn peerpi_reads_a_python_tuf_repository_with_ed25519_keys() {
    read_with_peerpi("ed25519").await;
}

#[tokio::test]
async fn peerpi_reads_a_python_tuf_repository_with_ecdsa_keys() {
    read_with_peerpi("ecdsa").await;
}

#[tokio::test]
async fn python_tuf_downloads_a_target_from_a_peerpi_signed_repository() {
    let python = python();
    let dir = tempfile::tempdir().unwrap();
    let repo_dir = dir.path().join("repo");
    let keys_dir = dir.path().join("keys");
    Repository::init(
        &repo_dir,
        &keys_dir,
        &InitOptions {
            bins: 256,
            ..InitOptions::default()
        },
    )
    .unwrap();
    let content = b"a page, in canonical JSON";
    let path = "simple/requests/index.json";
    let sha256: [u8; 32] = Sha256::digest(content).into();
    let stored = repo_dir
        .join("targets/simple/requests")
        .join(format!("{}.index.json", hex::encode(sha256)));
    std::fs::create_dir_all(stored.parent().unwrap()).unwrap();
    std::fs::write(&stored, content).unwrap();
    let keys = Keys {
        online: Some(SigningKey::load(&keys_dir.join("online.pk8")).unwrap()),
        ..Keys::default()
    };
    let repo = Repository::open(&repo_dir).unwrap();
    repo.add(
        &[NewTarget {
            path: path.into(),
            length: content.len() as u64,
            sha256,
        }],
        &keys,
        Lifetimes::default(),
    )
    .unwrap();
    drop(repo);
    let server = RepoServer::start(&repo_dir).await.unwrap();
    let (metadata_url, targets_url) = (server.url("metadata/"), server.url("targets/"));
    let work = dir.path().join("ngclient");
    let root = repo_dir.join("metadata/1.root.json");
    // The server runs on this runtime: run python on a blocking thread.
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script("ngclient_download.py"))
            .args([&metadata_url, &targets_url])
            .arg(root)
            .arg(path)
            .arg(&work)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "python-tuf refused the repository: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let downloaded = String::from_utf8(output.stdout).unwrap();
    assert_eq!(std::fs::read(downloaded.trim()).unwrap(), content);
}
