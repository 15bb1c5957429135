#!/usr/bin/env bash
# The issue's load targets, one `tokenwire loadtest` each (see docs/benchmarks-load.md).
# Usage: bench/research/load_targets.sh [OUTDIR] [SOAK_SECONDS]   (default /tmp/tokenwire-load, 1800)
# Not a test: figures depend on the machine; quote medians and the load average.
set -euo pipefail
here=$(dirname "$0")
out=${1:-/tmp/tokenwire-load}
soak=${2:-1800}
mkdir -p "$out"
ulimit -n "$(ulimit -Hn)"   # the loadtest raises it too; workers and the gateway inherit it
lt() { name=$1; shift; echo "== $name: $*"; python -m tokenwire loadtest "$@" --json "$out/$name.json" | tee "$out/$name.txt"; }

# gateway CPU per relayed token, one token per upstream chunk (no pacing)
python "$here/relay_cpu.py" --rounds 7 | tee "$out/relay_cpu.txt"
# the floor under any Python relay on this machine (bytes only: no HTTP, WebSocket or JSON)
python "$here/wakeup_floor.py" --streams 20 100 250 500 --seconds 10 | tee "$out/wakeup_floor.txt"
# per-core capacity: gateway pinned to one CPU, stall-free streams, the floor at the same N (same sitting)
python -m tokenwire capacity --streams 100,250,500,1000 --window 60 --json "$out/capacity.json" | tee "$out/capacity.txt"
# a sweep to show where latency starts to depend on CPU saturation
for n in 20 100 250 500; do lt "stream-$n" --streams "$n" --tps 50 --duration 20 --warmup 5 --clients 2; done
# targets: 1,000 streams (added TTFT), 2,000 streams (added inter-token gap)
lt stream-1000 --streams 1000 --tps 50 --duration 20 --warmup 5 --clients 3
lt stream-2000 --streams 2000 --tps 50 --duration 20 --warmup 5 --clients 4
# idle sockets: as many as the descriptor limit allows (the gateway needs a few for itself)
idle=$(( $(ulimit -Hn) >= 20100 ? 20000 : $(ulimit -Hn) - 100 ))
# (--heartbeat 0: the clients send nothing; every socket lives on the server's pings and their pongs)
lt "idle-$idle" --mode idle --streams "$idle" --duration 90 --warmup 5 --heartbeat 0 --clients 4
# the heartbeat while the machine is starved: idle sockets on one gateway, 1,000 streams on another
lt idle-starved --mode idle --streams 15000 --duration 90 --warmup 5 --heartbeat 0 --clients 3 &
sleep 20
lt stream-1000-beside-idle --streams 1000 --tps 50 --duration 80 --warmup 5 --clients 3
wait
# soak: every generation on a new socket, memory sampled every 10 s
lt soak --streams 200 --tps 50 --tokens 50 --churn --duration "$soak" --warmup 30 --sample-every 10 --clients 2
