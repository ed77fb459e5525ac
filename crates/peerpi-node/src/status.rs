//! The status page at `/`: what an operator wants to see at a glance, as
//! one self-contained HTML document (no scripts, no external assets, so it
//! works offline and behind any proxy): the node, its store, where its
//! bytes came from (with the last hour as inline SVG charts), what it saved
//! upstream, its peers and why any is shunned, its recent downloads, and
//! its health. It refreshes itself every 10 seconds.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use html_escape::encode_text;

use crate::blobs::Blobs;
use crate::metrics::{Metrics, Source};
use crate::{background_runtime, lock, Node};

/// Downloads listed, newest first.
const RECENT: usize = 20;
/// One sample of the byte counters per this, for the charts.
const SAMPLE_EVERY: Duration = Duration::from_secs(60);
/// Samples kept: the last hour.
const SAMPLES: usize = 61;

/// A finished download.
#[derive(Debug, Clone)]
pub(crate) struct RecentFetch {
    pub filename: String,
    pub source: Source,
    pub bytes: u64,
    pub at: jiff::Timestamp,
}

/// The page's memory: start time, recent downloads, counter samples.
pub(crate) struct StatusState {
    started: Instant,
    recent: Mutex<VecDeque<RecentFetch>>,
    /// Cumulative bytes by source (local, peer, upstream) per sample.
    samples: Mutex<VecDeque<[u64; 3]>>,
}

impl StatusState {
    pub(crate) fn new() -> Self {
        StatusState {
            started: Instant::now(),
            recent: Mutex::new(VecDeque::with_capacity(RECENT)),
            samples: Mutex::new(VecDeque::with_capacity(SAMPLES)),
        }
    }

    pub(crate) fn record_fetch(&self, fetch: RecentFetch) {
        let mut recent = lock(&self.recent);
        if recent.len() == RECENT {
            recent.pop_back();
        }
        recent.push_front(fetch);
    }

    fn sample(&self, metrics: &Metrics) {
        let now = metrics.by_source().map(|(_, _, bytes)| bytes);
        let mut samples = lock(&self.samples);
        if samples.len() == SAMPLES {
            samples.pop_front();
        }
        samples.push_back(now);
    }
}

/// Samples the byte counters every minute while the node lives.
pub(crate) fn start_sampler(blobs: &Arc<Blobs>) {
    let Some(runtime) = background_runtime("the status page's sampler") else {
        return;
    };
    let blobs = Arc::downgrade(blobs);
    runtime.spawn(async move {
        let mut ticker = tokio::time::interval(SAMPLE_EVERY);
        loop {
            ticker.tick().await;
            let Some(blobs) = blobs.upgrade() else { return };
            blobs.status.sample(&blobs.metrics);
        }
    });
}

/// The page.
/// The TUF section: the trusted timestamp, where it came from, and until
/// when pages are served on it.
fn trust_section(trust: &crate::trust::PageTrust) -> String {
    let publisher = trust.publisher_name();
    let (class, text) = match trust.timestamp_status() {
        None => (
            "bad",
            "no timestamp trusted yet: signed pages cannot be served".to_string(),
        ),
        Some(status) => {
            let left = status.expires.as_second() - jiff::Timestamp::now().as_second();
            let expiry = if left > 0 {
                format!(
                    "expires {} (in {})",
                    status.expires,
                    humantime::format_duration(Duration::from_secs(left.unsigned_abs()))
                )
            } else {
                format!("expired {}: signed pages are refused", status.expires)
            };
            match status.source {
                peerpi_trust::TimestampSource::Repository => (
                    if left > 0 { "ok" } else { "bad" },
                    format!("version {} from {publisher}, {expiry}", status.version),
                ),
                peerpi_trust::TimestampSource::Peers => (
                    "bad",
                    format!(
                        "{publisher} cannot be reached: version {}, the newest peers hold, {expiry}",
                        status.version
                    ),
                ),
            }
        }
    };
    format!(
        "<h2>TUF</h2>\n<table>\n<tr><th>timestamp</th><td id=\"tuf-timestamp\" class=\"{class}\">{}</td></tr>\n</table>\n",
        encode_text(&text)
    )
}

pub(crate) fn render(node: &Node) -> String {
    let state = &node.inner.blobs.status;
    let metrics = node.metrics();
    let store = node.store();
    let swarm = node.swarm();
    let mut html = String::with_capacity(16 << 10);
    let text = |s: &str| encode_text(s).into_owned();

    let peer_id = swarm.map_or("(peer-to-peer off)".to_string(), |s| {
        s.local_peer_id().to_string()
    });
    let region = swarm.and_then(|s| s.region()).unwrap_or("none").to_string();
    let upstream = peerpi_upstream::redacted(node.config().upstream.base.as_str());
    let health = match store.degraded() {
        None => ("ok", "ok".to_string()),
        Some(reason) => ("bad", format!("degraded: {reason}")),
    };
    let _ = write!(
        html,
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="10">
<link rel="icon" href="data:,">
<title>peerpi node</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }}
h1 {{ font-size: 1.3em; }} h2 {{ font-size: 1.1em; margin-top: 1.5em; }}
table {{ border-collapse: collapse; }} td, th {{ padding: .2em .8em; text-align: left; border-bottom: 1px solid #ddd; }}
td.n {{ text-align: right; font-variant-numeric: tabular-nums; }}
.ok {{ color: #070; }} .bad {{ color: #b00; }} .muted {{ color: #777; }}
svg {{ border: 1px solid #ddd; background: #fafafa; }}
</style></head><body>
<h1>peerpi node</h1>
<table>
<tr><th>node id</th><td id="node-id">{peer_id}</td></tr>
<tr><th>region</th><td id="region">{region}</td></tr>
<tr><th>upstream</th><td id="upstream">{upstream}</td></tr>
<tr><th>uptime</th><td id="uptime">{uptime}</td></tr>
<tr><th>health</th><td id="health" class="{health_class}">{health_text}</td></tr>
</table>
"#,
        peer_id = text(&peer_id),
        region = text(&region),
        upstream = text(&upstream),
        uptime = humantime::format_duration(Duration::from_secs(state.started.elapsed().as_secs())),
        health_class = health.0,
        health_text = text(&health.1),
    );

    let used = store.total_bytes();
    let cap = store.cap_bytes();
    let _ = write!(
        html,
        r#"<h2>Store</h2>
<table>
<tr><th>used</th><td class="n" id="store-used">{}</td><td class="muted">of {} ({:.1}%)</td></tr>
<tr><th>files</th><td class="n" id="store-blobs">{}</td><td></td></tr>
</table>
"#,
        show_bytes(used),
        show_bytes(cap),
        if cap == 0 {
            0.0
        } else {
            used as f64 * 100.0 / cap as f64
        },
        store.blob_count(),
    );

    html.push_str("<h2>Files by source</h2>\n<table><tr><th>source</th><th>requests</th><th>bytes</th><th>bytes per minute, last hour</th></tr>\n");
    let samples: Vec<[u64; 3]> = lock(&state.samples).iter().copied().collect();
    for (i, (source, hits, bytes)) in metrics.by_source().into_iter().enumerate() {
        let name = source.as_str();
        let series: Vec<u64> = samples.iter().map(|s| s[i]).chain([bytes]).collect();
        let _ = writeln!(
            html,
            r#"<tr><td>{name}</td><td class="n" id="hits-{name}">{hits}</td><td class="n" id="bytes-{name}" data-bytes="{bytes}">{}</td><td>{}</td></tr>"#,
            show_bytes(bytes),
            sparkline(&series),
        );
    }
    let _ = write!(
        html,
        r#"</table>
<p>Upstream bytes saved by peers: <strong id="saved" data-bytes="{saved}">{}</strong></p>
"#,
        show_bytes(metrics.bytes_saved()),
        saved = metrics.bytes_saved(),
    );

    if let Some(trust) = &node.inner.trust {
        html.push_str(&trust_section(trust));
    }

    html.push_str("<h2>Peers</h2>\n");
    match swarm {
        None => html.push_str("<p class=\"muted\">Peer-to-peer is off.</p>\n"),
        Some(swarm) => {
            let peers = swarm.peers();
            if peers.is_empty() {
                html.push_str("<p class=\"muted\">No peers known yet.</p>\n");
            } else {
                html.push_str("<table id=\"peers\"><tr><th>peer</th><th>region</th><th>RTT</th><th>state</th><th>in</th><th>out</th></tr>\n");
                for p in peers {
                    let state = if p.blocked && p.blocked_until.is_none() {
                        "<span class=\"bad\">blocked: served bytes that failed verification</span>"
                            .to_string()
                    } else if let Some(until) = p.blocked_until {
                        let left = until.saturating_duration_since(Instant::now()).as_secs();
                        format!("<span class=\"bad\">suspended {left}s more: a transfer broke off or stalled</span>")
                    } else if p.connected {
                        "<span class=\"ok\">connected</span>".to_string()
                    } else {
                        "<span class=\"muted\">known</span>".to_string()
                    };
                    let _ = writeln!(
                        html,
                        r#"<tr><td>{}</td><td>{}</td><td class="n">{}</td><td>{state}</td><td class="n">{}</td><td class="n">{}</td></tr>"#,
                        text(&p.peer_id),
                        text(p.region.as_deref().unwrap_or("-")),
                        p.rtt.map_or("-".to_string(), |d| format!(
                            "{:.1} ms",
                            d.as_secs_f64() * 1000.0
                        )),
                        show_bytes(p.bytes_in),
                        show_bytes(p.bytes_out),
                    );
                }
                html.push_str("</table>\n");
            }
        }
    }

    html.push_str("<h2>Recent downloads</h2>\n");
    let recent: Vec<RecentFetch> = lock(&state.recent).iter().cloned().collect();
    if recent.is_empty() {
        html.push_str("<p class=\"muted\">None yet.</p>\n");
    } else {
        html.push_str("<table id=\"recent\"><tr><th>file</th><th>source</th><th>bytes</th><th>when (UTC)</th></tr>\n");
        for f in recent {
            let _ = writeln!(
                html,
                r#"<tr><td>{}</td><td>{}</td><td class="n">{}</td><td>{}</td></tr>"#,
                text(&f.filename),
                f.source.as_str(),
                show_bytes(f.bytes),
                f.at.strftime("%Y-%m-%d %H:%M:%S"),
            );
        }
        html.push_str("</table>\n");
    }
    html.push_str("<p class=\"muted\">Point pip or uv at <code>/simple/</code> (see <code>peerpi env</code>). Metrics: <a href=\"/metrics\">/metrics</a>. Peers as JSON: <a href=\"/peers\">/peers</a>.</p>\n</body></html>\n");
    html
}

/// An inline SVG line of the per-interval increase of a cumulative series.
fn sparkline(cumulative: &[u64]) -> String {
    const W: f64 = 240.0;
    const H: f64 = 32.0;
    let deltas: Vec<u64> = cumulative
        .windows(2)
        .map(|w| w[1].saturating_sub(w[0]))
        .collect();
    if deltas.is_empty() {
        return format!(
            r#"<svg width="{W}" height="{H}" role="img" aria-label="no samples yet"></svg>"#
        );
    }
    let max = deltas.iter().copied().max().unwrap_or(0).max(1) as f64;
    let step = W / (SAMPLES - 1) as f64;
    let offset = W - step * (deltas.len() - 1) as f64;
    let points: Vec<String> = deltas
        .iter()
        .enumerate()
        .map(|(i, d)| {
            format!(
                "{:.1},{:.1}",
                offset + step * i as f64,
                H - 2.0 - (*d as f64 / max) * (H - 4.0)
            )
        })
        .collect();
    format!(
        r##"<svg width="{W}" height="{H}" role="img" aria-label="bytes per minute"><polyline fill="none" stroke="#36c" stroke-width="1.5" points="{}"/></svg>"##,
        points.join(" ")
    )
}

fn show_bytes(n: u64) -> String {
    bytesize::ByteSize::b(n).display().iec().to_string()
}
