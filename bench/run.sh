#!/usr/bin/env bash
# Rampart benchmark: the simulator directly, the floor proxy in front of it, and Rampart in front
# of it, measured in one run with wrk. Figures are reported as ratios to the floor.
#
#   bench/run.sh                 # full run (about 3 minutes)
#   BENCH_DURATION=5s bench/run.sh
#
# Needs: wrk (Debian package `wrk`; installed automatically when apt-get is available), curl, python3.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DURATION=${BENCH_DURATION:-10s}
OUT=${BENCH_OUT:-$ROOT/bench/results}
mkdir -p "$OUT"
WORK=$(mktemp -d)
# start() runs in a command substitution (a subshell), so children are tracked through pid files.
cleanup() { for f in "$WORK"/*.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

if ! command -v wrk >/dev/null; then
  echo "installing wrk..."; apt-get update -qq && apt-get install -y -qq wrk >/dev/null
fi

echo "== building release binaries"
cargo build --release --locked -p rampart -p rampart-bench-floor 2>&1 | tail -1
BIN=$ROOT/target/release

# start CMD... ; waits for "listening on http://ADDR" on stdout and echoes ADDR
start() {
  local name=$1; shift
  "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" &
  echo $! >"$WORK/$name.pid"
  for _ in $(seq 1 200); do
    if grep -q "^listening on http://" "$WORK/$name.out" 2>/dev/null; then
      grep -m1 "^listening on http://" "$WORK/$name.out" | sed 's#listening on http://##'
      return 0
    fi
    sleep 0.05
  done
  echo "$name did not start" >&2; cat "$WORK/$name.err" >&2; exit 1
}

KEY="rk_bench_$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
SIM=$(start sim "$BIN/rampart" sim --listen 127.0.0.1:0 --latency-ms 0 --tokens-per-sec 0)
FLOOR=$(start floor "$BIN/floor" 127.0.0.1:0 "$SIM")
GW=$(RAMPART_UPSTREAM__BASE_URL="http://$SIM" RAMPART_UPSTREAM_API_KEY=sk-ant-bench RAMPART_API_KEYS="$KEY" \
  start gateway "$BIN/rampart" serve --listen 127.0.0.1:0)
GW_PID=$(cat "$WORK/gateway.pid")
echo "simulator $SIM, floor $FLOOR, rampart $GW"

cat >"$WORK/json.json" <<'J'
{"model":"claude-sonnet-4-6","max_tokens":64,"messages":[{"role":"user","content":"Summarise the benefits of a gateway in front of an LLM API in one paragraph."}]}
J
cat >"$WORK/sse.json" <<'J'
{"model":"claude-sonnet-4-6","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"Summarise the benefits of a gateway in front of an LLM API in one paragraph."}]}
J

RESULTS=$WORK/results.jsonl
run() { # target addr mode conns
  local target=$1 addr=$2 mode=$3 conns=$4 threads=1
  [ "$conns" -gt 1 ] && threads=2
  # warm-up, then the measured run
  BODY_FILE="$WORK/$mode.json" API_KEY="$KEY" wrk -t"$threads" -c"$conns" -d2s -s bench/wrk-report.lua "http://$addr" >/dev/null
  local line
  line=$(BODY_FILE="$WORK/$mode.json" API_KEY="$KEY" wrk -t"$threads" -c"$conns" -d"$DURATION" -s bench/wrk-report.lua "http://$addr" | grep '^WRK_JSON' | sed 's/^WRK_JSON //')
  echo "{\"target\":\"$target\",\"mode\":\"$mode\",\"conns\":$conns,\"wrk\":$line}" >>"$RESULTS"
  echo "  $target $mode c=$conns: $line"
}

ttfb() { # target addr -> median time to first byte of an SSE response over 200 sequential requests
  local target=$1 addr=$2
  for _ in $(seq 1 200); do
    curl -s -o /dev/null -w '%{time_starttransfer}\n' "http://$addr/v1/messages" \
      -H "x-api-key: $KEY" -H 'anthropic-version: 2023-06-01' -H 'content-type: application/json' \
      --data-binary "@$WORK/sse.json"
  done | python3 -c "
import sys, statistics, json
v = sorted(float(x) * 1e6 for x in sys.stdin if x.strip())
print(json.dumps({'target': '$target', 'mode': 'sse_ttfb', 'p50_us': statistics.median(v), 'p99_us': v[int(len(v) * 0.99) - 1]}))" >>"$RESULTS"
}

echo "== wrk, $DURATION per run"
for mode in json sse; do
  for conns in 1 32; do
    run direct "$SIM" "$mode" "$conns"
    run floor "$FLOOR" "$mode" "$conns"
    run rampart "$GW" "$mode" "$conns"
  done
done
echo "== SSE time to first byte (curl, 200 sequential requests)"
ttfb direct "$SIM"; ttfb floor "$FLOOR"; ttfb rampart "$GW"

RSS_KB=$(awk '/VmHWM/ {print $2}' "/proc/$GW_PID/status")
python3 bench/report.py "$RESULTS" "$RSS_KB" "$DURATION" | tee "$OUT/latest.md"
echo "(written to $OUT/latest.md)"
