//! Blobs this node is still fetching, shared with peers while their bytes
//! arrive (`OK_IN_FLIGHT`): the fetch publishes how far its temp file is
//! written, and each transfer follows it, waiting for more bytes as they come.
//!
//! The server never sends the last byte of a blob it has not verified (the
//! fetch publishes at most `len - 1` bytes until then), so a complete
//! transfer is a claim about verified bytes, as from the store; a transfer
//! that ends early (the fetch failed, or moved to another temp file) claims
//! nothing.

use std::fs::File;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use peerpi_core::Sha256Digest;
use tokio::sync::watch;

use crate::{lock, Shared};

/// How far a fetch has written its temp file.
#[derive(Clone)]
pub(crate) struct Progress {
    pub(crate) file: Arc<File>,
    /// The blob's length (listed or announced).
    pub(crate) len: u64,
    /// Bytes `0..available` may be sent.
    pub(crate) available: u64,
}

pub(crate) type Follower = watch::Receiver<Option<Progress>>;

/// A fetch's bytes offered to peers until dropped (the fetch ended). Cheap
/// to update on every write.
pub struct InFlightShare {
    shared: Arc<Shared>,
    digest: Sha256Digest,
    progress: watch::Sender<Option<Progress>>,
    /// The registry's entry, told apart from a later share's.
    entry: Follower,
}

impl InFlightShare {
    pub(crate) fn new(shared: Arc<Shared>, digest: Sha256Digest) -> Self {
        let (progress, entry) = watch::channel(None);
        lock(&shared.in_flight).insert(digest, entry.clone());
        Self {
            shared,
            digest,
            progress,
            entry,
        }
    }

    /// Bytes `0..written` of `file` (a blob of `len` bytes) are written; all
    /// but the last byte may go to peers. Another file than before ends the
    /// transfers that followed the old one.
    pub fn written(&self, file: &Arc<File>, len: u64, written: u64) {
        self.publish(file, len, written.min(len.saturating_sub(1)));
    }

    /// `file` holds the whole blob, verified: the transfers following it
    /// may send its last byte.
    pub fn verified(&self, file: &Arc<File>, len: u64) {
        self.publish(file, len, len);
    }

    fn publish(&self, file: &Arc<File>, len: u64, available: u64) {
        self.progress.send_if_modified(|now| {
            let same = now
                .as_ref()
                .is_some_and(|p| Arc::ptr_eq(&p.file, file) && p.len == len);
            if same && now.as_ref().is_some_and(|p| p.available >= available) {
                return false;
            }
            *now = Some(Progress {
                file: file.clone(),
                len,
                available,
            });
            true
        });
    }
}

impl Drop for InFlightShare {
    fn drop(&mut self) {
        let mut in_flight = lock(&self.shared.in_flight);
        if in_flight
            .get(&self.digest)
            .is_some_and(|f| self.entry.same_channel(f))
        {
            in_flight.remove(&self.digest);
        }
    }
}

impl Shared {
    /// The fetch of `digest` to follow from `offset`, when one runs here and
    /// holds bytes past `offset`: with its progress then.
    pub(crate) fn in_flight_from(
        &self,
        digest: &Sha256Digest,
        offset: u64,
    ) -> Option<(Follower, Progress)> {
        let follower = lock(&self.in_flight).get(digest)?.clone();
        let progress = follower.borrow().clone()?;
        (progress.available > offset && offset <= progress.len).then_some((follower, progress))
    }
}

/// Bytes `offset..offset + len` of a blob still arriving in `file`, sent as
/// they become available. Ends with an error when the fetch moves to another
/// file or ends before they are all available, or when nothing new arrives
/// for `silence`.
pub(crate) fn follow(
    follower: Follower,
    file: Arc<File>,
    offset: u64,
    len: u64,
    silence: Duration,
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    let end = offset + len;
    futures_util::stream::unfold(Some((offset, follower)), move |state| {
        let file = file.clone();
        async move {
            let (at, mut follower) = state?;
            if at >= end {
                return None;
            }
            let available = match available_after(&mut follower, &file, at, silence).await {
                Ok(available) => available.min(end),
                Err(e) => return Some((Err(e), None)),
            };
            let want = (available - at).min(peerpi_store::READ_CHUNK);
            let read =
                tokio::task::spawn_blocking(move || peerpi_store::read_exact_at(&file, at, want))
                    .await
                    .map_err(io::Error::other)
                    .and_then(|r| r);
            match read {
                Ok(bytes) => Some((Ok(bytes), Some((at + want, follower)))),
                Err(e) => Some((Err(e), None)),
            }
        }
    })
}

/// How far `file` may be read once it holds bytes past `at`.
async fn available_after(
    follower: &mut Follower,
    file: &Arc<File>,
    at: u64,
    silence: Duration,
) -> io::Result<u64> {
    loop {
        let available = match &*follower.borrow_and_update() {
            Some(p) if Arc::ptr_eq(&p.file, file) => p.available,
            _ => {
                return Err(io::Error::other(
                    "the fetch this transfer followed moved on",
                ))
            }
        };
        if available > at {
            return Ok(available);
        }
        match tokio::time::timeout(silence, follower.changed()).await {
            Ok(Ok(())) => {}
            // The fetch ended: what it published last is all there is.
            Ok(Err(_)) => {
                return match &*follower.borrow() {
                    Some(p) if Arc::ptr_eq(&p.file, file) && p.available > at => Ok(p.available),
                    _ => Err(io::Error::other(
                        "the fetch this transfer followed ended before its bytes arrived",
                    )),
                };
            }
            Err(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the fetch this transfer followed went silent",
                ))
            }
        }
    }
}
