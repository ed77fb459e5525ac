//! A download's shared state: what its waiting clients may read of the
//! hashing temp file as it grows, and how each client follows it. The last
//! byte is released only after the digest matched, so a client never
//! receives a complete file that failed verification: on a mismatch its
//! response is cut short and nothing is stored. Who drives a download is
//! in `blobs`; where its bytes come from, in `sources`.

use std::fs::File;
use std::io;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream;
use peerpi_store::OpenedBlob;
use tokio::sync::watch;

use crate::metrics::Source;
use crate::NodeError;

/// Bytes read per read call from a growing temp file.
const READ_CHUNK: u64 = peerpi_store::READ_CHUNK;

/// Why a download failed, as its waiting readers answer it.
#[derive(Debug, Clone)]
pub(crate) enum FlightFailure {
    /// No source delivered the verified blob (502).
    Sources(Arc<str>),
    /// The store could not write it (503, with the reason: a full disk is
    /// this node's trouble, not the upstream's).
    Store(Arc<str>),
}

impl FlightFailure {
    pub(crate) fn to_error(&self) -> NodeError {
        match self {
            FlightFailure::Sources(reason) => NodeError::Upstream(reason.to_string()),
            FlightFailure::Store(reason) => NodeError::Unavailable(reason.to_string()),
        }
    }
}

impl std::fmt::Display for FlightFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FlightFailure::Sources(reason) | FlightFailure::Store(reason) => f.write_str(reason),
        }
    }
}

/// The state of one download, shared with every client reading it.
#[derive(Clone)]
pub(crate) enum FlightState {
    /// Waiting for upstream's response headers.
    Connecting,
    /// Bytes `0..readable` of `file` may be read. `len` is the announced length.
    Streaming {
        file: Arc<File>,
        len: Option<u64>,
        readable: u64,
    },
    /// Verified and committed; all `len` bytes may be read. `source`
    /// delivered them.
    Done {
        file: Arc<File>,
        len: u64,
        source: Source,
    },
    Failed(FlightFailure),
}

pub(crate) struct Flight {
    pub(crate) state: watch::Sender<FlightState>,
    /// Its bytes offered to peers as they arrive (with a swarm).
    in_flight: Option<peerpi_swarm::InFlightShare>,
    /// A copy a peer asked for, that no client of this node wants yet:
    /// fetched from peers only (a client joining clears it).
    pub(crate) peers_only: AtomicBool,
}

impl Flight {
    pub(crate) fn new() -> Self {
        Self {
            state: watch::channel(FlightState::Connecting).0,
            in_flight: None,
            peers_only: AtomicBool::new(false),
        }
    }

    /// A flight whose bytes peers may take while they arrive.
    pub(crate) fn shared_with_peers(share: peerpi_swarm::InFlightShare) -> Self {
        Self {
            in_flight: Some(share),
            ..Self::new()
        }
    }

    /// Bytes `0..written` of `file`, a blob of `len` bytes, are written:
    /// peers may take them, less the last byte until it is verified.
    pub(crate) fn offer(&self, file: &Arc<File>, len: u64, written: u64) {
        if let Some(share) = &self.in_flight {
            share.written(file, len, written);
        }
    }

    /// `file` is the verified blob: peers following it may take the rest.
    pub(crate) fn offer_verified(&self, file: &Arc<File>, len: u64) {
        if let Some(share) = &self.in_flight {
            share.verified(file, len);
        }
    }
}

/// Lets clients read a released peer transfer up to what is written, less
/// the last byte (which waits for verification).
pub(crate) fn publish_progress(flight: &Flight, file: &Arc<File>, total: u64, written: u64) {
    flight.state.send_replace(FlightState::Streaming {
        file: file.clone(),
        len: Some(total),
        readable: written.min(total).saturating_sub(1),
    });
}

#[derive(Debug)]
pub(crate) enum CommitError {
    /// The bytes are not the ones the digest names.
    Mismatch(String),
    Other(String),
}

/// A client's view of a download: what is readable, as it becomes readable;
/// an error (which cuts the response short) if the download fails.
///
/// When the download moves to another temp file (a source failed after its
/// bytes were released), the response goes on from its offset in the new
/// file. The bytes it already sent from earlier files are compared with the
/// verified file before its last byte: a difference cuts it, so a client
/// never receives a complete file that is not the verified one.
pub(crate) fn follow(
    rx: watch::Receiver<FlightState>,
) -> impl futures_util::Stream<Item = io::Result<Bytes>> {
    let cursor = Cursor {
        rx,
        offset: 0,
        reading: None,
        from: 0,
        earlier: Vec::new(),
    };
    stream::unfold(Some(cursor), |cursor| async move {
        let mut c = cursor?;
        loop {
            let state = c.rx.borrow_and_update().clone();
            let readable = match &state {
                FlightState::Streaming { file, readable, .. } => Some((file.clone(), *readable)),
                FlightState::Done { file, len, .. } => Some((file.clone(), *len)),
                FlightState::Failed(reason) => {
                    return Some((Err(io::Error::other(reason.to_string())), None));
                }
                FlightState::Connecting => None,
            };
            if let Some((file, end)) = readable {
                if let Some(old) = c.reading.replace(file.clone()) {
                    if !Arc::ptr_eq(&old, &file) && c.offset > c.from {
                        c.earlier.push((old, c.from..c.offset));
                        c.from = c.offset;
                    }
                }
                if matches!(state, FlightState::Done { .. }) && !c.earlier.is_empty() {
                    let earlier = std::mem::take(&mut c.earlier);
                    match sent_bytes_differ(earlier, file.clone()).await {
                        Ok(false) => {}
                        Ok(true) => {
                            let reason = "bytes this response already sent differ from the verified file; retry";
                            return Some((Err(io::Error::other(reason)), None));
                        }
                        Err(e) => return Some((Err(e), None)),
                    }
                }
                if c.offset < end {
                    let want = (end - c.offset).min(READ_CHUNK);
                    return match read_at(file, c.offset, want).await {
                        Ok(bytes) => {
                            c.offset += bytes.len() as u64;
                            Some((Ok(bytes), Some(c)))
                        }
                        Err(e) => Some((Err(e), None)),
                    };
                }
                if matches!(state, FlightState::Done { .. }) {
                    return None;
                }
            }
            if c.rx.changed().await.is_err() {
                return Some((Err(io::Error::other("download abandoned")), None));
            }
        }
    })
}

/// Where a client's response stands in a download.
struct Cursor {
    rx: watch::Receiver<FlightState>,
    /// Bytes sent so far.
    offset: u64,
    /// The temp file being read, and where reading it began.
    reading: Option<Arc<File>>,
    from: u64,
    /// Ranges sent from files given up since.
    earlier: Vec<(Arc<File>, std::ops::Range<u64>)>,
}

/// Whether any range sent from an earlier file differs from `verified`.
async fn sent_bytes_differ(
    earlier: Vec<(Arc<File>, std::ops::Range<u64>)>,
    verified: Arc<File>,
) -> io::Result<bool> {
    tokio::task::spawn_blocking(move || {
        for (file, range) in earlier {
            if ranges_differ(&file, &verified, range)? {
                return Ok(true);
            }
        }
        Ok(false)
    })
    .await
    .map_err(io::Error::other)?
}

/// Whether `range` of `a` and of `b` differ.
pub(crate) fn ranges_differ(a: &File, b: &File, range: std::ops::Range<u64>) -> io::Result<bool> {
    let mut offset = range.start;
    while offset < range.end {
        let len = (range.end - offset).min(READ_CHUNK);
        if peerpi_store::read_exact_at(a, offset, len)?
            != peerpi_store::read_exact_at(b, offset, len)?
        {
            return Ok(true);
        }
        offset += len;
    }
    Ok(false)
}

async fn read_at(file: Arc<File>, offset: u64, len: u64) -> io::Result<Bytes> {
    tokio::task::spawn_blocking(move || peerpi_store::read_exact_at(&file, offset, len))
        .await
        .map_err(io::Error::other)?
}

/// A stored blob's bytes, read on a blocking thread (small blobs only:
/// metadata and pages).
pub(crate) async fn read_whole(opened: OpenedBlob) -> io::Result<Vec<u8>> {
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut bytes = Vec::with_capacity(opened.size as usize);
        let mut file = opened.file;
        file.read_to_end(&mut bytes).map(|_| bytes)
    })
    .await
    .map_err(io::Error::other)?
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

    use std::io::Write;

    use futures_util::StreamExt;

    use super::*;

    fn file_with(bytes: &[u8]) -> Arc<File> {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(bytes).unwrap();
        Arc::new(file)
    }

    /// A client reads 1,000 released bytes of one temp file; the download
    /// then moves to another file (its source failed) and verifies there.
    async fn read_across_a_switch(first: &[u8], verified: &[u8]) -> io::Result<Vec<u8>> {
        let flight = Flight::new();
        let mut body = Box::pin(follow(flight.state.subscribe()));
        flight.state.send_replace(FlightState::Streaming {
            file: file_with(first),
            len: Some(verified.len() as u64),
            readable: 1000,
        });
        let mut got = body.next().await.unwrap()?.to_vec();
        assert_eq!(got.len(), 1000);
        flight.state.send_replace(FlightState::Done {
            file: file_with(verified),
            len: verified.len() as u64,
            source: Source::Upstream,
        });
        while let Some(chunk) = body.next().await {
            got.extend_from_slice(&chunk?);
        }
        Ok(got)
    }

    #[tokio::test]
    async fn a_response_goes_on_in_the_next_file_when_what_it_sent_was_right() {
        let good: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let got = read_across_a_switch(&good[..3000], &good).await.unwrap();
        assert_eq!(got, good);
    }

    #[tokio::test]
    async fn a_response_is_cut_when_bytes_it_sent_differ_from_the_verified_file() {
        let good: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let mut lie = good.clone();
        lie[10] ^= 0xff;
        let err = read_across_a_switch(&lie, &good).await.unwrap_err();
        assert!(err.to_string().contains("differ"), "{err}");
    }
}
