//! Reading blobs: ranges of a stored file streamed with bounded read-ahead,
//! and exact positional reads (also used on temp files that are still growing).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::{self, Stream};

/// Bytes per read.
pub const READ_CHUNK: u64 = 256 * 1024;

/// Bytes `start..start + len` of `file`. One blocking task reads ahead of the
/// client by at most `READ_AHEAD` chunks, so disk reads overlap socket writes
/// and memory per download stays bounded.
pub fn read_range(file: Arc<File>, start: u64, len: u64) -> impl Stream<Item = io::Result<Bytes>> {
    const READ_AHEAD: usize = 2;
    let (tx, rx) = tokio::sync::mpsc::channel(READ_AHEAD);
    tokio::task::spawn_blocking(move || {
        let end = start + len;
        let mut offset = start;
        while offset < end {
            let result = read_exact_at(&file, offset, (end - offset).min(READ_CHUNK));
            let failed = result.is_err();
            if let Ok(bytes) = &result {
                offset += bytes.len() as u64;
            }
            // A closed channel means the client went away.
            if tx.blocking_send(result).is_err() || failed {
                break;
            }
        }
    });
    stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
}

/// Reads exactly `len` bytes at `offset`.
pub fn read_exact_at(file: &File, offset: u64, len: u64) -> io::Result<Bytes> {
    let mut buf = vec![0u8; len as usize];
    let mut filled = 0usize;
    while filled < buf.len() {
        let n = file.read_at(&mut buf[filled..], offset + filled as u64)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shorter than recorded",
            ));
        }
        filled += n;
    }
    Ok(Bytes::from(buf))
}
