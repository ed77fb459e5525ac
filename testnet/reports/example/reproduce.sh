#!/bin/bash
# Reproduces testnet/reports/example: the default cluster (3 regions x 4
# runners), 48 jobs 4 at a time, seed 1, every baseline and every fault
# scenario, then the report and the 1,000-node simulation. Run as root from
# the repository root on a machine with network namespaces, /dev/net/tun,
# pip, uv and nginx (Debian: nginx-light). About 45 minutes on 2 cores.
set -euo pipefail
cargo build --release -p peerpi -p peerpi-testnet
bin=target/release/testnet
out=${OUT:-/tmp/peerpi-testnet-example}
mkdir -p "$out"
run() {
    local name=$1
    shift
    # Each run is bounded; a scenario that misses a goal exits 1 and the
    # report still shows it.
    timeout 1800 "$bin" "$@" --jobs 48 --parallel 4 --seed 1 --out "$out/$name" || true
}
run burst-peerpi ci-burst --baseline peerpi
run burst-proxy ci-burst --baseline proxy
run burst-peerpi-region ci-burst --baseline peerpi-region
run burst-direct ci-burst --baseline direct
run poison poison
# The example's first churn row is the build before second copies (bffa963,
# `--peerpi` pointing at its binary, saved as runs/churn-bffa963.json).
run churn churn
run outage outage
run cold-region cold-region
# One job per runner at once (--jobs and --parallel are the runner count).
# The example's first herd row is the build before bytes were shared while
# they arrive (5bfbe43, `--peerpi` pointing at its binary).
run herd-peerpi herd --baseline peerpi
run herd-proxy herd --baseline proxy
"$bin" report "$out"/burst-peerpi "$out"/burst-peerpi-region "$out"/burst-proxy \
    "$out"/burst-direct "$out"/poison "$out"/churn-bffa963 "$out"/churn "$out"/outage "$out"/cold-region \
    "$out"/herd-peerpi "$out"/herd-proxy \
    --out testnet/reports/example
timeout 1800 "$bin" simulate --nodes 1000 --providers 200 --lookups 500 --out "$out/sim"
cp "$out"/sim/simulation.md "$out"/sim/lookup-requests.svg testnet/reports/example/
