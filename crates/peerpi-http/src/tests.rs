#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use super::*;
use axum::routing::get;
use std::net::SocketAddr;
use tokio::io::AsyncReadExt;

const SHORT: Duration = Duration::from_millis(300);

async fn start(limits: Limits) -> SocketAddr {
    let router = axum::Router::new()
        .route("/", get(|| async { "ok" }))
        .route(
            "/endless",
            get(|| async {
                let chunk = axum::body::Bytes::from(vec![7u8; 64 * 1024]);
                let endless =
                    futures_util::stream::repeat_with(move || Ok::<_, io::Error>(chunk.clone()));
                axum::body::Body::from_stream(endless)
            }),
        );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(listener, router, limits, std::future::pending()));
    addr
}

fn limits(max_connections: usize) -> Limits {
    Limits {
        max_connections,
        header_read_timeout: SHORT,
        write_stall_timeout: SHORT,
    }
}

async fn status_of_get(addr: SocketAddr, path: &str) -> Result<u16, reqwest::Error> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    Ok(client
        .get(format!("http://{addr}{path}"))
        .send()
        .await?
        .status()
        .as_u16())
}

/// Reads until the server closes (within `limit`); returns what it sent.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> String {
    let mut out = Vec::new();
    tokio::time::timeout(limit, stream.read_to_end(&mut out))
        .await
        .expect("the server closed the connection in time")
        .ok();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn a_connection_that_sends_no_request_head_is_closed_after_the_header_timeout() {
    let addr = start(limits(8)).await;
    let mut idle = TcpStream::connect(addr).await.unwrap();
    let started = std::time::Instant::now();
    read_until_closed(&mut idle, SHORT * 10).await;
    assert!(
        started.elapsed() >= SHORT / 2,
        "not closed before the timeout"
    );
}

#[tokio::test]
async fn over_the_connection_cap_a_client_gets_503_and_the_cap_frees_up() {
    const CAP: usize = 4;
    let addr = start(limits(CAP)).await;
    let mut idle = Vec::new();
    for _ in 0..CAP {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut over = TcpStream::connect(addr).await.unwrap();
    let answer = read_until_closed(&mut over, Duration::from_secs(2)).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("limit 4"), "{answer}");

    // The idle ones time out (header timeout), and the slots come back.
    for stream in &mut idle {
        read_until_closed(stream, SHORT * 10).await;
    }
    assert_eq!(status_of_get(addr, "/").await.unwrap(), 200);
}

#[tokio::test]
async fn a_client_that_stops_reading_loses_its_connection_after_the_stall_limit() {
    let addr = start(limits(1)).await;
    let mut stalled = TcpStream::connect(addr).await.unwrap();
    stalled
        .write_all(b"GET /endless HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    // It holds the only slot while the server waits on it...
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut second = TcpStream::connect(addr).await.unwrap();
    assert!(read_until_closed(&mut second, Duration::from_secs(2))
        .await
        .starts_with("HTTP/1.1 503"));
    // ...until the write-stall limit ends it.
    let mut freed = false;
    for _ in 0..50 {
        tokio::time::sleep(SHORT).await;
        if status_of_get(addr, "/").await.is_ok_and(|s| s == 200) {
            freed = true;
            break;
        }
    }
    assert!(freed, "the stalled connection's slot came back");
    drop(stalled);
}
