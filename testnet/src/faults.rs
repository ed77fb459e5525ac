//! The faults the scenarios inject, all inside the rig's namespaces and
//! the run's own directory: a runner's store damaged or truncated on disk,
//! a runner's process stopped (a peer that stalls), the index's link taken
//! down, and the per-region caching proxy's configuration.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::net;

/// Flips the first byte of every stored blob: the runner now serves wrong
/// bytes for everything it announced.
pub fn damage_store(data_dir: &Path) -> Result<()> {
    let blobs = data_dir.join("blobs");
    for shard in std::fs::read_dir(&blobs).with_context(|| format!("{}", blobs.display()))? {
        for blob in std::fs::read_dir(shard?.path())? {
            let path = blob?.path();
            let mut bytes = std::fs::read(&path)?;
            if let Some(first) = bytes.first_mut() {
                *first ^= 0xff;
                std::fs::write(&path, bytes)?;
            }
        }
    }
    Ok(())
}

/// Cuts every stored blob to half its length: the runner announces the
/// recorded length and then breaks off.
pub fn truncate_store(data_dir: &Path) -> Result<()> {
    let blobs = data_dir.join("blobs");
    for shard in std::fs::read_dir(&blobs).with_context(|| format!("{}", blobs.display()))? {
        for blob in std::fs::read_dir(shard?.path())? {
            let path = blob?.path();
            let file = std::fs::OpenOptions::new().write(true).open(&path)?;
            let len = file.metadata()?.len();
            file.set_len(len / 2)?;
        }
    }
    Ok(())
}

/// SIGSTOP: the process keeps its connections open and answers nothing, a
/// peer that stalls.
pub fn stop_process(pid: u32) -> Result<()> {
    let status = Command::new("kill")
        .args(["-STOP", &pid.to_string()])
        .status()
        .context("running kill")?;
    if !status.success() {
        bail!("kill -STOP {pid} failed");
    }
    Ok(())
}

/// Takes the index's link down (`up == false`) or brings it back: the index
/// is unreachable (packets vanish, connections time out), not refusing.
pub fn index_link(prefix: &str, up: bool) -> Result<()> {
    let namespace = net::index_namespace(prefix);
    let state = if up { "up" } else { "down" };
    let status = Command::new("ip")
        .args(["-n", &namespace, "link", "set", "eth0", state])
        .status()
        .context("running ip")?;
    if !status.success() {
        bail!("ip link set eth0 {state} in {namespace} failed");
    }
    if up {
        // The default route went with the link.
        let _ = Command::new("ip")
            .args(["-n", &namespace, "route", "replace", "default", "via"])
            .arg(format!("10.{}.0.254", net::INDEX_OCTET))
            .status();
    }
    Ok(())
}

/// nginx for one region, the way CI operators cache an index today:
/// `proxy_cache` with `proxy_cache_lock` (one upstream fetch per file at a
/// time), pages cached as long as peerpi caches them (10 min), stale
/// answers when the index fails. Returns the configuration's path.
pub fn nginx_conf(
    out: &Path,
    region: u8,
    listen: Ipv4Addr,
    port: u16,
    index_url: &str,
) -> Result<PathBuf> {
    let dir = out.join(format!("nginx-r{region}"));
    std::fs::create_dir_all(dir.join("cache"))?;
    std::fs::create_dir_all(dir.join("tmp"))?;
    let upstream = index_url.trim_end_matches("/simple/");
    let d = dir.display();
    let conf = format!(
        r#"worker_processes 2;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    proxy_cache_path {d}/cache levels=1:2 keys_zone=index:10m max_size=20g inactive=24h use_temp_path=off;
    server {{
        listen {listen}:{port};
        # Files never change: keep them as long as the disk allows.
        location /files/ {{
            proxy_pass {upstream};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache index;
            proxy_cache_key $request_uri;
            proxy_cache_lock on;
            proxy_cache_lock_timeout 600s;
            proxy_cache_lock_age 600s;
            proxy_cache_valid 200 30d;
            proxy_read_timeout 120s;
        }}
        location / {{
            proxy_pass {upstream};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache index;
            proxy_cache_key $request_uri$http_accept;
            proxy_cache_lock on;
            proxy_cache_lock_timeout 600s;
            proxy_cache_lock_age 600s;
            proxy_cache_valid 200 10m;
            proxy_cache_use_stale error timeout updating;
            proxy_read_timeout 120s;
        }}
    }}
}}
"#
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf)?;
    Ok(path)
}
