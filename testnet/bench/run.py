#!/usr/bin/env python3
"""peerpi benchmark harness: one run, side by side on loopback.

Measures, for every contender:
  * a warm index page of a project with ~2,000 files: requests/s and p50/p99
    latency at 8 and 64 connections (wrk);
  * warm 100 MiB file throughput (curl, median of several runs);
  * server RSS while serving 10 concurrent 1 GiB downloads (peak VmRSS).

Contenders: peerpi (release build, warm cache) and nginx serving the same
bytes as static files (the practical ceiling here). Adding a contender is one
function that starts it and returns a Contender.

Usage: python3 testnet/bench/run.py [--quick] [--out FILE]
Needs: cargo, nginx, wrk, curl, openssl (apt-get install nginx-light wrk curl openssl).
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TARGET = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release")
JSON = "application/vnd.pypi.simple.v1+json"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except Exception:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def get(url, accept=None):
    req = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(req, timeout=600) as r:
        return r.read()


@dataclass
class Contender:
    name: str
    pid: int
    page_url: str          # warm project page, ~2,000 files
    page_accept: str       # Accept header wrk sends
    file_100m_url: str
    file_1g_url: str
    stop: callable = field(repr=False)


# ---------------------------------------------------------------- fixtures

@dataclass
class Fixtures:
    index_url: str
    proc: subprocess.Popen
    big100: str
    big1g: str


def start_fake_index():
    port = free_port()
    proc = subprocess.Popen(
        [os.path.join(TARGET, "fake-index"), "--listen", f"127.0.0.1:{port}",
         "--many-files", "2000", "--big-file", "100", "--big-file", "1024", "--demo"],
        stdout=subprocess.PIPE, text=True)
    url = proc.stdout.readline().strip()
    wait_http(url + "many/")
    return Fixtures(url, proc, "big100-1.0.tar.gz", "big1024-1.0.tar.gz")


# ---------------------------------------------------------------- contenders

def start_peerpi(fx, workdir, name, env=None):
    """A node in front of the fake index; `env` is added to its environment."""
    port = free_port()
    data = os.path.join(workdir, f"{name}-data")
    log = open(os.path.join(workdir, f"{name}.log"), "w")
    proc = subprocess.Popen(
        [os.path.join(TARGET, "peerpi"), "serve", "--upstream", fx.index_url,
         "--listen", f"127.0.0.1:{port}", "--data-dir", data, "--page-ttl", "1h",
         "--no-mdns", "--p2p-listen", "/ip4/127.0.0.1/tcp/0", "--bulk-listen", "127.0.0.1:0"],
        stdout=log, stderr=log, env={**os.environ, "RUST_LOG": "warn", **(env or {})})
    base = f"http://127.0.0.1:{port}"
    wait_http(base + "/healthz")
    return proc, base


def peerpi(fx, workdir):
    proc, base = start_peerpi(fx, workdir, "peerpi")
    urls = {}
    for project, filename in [("many", None), ("big100", fx.big100), ("big1024", fx.big1g)]:
        page = json.loads(get(f"{base}/simple/{project}/", JSON))
        if filename:
            f = next(f for f in page["files"] if f["filename"] == filename)
            url = base + "/files/" + f["url"].split("/files/", 1)[1]
            get(url)  # warm: download into the store once
            urls[filename] = url
    # Warm a few small wheels too, for the peer first-byte measurements.
    page = json.loads(get(f"{base}/simple/many/", JSON))
    small_paths = ["/files/" + f["url"].split("/files/", 1)[1] for f in page["files"][:24]]
    for path in small_paths:
        get(base + path)
    small = base + small_paths[0]
    contender = Contender("peerpi", proc.pid, f"{base}/simple/many/", JSON,
                          urls[fx.big100], urls[fx.big1g], lambda: (proc.terminate(), proc.wait()))
    contender.base = base
    contender.small_path = small[len(base):]
    contender.big100_path = urls[fx.big100][len(base):]
    contender.small_paths = small_paths
    return contender


def nginx_static(fx, workdir, peer):
    """nginx serving the very bytes peerpi serves, as static files."""
    root = os.path.join(workdir, "nginx-root")
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "page.json"), "wb") as f:
        f.write(get(peer.page_url, JSON))
    for name, url in [("f100", peer.file_100m_url), ("f1g", peer.file_1g_url)]:
        with urllib.request.urlopen(url) as r, open(os.path.join(root, name), "wb") as f:
            shutil.copyfileobj(r, f, 1 << 20)
    port = free_port()
    conf = os.path.join(workdir, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""
worker_processes auto;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log;
daemon off;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    types {{ }}
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
""")
    proc = subprocess.Popen(["nginx", "-c", conf, "-p", workdir],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    wait_http(base + "/page.json")
    return Contender("nginx-static", proc.pid, base + "/page.json", JSON,
                     base + "/f100", base + "/f1g", lambda: (proc.terminate(), proc.wait()))


# ---------------------------------------------------------------- measurements

def wrk(url, accept, connections, seconds):
    out = subprocess.run(
        ["wrk", "-t", "2", "-c", str(connections), "-d", f"{seconds}s", "--latency",
         "-H", f"Accept: {accept}", url],
        capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def pct(p):
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        value, unit = float(m.group(1)), m.group(2)
        return value * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    return {"rps": rps, "p50_ms": pct(50), "p99_ms": pct(99)}


def throughput(url, runs):
    speeds = []
    for _ in range(runs):
        out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{speed_download}", url],
                             capture_output=True, text=True, check=True).stdout
        speeds.append(float(out) / (1 << 20))
    return statistics.median(speeds)


def rss_kib(pid):
    """RSS of pid and its children (nginx workers), in KiB."""
    pids = [pid]
    try:
        children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
        pids += [int(c) for c in children]
    except FileNotFoundError:
        pass
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                total += int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))
        except (OSError, AttributeError):
            pass
    return total


def peak_rss_during_downloads(contender, url, parallel):
    before = rss_kib(contender.pid)
    procs = [subprocess.Popen(["curl", "-s", "-o", "/dev/null", "--limit-rate", "200M", url])
             for _ in range(parallel)]
    peak = before
    while any(p.poll() is None for p in procs):
        peak = max(peak, rss_kib(contender.pid))
        time.sleep(0.05)
    ok = all(p.returncode == 0 for p in procs)
    return {"rss_before_mib": before / 1024, "rss_peak_mib": peak / 1024, "downloads_ok": ok}


def curl_timing(url):
    out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{time_starttransfer} %{speed_download}", url],
                         capture_output=True, text=True, check=True).stdout.split()
    return float(out[0]) * 1000.0, float(out[1]) / (1 << 20)


def start_peer(fx, workdir, name, bootstrap):
    port = free_port()
    log = open(os.path.join(workdir, f"{name}.log"), "w")
    proc = subprocess.Popen(
        [os.path.join(TARGET, "peerpi"), "serve", "--upstream", fx.index_url,
         "--listen", f"127.0.0.1:{port}", "--data-dir", os.path.join(workdir, name), "--no-mdns",
         "--p2p-listen", "/ip4/127.0.0.1/tcp/0", "--bulk-listen", "127.0.0.1:0", "--bootstrap", bootstrap],
        stdout=log, stderr=log, env={**os.environ, "RUST_LOG": "warn"})
    base = f"http://127.0.0.1:{port}"
    wait_http(base + "/healthz")
    return proc, base


def cluster_ttfb(fx, workdir, seed, size=10):
    """A cluster of `size` nodes (the warm seed and size-1 cold ones, all
    bootstrapped to the seed). Each cold node asks itself for two small
    wheels only the seed holds: time to first byte includes the DHT provider
    lookup, the peer transfer and verification."""
    bootstrap = json.loads(get(seed.base + "/peers"))["listen"][0]
    nodes = [start_peer(fx, workdir, f"cluster-{i}", bootstrap) for i in range(size - 1)]
    try:
        time.sleep(2)  # let identify and Kademlia fill the routing tables
        samples = []
        for i, (_, base) in enumerate(nodes):
            get(base + "/simple/many/", JSON)
            for path in seed.small_paths[1 + 2 * i: 3 + 2 * i]:
                ms, _ = curl_timing(base + path)
                samples.append(ms)
            metrics = get(base + "/metrics").decode()
            if os.environ.get("PEERPI_BENCH_KEEP"):
                print(base, [l for l in metrics.splitlines() if "blob_hits" in l or "peers" in l], flush=True)
            if 'peerpi_blob_hits_total{source="peer"}' not in metrics:
                raise RuntimeError(f"{base} did not get its wheels from a peer")
        samples.sort()
        return {"nodes": size, "samples": len(samples), "ttfb_ms_p50": statistics.median(samples),
                "ttfb_ms_max": samples[-1]}
    finally:
        for proc, _ in nodes:
            proc.terminate()
            proc.wait()


def metric_sum(text, name, labels):
    return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
               if l.startswith(name) and labels in l)


def peer_transfer(fx, workdir, seed, runs, channel):
    """A cold node B bootstrapped to the warm node: B gets files from its peer.

    `channel` is "bulk" (B takes redirects to A's HTTP bulk channel) or
    "stream" (B's bulk channel is off, so every byte stays on the libp2p
    stream). Reports, as medians over `runs` fresh B nodes: B's time to first
    byte for a small wheel (provider lookup, peer transfer and verification
    included); the node-to-node transfer rate of the 100 MiB file (size / B's
    own fetch time, from asking the DHT to the verified, fsynced blob in its
    store, read from peerpi_blob_fetch_seconds); and the rate a client of B
    sees for it (that fetch plus B serving the file to curl)."""
    peers = json.loads(get(seed.base + "/peers"))
    bootstrap = peers["listen"][0]
    bulk = "127.0.0.1:0" if channel == "bulk" else "off"
    ttfb, transfer, client = [], [], []
    for i in range(runs):
        port = free_port()
        data = os.path.join(workdir, f"peer-b-{channel}-{i}")
        log = open(os.path.join(workdir, f"peer-b-{channel}-{i}.log"), "w")
        proc = subprocess.Popen(
            [os.path.join(TARGET, "peerpi"), "serve", "--upstream", fx.index_url,
             "--listen", f"127.0.0.1:{port}", "--data-dir", data, "--no-mdns",
             "--p2p-listen", "/ip4/127.0.0.1/tcp/0", "--bootstrap", bootstrap, "--bulk-listen", bulk],
            stdout=log, stderr=log, env={**os.environ, "RUST_LOG": "warn"})
        base = f"http://127.0.0.1:{port}"
        try:
            wait_http(base + "/healthz")
            deadline = time.time() + 10
            while not any(p["connected"] for p in json.loads(get(base + "/peers"))["peers"]):
                if time.time() > deadline:
                    raise RuntimeError("B did not connect to its peer")
                time.sleep(0.05)
            get(base + "/simple/many/", JSON)
            get(base + "/simple/big100/", JSON)
            ms, _ = curl_timing(base + seed.small_path)
            ttfb.append(ms)
            before = get(base + "/metrics").decode()
            _, speed = curl_timing(base + seed.big100_path)
            client.append(speed)
            after = get(base + "/metrics").decode()
            name = "peerpi_blob_fetch_seconds_sum"
            seconds = metric_sum(after, name, 'source="peer"') - metric_sum(before, name, 'source="peer"')
            transfer.append(100 / seconds)  # the fixture is 100 MiB
            peer_bytes = metric_sum(after, "peerpi_blob_bytes_total", 'source="peer"')
            if peer_bytes < 100 << 20:
                raise RuntimeError(f"B did not get the file from its peer ({peer_bytes} bytes)")
            used = metric_sum(after, "peerpi_peer_transfers_total", f'channel="{channel}"')
            if used < 1:
                raise RuntimeError(f"B did not use the {channel} channel")
        finally:
            proc.terminate()
            proc.wait()
    return {"channel": channel, "small_ttfb_ms_p50": statistics.median(ttfb),
            "transfer_mib_s": statistics.median(transfer), "client_mib_s": statistics.median(client),
            "runs": runs}


def verified_download(url, runs):
    """The reference for a verified transfer: the 100 MiB file from `url`
    piped from curl into `openssl dgst -sha256` (SHA-NI where the CPU has it;
    coreutils' sha256sum is several times slower), MiB/s of the whole
    pipeline (median)."""
    speeds = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(f"curl -s '{url}' | openssl dgst -sha256", shell=True, check=True, capture_output=True)
        speeds.append(100 / (time.perf_counter() - start))
    return statistics.median(speeds)


def sha256_rate():
    """MiB/s of SHA-256 on this CPU (one core), the ceiling of any verified transfer."""
    import hashlib
    data = os.urandom(256 << 20)
    start = time.perf_counter()
    hashlib.sha256(data).digest()
    return 256 / (time.perf_counter() - start)


# ---------------------------------------------------------------- page matrix

def page_matrix(fx, workdir, arenas, seconds, rounds):
    """Warm-page throughput of one build under several malloc arena caps
    (glibc's MALLOC_ARENA_MAX; "builtin" is the binary's own cap) and of
    nginx serving the same bytes, at 8 and 64 connections, for a small page
    (2 files) and a large one (2,000 files). Rounds are interleaved so that
    drift on a shared machine spreads over every contender."""
    pages = {"small": "beta", "large": "many"}
    contenders = []
    for arena in arenas:
        env = {} if arena == "builtin" else {"MALLOC_ARENA_MAX": arena}
        proc, base = start_peerpi(fx, workdir, f"peerpi-arenas-{arena}", env)
        urls = {}
        for label, project in pages.items():
            urls[label] = f"{base}/simple/{project}/"
            get(urls[label], JSON)
        contenders.append((f"peerpi, arenas {arena}", proc, urls))
    root = os.path.join(workdir, "nginx-pages")
    os.makedirs(root, exist_ok=True)
    for label in pages:
        with open(os.path.join(root, f"{label}.json"), "wb") as f:
            f.write(get(contenders[0][2][label], JSON))
    port = free_port()
    conf = os.path.join(workdir, "nginx-pages.conf")
    with open(conf, "w") as f:
        f.write(f"""
worker_processes auto;
pid {workdir}/nginx-pages.pid;
error_log {workdir}/nginx-pages-error.log;
daemon off;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    keepalive_requests 100000;
    types {{ }}
    default_type application/json;
    server {{ listen 127.0.0.1:{port}; root {root}; }}
}}
""")
    nginx = subprocess.Popen(["nginx", "-c", conf, "-p", workdir],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    wait_http(base + "/small.json")
    contenders.append(("nginx-static", nginx, {label: f"{base}/{label}.json" for label in pages}))
    samples = {}
    try:
        for _ in range(rounds):
            for name, _, urls in contenders:
                for label, url in urls.items():
                    for conns in (8, 64):
                        samples.setdefault((name, label, conns), []).append(
                            wrk(url, JSON, conns, seconds))
        rss = {name: rss_kib(proc.pid) / 1024 for name, proc, _ in contenders}
    finally:
        for _, proc, _ in contenders:
            proc.terminate()
            proc.wait()
    result = []
    for (name, label, conns), runs in samples.items():
        result.append({
            "contender": name, "page": label, "conns": conns,
            "rps_median": statistics.median(r["rps"] for r in runs),
            "rps_runs": [r["rps"] for r in runs],
            "p99_ms_median": statistics.median(r["p99_ms"] for r in runs),
            "rss_after_mib": rss[name],
        })
    return result


def print_page_matrix(rows):
    print("| contender | page | conns | req/s (median) | req/s per round | p99 ms | RSS after, MiB |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        runs = " / ".join(f"{x:.0f}" for x in r["rps_runs"])
        print(f"| {r['contender']} | {r['page']} | {r['conns']} | {r['rps_median']:.0f} | {runs} "
              f"| {r['p99_ms_median']:.2f} | {r['rss_after_mib']:.1f} |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="shorter wrk runs, fewer repetitions")
    ap.add_argument("--out", default=os.path.join(ROOT, "testnet", "bench", "results", "latest.json"))
    ap.add_argument("--pages", action="store_true",
                    help="only the warm-page matrix: malloc arena caps against nginx")
    ap.add_argument("--arenas", default="builtin,2,4,8",
                    help="MALLOC_ARENA_MAX values for --pages (builtin: the binary's own)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds for --pages")
    args = ap.parse_args()
    seconds, runs = (3, 2) if args.quick else (10, 5)

    subprocess.run(["cargo", "build", "--release", "-p", "peerpi", "-p", "peerpi-testkit"], cwd=ROOT, check=True)
    workdir = tempfile.mkdtemp(prefix="peerpi-bench-")
    if args.pages:
        os.chmod(workdir, 0o755)
        fx = start_fake_index()
        try:
            rows = page_matrix(fx, workdir, args.arenas.split(","), seconds, args.rounds)
        finally:
            fx.proc.send_signal(signal.SIGINT)
            fx.proc.wait()
            shutil.rmtree(workdir, ignore_errors=True)
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        with open(args.out.replace(".json", "-pages.json"), "w") as f:
            json.dump({"machine": {"nproc": os.cpu_count(), "kernel": os.uname().release},
                       "seconds": seconds, "rounds": args.rounds, "rows": rows}, f, indent=2)
        print_page_matrix(rows)
        return
    os.chmod(workdir, 0o755)  # nginx workers run unprivileged and must read it
    fx = start_fake_index()
    contenders = []
    results = {"machine": {"nproc": os.cpu_count(), "kernel": os.uname().release}, "contenders": {}}
    try:
        p = peerpi(fx, workdir)
        contenders.append(p)
        contenders.append(nginx_static(fx, workdir, p))
        for c in contenders:
            r = {}
            for conns in (8, 64):
                r[f"page_c{conns}"] = wrk(c.page_url, c.page_accept, conns, seconds)
            r["file_100m_mib_s"] = throughput(c.file_100m_url, runs)
            r["rss_10x1g"] = peak_rss_during_downloads(c, c.file_1g_url, 10)
            results["contenders"][c.name] = r
            print(c.name, json.dumps(r), flush=True)
        results["sha256_mib_s"] = sha256_rate()
        nginx = next(c for c in contenders if c.name == "nginx-static")
        results["nginx_verified_mib_s"] = verified_download(nginx.file_100m_url, runs)
        print("sha256", results["sha256_mib_s"], "nginx | openssl dgst", results["nginx_verified_mib_s"], flush=True)
        results["peer"] = [peer_transfer(fx, workdir, p, runs, channel) for channel in ("bulk", "stream")]
        print("peer", json.dumps(results["peer"]), flush=True)
        results["cluster"] = cluster_ttfb(fx, workdir, p)
        print("cluster", json.dumps(results["cluster"]), flush=True)
    finally:
        for c in contenders:
            c.stop()
        fx.proc.send_signal(signal.SIGINT)
        fx.proc.wait()
        if os.environ.get("PEERPI_BENCH_KEEP"):
            print(f"kept {workdir}", flush=True)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)
    print_table(results)


def print_table(results):
    rows = [("page rps, 8 conns", lambda r: f"{r['page_c8']['rps']:.0f}"),
            ("page p50 / p99 ms, 8 conns", lambda r: f"{r['page_c8']['p50_ms']:.2f} / {r['page_c8']['p99_ms']:.2f}"),
            ("page rps, 64 conns", lambda r: f"{r['page_c64']['rps']:.0f}"),
            ("page p50 / p99 ms, 64 conns", lambda r: f"{r['page_c64']['p50_ms']:.2f} / {r['page_c64']['p99_ms']:.2f}"),
            ("100 MiB file, MiB/s", lambda r: f"{r['file_100m_mib_s']:.0f}"),
            ("RSS peak, 10 x 1 GiB downloads, MiB", lambda r: f"{r['rss_10x1g']['rss_peak_mib']:.1f}")]
    names = list(results["contenders"])
    print("| measure | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for label, fmt in rows:
        print(f"| {label} | " + " | ".join(fmt(results["contenders"][n]) for n in names) + " |")
    if "peer" in results:
        nginx = results["contenders"].get("nginx-static", {}).get("file_100m_mib_s")
        print(f"\nSHA-256 on one core: {results['sha256_mib_s']:.0f} MiB/s; "
              f"nginx-static piped into openssl dgst -sha256: {results['nginx_verified_mib_s']:.0f} MiB/s")
        for peer in results["peer"]:
            ratio = f" ({peer['transfer_mib_s'] / nginx:.2f}x nginx-static)" if nginx else ""
            print(f"peer-to-peer over the {peer['channel']} channel, cold node B from warm node A "
                  f"(median of {peer['runs']}):")
            print(f"  100 MiB node to node (verified, stored): {peer['transfer_mib_s']:.0f} MiB/s{ratio}")
            print(f"  100 MiB as B's client sees it: {peer['client_mib_s']:.0f} MiB/s")
            print(f"  small wheel, first byte at B: {peer['small_ttfb_ms_p50']:.1f} ms")
    if "cluster" in results:
        c = results["cluster"]
        print(f"{c['nodes']}-node cluster, small wheel from a peer, first byte: p50 {c['ttfb_ms_p50']:.1f} ms, "
              f"max {c['ttfb_ms_max']:.1f} ms ({c['samples']} requests)")


if __name__ == "__main__":
    sys.exit(main())
