//! Interoperability with the TUF reference implementation (python-tuf), both
//! ways, over real HTTP on loopback: a repository written with python-tuf's
//! Metadata API is read by peerpi's client, and a repository written by
//! peerpi's signer is read by python-tuf's `ngclient.Updater`.
//!
//! Needs a Python with `tuf` and `cryptography` (the README's test command
//! installs them); `PEERPI_TEST_PYTHON` names the interpreter (default
//! `python3`). Missing packages fail the test with the fix, never skip it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::process::Command;
use std::time::Duration;

use peerpi_testkit::repo_server::RepoServer;
use peerpi_trust::keys::SigningKey;
use peerpi_trust::signer::{InitOptions, Keys, Lifetimes, NewTarget, Repository};
use peerpi_trust::{Client, HttpFetcher, Limits, MetadataDir, TrustError};
use sha2::{Digest, Sha256};
use url::Url;

use peerpi_testkit::{python, python_script as script};

/// A repository made by python-tuf (`make_repo.py OUT KEYTYPE ARGS...`),
/// served on loopback, and a refreshed peerpi client of it.
struct PythonRepo {
    dir: tempfile::TempDir,
    server: RepoServer,
    client: Client<HttpFetcher>,
}

impl PythonRepo {
    async fn make(keytype: &str, args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        let made = Command::new(python())
            .arg(script("make_repo.py"))
            .arg(&repo)
            .arg(keytype)
            .args(args)
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
        PythonRepo {
            dir,
            server,
            client,
        }
    }

    /// Looks `target` up and downloads it; its bytes.
    async fn download(&mut self, target: &str) -> Result<Vec<u8>, TrustError> {
        let info = self.client.lookup(target).await?.expect("target listed");
        let base = Url::parse(&self.server.url("targets/")).unwrap();
        let file = self
            .client
            .download(&info, &base, &self.dir.path().join("out"))
            .await?;
        Ok(std::fs::read(file).unwrap())
    }
}

async fn read_with_peerpi(keytype: &str, hash_args: &[&str]) {
    let wheel = "pkgs/x/a-1.0-py3-none-any.whl";
    let targets = [&format!("{wheel}=wheel bytes"), "top-level.txt=top"];
    let args: Vec<&str> = hash_args.iter().copied().chain(targets).collect();
    let mut repo = PythonRepo::make(keytype, &args).await;
    assert_eq!(repo.download(wheel).await.unwrap(), b"wheel bytes");
    assert_eq!(repo.download("top-level.txt").await.unwrap(), b"top");
    assert!(repo.client.lookup("absent").await.unwrap().is_none());
}

#[tokio::test]
async fn peerpi_reads_a_python_tuf_repository_with_ed25519_keys() {
    read_with_peerpi("ed25519", &[]).await;
}

#[tokio::test]
async fn peerpi_reads_a_python_tuf_repository_with_ecdsa_keys() {
    read_with_peerpi("ecdsa", &[]).await;
}

/// The specification lets a target list any hash algorithms; `tough`'s
/// schema refused a `hashes` object without `sha256`.
#[tokio::test]
async fn targets_hashed_with_sha512_or_blake2b_only_download() {
    read_with_peerpi("ed25519", &["--hash", "sha512"]).await;
    read_with_peerpi("ed25519", &["--hash", "blake2b-256"]).await;
    read_with_peerpi("ed25519", &["--hash", "sha512", "--hash", "blake2b-256"]).await;
}

/// TAP 15 hashed bins as python-tuf writes them (the form of the index's
/// PEP 458 deployment). Five bits: 32 bins with two-digit names, so the
/// shift and the padding both matter; python-tuf put each target in its
/// bin, and a wrong bin name in peerpi would find nothing.
#[tokio::test]
async fn peerpi_reads_succinct_hashed_bins_made_by_python_tuf() {
    let targets: Vec<String> = (0..12)
        .map(|n| format!("simple/project-{n}/index.html=page {n}"))
        .collect();
    let mut args = vec!["--succinct", "5", "--hash", "blake2b-256"];
    args.extend(targets.iter().map(String::as_str));
    let mut repo = PythonRepo::make("ed25519", &args).await;
    for n in 0..12 {
        let page = repo
            .download(&format!("simple/project-{n}/index.html"))
            .await
            .unwrap();
        assert_eq!(page, format!("page {n}").as_bytes());
    }
    assert!(repo
        .client
        .lookup("simple/absent/index.html")
        .await
        .unwrap()
        .is_none());
}

/// `shared` is delegated by team-a (for `a/*`, to key S, which signed it)
/// and by team-b (for every path, to another key). Trusted through team-a,
/// it must not be trusted through team-b for a path only team-b delegates,
/// although the client already holds it verified.
#[tokio::test]
async fn a_role_two_roles_delegate_is_verified_on_each_search_path() {
    let args = ["--diamond", "a/x=through team-a", "b/evil=through team-b"];
    let mut repo = PythonRepo::make("ed25519", &args).await;
    assert_eq!(repo.download("a/x").await.unwrap(), b"through team-a");
    let refused = repo.client.lookup("b/evil").await;
    assert!(
        matches!(refused, Err(TrustError::ThresholdNotMet { ref role, .. }) if role == "shared"),
        "b/evil is listed only by a role team-b's key did not sign: {refused:?}"
    );
    // The same from a client that never took the path through team-a.
    let mut fresh = PythonRepo::make("ed25519", &args).await;
    assert!(fresh.client.lookup("b/evil").await.is_err());
}

/// python-tuf's `ngclient` reads what peerpi's signer writes, TAP 15
/// succinct bins included.
#[tokio::test]
async fn python_tuf_downloads_a_target_from_a_peerpi_signed_tap15_repository() {
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
    let targets: serde_json::Value =
        serde_json::from_slice(&std::fs::read(repo_dir.join("metadata/1.targets.json")).unwrap())
            .unwrap();
    assert_eq!(
        targets["signed"]["delegations"]["succinct_roles"]["bit_length"],
        8
    );
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
    let work = dir.path().join("ngclient");
    let root = repo_dir.join("metadata/1.root.json");
    let downloaded = peerpi_testkit::ngclient_download(
        &server.url("metadata/"),
        &server.url("targets/"),
        &root,
        path,
        &work,
    )
    .await
    .unwrap_or_else(|e| panic!("python-tuf refused the repository: {e}"));
    assert_eq!(downloaded, content);
}
