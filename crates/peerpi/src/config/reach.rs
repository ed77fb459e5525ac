//! Where clients on this machine reach a node: its host and base URL.

use std::net::{IpAddr, SocketAddr};

/// The host clients on this machine reach a node listening on `listen` at
/// (loopback for a wildcard address; IPv6 in brackets).
pub fn node_host(listen: &SocketAddr) -> String {
    match listen.ip() {
        ip if ip.is_unspecified() => "127.0.0.1".to_string(),
        IpAddr::V6(ip) => format!("[{ip}]"),
        IpAddr::V4(ip) => ip.to_string(),
    }
}

/// `http://HOST:PORT` of a node listening on `listen`, without a slash.
pub fn node_base_url(listen: &SocketAddr) -> String {
    format!("http://{}:{}", node_host(listen), listen.port())
}
