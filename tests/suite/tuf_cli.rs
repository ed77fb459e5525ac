//! `peerpi tuf ...` as an operator and the conformance suite run it: the
//! real binary signs a repository, serves nothing itself (a loopback file
//! server does), and `peerpi tuf client` downloads from it with the exit
//! codes the conformance protocol expects.

use std::path::Path;
use std::process::{Command, Output};

use peerpi_testkit::repo_server::RepoServer;

fn peerpi(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_peerpi"))
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap()
}

fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "exit {:?}: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn sign_then_download_with_the_conformance_cli() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = ok(&peerpi(
        d,
        &[
            "tuf", "init", "--repo", "repo", "--keys", "keys", "--bins", "64",
        ],
    ));
    assert!(out.contains("64 bin(s)"), "{out}");
    std::fs::write(d.join("a.whl"), b"wheel").unwrap();
    let out = ok(&peerpi(
        d,
        &[
            "tuf",
            "add",
            "--repo",
            "repo",
            "--online-key",
            "keys/online.pk8",
            "pkgs/a.whl=a.whl",
        ],
    ));
    assert!(out.contains("1 bin(s), snapshot v2, timestamp v2"), "{out}");

    let server = RepoServer::start(&d.join("repo")).await.unwrap();
    let (metadata_url, targets_url) = (server.url("metadata/"), server.url("targets/"));
    ok(&peerpi(
        d,
        &[
            "tuf",
            "client",
            "--metadata-dir",
            "meta",
            "init",
            "repo/metadata/1.root.json",
        ],
    ));
    let download = |target: &str| {
        let args = [
            "tuf",
            "client",
            "--metadata-url",
            metadata_url.as_str(),
            "--metadata-dir",
            "meta",
            "--target-name",
            target,
            "--target-dir",
            "out",
            "--target-base-url",
            targets_url.as_str(),
            "download",
        ];
        let d = d.to_path_buf();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            peerpi(&d, &args)
        }
    };
    let fetched = tokio::task::spawn_blocking(download("pkgs/a.whl"))
        .await
        .unwrap();
    ok(&fetched);
    assert_eq!(std::fs::read(d.join("out/pkgs%2Fa.whl")).unwrap(), b"wheel");
    // Only non-versioned metadata files in the metadata directory.
    let mut files: Vec<String> = std::fs::read_dir(d.join("meta"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files.len(), 5, "{files:?}");
    assert!(
        files
            .iter()
            .all(|f| !f.starts_with(|c: char| c.is_ascii_digit())),
        "{files:?}"
    );

    // An unknown target exits 1 with a message.
    let missing = tokio::task::spawn_blocking(download("pkgs/b.whl"))
        .await
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no trusted role lists this target"));

    // A timestamp rolled back on the server: refresh exits 1.
    let timestamp = d.join("repo/metadata/timestamp.json");
    let newer = std::fs::read(&timestamp).unwrap();
    ok(&peerpi(
        d,
        &[
            "tuf",
            "add",
            "--repo",
            "repo",
            "--online-key",
            "keys/online.pk8",
            "pkgs/c.whl=a.whl",
        ],
    ));
    let refreshed = tokio::task::spawn_blocking(download("pkgs/c.whl"))
        .await
        .unwrap();
    ok(&refreshed);
    std::fs::write(&timestamp, newer).unwrap();
    let rolled_back = tokio::task::spawn_blocking(download("pkgs/a.whl"))
        .await
        .unwrap();
    assert_eq!(rolled_back.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&rolled_back.stderr).contains("rollback"));
}

#[test]
fn signer_errors_name_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let no_repo = peerpi(d, &["tuf", "add", "--repo", "nowhere", "x=y"]);
    assert_eq!(no_repo.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&no_repo.stderr).contains("run `peerpi tuf init` first"));

    ok(&peerpi(
        d,
        &[
            "tuf", "init", "--repo", "repo", "--keys", "keys", "--bins", "4",
        ],
    ));
    std::fs::write(d.join("f"), b"x").unwrap();
    let no_key = peerpi(d, &["tuf", "add", "--repo", "repo", "t=f"]);
    assert_eq!(no_key.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&no_key.stderr).contains("--online-key"));

    let again = peerpi(d, &["tuf", "init", "--repo", "repo", "--keys", "keys2"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds a repository"));

    let bad_bins = peerpi(
        d,
        &[
            "tuf", "init", "--repo", "r2", "--keys", "k2", "--bins", "100",
        ],
    );
    assert!(String::from_utf8_lossy(&bad_bins.stderr).contains("power of two"));

    let escape = peerpi(
        d,
        &[
            "tuf",
            "add",
            "--repo",
            "repo",
            "--online-key",
            "keys/online.pk8",
            "../x=f",
        ],
    );
    assert_eq!(escape.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&escape.stderr).contains("relative"));
}
