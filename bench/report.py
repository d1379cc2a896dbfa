"""Turn bench/run.sh results into the README table: figures and ratios to the floor."""
import json
import sys

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
rss_kb = int(sys.argv[2])
duration = sys.argv[3]
rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 1
ledger_rows = int(sys.argv[5]) if len(sys.argv) > 5 else None


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


#: Configurations with limits and a budget switched on (`limits*`: JSON only, ledger off; `all*`:
#: everything on, JSON and SSE), with their targets against the floor of the same run: (added
#: p50 at 1 conn at most, throughput at 32 conns at least); None: reported only.
LIMIT_TARGETS = {
    "limits": (1.5, 0.7),
    "limits-redis": (None, None),
    "all": (1.5, 0.7),
    "all-redis": (None, None),
}


def measured(target, mode=None):
    return any(r["target"] == target and (mode is None or r["mode"] == mode) for r in rows)


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
        targets = ("direct", "floor", "rampart", "rampart-store", "rampart-ledger") if mode == "json" else ("direct", "floor", "rampart", "rampart-ledger")
        targets = (*(t for t in targets if measured(t, mode)), *(t for t in LIMIT_TARGETS if measured(t, mode)))
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
        if mode == "json" and measured("rampart-store", mode):
            s = get("rampart-store", mode, conns)
            if conns == 1:
                ga = g["wrk"]["p50_us"] - d["wrk"]["p50_us"]
                sa = s["wrk"]["p50_us"] - d["wrk"]["p50_us"]
                verdicts.append(("json: added p50 at 1 conn, store keys / config keys", sa / max(ga, 1), "<= 1.2", sa / max(ga, 1) <= 1.2))
            else:
                ratio = rps(s) / rps(g)
                verdicts.append(("json: throughput at 32 conns, store keys / config keys", ratio, ">= 0.9", ratio >= 0.9))
        # The usage ledger on (store keys): the targets for everything switched on.
        lg = get("rampart-ledger", mode, conns) if measured("rampart-ledger", mode) else None
        if lg is None:
            pass
        elif conns == 1:
            la = lg["wrk"]["p50_us"] - d["wrk"]["p50_us"]
            fa = max(f["wrk"]["p50_us"] - d["wrk"]["p50_us"], 1)
            verdicts.append((f"{mode}: added p50 at 1 conn, ledger on / floor", la / fa, "<= 1.5", la / fa <= 1.5))
        else:
            ratio = rps(lg) / rps(f)
            verdicts.append((f"{mode}: throughput at 32 conns, ledger on / floor", ratio, ">= 0.7", ratio >= 0.7))
for mode in ("json", "sse"):
    for t, (p50_max, rps_min) in LIMIT_TARGETS.items():
        if not measured(t, mode):
            continue
        for conns in (1, 32):
            d, f, x = (get(n, mode, conns) for n in ("direct", "floor", t))
            if conns == 1:
                fa = max(f["wrk"]["p50_us"] - d["wrk"]["p50_us"], 1)
                v = (x["wrk"]["p50_us"] - d["wrk"]["p50_us"]) / fa
                verdicts.append((f"{mode}: added p50 at 1 conn, {t} / floor", v, f"<= {p50_max}" if p50_max else "(reported)", v <= p50_max if p50_max else None))
            else:
                v = rps(x) / rps(f)
                verdicts.append((f"{mode}: throughput at 32 conns, {t} / floor", v, f">= {rps_min}" if rps_min else "(reported)", v >= rps_min if rps_min else None))
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
    out.append(f"| {name} | {v:.2f} | {target} | {'' if ok is None else 'yes' if ok else 'NO'} |")
for trip in (r for r in rows if r["mode"] == "redis_round_trips" and r["requests"]):
    out.append("")
    out.append(
        f"Redis round trips per request ({trip['target']}, its own metrics over {trip['requests']:,.0f} requests): "
        f"{trip['per_request']:.2f} (one admission and one settlement each)"
    )
cpu = [r for r in rows if r["mode"] == "cpu_by_thread"]
if cpu:
    #: Thread names (as the kernel shows them, 15 characters) by role.
    roles = (
        ("request workers", ("rampart-worker-",)),
        ("ledger writer: batches (runtime)", ("tokio-rt-worker",)),
        ("ledger writer: SQLite", ("sqlx-sqlite-wor",)),
        ("accounting", ("rampart-account",)),
        ("log writer", ("rampart-log",)),
    )
    out.append("")
    out.append("CPU per request by thread (µs; JSON at 32 conns, one more run per gateway, its /proc task stats):")
    out.append("")
    out.append("| gateway | " + " | ".join(name for name, _ in roles) + " | other | total |")
    out.append("|---|" + "---|" * (len(roles) + 2))
    for r in cpu:
        us = r["us_per_request"]
        cells = [sum(v for k, v in us.items() if k in names) for _, names in roles]
        other = sum(us.values()) - sum(cells)
        out.append(f"| {r['target']} | " + " | ".join(f"{c:.1f}" for c in cells) + f" | {other:.1f} | {sum(us.values()):.1f} |")
out.append("")
out.append(f"Rampart peak RSS during the run: {rss_kb/1024:.1f} MiB")
if ledger_rows is not None and measured("rampart-ledger"):
    out.append("")
    out.append(f"Usage records the ledger gateway wrote (checked after its SIGTERM drain): {ledger_rows:,}")
for r in (r for r in rows if r["mode"] == "ledger_rows"):
    same = "exactly one each" if r["rows"] == r["served"] else "MISMATCH"
    out.append("")
    out.append(f"{r['target']}: {r['served']:,} Messages requests served (its metrics), {r['rows']:,} usage records after its SIGTERM drain ({same})")
print("\n".join(out))
