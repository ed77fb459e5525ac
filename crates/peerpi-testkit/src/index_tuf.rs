//! The fake index's own TUF repository, shaped as the index's PEP 458
//! deployment publishes it: one target per project, its normalised name,
//! with the length and `blake2b-256` of the project's HTML page, delegated
//! to TAP 15 succinct hashed bins; made with python-tuf's Metadata API (as
//! the index's signing service is built on it), consistent snapshots
//! throughout, and served on loopback beside the index.

use std::path::PathBuf;

use crate::repo_server::RepoServer;
use crate::{python, python_script, IndexState};

/// A published repository: `url()` is its base (metadata under
/// `metadata/`, target files under `targets/`).
pub struct IndexTuf {
    pub dir: tempfile::TempDir,
    pub server: RepoServer,
}

impl IndexTuf {
    /// Signs the HTML page of each of `projects` as `index` serves it now,
    /// into 2^`bits` succinct bins. Panics (it is test support) when python
    /// or python-tuf is missing, naming the fix; other failures are errors.
    pub async fn publish(
        index: &IndexState,
        projects: &[&str],
        bits: u32,
    ) -> std::io::Result<Self> {
        let dir = tempfile::tempdir()?;
        let pages = dir.path().join("pages");
        std::fs::create_dir_all(&pages)?;
        let mut targets = Vec::new();
        for project in projects {
            let html = index.html_page_of(project).ok_or_else(|| {
                std::io::Error::other(format!("the fake index has no project {project}"))
            })?;
            let file = pages.join(format!("{project}.html"));
            std::fs::write(&file, html)?;
            targets.push(format!("{project}=@{}", file.display()));
        }
        let repo = dir.path().join("repo");
        let bits = bits.to_string();
        let made = {
            let repo = repo.clone();
            tokio::task::spawn_blocking(move || {
                std::process::Command::new(python())
                    .arg(python_script("make_repo.py"))
                    .arg(&repo)
                    .args(["ed25519", "--succinct", &bits, "--hash", "blake2b-256"])
                    .args(&targets)
                    .output()
            })
            .await
            .map_err(std::io::Error::other)??
        };
        if !made.status.success() {
            return Err(std::io::Error::other(format!(
                "make_repo.py failed: {}",
                String::from_utf8_lossy(&made.stderr)
            )));
        }
        let server = RepoServer::start(&repo).await?;
        Ok(IndexTuf { dir, server })
    }

    /// The repository's base URL (`--tuf-url`).
    pub fn url(&self) -> String {
        self.server.url("")
    }

    /// The root to pin (`--tuf-root`).
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("repo/metadata/1.root.json")
    }
}
