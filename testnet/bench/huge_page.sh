#!/usr/bin/env bash
# A large but legal project page (hardening round two): an HTML-only index
# page of FILES links (300,000 by default, about 45 MB) served by a static
# file server on loopback; one node fetches, parses, records and renders it.
# Prints the time to the first JSON answer, the node's peak RSS (VmHWM) and
# whether /healthz kept answering meanwhile.
# Usage: testnet/bench/huge_page.sh [PEERPI_BINARY] [FILES]
set -euo pipefail
peerpi=${1:-target/release/peerpi}
files=${2:-300000}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
mkdir -p "$work/index/simple/huge"
python3 - "$work/index/simple/huge/index.html" "$files" <<'PY'
import hashlib, sys
path, n = sys.argv[1], int(sys.argv[2])
h = hashlib.sha256(b"x").hexdigest()
with open(path, "w") as f:
    f.write("<!DOCTYPE html><html><head><title>Links for huge</title></head><body>\n")
    for i in range(n):
        f.write(f'<a href="/f/huge-{i}.0-py3-none-any.whl#sha256={h}">huge-{i}.0-py3-none-any.whl</a>\n')
    f.write("</body></html>\n")
PY
index_port=18080 node_port=18503
(cd "$work/index" && python3 -m http.server $index_port --bind 127.0.0.1 >/dev/null 2>&1) &
"$peerpi" serve --upstream "http://127.0.0.1:$index_port/simple/" --no-p2p \
    --data-dir "$work/data" --listen "127.0.0.1:$node_port" >"$work/node.log" 2>&1 &
node=$!
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$node_port/healthz" >/dev/null && break; sleep 0.2; done
( for _ in $(seq 600); do curl -s -o /dev/null -m 1 -w "%{http_code} %{time_total}\n" "http://127.0.0.1:$node_port/healthz"; sleep 0.2; done ) >"$work/health" &
prober=$!
page=$(curl -s -o /dev/null -H "accept: application/vnd.pypi.simple.v1+json" \
    -w "%{http_code} %{time_total}s %{size_download}B" "http://127.0.0.1:$node_port/simple/huge/")
kill $prober 2>/dev/null || true
echo "page: $(stat -c %s "$work/index/simple/huge/index.html") B of HTML, $files files"
echo "first JSON answer: $page"
grep VmHWM "/proc/$node/status"
echo "healthz while parsing: $(awk '$1 != 200 {bad++} {n++; if ($2 > max) max = $2} END {printf "%d probes, %d not 200, slowest %.3f s", n, bad, max}' "$work/health")"
