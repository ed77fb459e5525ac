#!/usr/bin/env python3
"""TUF metadata a node moves: cold install and an hour of serving.

For each build given (the current one, and an old one to compare) and each
repository size, on loopback:

  1. `peerpi tuf init` a repository (each build's own default bin layout)
     and sign TARGETS synthetic pages into it, as a cluster's signer has
     after a while;
  2. start the signer node in front of the fake index (`--sign-interval
     10s`) and one `--trust tuf` node bootstrapped to it;
  3. cold install: pip installs a 6-project set through the node; the
     metadata bytes are the node's `peerpi_tuf_metadata_bytes_total`
     (signer and peers; "store" is what it already held);
  4. serving: for MINUTES, a client asks the node for the 6 pages every 2 s
     while a new target is signed every 10 s (a batch: one bin, snapshot,
     timestamp); the metadata bytes moved meanwhile, scaled to an hour. The
     node's page TTL is --page-ttl (1m: ten times the default node's
     refreshes, so an upper bound of the default's figure).

Usage:
  python3 testnet/bench/tuf_metadata.py [--old-bin PATH] [--targets 1000,10000]
      [--minutes 5] [--seeds 1,2] [--page-ttl 1m] [--out FILE]
Needs: a release build (cargo build --release -p peerpi -p peerpi-testkit),
python3 with venv. --old-bin is a `peerpi` binary built from an older commit
(git worktree add /tmp/old REV && cargo build --release there).
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import free_port, wait_http  # noqa: E402  (the harness's helpers)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TARGET = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release")
PROJECTS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"]
# pip installs alpha (which needs beta, gamma, delta) and the two others.
INSTALL = ["alpha", "epsilon", "zeta"]


def get(url):
    with urllib.request.urlopen(url, timeout=60) as r:
        return r.read()


def metadata_bytes(base):
    """Metadata bytes the node received from the signer and from peers."""
    total = 0
    for line in get(base + "/metrics").decode().splitlines():
        if line.startswith("peerpi_tuf_metadata_bytes_total{") and 'source="store"' not in line:
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def synthetic_targets(n, seed):
    """JSON lines of `n` pages a signer could have signed."""
    lines = []
    for i in range(n):
        digest = f"{(i * 2654435761 + seed) % (1 << 64):016x}" * 4
        lines.append(json.dumps({"path": f"simple/synthetic-{seed}-{i}/index.json",
                                 "length": 1000 + i % 5000, "sha256": digest}))
    return "\n".join(lines) + "\n"


class Cluster:
    def __init__(self, peerpi, workdir, index_url, targets, seed, page_ttl, sized):
        self.peerpi, self.workdir, self.procs = peerpi, workdir, []
        data = os.path.join(workdir, "signer")
        self.repo = os.path.join(data, "tuf")
        self.keys = os.path.join(workdir, "keys")
        # Each build's own default layout; a build that sizes the bins to
        # the repository is told its size.
        sizing = ["--expected-targets", str(max(targets, 1))] if sized else []
        run([peerpi, "tuf", "init", "--repo", self.repo, "--keys", self.keys, *sizing])
        if targets:
            run([peerpi, "tuf", "add", "--repo", self.repo, "--online-key",
                 os.path.join(self.keys, "online.pk8"), "--from", "-"],
                input=synthetic_targets(targets, seed))
        self.signer = self.serve("signer", ["--upstream", index_url, "--signer", self.keys,
                                            "--sign-interval", "10s"])
        peers = json.loads(get(self.signer + "/peers"))
        addr = next(a for a in peers["listen"] if "/tcp/" in a)
        bootstrap = addr if "/p2p/" in addr else f"{addr}/p2p/{peers['peer_id']}"
        self.node = self.serve("node", [
            "--trust", "tuf", "--tuf-root", os.path.join(self.repo, "metadata/1.root.json"),
            "--tuf-url", self.signer + "/tuf/", "--bootstrap", bootstrap,
            "--page-ttl", page_ttl])

    def serve(self, name, args):
        port = free_port()
        log = open(os.path.join(self.workdir, f"{name}.log"), "w")
        proc = subprocess.Popen(
            [self.peerpi, "serve", "--listen", f"127.0.0.1:{port}",
             "--data-dir", os.path.join(self.workdir, name), "--no-mdns",
             "--p2p-listen", "/ip4/127.0.0.1/tcp/0", "--bulk-listen", "127.0.0.1:0", *args],
            stdout=log, stderr=log, env={**os.environ, "RUST_LOG": "warn"})
        self.procs.append(proc)
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/healthz")
        return base

    def sign_one(self, n, seed):
        run([self.peerpi, "tuf", "add", "--repo", self.repo, "--online-key",
             os.path.join(self.keys, "online.pk8"), "--from", "-"],
            input=synthetic_targets(1, seed * 1_000_003 + n))

    def stop(self):
        for p in self.procs:
            p.terminate()
            p.wait()


def measure(name, peerpi, index_url, targets, minutes, seed, page_ttl):
    with tempfile.TemporaryDirectory() as workdir:
        sized = "--expected-targets" in run([peerpi, "tuf", "init", "--help"]).stdout
        cluster = Cluster(peerpi, workdir, index_url, targets, seed, page_ttl, sized)
        try:
            venv = os.path.join(workdir, "venv")
            run([sys.executable, "-m", "venv", venv])
            # The signer signs each project when first asked: warm it, as the
            # cluster's other nodes would have, so the cold node measures
            # lookups, not the signer's first signature.
            for project in PROJECTS:
                get(f"{cluster.signer}/simple/{project}/")
            time.sleep(12)
            before = metadata_bytes(cluster.node)
            run([os.path.join(venv, "bin", "pip"), "install", "--no-cache-dir", "--quiet",
                 "--index-url", cluster.node + "/simple/", *INSTALL])
            cold = metadata_bytes(cluster.node) - before
            stop = threading.Event()

            def signer_batches():
                n = 0
                while not stop.wait(10):
                    n += 1
                    cluster.sign_one(n, seed)

            batches = threading.Thread(target=signer_batches)
            batches.start()
            start_bytes, started = metadata_bytes(cluster.node), time.time()
            errors = 0
            while time.time() - started < minutes * 60:
                for project in PROJECTS:
                    try:
                        get(f"{cluster.node}/simple/{project}/")
                    except Exception:
                        errors += 1
                time.sleep(2)
            elapsed = time.time() - started
            served = metadata_bytes(cluster.node) - start_bytes
            stop.set()
            batches.join()
            per_hour = served * 3600 / elapsed
            row = {"build": name, "targets": targets, "seed": seed, "page_ttl": page_ttl,
                   "cold_bytes": cold,
                   "serving_bytes": served, "serving_seconds": round(elapsed),
                   "per_hour_bytes": round(per_hour), "page_errors": errors,
                   "snapshot_bytes": snapshot_size(cluster.repo)}
            print(json.dumps(row), flush=True)
            return row
        finally:
            cluster.stop()


def snapshot_size(repo):
    with open(os.path.join(repo, "metadata", "timestamp.json")) as f:
        timestamp = json.load(f)
    return timestamp["signed"]["meta"]["snapshot.json"].get("length", 0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--old-bin", help="a peerpi binary of an older commit, to compare")
    ap.add_argument("--targets", default="1000,10000")
    ap.add_argument("--minutes", type=float, default=5)
    ap.add_argument("--seeds", default="1")
    ap.add_argument("--page-ttl", default="1m",
                    help="the node's page TTL while serving (the default node's is 10m: "
                         "a shorter one refreshes more, an upper bound)")
    ap.add_argument("--out", default=os.path.join(ROOT, "testnet", "bench", "results",
                                                  "tuf-metadata.json"))
    args = ap.parse_args()
    index = subprocess.Popen(
        [os.path.join(TARGET, "fake-index"), "--demo", "--project", "epsilon",
         "--project", "zeta"], stdout=subprocess.PIPE, text=True)
    index_url = index.stdout.readline().strip()
    builds = [("new", os.path.join(TARGET, "peerpi"))]
    if args.old_bin:
        builds.insert(0, ("old", args.old_bin))
    rows = []
    try:
        for seed in [int(s) for s in args.seeds.split(",")]:
            for targets in [int(t) for t in args.targets.split(",")]:
                for name, binary in builds:
                    rows.append(measure(name, binary, index_url, targets, args.minutes, seed,
                                        args.page_ttl))
    finally:
        index.terminate()
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=1)
    print(f"{'build':<5} {'targets':>8} {'seed':>4} {'snapshot':>10} {'cold':>10} {'per hour':>12}")
    for r in rows:
        print(f"{r['build']:<5} {r['targets']:>8} {r['seed']:>4} {r['snapshot_bytes']:>10,} "
              f"{r['cold_bytes']:>10,} {r['per_hour_bytes']:>12,}")


if __name__ == "__main__":
    main()
