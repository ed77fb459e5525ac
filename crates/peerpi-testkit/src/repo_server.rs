//! A static file server for TUF repositories in tests: serves a directory
//! over real HTTP on loopback, records every request path (so tests can
//! assert which metadata a client fetched, in which order), and can turn a
//! path into an endless body (the endless-data attack).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use bytes::Bytes;

#[derive(Default)]
struct Shared {
    requests: Vec<String>,
    endless: HashSet<String>,
}

struct ServerState {
    root: PathBuf,
    shared: Mutex<Shared>,
}

/// A running repository server; stops when dropped.
pub struct RepoServer {
    pub addr: SocketAddr,
    state: Arc<ServerState>,
    task: tokio::task::JoinHandle<()>,
}

impl RepoServer {
    /// Serves `root` on an ephemeral loopback port.
    pub async fn start(root: &Path) -> std::io::Result<Self> {
        let state = Arc::new(ServerState {
            root: root.to_path_buf(),
            shared: Mutex::new(Shared::default()),
        });
        let app = Router::new().fallback(serve).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "repository server stopped");
            }
        });
        Ok(RepoServer { addr, state, task })
    }

    /// `http://ADDR/path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{}", self.addr, path.trim_start_matches('/'))
    }

    /// Request paths seen since the last call, in order; clears the log.
    pub fn take_requests(&self) -> Vec<String> {
        std::mem::take(&mut lock(&self.state.shared).requests)
    }

    /// From now on `path` answers 200 with a body that never ends.
    pub fn make_endless(&self, path: &str) {
        lock(&self.state.shared)
            .endless
            .insert(path.trim_start_matches('/').to_string());
    }
}

impl Drop for RepoServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    // A panicking test thread must not hide the log from the others.
    shared
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn serve(State(state): State<Arc<ServerState>>, uri: Uri) -> Response {
    // Not percent-decoded: the signer writes role names quoted, so the
    // quoted request path is the file name.
    let path = uri.path().trim_start_matches('/').to_string();
    let endless = {
        let mut shared = lock(&state.shared);
        shared.requests.push(path.clone());
        shared.endless.contains(&path)
    };
    if endless {
        let chunk = Bytes::from(vec![b' '; 64 * 1024]);
        let stream =
            futures_util::stream::repeat_with(move || Ok::<_, std::io::Error>(chunk.clone()));
        return Body::from_stream(stream).into_response();
    }
    let relative = Path::new(&path);
    if relative
        .components()
        .any(|c| !matches!(c, Component::Normal(_)))
    {
        return (StatusCode::NOT_FOUND, "no such file").into_response();
    }
    match tokio::fs::read(state.root.join(relative)).await {
        Ok(bytes) => bytes.into_response(),
        Err(_) => (StatusCode::NOT_FOUND, "no such file").into_response(),
    }
}
