//! Bytes shared while they arrive: a node still fetching a blob serves what
//! it holds to peers that ask, and keeps serving as more arrives; it sends
//! the last byte only once it verified the blob.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use peerpi_core::Sha256Digest;

/// Node A fetches a large file from a slow index; node B is asked for it
/// while A is still at it, longer than B's client may wait for a first
/// byte. B streams A's bytes as they arrive instead of waiting for A to
/// finish (it used to give up at its client's deadline and fetch the file
/// upstream too): the index sends the file once. (This replaces the test of
/// the same race with a file A fetched within B's deadline, which B took
/// whole after A finished.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_still_arriving_at_a_peer_is_streamed_from_it_and_fetched_upstream_once() {
    let filename = "big-1.0.tar.gz";
    let size = 8 << 20;
    let upstream = fake_index(vec![peerpi_testkit::synthetic("big", filename, size, 5)]).await;
    // About 8 s for the whole file: past B's 5 s hold-back and its 3 s
    // provider deadline.
    upstream.state.set_fault(
        "/files/",
        peerpi_testkit::Fault::Slow {
            chunk: 64 * 1024,
            delay: Duration::from_millis(60),
        },
    );
    let a = peer_node(&upstream, &[], |_| {}).await;
    let b = peer_node(&upstream, &[p2p_addr(&a)], |_| {}).await;
    assert!(eventually(Duration::from_secs(10), || connected(&b) >= 1).await);
    let a_url = file_url(&a, "big", filename).await;
    let b_url = file_url(&b, "big", filename).await;
    let from_a = tokio::spawn(get_bytes(a_url));
    let path = format!("/files/{filename}");
    assert!(
        eventually(Duration::from_secs(10), || upstream.state.count(&path) == 1).await,
        "A started its upstream fetch"
    );
    let from_b = get_bytes(b_url).await;
    let from_a = from_a.await.unwrap();
    assert_eq!(from_a, from_b);
    assert_is_upstream_file(&upstream, filename, &from_b);
    assert_eq!(upstream.state.count(&path), 1, "the index sent it once");
    assert!(metric(&b, "peerpi_peer_in_flight_transfers_total", "").await >= 1.0);
    assert!(metric(&a, "peerpi_peer_in_flight_served", "").await >= 1.0);
    assert_eq!(
        metric(&b, "peerpi_blob_hits_total", "source=\"upstream\"").await,
        0.0
    );
}

/// The serving side's rules, driven on a real swarm: bytes go out as the
/// fetch writes them, all but the last until the fetch has verified the
/// blob; a fetch that moves to another temp file ends the transfers that
/// followed the old one; a share that ended leaves nothing to serve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_in_flight_go_out_as_written_and_the_last_only_once_verified() {
    let upstream = fake_index(peerpi_testkit::demo_graph()).await;
    let a = peer_node(&upstream, &[], |_| {}).await;
    let b = peer_node(&upstream, &[p2p_addr(&a)], |c| c.bulk_listen = None).await;
    assert!(eventually(Duration::from_secs(10), || connected(&b) >= 1).await);
    let (a_swarm, b_swarm) = (a.node.swarm().unwrap(), b.node.swarm().unwrap());
    let a_id = a_swarm.local_peer_id();
    let digest = Sha256Digest::from_bytes([9; 32]);
    let blob: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    let file = Arc::new(tempfile::tempfile().unwrap());
    let write = |file: &std::fs::File, range: std::ops::Range<usize>| {
        std::os::unix::fs::FileExt::write_all_at(file, &blob[range.clone()], range.start as u64)
            .unwrap();
    };

    let share = a_swarm.share_in_flight(digest);
    let refused = b_swarm.fetch(a_id, digest, 0).await.err().unwrap();
    assert!(
        matches!(refused, peerpi_swarm::FetchError::Refused { .. }),
        "nothing written yet: {refused}"
    );
    write(&file, 0..100_000);
    share.written(&file, 200_000, 100_000);
    let mut transfer = b_swarm.fetch(a_id, digest, 0).await.unwrap();
    assert!(transfer.in_flight);
    assert_eq!(transfer.remaining, 200_000);
    let mut got = Vec::new();
    while got.len() < 100_000 {
        got.extend_from_slice(&transfer.next_chunk().await.unwrap().unwrap());
    }
    write(&file, 100_000..200_000);
    share.written(&file, 200_000, 200_000);
    while got.len() < 199_999 {
        got.extend_from_slice(&transfer.next_chunk().await.unwrap().unwrap());
    }
    assert_eq!(got.len(), 199_999, "never past what was written, less one");
    let early = tokio::time::timeout(Duration::from_millis(300), transfer.next_chunk()).await;
    assert!(early.is_err(), "the last byte waits for verification");
    share.verified(&file, 200_000);
    got.extend_from_slice(&transfer.next_chunk().await.unwrap().unwrap());
    assert!(transfer.next_chunk().await.unwrap().is_none());
    assert_eq!(got, blob);

    // The fetch moves to another temp file: a transfer of the old one ends
    // early rather than mixing two files.
    let share = a_swarm.share_in_flight(digest);
    share.written(&file, 200_000, 50_000);
    let mut transfer = b_swarm.fetch(a_id, digest, 0).await.unwrap();
    let mut got = 0;
    while got < 50_000 {
        got += transfer.next_chunk().await.unwrap().unwrap().len();
    }
    let other = Arc::new(tempfile::tempfile().unwrap());
    write(&other, 0..60_000);
    share.written(&other, 200_000, 60_000);
    assert!(transfer.next_chunk().await.is_err(), "cut, not continued");

    drop(share);
    let e = b_swarm.fetch(a_id, digest, 0).await.err().unwrap();
    assert!(
        matches!(
            e,
            peerpi_swarm::FetchError::Refused {
                status: peerpi_swarm::Status::NotFound,
                ..
            }
        ),
        "{e}"
    );
}
