#!/usr/bin/env python3
"""Offline what-if for suffix-style drafters on recorded greedy outputs.

Replays plain greedy generations (`specdec generate --input-jsonl P --json > G`,
which records prompt_ids and output_ids) step by step: at each step a drafter
proposes from prompt + output so far (plus earlier outputs, as the suffix
drafter's history), the longest prefix equal to the true continuation is
accepted, and the bonus token comes on top. Greedy verification is exact, so
this is what a verify pass would emit; only pass costs are modelled.

    scripts/drafter_sim.py G.jsonl [--cost 1:1,8:1.2,9:1.35,17:2.0]

Prints, per draft cap K and proposal rule, tokens per target pass and tokens
per unit of pass cost (cost(n rows) interpolated from --cost, 1 = a 1-row
pass). Rules: `path` (the suffix drafter: longest context match, most frequent
continuation while the running branch probability stays >= min_p) and `tree`
(the most probable branches of the same statistics, best first, up to K nodes
verified at once: what token-tree verification would add).
No dependencies beyond the standard library.
"""
import argparse
import heapq
import json
from collections import Counter, defaultdict

MAXN = 24  # longest context matched, as the suffix drafter's trie depth


class Index:
    """Continuation counts of every n-gram (n < MAXN) of a token stream."""

    def __init__(self):
        self.ix = [None] + [defaultdict(Counter) for _ in range(MAXN)]
        self.seq = []

    def push(self, t):
        self.seq.append(t)
        n_all = len(self.seq)
        for n in range(1, MAXN):
            if n_all - 1 - n < 0:
                break
            self.ix[n][tuple(self.seq[n_all - 1 - n:n_all - 1])][t] += 1

    def dist(self, ctx, hist):
        """Continuations of the longest suffix of ctx seen here or in hist."""
        for n in range(min(MAXN - 1, len(ctx)), 0, -1):
            key = tuple(ctx[-n:])
            for src in (self, hist):
                c = src.ix[n].get(key) if src else None
                if c:
                    return c
        return None


def path(ix, hist, ctx, k, min_p):
    d, p = [], 1.0
    while len(d) < k:
        c = ix.dist(ctx + d, hist)
        if not c:
            break
        tot = sum(c.values())
        t, cnt = max(c.items(), key=lambda kv: (kv[1], -kv[0]))
        if p * cnt / tot < min_p:
            break
        p *= cnt / tot
        d.append(t)
    return d


def tree(ix, hist, ctx, k, min_p):
    nodes, heap, serial = set(), [(-1.0, 0, ())], 1
    while heap and len(nodes) < k:
        negp, _, pth = heapq.heappop(heap)
        if pth:
            nodes.add(pth)
        c = ix.dist(ctx + list(pth), hist)
        if not c:
            continue
        tot = sum(c.values())
        for t, v in c.items():
            q = -negp * v / tot
            if q >= min_p:
                heapq.heappush(heap, (-q, serial, pth + (t,)))
                serial += 1
    return nodes


def replay(gens, rule, k_cap, min_p, cost):
    hist, passes, tokens, units = Index(), 0, 0, 0.0
    for prompt, out in gens:
        ix = Index()
        for t in prompt:
            ix.push(t)
        ix.push(out[0])  # the first token comes from the prefill
        i = 1
        while i < len(out):
            ctx, rem = prompt + out[:i], len(out) - i
            k = min(k_cap, rem - 1)
            if rule == "path":
                d = path(ix, hist, ctx, k, min_p)
                a = 0
                while a < len(d) and d[a] == out[i + a]:
                    a += 1
                rows = len(d) + 1
            else:
                nodes = tree(ix, hist, ctx, k, min_p)
                a = 0
                while a < k and tuple(out[i:i + a + 1]) in nodes:
                    a += 1
                rows = len(nodes) + 1
            e = min(a + 1, rem)
            for t in out[i:i + e]:
                ix.push(t)
            i += e
            passes += 1
            tokens += e
            units += cost(rows)
        for t in out:
            hist.push(t)
        hist.seq = []  # no n-gram spans two requests
    return passes, tokens, units


def cost_curve(spec):
    pts = sorted((int(a), float(b)) for a, b in (p.split(":") for p in spec.split(",")))

    def cost(n):
        for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
            if x0 <= n <= x1:
                return y0 + (y1 - y0) * (n - x0) / (x1 - x0)
        return pts[-1][1] if n > pts[-1][0] else pts[0][1]

    return cost


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("generations", help="`specdec generate --json` output (one object per line)")
    ap.add_argument("--cost", default="1:1,2:1.06,4:1.15,6:1.23,8:1.45,9:1.5,12:1.85,16:2.05,17:2.3",
                    help="pass cost by rows, relative to one row (measured with verify_loop)")
    ap.add_argument("--caps", default="4,6,8,12,16")
    ap.add_argument("--min-p", type=float, default=0.1)
    args = ap.parse_args()
    gens = []
    for line in open(args.generations):
        g = json.loads(line)
        if g.get("output_ids"):
            gens.append((g["prompt_ids"], g["output_ids"]))
    cost = cost_curve(args.cost)
    for rule in ("path", "tree"):
        for k in (int(x) for x in args.caps.split(",")):
            p, t, u = replay(gens, rule, k, args.min_p, cost)
            print(f"{rule:4} K={k:2}: {p} passes, {t / p:.2f} tokens/pass, {t / u:.3f} tokens per 1-row-pass cost")


if __name__ == "__main__":
    main()
