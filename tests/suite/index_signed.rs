//! `--trust index-signed`: nodes verify the index's own TUF signatures
//! (PEP 458), with no signer of their own, against the fake index's TUF
//! repository made by python-tuf: TAP 15 succinct bins, one target per
//! project (its normalised name), the `blake2b-256` of its HTML page.

use crate::common;

use std::time::Duration;

use common::python::*;
use common::*;
use peerpi_node::trust::{TrustConfig, TrustMode};
use peerpi_testkit::index_tuf::IndexTuf;
use peerpi_testkit::{demo_graph, ngclient_download};

const PROJECTS: [&str; 4] = ["alpha", "beta", "gamma", "delta"];

fn index_signed(tuf: &IndexTuf) -> TrustConfig {
    TrustConfig {
        mode: TrustMode::IndexSigned,
        root: tuf.root(),
        url: url::Url::parse(&tuf.url()).unwrap(),
        refresh: Duration::from_secs(10),
        wait: Duration::from_secs(30),
    }
}

/// Real pip installs through an `index-signed` node; a second node takes
/// the signed pages from the first by their signed digest, not from the
/// index; a peer that names a tampered page is refused and blocked for
/// good (the node then takes the page from the index); and a page the
/// index serves that is not the one it signed is refused with 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_signed_nodes_verify_the_index_pages_and_block_a_tampering_peer() {
    let upstream = fake_index(demo_graph()).await;
    let tuf = IndexTuf::publish(&upstream.state, &PROJECTS, 4)
        .await
        .unwrap();
    let trust = index_signed(&tuf);
    let with_trust = |c: &mut peerpi_node::NodeConfig| c.trust = Some(trust.clone());

    let a = peer_node_with(&upstream, &[], with_trust, |_| {}).await;
    let venv = pip_venv(&tempfile::tempdir().unwrap().keep().join("venv")).await;
    pip_install(&venv, &a.simple_url(), &["alpha"]).await;
    assert_eq!(installed(&venv).await, expected());
    let status = get_text(a.url("/")).await;
    assert!(status.contains("from the index, expires"), "{status}");

    // B takes alpha's page from A: the index is not asked for it again.
    let asked = upstream.state.count("/simple/alpha/");
    let b = peer_node_with(&upstream, &[p2p_addr(&a)], with_trust, |_| {}).await;
    let page = client().get(b.url("/simple/alpha/")).send().await.unwrap();
    assert_eq!(page.status(), 200, "{}", page.text().await.unwrap());
    assert_eq!(upstream.state.count("/simple/alpha/"), asked);

    // The liar verified beta honestly (so it announces beta's digest), then
    // names a tampered copy it holds: C refuses it, blocks the liar, and
    // serves the page from the index.
    let liar = peer_node_with(&upstream, &[], with_trust, |_| {}).await;
    assert_eq!(
        client()
            .get(liar.url("/simple/beta/"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let genuine = upstream.state.html_page_of("beta").unwrap();
    let tampered = String::from_utf8(genuine.clone())
        .unwrap()
        .replace("beta-1.0", "beta-6.6")
        .into_bytes();
    keep_bytes(&liar, tampered.clone()).await;
    let signed_digest = blake2b_256(&genuine);
    liar.node
        .swarm()
        .unwrap()
        .publish_latest(
            &format!("page/{}", hex::encode(signed_digest)),
            bytes::Bytes::copy_from_slice(&sha256(&tampered)),
        )
        .unwrap();
    let c = peer_node_with(&upstream, &[p2p_addr(&liar)], with_trust, |_| {}).await;
    let served = get_text(c.url("/simple/beta/")).await;
    assert!(
        served.contains("beta-1.0") && !served.contains("beta-6.6"),
        "{served}"
    );
    assert!(blocked_for_good(&c, &liar), "the liar is blocked for good");
    assert!(metric(&c, "peerpi_tuf_pages_refused_total", "peer_page_not_signed").await >= 1.0);

    // A new release changes gamma's page on the index after it was signed:
    // a node that has not verified gamma before refuses it, as a bad answer
    // from the index (502), naming the mismatch.
    upstream
        .state
        .add(peerpi_testkit::wheel(&peerpi_testkit::DistSpec::new(
            "gamma", "0.2",
        )));
    let d = peer_node_with(&upstream, &[], with_trust, |_| {}).await;
    let refused = client().get(d.url("/simple/gamma/")).send().await.unwrap();
    assert_eq!(refused.status(), 502);
    let body = refused.text().await.unwrap();
    assert!(
        body.contains("not the one its TUF metadata signs"),
        "{body}"
    );
    eprintln!("{body}");
    // A project the index never signed is refused too.
    upstream
        .state
        .add(peerpi_testkit::wheel(&peerpi_testkit::DistSpec::new(
            "epsilon", "1.0",
        )));
    let unsigned = client()
        .get(d.url("/simple/epsilon/"))
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status(), 503);
    assert!(unsigned
        .text()
        .await
        .unwrap()
        .contains("does not sign epsilon"));
}

/// python-tuf's own client accepts the repository the fake index
/// publishes, and the page it downloads is the index's HTML page.
#[tokio::test]
async fn python_tuf_accepts_the_fake_index_repository() {
    let upstream = fake_index(demo_graph()).await;
    let tuf = IndexTuf::publish(&upstream.state, &PROJECTS, 4)
        .await
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    let downloaded = ngclient_download(
        &tuf.server.url("metadata/"),
        &tuf.server.url("targets/"),
        &tuf.root(),
        "alpha",
        work.path(),
    )
    .await
    .unwrap_or_else(|e| panic!("python-tuf refused the index's repository: {e}"));
    assert_eq!(downloaded, upstream.state.html_page_of("alpha").unwrap());
}

fn blake2b_256(bytes: &[u8]) -> Vec<u8> {
    peerpi_trust::schema::digest("blake2b-256", bytes).unwrap()
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    peerpi_trust::client::sha256(bytes)
}
