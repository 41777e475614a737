#!/usr/bin/env bash
# Soak test: `specdec serve` on the default model under load with random client
# disconnects and malformed requests mixed in, for DURATION seconds (default 600).
# Samples the server's resident memory every 10 s and checks, at the end, that
# no valid request failed, that RSS grew less than 5 % after warm-up (first
# sample after 60 s), and that no sequence is left live.
#   scripts/soak.sh [DURATION] [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-600}
out=${2:-$(mktemp -d)}
mkdir -p "$out"
cargo build --release -q -p specdec-cli
port=$(python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
target/release/specdec serve --port "$port" --max-concurrent 4 --max-queue 16 >"$out/server.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do
    python3 -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=2)" \
        "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
    sleep 0.2
done
(
    t0=$(date +%s)
    while kill -0 $pid 2>/dev/null; do
        echo "$(( $(date +%s) - t0 )) $(awk '/VmRSS/ {print $2}' /proc/$pid/status)"
        sleep 10
    done
) >"$out/rss.txt" &
sampler=$!
status=0
python3 scripts/loadgen.py --url "http://127.0.0.1:$port" --prompts ../shared/bench/spec-bench-dev.jsonl \
    --concurrency 6 --duration "$duration" --max-tokens 128 --disconnect-rate 0.2 --bad-rate 0.1 \
    --json "$out/loadgen.json" >"$out/loadgen.out" || status=$?
health=$(python3 -c "import urllib.request,sys; print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())" "http://127.0.0.1:$port/health")
kill $sampler 2>/dev/null || true
echo "loadgen exit $status; health after: $health"
python3 - "$out" "$health" <<'PY'
import json, sys
out, health = sys.argv[1], json.loads(sys.argv[2])
rows = [tuple(map(int, l.split())) for l in open(f"{out}/rss.txt") if len(l.split()) == 2]
warm = next((r for t, r in rows if t >= 60), rows[0][1])
end = rows[-1][1]
s = json.load(open(f"{out}/loadgen.json"))["summary"]
growth = (end - warm) / warm
print(f"completed {s['completed']}, disconnected {s['disconnected']}, bad answered {s['bad_requests_answered']}, failed {s['failed']}")
print(f"RSS after warm-up {warm} kB, at end {end} kB: growth {100 * growth:.2f} %")
ok = s["failed"] == 0 and growth < 0.05 and health["running"] == 0 and health["waiting"] == 0
print("soak", "PASSED" if ok else "FAILED")
sys.exit(0 if ok else 1)
PY
