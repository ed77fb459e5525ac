//! `fake-index`: serves a generated package index on loopback for manual
//! testing, the testnet and the benchmarks.
//!
//! Usage: `fake-index [--listen ADDR] [--demo] [--project NAME]... [--many-files N] [--big-file MIB]...`
//! (`--project NAME`: one more project, a single small wheel `NAME-1.0`).
//! It prints the Simple API URL on its first line, then serves until killed.

use std::net::SocketAddr;

use peerpi_testkit::{synthetic, wheel, DistSpec, FakeIndex, IndexState};

fn usage() -> ! {
    eprintln!(
        "usage: fake-index [--listen ADDR] [--demo] [--project NAME]... [--many-files N] [--big-file MIB]..."
    );
    std::process::exit(2)
}

#[tokio::main]
async fn main() {
    let mut listen: SocketAddr = "127.0.0.1:0".parse().unwrap_or_else(|_| unreachable!());
    let mut files = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage());
        match arg.as_str() {
            "--listen" => listen = value().parse().unwrap_or_else(|_| usage()),
            "--demo" => files.extend(peerpi_testkit::demo_graph()),
            "--project" => files.push(wheel(&DistSpec::new(&value(), "1.0"))),
            "--many-files" => {
                let n: usize = value().parse().unwrap_or_else(|_| usage());
                files.extend((0..n).map(|i| wheel(&DistSpec::new("many", &format!("1.{i}")))));
            }
            "--big-file" => {
                let mib: u64 = value().parse().unwrap_or_else(|_| usage());
                let name = format!("big{mib}");
                files.push(synthetic(
                    &name,
                    &format!("{name}-1.0.tar.gz"),
                    mib << 20,
                    mib,
                ));
            }
            _ => usage(),
        }
    }
    let server = match FakeIndex::start_on(IndexState::new(files), listen).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("fake-index: cannot listen on {listen}: {e}");
            std::process::exit(1)
        }
    };
    println!("{}", server.simple_url());
    let _ = tokio::signal::ctrl_c().await;
}
