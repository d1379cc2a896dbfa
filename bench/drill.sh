#!/usr/bin/env bash
# The kill-one-simulator drill: two simulators behind one Rampart (two upstream targets, one
# breaker each), steady load from wrk, and one simulator killed with SIGKILL mid-run. Reports the
# client-visible errors before the kill, between the kill and the dead target's breaker opening,
# and after it opened; the time the breaker took to open; and the upstream attempts by outcome.
#
#   bench/drill.sh                                        # 15 s at 32 connections, kill at 5 s
#   DRILL_DURATION=30 DRILL_KILL_AT=10 DRILL_CONNS=64 bench/drill.sh
#   RAMPART_BIN=target/debug/rampart bench/drill.sh        # skip the release build
#
# Needs: wrk (installed when apt-get is available), curl, python3.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DURATION=${DRILL_DURATION:-15}
KILL_AT=${DRILL_KILL_AT:-5}
CONNS=${DRILL_CONNS:-32}
OUT=${BENCH_OUT:-$ROOT/bench/results}
mkdir -p "$OUT"
WORK=$(mktemp -d)
cleanup() { for f in "$WORK"/*.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

if ! command -v wrk >/dev/null; then
  echo "installing wrk..."; apt-get update -qq && apt-get install -y -qq wrk >/dev/null
fi
if [ -z "${RAMPART_BIN:-}" ]; then
  echo "== building the release binary"
  cargo build --release --locked -p rampart 2>&1 | tail -1
  RAMPART_BIN=$ROOT/target/release/rampart
fi

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

KEY="rk_drill_$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
SIM_A=$(start sim-a "$RAMPART_BIN" sim --listen 127.0.0.1:0 --latency-ms 0 --tokens-per-sec 0)
SIM_B=$(start sim-b "$RAMPART_BIN" sim --listen 127.0.0.1:0 --latency-ms 0 --tokens-per-sec 0)
cat >"$WORK/rampart.toml" <<TOML
[[upstream.targets]]
name = "a"
base_url = "http://$SIM_A"
[[upstream.targets]]
name = "b"
base_url = "http://$SIM_B"
[upstream.breaker]
consecutive_failures = 5
open_ms = 60000            # no probe during the drill: what follows the opening is the shed state
TOML
GW=$(RAMPART_UPSTREAM_API_KEY=sk-ant-drill RAMPART_API_KEYS="$KEY" RAMPART_LOG=warn \
  start gateway "$RAMPART_BIN" serve --listen 127.0.0.1:0 --config "$WORK/rampart.toml")
echo "simulators $SIM_A (a) and $SIM_B (b), rampart $GW"

cat >"$WORK/json.json" <<'J'
{"model":"claude-sonnet-4-6","max_tokens":64,"messages":[{"role":"user","content":"Summarise the benefits of a gateway in front of an LLM API in one paragraph."}]}
J

now_ms() { date +%s%3N; }
breaker_b() {
  curl -s "http://$GW/metrics" | sed -n 's/^rampart_upstream_breaker_state{target="b"} //p'
}

echo "== wrk: ${DURATION}s at $CONNS connections; SIGKILL to simulator b at ${KILL_AT}s"
BODY_FILE="$WORK/json.json" API_KEY="$KEY" wrk -t2 -c"$CONNS" -d"${DURATION}s" -s bench/drill.lua "http://$GW" >"$WORK/wrk.out" &
WRK_PID=$!
START_MS=$(now_ms)
sleep "$KILL_AT"
kill -9 "$(cat "$WORK/sim-b.pid")"
KILL_MS=$(now_ms)
OPEN_MS=""
for _ in $(seq 1 500); do
  if [ "$(breaker_b)" = "1" ]; then OPEN_MS=$(now_ms); break; fi
  sleep 0.02
done
wait "$WRK_PID"
curl -s "http://$GW/metrics" >"$WORK/metrics.txt"

python3 - "$WORK/wrk.out" "$WORK/metrics.txt" "$START_MS" "$KILL_MS" "${OPEN_MS:-0}" "$DURATION" "$CONNS" <<'PY' | tee "$OUT/drill.md"
import re, sys
wrk, metrics, start_ms, kill_ms, open_ms, duration, conns = sys.argv[1:8]
start_ms, kill_ms, open_ms = int(start_ms), int(kill_ms), int(open_ms)
seconds, total = {}, None
for line in open(wrk):
    p = line.split()
    if line.startswith("DRILL_SECOND"):
        seconds[int(p[1])] = (int(p[2]), int(p[3]))
    elif line.startswith("DRILL_TOTAL"):
        total = [int(x) for x in p[1:]]
if total is None:
    sys.exit("wrk printed no summary:\n" + open(wrk).read())
kill_s, open_s = kill_ms // 1000, open_ms // 1000
def span(pred):
    ok = sum(v[0] for s, v in seconds.items() if pred(s))
    bad = sum(v[1] for s, v in seconds.items() if pred(s))
    n = len([s for s in seconds if pred(s)])
    return ok, bad, n
before = span(lambda s: s < kill_s)
during = span(lambda s: kill_s <= s <= open_s) if open_ms else span(lambda s: s >= kill_s)
after = span(lambda s: s > open_s) if open_ms else (0, 0, 0)
attempts = {}
for m in re.finditer(r'^rampart_upstream_attempts_total\{target="(\w+)",outcome="(\w+)"\} (\d+)', open(metrics).read(), re.M):
    attempts[(m[1], m[2])] = int(m[3])
retries = sum(int(m[1]) for m in re.finditer(r'^rampart_upstream_retries_total\{[^}]*\} (\d+)', open(metrics).read(), re.M))
print(f"Kill-one-simulator drill: wrk {duration} s at {conns} connections against Rampart with two upstream "
      f"targets (simulators a and b, zero latency); SIGKILL to b at {(kill_ms - start_ms) / 1000:.1f} s; 2-core machine, loopback.\n")
print("| phase | seconds | answers | client-visible errors | req/s |")
print("|---|---|---|---|---|")
for name, (ok, bad, n) in (("before the kill", before), ("kill → breaker open (whole seconds)", during), ("after the breaker opened", after)):
    rate = f"{(ok + bad) / n:,.0f}" if n else ""
    print(f"| {name} | {n} | {ok:,} | {bad} | {rate} |")
print()
opened = f"{open_ms - kill_ms} ms" if open_ms else "did not open"
print(f"Breaker of b opened {opened} after the kill. Socket errors seen by wrk: {total[2]}; non-2xx answers: {total[3]}. "
      f"Upstream retries: {retries}.")
print()
print("| target | outcome | attempts |")
print("|---|---|---|")
for (t, o), n in sorted(attempts.items()):
    print(f"| {t} | {o} | {n:,} |")
PY
echo "(written to $OUT/drill.md)"
