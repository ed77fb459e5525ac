//! A second copy of a large file that only one node of a region holds: the
//! region keeps the file when that node goes, and a peer's ask to keep a
//! copy is never a reason to trust bytes or to fetch upstream.

use crate::common;

use std::time::Duration;

use common::*;
use peerpi_core::Sha256Digest;
use peerpi_swarm::ReplicaAnswer;

const REPLICATE: [&str; 6] = [
    "--region",
    "eu",
    "--replicate-min-size",
    "1MiB",
    "--replicate-after",
    "200ms",
];

/// Waits (up to 20 s) until the counter `name{labels}` at `metrics` (a
/// `/metrics` URL) reaches `at_least`; its value then.
async fn counter_reaches(metrics: &str, name: &str, labels: &str, at_least: f64) -> f64 {
    eventually_async(Duration::from_secs(20), || async {
        metric_at(metrics, name, labels).await >= at_least
    })
    .await;
    metric_at(metrics, name, labels).await
}

/// Connected peers a node process lists.
async fn connected_peers(node: &NodeProcess) -> usize {
    get_text(node.url("/peers"))
        .await
        .matches("\"connected\":true")
        .count()
}

/// Node A fetches a 2 MiB file from the index; soon one other node of its
/// region keeps a copy. That node is killed (a runner restarted empty comes
/// back under a new id, its DHT record stays): A asks the third node for a
/// copy. Then A is killed too, and the third node still serves the file: the
/// index sent it once. (Without second copies the region lost the file with
/// A and the next client's node fetched it upstream again, the churn
/// scenario's extra egress; with copies made only after a store and on a
/// 10-minute sweep, the copy lost with its holder was not made again.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_file_only_one_node_holds_keeps_a_second_copy_in_its_region_as_nodes_go() {
    let filename = "big-1.0.tar.gz";
    let upstream = fake_index(vec![peerpi_testkit::synthetic("big", filename, 2 << 20, 9)]).await;
    let index = upstream.simple_url();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = NodeProcess::start(&index, dirs[0].path(), &REPLICATE).await;
    let bootstrap = p2p_addr_of(&a).await;
    let mut with_bootstrap = REPLICATE.to_vec();
    with_bootstrap.extend(["--bootstrap", &bootstrap]);
    let mut b = Some(NodeProcess::start(&index, dirs[1].path(), &with_bootstrap).await);
    let mut c = Some(NodeProcess::start(&index, dirs[2].path(), &with_bootstrap).await);
    for node in [b.as_ref().unwrap(), c.as_ref().unwrap()] {
        let all = eventually_async(Duration::from_secs(20), || async {
            connected_peers(node).await >= 2
        })
        .await;
        assert!(all, "B and C see each other and A");
    }

    let url = file_url_at(&format!("http://{}", a.addr), "big", filename).await;
    assert_is_upstream_file(&upstream, filename, &get_bytes(&url).await);
    let path = format!("/files/{filename}");
    assert_eq!(upstream.state.count(&path), 1);

    let made = |node: &NodeProcess| {
        let metrics = node.url("/metrics");
        async move { metric_at(&metrics, "peerpi_replicas_total", "outcome=\"made\"").await }
    };
    let requested = || {
        let metrics = a.url("/metrics");
        async move { metric_at(&metrics, "peerpi_replicas_total", "outcome=\"requested\"").await }
    };
    let copies = || async {
        (
            made(b.as_ref().unwrap()).await,
            made(c.as_ref().unwrap()).await,
        )
    };
    eventually_async(Duration::from_secs(20), || async {
        let (b, c) = copies().await;
        b + c >= 1.0
    })
    .await;
    let copies = copies().await;
    assert_eq!(copies.0 + copies.1, 1.0, "one second copy in the region");
    assert_eq!(requested().await, 1.0, "A asked once");

    // The copy's holder goes; A has the third node make another.
    let (gone, other) = if copies.0 == 1.0 {
        (b.take(), c.take().unwrap())
    } else {
        (c.take(), b.take().unwrap())
    };
    drop(gone);
    let metrics = other.url("/metrics");
    let again = counter_reaches(&metrics, "peerpi_replicas_total", "outcome=\"made\"", 1.0);
    assert_eq!(
        again.await,
        1.0,
        "the third node keeps a copy once the second left"
    );
    assert_eq!(requested().await, 2.0);

    drop(a);
    let url = file_url_at(&format!("http://{}", other.addr), "big", filename).await;
    assert_is_upstream_file(&upstream, filename, &get_bytes(&url).await);
    assert_eq!(
        upstream.state.count(&path),
        1,
        "the region kept the file when its holders went"
    );
    assert_eq!(
        metric_at(
            &other.url("/metrics"),
            "peerpi_blob_hits_total",
            "source=\"upstream\""
        )
        .await,
        0.0
    );
}

/// A member asks a node to keep bytes of its own making (under a real
/// project's name), then a listed file it does not hold: the node keeps
/// nothing unlisted, fetches nothing upstream for an ask, and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ask_to_keep_a_copy_plants_no_bytes_and_sends_nobody_upstream() {
    let filename = "big-1.0.tar.gz";
    let upstream = fake_index(vec![peerpi_testkit::synthetic("big", filename, 2 << 20, 9)]).await;
    let eu = |s: &mut peerpi_swarm::SwarmConfig| s.region = Some("eu".into());
    let node = peer_node_with(
        &upstream,
        &[],
        |c| {
            c.replication.min_size = 1 << 20;
            c.replication.check_after = Duration::from_millis(200);
        },
        eu,
    )
    .await;
    let member = peer_node(&upstream, &[p2p_addr(&node)], eu).await;
    assert!(eventually(Duration::from_secs(10), || connected(&member) >= 1).await);
    let swarm = member.node.swarm().unwrap().clone();
    let target = node.node.swarm().unwrap().local_peer_id();

    // The member's own bytes, held and announced by it.
    let junk = vec![0x5a_u8; 2 << 20];
    let junk_digest: Sha256Digest = sha256_hex(&junk).parse().unwrap();
    let store = member.node.store();
    let mut writer = store.writer().unwrap();
    writer.append(&junk).unwrap();
    store
        .commit(writer, &junk_digest, Some(junk.len() as u64))
        .unwrap();
    swarm.provide(junk_digest).await.unwrap();
    let answer = swarm
        .ask_to_replicate(target, junk_digest, junk.len() as u64, "big")
        .await
        .unwrap();
    assert_eq!(answer, ReplicaAnswer::Accepted);
    let metrics = node.url("/metrics");
    let failed = |at_least| {
        counter_reaches(
            &metrics,
            "peerpi_replicas_total",
            "outcome=\"failed\"",
            at_least,
        )
    };
    assert_eq!(failed(1.0).await, 1.0, "the copy of unlisted bytes failed");
    assert!(node.node.store().get(&junk_digest).unwrap().is_none());
    assert!(
        upstream.state.count("/simple/big/") >= 1,
        "its page was read"
    );

    // A listed file that no peer holds: the node does not fetch it upstream.
    let listed: Sha256Digest = upstream
        .state
        .file(filename)
        .unwrap()
        .sha256
        .parse()
        .unwrap();
    let answer = swarm
        .ask_to_replicate(target, listed, 2 << 20, "big")
        .await
        .unwrap();
    assert_eq!(answer, ReplicaAnswer::Accepted);
    assert_eq!(failed(2.0).await, 2.0, "no peer held it: the copy failed");
    assert_eq!(upstream.state.count_prefix("/files/"), 0, "not upstream");

    // Once the node holds the file, an ask is answered "held"; a node whose
    // threshold the file is under declines.
    let url = file_url(&node, "big", filename).await;
    assert_is_upstream_file(&upstream, filename, &get_bytes(&url).await);
    let answer = swarm
        .ask_to_replicate(target, listed, 2 << 20, "big")
        .await
        .unwrap();
    assert_eq!(answer, ReplicaAnswer::Held);
    let asker_side = node
        .node
        .swarm()
        .unwrap()
        .ask_to_replicate(swarm.local_peer_id(), listed, 2 << 20, "big")
        .await
        .unwrap();
    assert_eq!(asker_side, ReplicaAnswer::Declined, "2 MiB is under 8 MiB");
}
