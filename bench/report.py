"""Turn bench/run.sh results into the README table: figures and ratios to the floor."""
import json
import statistics
import sys

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
rss_kb = int(sys.argv[2])
duration = sys.argv[3]
# sys.argv[4], the rounds asked for, is not needed: the rounds are read from the results (rounds_of).
ledger_rows = int(sys.argv[5]) if len(sys.argv) > 5 else None
# What bench/run.sh built (BENCH_BUILD, its "build" row): the same for the floor and every target.
BUILDS = {
    "pgo": "build: `dist` profile (fat LTO) with profile-guided optimisation (bench/pgo.sh), rampart and the floor alike",
    "release": "build: `--release`, rampart and the floor alike",
}


#: The runs every gateway is measured against.
BASELINES = ("direct", "floor")


def paired(mode, conns):
    """Whether bench/run.sh ran the baselines beside each gateway (its paired_round) here."""
    return any("pair" in r for r in rows if r["mode"] == mode and r.get("conns") == conns)


def runs_in(rnd, mode, conns, pair):
    """One round's runs by target, as `pair` is measured: the round's own (results from before the
    baselines were paired, and the simulator's once-a-round run at 32 conns), then the runs beside
    `pair`, which take their place."""
    own = [
        r
        for r in rows
        if r["mode"] == mode and r.get("conns") == conns and r.get("round", 1) == rnd and r.get("pair") in (None, pair)
    ]
    return {r["target"]: r for r in sorted(own, key=lambda r: "pair" in r)}


def ratio_in(rnd, mode, conns, num, den="floor"):
    """`num` against `den` in one round: added p50 over `den`'s at 1 conn, throughput otherwise.
    Against another gateway than the floor, with paired baselines: the two gateways' ratios to
    the floor beside each."""
    if den not in BASELINES and paired(mode, conns):
        a, b = ratio_in(rnd, mode, conns, num), ratio_in(rnd, mode, conns, den)
        return None if a is None or b is None or b <= 0 else a / b
    by = {t: r["wrk"] for t, r in runs_in(rnd, mode, conns, num).items()}
    if not {"direct", num, den} <= by.keys():
        return None
    d, x, y = by["direct"], by[num], by[den]
    if conns == 1:
        return (x["p50_us"] - d["p50_us"]) / max(y["p50_us"] - d["p50_us"], 1)
    return (x["requests"] / x["duration_us"]) / (y["requests"] / y["duration_us"])


def rounds_of(mode, conns):
    """The rounds measured for `mode` at `conns` (bench/run.sh runs more at 1 conn)."""
    return sorted({r.get("round", 1) for r in rows if r["mode"] == mode and r.get("conns") == conns})


def ratios(num, mode, conns, den="floor"):
    """The ratio in every round, each against `den` of the same round."""
    return [v for v in (ratio_in(rnd, mode, conns, num, den) for rnd in rounds_of(mode, conns)) if v is not None]


def verdict(name, values, bound, at_most):
    """A verdict on the median of the rounds' ratios (None: reported only)."""
    v = statistics.median(values)
    ok = None if bound is None else (v <= bound if at_most else v >= bound)
    target = "(reported)" if bound is None else f"{'<=' if at_most else '>='} {bound}"
    return (name, v, target, ok, values)


def median_round(mode, conns):
    """The round the big table shows, and the gateway that picked it: the round where rampart /
    floor was the median (the first gateway measured stands in for rampart when BENCH_TARGETS
    left it out). The baselines shown are the runs beside that gateway."""
    for num in ("rampart", "all", "rampart-ledger", "limits", "rampart-store", "all-redis", "limits-redis"):
        measured = [rnd for rnd in rounds_of(mode, conns) if ratio_in(rnd, mode, conns, num) is not None]
        if measured:
            ranked = sorted(measured, key=lambda rnd: ratio_in(rnd, mode, conns, num))
            return ranked[len(ranked) // 2], num
    return min(rounds_of(mode, conns), default=1), None


def get(target, mode):
    """A target's one run of `mode` (the TTFB rows)."""
    found = next((r for r in rows if r["target"] == target and r["mode"] == mode), None)
    if found is None:
        raise SystemExit(f"missing result {target} {mode}")
    return found


#: Configurations with limits and a budget switched on (`limits*`: JSON only, ledger off; `all*`:
#: everything on, JSON and SSE), with their targets against the floor of the same run: (added
#: p50 at 1 conn at most, throughput at 32 conns at least); None: reported only.
LIMIT_TARGETS = {
    "limits": (1.5, 0.7),
    "limits-redis": (None, None),
    "all": (1.5, 0.7),
    "all-redis": (None, None),
}


#: The 1-conn rounds with each gateway alone on a CPU (bench/run.sh, BENCH_OWN_CPU): their mode
#: is the path's with this suffix.
OWN_CPU = "@own-cpu"


def shown(mode):
    """A mode as the tables name it."""
    return mode.replace(OWN_CPU, ", own CPU")


def measured(target, mode=None):
    return any(r["target"] == target and (mode is None or r["mode"] == mode) for r in rows)


def rps(r):
    w = r["wrk"]
    return w["requests"] / (w["duration_us"] / 1e6)


out = []
out.append(
    f"Benchmark: wrk {duration} per run, {len(rounds_of('json', 1))} interleaved round(s) per configuration at 1 conn and {len(rounds_of('json', 32))} at 32 (the table shows the round with the median rampart / floor ratio; each ratio below is the median of the rounds' own ratios"
    + (
        "; in every round each gateway ran right beside a run of the floor, and at 1 conn of the simulator directly, and its ratios are against those runs"
        if paired("json", 32)
        else ""
    )
    + "), "
    "simulator at zero latency, 2-core machine, everything on loopback; "
    + BUILDS.get(next((r["build"] for r in rows if r["mode"] == "build"), None), "build: not recorded")
    + (
        "; CPUs kept awake (BENCH_KEEP_AWAKE=1: a SCHED_IDLE busy loop per CPU during the wrk runs)"
        if any(r["mode"] == "awake" for r in rows)
        else ""
    )
    + (
        "; then the 1-conn rounds again with each gateway alone on CPU 0 and the simulator and wrk on the other CPUs, kept awake (rows marked \"own CPU\")"
        if any(r["mode"].endswith(OWN_CPU) for r in rows)
        else ""
    )
    + ".\n"
)
# "vs floor": the row's own ratio in the round shown (added p50 at 1 conn, throughput at 32), against
# the floor run beside it: with paired baselines the floor row is the run beside one gateway only.
out.append("| path | conns | target | req/s | p50 ms | p99 ms | added p50 ms | vs floor | errors |")
out.append("|---|---|---|---|---|---|---|---|---|")
verdicts = []
PLACEMENTS = [(m, c) for m in ("json", "sse") for c in (1, 32)]
PLACEMENTS += [(m + OWN_CPU, 1) for m in ("json", "sse") if measured("direct", m + OWN_CPU)]
for mode, conns in PLACEMENTS:
    targets = ("direct", "floor", "rampart", "rampart-store", "rampart-ledger") if mode.startswith("json") else ("direct", "floor", "rampart", "rampart-ledger")
    targets = (*(t for t in targets if measured(t, mode)), *(t for t in LIMIT_TARGETS if measured(t, mode)))
    rnd, ref = median_round(mode, conns)
    for t in targets:
        # The row's run and the simulator's beside it (for the baselines: those beside `ref`).
        beside = runs_in(rnd, mode, conns, ref if t in BASELINES else t)
        if not {t, "direct"} <= beside.keys():
            raise SystemExit(f"missing result {t} {mode} {conns}")
        r, d = beside[t], beside["direct"]
        w = r["wrk"]
        added = (w["p50_us"] - d["wrk"]["p50_us"]) / 1000 if t != "direct" else 0.0
        vs = None if t in BASELINES else ratio_in(rnd, mode, conns, t)
        out.append(
            f"| {shown(mode)} | {conns} | {t} | {rps(r):,.0f} | {w['p50_us']/1000:.3f} | {w['p99_us']/1000:.3f} | "
            f"{'' if t == 'direct' else f'{added:.3f}'} | {'' if vs is None else f'{vs:.2f}'} | {w['errors']} |"
        )
    kind = "added p50 at 1 conn" if conns == 1 else "throughput at 32 conns"
    at_most = conns == 1
    if measured("rampart", mode):
        verdicts.append(verdict(f"{shown(mode)}: {kind}, rampart / floor", ratios("rampart", mode, conns), 1.5 if at_most else 0.8, at_most))
    if mode.startswith("json") and measured("rampart-store", mode) and measured("rampart", mode):
        verdicts.append(verdict(f"{shown(mode)}: {kind}, store keys / config keys", ratios("rampart-store", mode, conns, "rampart"), 1.2 if at_most else 0.9, at_most))
    # The usage ledger on (store keys, no limits).
    if measured("rampart-ledger", mode):
        verdicts.append(verdict(f"{shown(mode)}: {kind}, ledger on / floor", ratios("rampart-ledger", mode, conns), 1.5 if at_most else 0.7, at_most))
for mode in ("json", "sse"):
    for t, (p50_max, rps_min) in LIMIT_TARGETS.items():
        if not measured(t, mode):
            continue
        verdicts.append(verdict(f"{mode}: added p50 at 1 conn, {t} / floor", ratios(t, mode, 1), p50_max, True))
        verdicts.append(verdict(f"{mode}: throughput at 32 conns, {t} / floor", ratios(t, mode, 32), rps_min, False))
    for t, (p50_max, _) in LIMIT_TARGETS.items():
        if measured(t, mode + OWN_CPU):
            verdicts.append(verdict(f"{shown(mode + OWN_CPU)}: added p50 at 1 conn, {t} / floor", ratios(t, mode + OWN_CPU, 1), p50_max, True))
out.append("")
out.append("| SSE time to first byte (300 sequential curl requests each, interleaved) | p50 ms | p99 ms |")
out.append("|---|---|---|")
for t in ("direct", "floor", "rampart"):
    r = get(t, "sse_ttfb")
    out.append(f"| {t} | {r['p50_us']/1000:.3f} | {r['p99_us']/1000:.3f} |")
d, f, g = (get(t, "sse_ttfb")["p50_us"] for t in ("direct", "floor", "rampart"))
verdicts.append(verdict("sse: added TTFB p50, rampart / floor", [(g - d) / max(f - d, 1)], 1.5, True))
out.append("")
out.append(
    "| ratio (median of the rounds, each against the floor "
    + ("run beside it" if paired("json", 32) else "of its own round")
    + ") | value | rounds | target | met |"
)
out.append("|---|---|---|---|---|")
for name, v, target, ok, values in verdicts:
    each = ", ".join(f"{x:.2f}" for x in values)
    out.append(f"| {name} | {v:.2f} | {each} | {target} | {'' if ok is None else 'yes' if ok else 'NO'} |")
# The share of the machine's CPU time the hypervisor gave to other guests during each measured
# run (bench/run.sh reads "steal" from /proc/stat around it): on a shared host, the part of the
# noise that is not this machine's doing.
stolen = [
    (label, [r["steal"] for r in rows if "steal" in r and pick(r)])
    for label, pick in (
        ("shared rounds at 1 conn", lambda r: r.get("conns") == 1 and not r["mode"].endswith(OWN_CPU)),
        ("at 32 conns", lambda r: r.get("conns") == 32),
        ("own-CPU rounds", lambda r: r["mode"].endswith(OWN_CPU)),
    )
]
if any(v for _, v in stolen):
    out.append("")
    out.append(
        "Steal time (CPU time the hypervisor gave to other guests, as a share of all CPU time, over each measured run): "
        + "; ".join(f"{label} median {statistics.median(v):.1%}, highest {max(v):.1%}" for label, v in stolen if v)
    )
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
        # The writer's task and its SQLite connection both run on the main runtime's threads
        # (the batch on a blocking thread); sqlx's connection threads serve the rest.
        ("ledger writer (runtime + SQLite)", ("tokio-rt-worker", "sqlx-sqlite-wor")),
        ("accounting", ("rampart-account",)),
        ("log writer", ("rampart-log",)),
    )
    # Runs before the 1-conn breakdown recorded no `conns`: they were at 32.
    for conns in sorted({r.get("conns", 32) for r in cpu}, reverse=True):
        out.append("")
        out.append(f"CPU per request by thread (µs; JSON at {conns} conn{'s' if conns > 1 else ''}, one more run per gateway, its /proc task stats):")
        out.append("")
        out.append("| gateway | " + " | ".join(name for name, _ in roles) + " | other | total |")
        out.append("|---|" + "---|" * (len(roles) + 2))
        for r in (r for r in cpu if r.get("conns", 32) == conns):
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
