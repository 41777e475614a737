#!/usr/bin/env bash
# Starts `specdec serve` on the default model and drives it with the official
# openai Python client (tests/openai_client.py). Needs `pip install openai`
# (.ci/run installs it) and a release build.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python3 -c "import openai" 2>/dev/null; then
    echo "SKIPPED openai client test: pip install openai==2.8.1 to run it" >&2
    exit 0
fi
cargo build --release -q -p specdec-cli
port=$(python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
key="test-$RANDOM$RANDOM"
log=$(mktemp)
target/release/specdec serve --port "$port" --api-key "$key" >"$log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 1 300); do
    python3 -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=2)" \
        "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
    kill -0 $pid 2>/dev/null || { cat "$log"; echo "server exited" >&2; exit 1; }
    sleep 0.2
done
python3 tests/openai_client.py "http://127.0.0.1:$port" "$key"
# Graceful shutdown: SIGTERM, then a clean exit.
kill -TERM $pid
wait $pid
grep -q "shut down cleanly" "$log" || { cat "$log"; echo "no clean shutdown" >&2; exit 1; }
trap - EXIT
rm -f "$log"
