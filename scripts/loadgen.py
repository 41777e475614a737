#!/usr/bin/env python3
"""Load generator for `specdec serve` (standard library only).

Sends Spec-Bench-format prompts (turns[0]) to /v1/completions at a fixed
concurrency, streaming, and reports time to first token (TTFT), time per
output token (TPOT: (end - first token) / (tokens - 1)), inter-token latency
(ITL, between SSE chunks), end-to-end latency, aggregate throughput, p50/p99
and failures, like `vllm bench serve`.

  scripts/loadgen.py --url http://127.0.0.1:8080 --prompts ../shared/bench/spec-bench-dev.jsonl \
      --concurrency 4 --requests 32 --max-tokens 128 [--no-spec] [--json out.json]

`--disconnect-rate P` drops a random fraction of streams after the first chunk
and `--bad-rate P` mixes malformed requests in (soak tests): neither counts as
a failure when the server answers them correctly; a valid request that fails
does.
"""
import argparse
import http.client
import json
import random
import statistics
import sys
import threading
import time
import urllib.parse


def pct(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, int(round(p / 100 * (len(xs) - 1)))))
    return xs[k]


def one(url, key, body, disconnect, timeout=600):
    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    t0 = time.perf_counter()
    conn.request("POST", "/v1/completions", body=json.dumps(body).encode(), headers=headers)
    r = conn.getresponse()
    if r.status != 200:
        data = r.read()
        conn.close()
        return {"ok": False, "status": r.status, "body": data[:200].decode("utf-8", "replace")}
    first = None
    stamps = []
    text = []
    usage = None
    done = False
    while True:
        line = r.readline()
        if not line:
            break
        line = line.strip()
        if not line.startswith(b"data: "):
            continue
        data = line[6:]
        if data == b"[DONE]":
            done = True
            break
        ev = json.loads(data)
        if "error" in ev:
            conn.close()
            return {"ok": False, "status": 200, "body": str(ev["error"])[:200]}
        now = time.perf_counter()
        for c in ev.get("choices", []):
            if c.get("text"):
                if first is None:
                    first = now
                stamps.append(now)
                text.append(c["text"])
        if ev.get("usage"):
            usage = ev["usage"]
        if disconnect and first is not None:
            conn.close()
            return {"ok": True, "disconnected": True}
    end = time.perf_counter()
    conn.close()
    if not done or usage is None:
        return {"ok": False, "status": 200, "body": "stream ended without [DONE] or usage"}
    n = usage["completion_tokens"]
    itl = [b - a for a, b in zip(stamps, stamps[1:])]
    return {
        "ok": True,
        "ttft": (first or end) - t0,
        "e2e": end - t0,
        "tokens": n,
        "tpot": (end - first) / (n - 1) if first is not None and n > 1 else None,
        "itl": itl,
        "text": "".join(text),
    }


BAD = [
    b"{not json",
    json.dumps({"prompt": "x", "temperature": 9}).encode(),
    json.dumps({"prompt": [999999999]}).encode(),
    json.dumps({"prompt": "x", "max_tokens": -5}).encode(),
    b"\xff\xfe",
]


def bad_request(url, key):
    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    conn.request("POST", "/v1/completions", body=random.choice(BAD), headers=headers)
    r = conn.getresponse()
    body = r.read()
    conn.close()
    ok = r.status == 400 and b'"error"' in body
    return {"ok": ok, "bad": True, "status": r.status}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--requests", type=int, default=32, help="valid requests to send (0 = until --duration)")
    ap.add_argument("--duration", type=float, default=0, help="seconds to run (soak); 0 = by --requests")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--no-spec", action="store_true", help="turn speculation off per request")
    ap.add_argument("--disconnect-rate", type=float, default=0.0)
    ap.add_argument("--bad-rate", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    random.seed(a.seed)
    prompts = []
    with open(a.prompts) as f:
        for line in f:
            if line.strip():
                d = json.loads(line)
                prompts.append(d["turns"][0] if "turns" in d else d["prompt"])
    # A fixed shuffle, so every run sees the same mix of categories.
    random.Random(a.seed).shuffle(prompts)
    lock = threading.Lock()
    results = []
    counter = [0]
    t_start = time.perf_counter()

    def next_index():
        with lock:
            if a.duration > 0:
                if time.perf_counter() - t_start > a.duration:
                    return None
            elif counter[0] >= a.requests:
                return None
            counter[0] += 1
            return counter[0] - 1

    def worker():
        rng = random.Random(a.seed * 1000 + threading.get_ident() % 1000)
        while True:
            i = next_index()
            if i is None:
                return
            try:
                if rng.random() < a.bad_rate:
                    res = bad_request(a.url, a.api_key)
                else:
                    body = {"prompt": prompts[i % len(prompts)], "max_tokens": a.max_tokens, "temperature": 0,
                            "stream": True, "stream_options": {"include_usage": True}}
                    if a.no_spec:
                        body["specdec"] = {"speculate": False}
                    res = one(a.url, a.api_key, body, rng.random() < a.disconnect_rate)
            except Exception as e:  # a failure, counted
                res = {"ok": False, "status": None, "body": repr(e)[:200]}
            with lock:
                results.append(res)

    threads = [threading.Thread(target=worker) for _ in range(a.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t_start
    full = [r for r in results if r.get("ok") and "tokens" in r]
    failures = [r for r in results if not r.get("ok")]
    toks = sum(r["tokens"] for r in full)
    ttft = [r["ttft"] for r in full]
    tpot = [r["tpot"] for r in full if r["tpot"] is not None]
    itl = [x for r in full for x in r["itl"]]
    e2e = [r["e2e"] for r in full]
    summary = {
        "concurrency": a.concurrency,
        "speculation": not a.no_spec,
        "max_tokens": a.max_tokens,
        "completed": len(full),
        "disconnected": sum(1 for r in results if r.get("disconnected")),
        "bad_requests_answered": sum(1 for r in results if r.get("bad") and r.get("ok")),
        "failed": len(failures),
        "wall_s": wall,
        "output_tokens": toks,
        "output_tokens_per_s": toks / wall if wall > 0 else 0,
    }
    for name, xs in [("ttft", ttft), ("tpot", tpot), ("itl", itl), ("e2e", e2e)]:
        summary[f"{name}_mean_s"] = statistics.mean(xs) if xs else None
        summary[f"{name}_p50_s"] = pct(xs, 50)
        summary[f"{name}_p99_s"] = pct(xs, 99)
    print(json.dumps(summary, indent=1))
    for f in failures[:5]:
        print("failure:", f, file=sys.stderr)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"summary": summary, "failures": failures[:50]}, f, indent=1)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
