//! Parsing setting values: durations, sizes, addresses, each failing with
//! the flag's name and an example of a good value.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use anyhow::{anyhow, Result};
use peerpi_swarm::Multiaddr;

use super::DEFAULT_BULK_LISTEN;

pub(crate) fn multiaddrs(flag: &str, values: &[String]) -> Result<Vec<Multiaddr>> {
    values
        .iter()
        .map(|v| {
            v.trim().parse::<Multiaddr>().map_err(|e| {
                anyhow!(
                    "invalid --{flag} {v:?}: {e} (example: /ip4/192.0.2.1/tcp/7504/p2p/<peer id>)"
                )
            })
        })
        .collect()
}

pub(crate) fn duration(name: &str, value: Option<&str>, default: Duration) -> Result<Duration> {
    match value {
        None => Ok(default),
        Some(v) => humantime::parse_duration(v)
            .map_err(|e| anyhow!("invalid --{name} {v:?}: {e} (examples: 90s, 10m, 1h)")),
    }
}

pub(crate) fn size(name: &str, value: &str) -> Result<u64> {
    value
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| anyhow!("invalid --{name} {value:?}: {e} (examples: 500MB, 20GiB)"))
}

pub(crate) fn bulk_listen(value: Option<&str>) -> Result<Option<SocketAddr>> {
    let text = value.unwrap_or(DEFAULT_BULK_LISTEN).trim();
    if text.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    text.to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .map(Some)
        .ok_or_else(|| {
            anyhow!("invalid --bulk-listen {text:?}: expected HOST:PORT (e.g. {DEFAULT_BULK_LISTEN}) or off")
        })
}
