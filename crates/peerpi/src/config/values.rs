//! Typed setting values: each parses from the text of a flag, a `PEERPI_*`
//! variable or a `peerpi.toml` string the same way, and fails with an
//! example of a good value (clap and serde add the setting's name).

use std::net::{SocketAddr, ToSocketAddrs};
use std::str::FromStr;
use std::time::Duration;

use peerpi_swarm::Multiaddr;
use serde::{Deserialize, Deserializer};

/// Implements `Deserialize` through `FromStr`, so that a file value reads
/// exactly like the flag (serde's own formats for durations and sizes are
/// not what an operator writes).
macro_rules! deserialize_from_text {
    ($($value:ty),*) => {$(
        impl<'de> Deserialize<'de> for $value {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}

deserialize_from_text!(Span, Size, P2pAddr, BulkListen);

/// A duration: `90s`, `10m`, `1h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span(pub Duration);

impl FromStr for Span {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        humantime::parse_duration(text.trim())
            .map(Span)
            .map_err(|e| format!("{e} (examples: 90s, 10m, 1h)"))
    }
}

/// A number of bytes: `500MB`, `20GiB`, `0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl FromStr for Size {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        text.trim()
            .parse::<bytesize::ByteSize>()
            .map(|b| Size(b.as_u64()))
            .map_err(|e| format!("{e} (examples: 500MB, 20GiB)"))
    }
}

/// A libp2p address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct P2pAddr(pub Multiaddr);

impl FromStr for P2pAddr {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        text.trim().parse::<Multiaddr>().map(P2pAddr).map_err(|e| {
            format!("{e} (example: /ip4/192.0.2.1/tcp/7504/p2p/<peer id>, see `peerpi id`)")
        })
    }
}

/// Where the bulk channel listens, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BulkListen(pub Option<SocketAddr>);

impl FromStr for BulkListen {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("off") {
            return Ok(BulkListen(None));
        }
        text.to_socket_addrs()
            .ok()
            .and_then(|mut addrs| addrs.next())
            .map(|addr| BulkListen(Some(addr)))
            .ok_or_else(|| "expected HOST:PORT (e.g. 0.0.0.0:7505) or off".to_string())
    }
}

/// The value of a `--no-…` switch as the setting it turns off: the switch
/// alone, or its variable set to a true value, is `false`.
pub(crate) fn switched_off(text: &str) -> Result<bool, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "" | "1" | "true" | "yes" | "on" => Ok(false),
        "0" | "false" | "no" | "off" => Ok(true),
        other => Err(format!("{other:?} is not true or false")),
    }
}

/// How the README writes a duration default: `2s`, `10m`.
pub(crate) fn show_span(span: Duration) -> String {
    humantime::format_duration(span).to_string()
}

/// How the README writes a size default: `20GiB`, `4MiB`.
pub(crate) fn show_size(bytes: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    UNITS
        .iter()
        .find(|(unit, _)| bytes >= *unit && bytes % unit == 0)
        .map_or_else(
            || bytes.to_string(),
            |(unit, name)| format!("{}{name}", bytes / unit),
        )
}
