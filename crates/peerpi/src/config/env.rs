//! What `peerpi env` prints: the variables that point pip and uv at a node.

use std::net::{IpAddr, SocketAddr};

use super::args::EnvFormat;

/// The shell lines that point pip and uv at a node listening on `listen`.
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

/// What points pip and uv at the node listening on `listen`, in `format`.
pub fn env_text(listen: &SocketAddr, format: EnvFormat) -> String {
    let host = node_host(listen);
    let url = format!("{}/simple/", node_base_url(listen));
    // pip refuses plain-HTTP hosts other than loopback unless trusted.
    let trusted = (!listen.ip().is_loopback() && !listen.ip().is_unspecified()).then_some(host);
    let mut vars = vec![
        ("PIP_INDEX_URL", url.clone()),
        ("UV_DEFAULT_INDEX", url.clone()),
    ];
    if let Some(host) = &trusted {
        vars.push(("PIP_TRUSTED_HOST", host.clone()));
    }
    match format {
        EnvFormat::Shell => vars
            .iter()
            .map(|(k, v)| format!("export {k}={v}\n"))
            .collect(),
        EnvFormat::GithubActions => vars.iter().map(|(k, v)| format!("{k}={v}\n")).collect(),
        EnvFormat::GitlabCi => {
            let mut out = "variables:\n".to_string();
            for (k, v) in &vars {
                out.push_str(&format!("  {k}: \"{v}\"\n"));
            }
            out
        }
        EnvFormat::PipConf => {
            let mut out = format!("[global]\nindex-url = {url}\n");
            if let Some(host) = &trusted {
                out.push_str(&format!("trusted-host = {host}\n"));
            }
            out
        }
        EnvFormat::UvToml => format!("[[index]]\nurl = \"{url}\"\ndefault = true\n"),
    }
}
