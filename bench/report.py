"""Turn bench/run.sh results into the README table: figures and ratios to the floor."""
import json
import sys

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
rss_kb = int(sys.argv[2])
duration = sys.argv[3]
rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 1


def round_ratio(mode, conns, rnd):
    """The figure a round is ranked by: the rampart/floor ratio that round measured."""
    by = {r["target"]: r for r in rows if r["mode"] == mode and r.get("conns") == conns and r.get("round", 1) == rnd}
    d, f, g = by["direct"]["wrk"], by["floor"]["wrk"], by["rampart"]["wrk"]
    if conns == 1:
        return (g["p50_us"] - d["p50_us"]) / max(f["p50_us"] - d["p50_us"], 1)
    return (g["requests"] / g["duration_us"]) / (f["requests"] / f["duration_us"])


def median_round(mode, conns):
    ranked = sorted(range(1, rounds + 1), key=lambda rnd: round_ratio(mode, conns, rnd))
    return ranked[len(ranked) // 2]


def get(target, mode, conns=None):
    rnd = median_round(mode, conns) if conns is not None else None
    for r in rows:
        if r["target"] == target and r["mode"] == mode and (conns is None or (r.get("conns") == conns and r.get("round", 1) == rnd)):
            return r
    raise SystemExit(f"missing result {target} {mode} {conns}")


def rps(r):
    w = r["wrk"]
    return w["requests"] / (w["duration_us"] / 1e6)


out = []
out.append(
    f"Benchmark: wrk {duration} per run, {rounds} interleaved round(s) per configuration (the median round by ratio is shown), "
    "simulator at zero latency, 2-core machine, everything on loopback.\n"
)
out.append("| path | conns | target | req/s | p50 ms | p99 ms | added p50 ms | errors |")
out.append("|---|---|---|---|---|---|---|---|")
verdicts = []
for mode in ("json", "sse"):
    for conns in (1, 32):
        d = get("direct", mode, conns)
        targets = ("direct", "floor", "rampart", "rampart-store") if mode == "json" else ("direct", "floor", "rampart")
        for t in targets:
            r = get(t, mode, conns)
            w = r["wrk"]
            added = (w["p50_us"] - d["wrk"]["p50_us"]) / 1000 if t != "direct" else 0.0
            out.append(
                f"| {mode} | {conns} | {t} | {rps(r):,.0f} | {w['p50_us']/1000:.3f} | {w['p99_us']/1000:.3f} | "
                f"{'' if t == 'direct' else f'{added:.3f}'} | {w['errors']} |"
            )
        f, g = get("floor", mode, conns), get("rampart", mode, conns)
        if conns == 1:
            fa = max(f["wrk"]["p50_us"] - d["wrk"]["p50_us"], 1)
            ga = g["wrk"]["p50_us"] - d["wrk"]["p50_us"]
            verdicts.append((f"{mode}: added p50 at 1 conn, rampart / floor", ga / fa, "<= 1.5", ga / fa <= 1.5))
        else:
            ratio = rps(g) / rps(f)
            verdicts.append((f"{mode}: throughput at 32 conns, rampart / floor", ratio, ">= 0.8", ratio >= 0.8))
        if mode == "json":
            s = get("rampart-store", mode, conns)
            if conns == 1:
                ga = g["wrk"]["p50_us"] - d["wrk"]["p50_us"]
                sa = s["wrk"]["p50_us"] - d["wrk"]["p50_us"]
                verdicts.append(("json: added p50 at 1 conn, store keys / config keys", sa / max(ga, 1), "<= 1.2", sa / max(ga, 1) <= 1.2))
            else:
                ratio = rps(s) / rps(g)
                verdicts.append(("json: throughput at 32 conns, store keys / config keys", ratio, ">= 0.9", ratio >= 0.9))
out.append("")
out.append("| SSE time to first byte (300 sequential curl requests each, interleaved) | p50 ms | p99 ms |")
out.append("|---|---|---|")
for t in ("direct", "floor", "rampart"):
    r = get(t, "sse_ttfb")
    out.append(f"| {t} | {r['p50_us']/1000:.3f} | {r['p99_us']/1000:.3f} |")
d, f, g = (get(t, "sse_ttfb")["p50_us"] for t in ("direct", "floor", "rampart"))
verdicts.append(("sse: added TTFB p50, rampart / floor", (g - d) / max(f - d, 1), "<= 1.5", (g - d) / max(f - d, 1) <= 1.5))
out.append("")
out.append("| ratio | value | target | met |")
out.append("|---|---|---|---|")
for name, v, target, ok in verdicts:
    out.append(f"| {name} | {v:.2f} | {target} | {'yes' if ok else 'NO'} |")
out.append("")
out.append(f"Rampart peak RSS during the run: {rss_kb/1024:.1f} MiB")
print("\n".join(out))
