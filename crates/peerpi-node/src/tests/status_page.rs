//! The status page at `/` in a real headless browser (Chromium from the
//! distribution's packages): it renders, logs no console errors, and shows
//! the numbers of a node that just served a known set of files. The
//! screenshot is kept in `target/test-artifacts/status-page.png`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::testing::*;

fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|name| {
            std::env::var_os("PATH")
                .map(|path| {
                    std::env::split_paths(&path)
                        .map(|d| d.join(name))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        })
        .find(|p| p.is_file())
}

/// Runs headless Chromium on `url` with `mode` (`--dump-dom` or
/// `--screenshot=FILE`); returns (stdout, stderr).
fn browse(browser: &Path, profile: &Path, url: &str, mode: &str) -> (String, String) {
    let (code, stdout, stderr) = output_within(
        Command::new(browser).args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,1400",
            "--enable-logging=stderr",
            "--v=0",
            &format!("--user-data-dir={}", profile.display()),
            mode,
            url,
        ]),
        Duration::from_secs(90),
    );
    assert_eq!(code, Some(0), "chromium failed:\n{stderr}");
    (stdout, stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_renders_in_a_browser_with_the_nodes_numbers() {
    let Some(browser) = chromium() else {
        peerpi_testkit::missing_prerequisite(
            "no Chromium here (apt-get install chromium): the browser test did not run",
        );
        return;
    };
    let upstream = fake_index(peerpi_testkit::demo_graph()).await;
    let node = peer_node(&upstream, &[], |s| s.region = Some("eu-test".into())).await;
    // A known set: two files from upstream, one of them asked for twice.
    let files = upstream.state.files();
    let (first, second) = (&files[0], &files[1]);
    for file in [first, second, first] {
        let url = file_url(&node, &file.project, &file.filename).await;
        assert_is_upstream_file(&upstream, &file.filename, &get_bytes(&url).await);
    }

    let dir = tempfile::tempdir().unwrap();
    let (dom, log) = browse(
        &browser,
        &dir.path().join("profile"),
        &node.url("/"),
        "--dump-dom",
    );
    let console_errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("CONSOLE") || l.contains("Uncaught"))
        .collect();
    assert!(
        console_errors.is_empty(),
        "console errors: {console_errors:?}"
    );

    let peer_id = node.node.swarm().unwrap().local_peer_id().to_string();
    let upstream_bytes = first.len + second.len;
    for expected in [
        format!(r#"<td id="node-id">{peer_id}</td>"#),
        r#"<td id="region">eu-test</td>"#.to_string(),
        r#"<td id="health" class="ok">ok</td>"#.to_string(),
        r#"<td class="n" id="hits-upstream">2</td>"#.to_string(),
        format!(r#"id="bytes-upstream" data-bytes="{upstream_bytes}""#),
        r#"<td class="n" id="hits-local">1</td>"#.to_string(),
        r#"<td class="n" id="store-blobs">2</td>"#.to_string(),
        format!("<td>{}</td><td>upstream</td>", first.filename),
        format!("<td>{}</td><td>upstream</td>", second.filename),
        "<svg".to_string(),
    ] {
        assert!(
            dom.contains(&expected),
            "{expected} in the rendered page:\n{dom}"
        );
    }

    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    browse(
        &browser,
        &dir.path().join("profile"),
        &node.url("/"),
        &format!("--screenshot={}", shot.display()),
    );
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a real screenshot"
    );
}
