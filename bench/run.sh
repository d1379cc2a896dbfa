#!/usr/bin/env bash
# Rampart benchmark: the simulator directly, the floor proxy in front of it, and Rampart in front
# of it, measured in one run with wrk. Figures are reported as ratios to the floor.
#
#   bench/run.sh                 # full run (about 65 minutes: the PGO build, then 50 of wrk)
#   BENCH_DURATION=3s BENCH_ROUNDS=1 bench/run.sh   # quick look
#   BENCH_TARGETS="rampart all all-redis" bench/run.sh   # only these gateways (and their floor runs)
#   BENCH_BUILD=release bench/run.sh   # the plain --release build (no LTO, no profile)
#   BENCH_OWN_CPU=0 bench/run.sh       # without the 1-conn rounds with each gateway on its own CPU
#
# Each configuration is measured BENCH_ROUNDS times (default 5; at 1 conn BENCH_ROUNDS_1CONN,
# default the same), each gateway right beside a run of the floor (paired_round below); the
# report takes the median of the rounds' ratios.
#
# Needs: wrk (Debian package `wrk`; installed automatically when apt-get is available), curl, python3.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DURATION=${BENCH_DURATION:-5s}
# Five rounds: at 1 conn the added p50 is a difference of two small, noisy figures, and at 32
# conns single rounds of one gateway have differed by 40 % on this kind of shared VM.
ROUNDS=${BENCH_ROUNDS:-5}
ROUNDS_1CONN=${BENCH_ROUNDS_1CONN:-$ROUNDS}
OUT=${BENCH_OUT:-$ROOT/bench/results}
mkdir -p "$OUT"
WORK=$(mktemp -d)
# start() runs in a command substitution (a subshell), so children are tracked through pid files.
cleanup() { for f in "$WORK"/*.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

if ! command -v wrk >/dev/null; then
  echo "installing wrk..."; apt-get update -qq && apt-get install -y -qq wrk >/dev/null
fi
if ! command -v redis-server >/dev/null; then
  echo "installing redis-server..."; apt-get update -qq && apt-get install -y -qq redis-server >/dev/null
fi

# BENCH_BUILD: `pgo` (default) measures the production build, both binaries as bench/pgo.sh
# builds them (the `dist` profile, fat LTO, plus profile-guided optimisation; 8 to 15 minutes of
# building); `release` the plain `--release` build. Rampart and the floor always get the same.
BUILD=${BENCH_BUILD:-pgo}
case "$BUILD" in
  pgo)
    echo "== building profile-guided binaries (bench/pgo.sh, 8 to 15 minutes)"
    BIN=$(bench/pgo.sh)
    ;;
  release)
    echo "== building release binaries"
    cargo build --release --locked -p rampart -p rampart-bench-floor 2>&1 | tail -1
    BIN=$ROOT/target/release
    ;;
  *) echo "BENCH_BUILD is pgo or release, not $BUILD" >&2; exit 2 ;;
esac

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

KEY="rk_bench_$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
SIM=$(start sim "$BIN/rampart" sim --listen 127.0.0.1:0 --latency-ms 0 --tokens-per-sec 0)
FLOOR=$(start floor "$BIN/floor" 127.0.0.1:0 "$SIM")
GW=$(RAMPART_UPSTREAM__BASE_URL="http://$SIM" RAMPART_UPSTREAM_API_KEY=sk-ant-bench RAMPART_API_KEYS="$KEY" \
  start gateway "$BIN/rampart" serve --listen 127.0.0.1:0)
GW_PID=$(cat "$WORK/gateway.pid")
# The same gateway with its keys in the store (SQLite): a virtual key from `rampart keys create`,
# served from the in-memory key directory (scopes, last-use clock, denial audit all live).
STORE_ENV=(RAMPART_UPSTREAM__BASE_URL="http://$SIM" RAMPART_UPSTREAM_API_KEY=sk-ant-bench
  RAMPART_JWT_SECRET="$("$BIN/rampart" keygen)" RAMPART_MASTER_KEY="$("$BIN/rampart" keygen)")
STORE_KEY=$(env "${STORE_ENV[@]}" "$BIN/rampart" keys create --name bench --model 'claude-*' --data-dir "$WORK/store" | tail -n 1)
# (Each data directory is copied before its gateway starts: the own-CPU instances further down
# serve the same keys from their own copy.)
cp -r "$WORK/store" "$WORK/store-1cpu"
GWS=$(export "${STORE_ENV[@]}" RAMPART_LEDGER__ENABLED=false; start gateway-store "$BIN/rampart" serve --listen 127.0.0.1:0 --data-dir "$WORK/store")
# Store keys with the usage ledger on (the default with a store): every request spooled before
# its response completes, drained into SQLite in batches with the rollups.
LEDGER_KEY=$(env "${STORE_ENV[@]}" "$BIN/rampart" keys create --name bench --model 'claude-*' --data-dir "$WORK/ledger" | tail -n 1)
cp -r "$WORK/ledger" "$WORK/ledger-1cpu"
GWL=$(export "${STORE_ENV[@]}"; start gateway-ledger "$BIN/rampart" serve --listen 127.0.0.1:0 --data-dir "$WORK/ledger")
echo "simulator $SIM, floor $FLOOR, rampart $GW, rampart with store keys $GWS, with store keys and the ledger $GWL"

# Store keys with rate limits, a concurrency limit and a budget on the key, all far above what the
# run reaches (nothing is refused: what is measured is admission, reservation, settlement and the
# headers), ledger off so the figure is the limiter's own: `limits` in process, `limits-redis` in a
# throwaway redis-server (its round trips per request read from the gateway's metrics).
LIMITS_ENV=("${STORE_ENV[@]}" RAMPART_ADMIN__ENABLED=false RAMPART_LEDGER__ENABLED=false RAMPART_KEY_PEPPER="pepper-bench-$KEY")
LIMITS_KEY=$(env "${LIMITS_ENV[@]}" "$BIN/rampart" keys create --name bench-limits --model 'claude-*' \
  --rpm 1000000000 --itpm 1000000000 --otpm 1000000000 --concurrency 100000 \
  --budget-usd 1000000000 --budget-period month --data-dir "$WORK/limits" | tail -n 1)
cp -r "$WORK/limits" "$WORK/limits-1cpu"
GWLIM=$(export "${LIMITS_ENV[@]}"; start gateway-limits "$BIN/rampart" serve --listen 127.0.0.1:0 --data-dir "$WORK/limits")
REDIS_PORT=$(start_redis)
GWLR=$(export "${LIMITS_ENV[@]}" RAMPART_LIMITS__BACKEND=redis RAMPART_REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
  start gateway-limits-redis "$BIN/rampart" serve --listen 127.0.0.1:0 --data-dir "$WORK/limits")
echo "with limits and a budget: in process $GWLIM, in Redis $GWLR"

# Everything on: a store key with rate limits, a concurrency limit and a budget (as above), the
# usage ledger on (SQLite, the default with a store) and the metrics, `all` with the limits in
# process and `all-redis` in the same redis-server; each gateway has its own data directory
# (one spool per process).
ALL_ENV=("${STORE_ENV[@]}" RAMPART_ADMIN__ENABLED=false RAMPART_KEY_PEPPER="pepper-bench-$KEY")
ALL_KEY=$(env "${ALL_ENV[@]}" "$BIN/rampart" keys create --name bench-all --model 'claude-*' \
  --rpm 1000000000 --itpm 1000000000 --otpm 1000000000 --concurrency 100000 \
  --budget-usd 1000000000 --budget-period month --data-dir "$WORK/all" | tail -n 1)
cp -r "$WORK/all" "$WORK/all-redis"
cp -r "$WORK/all" "$WORK/all-1cpu"
GWA=$(export "${ALL_ENV[@]}"; start gateway-all "$BIN/rampart" serve --listen 127.0.0.1:0 --data-dir "$WORK/all")
GWAR=$(export "${ALL_ENV[@]}" RAMPART_LIMITS__BACKEND=redis RAMPART_REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
  start gateway-all-redis "$BIN/rampart" serve --listen 127.0.0.1:0 --data-dir "$WORK/all-redis")
echo "everything on: in process $GWA, in Redis $GWAR"

bench_bodies "$WORK"

RESULTS=$WORK/results.jsonl
# Which build was measured, for bench/report.py (also when it is rerun on latest.jsonl).
echo "{\"target\": \"-\", \"mode\": \"build\", \"build\": \"$BUILD\"}" >>"$RESULTS"
# The CPU time the hypervisor gave to other guests ("steal", /proc/stat) and all CPU time, in
# ticks: their difference around a run is the share of the machine this VM did not get.
cpu_ticks() { awk '/^cpu /{print $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9; exit}' /proc/stat; }

run() { # target addr mode conns round (mode: json or sse, with @own-cpu for the own-CPU rounds);
  # PAIR, when set, names the gateway this run of the floor or the simulator stands beside
  local target=$1 addr=$2 mode=$3 conns=$4 round=$5 threads=1 key=$KEY body=${3%@*}
  [ "$conns" -gt 1 ] && threads=2
  [ "$target" = rampart-store ] && key=$STORE_KEY
  [ "$target" = rampart-ledger ] && key=$LEDGER_KEY
  case "$target" in limits | limits-redis) key=$LIMITS_KEY ;; all | all-redis) key=$ALL_KEY ;; esac
  # warm-up, then the measured run
  BODY_FILE="$WORK/$body.json" API_KEY="$key" ${WRK_PIN:-} wrk -t"$threads" -c"$conns" -d2s -s bench/wrk-report.lua "http://$addr" >/dev/null
  local line before steal
  before=$(cpu_ticks)
  line=$(BODY_FILE="$WORK/$body.json" API_KEY="$key" ${WRK_PIN:-} wrk -t"$threads" -c"$conns" -d"$DURATION" -s bench/wrk-report.lua "http://$addr" | grep '^WRK_JSON' | sed 's/^WRK_JSON //')
  steal=$(awk -v a="$before" -v b="$(cpu_ticks)" 'BEGIN { split(a, x, " "); split(b, y, " "); d = y[2] - x[2]; printf "%.4f", (d > 0 ? (y[1] - x[1]) / d : 0) }')
  echo "{\"target\":\"$target\",\"mode\":\"$mode\",\"conns\":$conns,\"round\":$round,${PAIR:+\"pair\":\"$PAIR\",}\"steal\":$steal,\"wrk\":$line}" >>"$RESULTS"
  echo "  round $round $target $mode c=$conns: $line"
}

ttfb() { # -> time to first byte of SSE responses, 300 sequential curl requests per target,
  # the three targets interleaved request by request
  for _ in $(seq 1 300); do
    for t in direct:$SIM floor:$FLOOR rampart:$GW; do
      printf '%s ' "${t%%:*}"
      curl -s -o /dev/null -w '%{time_starttransfer}\n' "http://${t#*:}/v1/messages" \
        -H "x-api-key: $KEY" -H 'anthropic-version: 2023-06-01' -H 'content-type: application/json' \
        --data-binary "@$WORK/sse.json"
    done
  done | python3 -c "
import sys, statistics, json, collections
v = collections.defaultdict(list)
for line in sys.stdin:
    t, x = line.split()
    v[t].append(float(x) * 1e6)
for t, xs in v.items():
    xs.sort()
    print(json.dumps({'target': t, 'mode': 'sse_ttfb', 'p50_us': statistics.median(xs), 'p99_us': xs[int(len(xs) * 0.99) - 1]}))" >>"$RESULTS"
}

# BENCH_TARGETS (space-separated) limits the wrk runs and the CPU breakdown to those gateways
# (the floor and the simulator run beside each).
want() { [ -z "${BENCH_TARGETS:-}" ] || [[ " $BENCH_TARGETS " == *" $1 "* ]]; }

# One round of one placement (mode, conns): every gateway measured right beside a run of the
# floor, and at 1 conn of the simulator directly, so that each gateway's ratio compares runs a
# few seconds apart. On this kind of shared VM the machine's speed drifts within a minute (the
# floor's own throughput has differed by 30 % between rounds of one run, and the simulator's
# 1-conn p50 by nearly 2x), so a round's single floor run, up to a minute away from some
# gateways, moved their ratios by more than the gateways differ. The order of each group
# alternates round by round (on two vCPUs the run after another does measurably better or worse
# by its place alone), and the gateways' order rotates. At 32 conns the simulator runs once a
# round, for the table.
paired_round() { # mode conns round direct-addr floor-addr target:addr...
  local mode=$1 conns=$2 round=$3 direct=$4 floor=$5
  shift 5
  local gated=("$@") k t group
  k=$(((round - 1) % ${#gated[@]}))
  [ "$conns" -gt 1 ] && run direct "$direct" "$mode" "$conns" "$round"
  for t in "${gated[@]:k}" "${gated[@]:0:k}"; do
    want "${t%%:*}" || continue
    group=("floor:$floor" "$t")
    [ "$conns" -eq 1 ] && group=("direct:$direct" "${group[@]}")
    [ $((round % 2)) -eq 0 ] && mapfile -t group < <(printf '%s\n' "${group[@]}" | tac)
    for g in "${group[@]}"; do
      PAIR=${t%%:*} run "${g%%:*}" "${g#*:}" "$mode" "$conns" "$round"
    done
  done
}

# BENCH_KEEP_AWAKE=1: one busy loop per CPU at the idle scheduling class (SCHED_IDLE) during the
# wrk runs. It runs only when nothing else would, and any woken task preempts it at once; what it
# changes is that no CPU goes idle. On a virtual machine whose idle vCPUs take tens of
# microseconds to wake (a halt and an interrupt through the hypervisor), that wake-up, not the
# proxies, is most of a 1-conn request's time; kept awake, the figures are the proxies' again
# (as `idle=poll` or halt-polling would have them). Off by default; the report says which.
keep_awake() {
  for cpu in $(seq 0 $(($(nproc) - 1))); do
    taskset -c "$cpu" chrt -i 0 bash -c 'while :; do :; done' &
    echo $! >"$WORK/awake-$cpu.pid"
  done
}
let_sleep() { for f in "$WORK"/awake-*.pid; do if [ -f "$f" ]; then kill "$(cat "$f")" 2>/dev/null || true; rm -f "$f"; fi; done; }
AWAKE=${BENCH_KEEP_AWAKE:-0}
if [ "$AWAKE" = 1 ]; then
  keep_awake
  echo "{\"target\": \"-\", \"mode\": \"awake\"}" >>"$RESULTS"
fi

echo "== wrk, $DURATION per run, $ROUNDS_1CONN round(s) at 1 conn, $ROUNDS at 32"
for mode in json sse; do
  targets=(rampart:$GW)
  if [ "$mode" = json ]; then
    targets+=(rampart-store:$GWS limits:$GWLIM limits-redis:$GWLR)
  fi
  targets+=(rampart-ledger:$GWL all:$GWA all-redis:$GWAR)
  for conns in 1 32; do
    rounds=$ROUNDS; [ "$conns" -eq 1 ] && rounds=$ROUNDS_1CONN
    for round in $(seq 1 "$rounds"); do
      paired_round "$mode" "$conns" "$round" "$SIM" "$FLOOR" "${targets[@]}"
    done
  done
done
let_sleep

# The 1-conn rounds once more with each gateway alone on a CPU (BENCH_OWN_CPU, default 1; needs
# two CPUs or more): the floor and every in-process gateway started again under `taskset -c 0`
# (so each sees one CPU: the floor's runtime gets one worker, Rampart one request worker), the
# simulator moved to the other CPUs and wrk run there, the CPUs kept awake as above. A gateway
# runs on cores of its own in production, away from its clients and its upstream; here, sharing
# two vCPUs with wrk and the simulator, where the scheduler puts the three and how much of one's
# caches the others evict between requests moves a 1-conn p50 by more than the proxies' own
# work. Reported beside the shared rounds above, in rows marked "own CPU".
if [ "${BENCH_OWN_CPU:-1}" = 1 ] && [ "$(nproc)" -ge 2 ]; then
  REST=1-$(($(nproc) - 1))
  echo "== 1 conn, each gateway alone on CPU 0 (the simulator and wrk on CPUs $REST, CPUs kept awake)"
  keep_awake
  taskset -a -p -c "$REST" "$(cat "$WORK/sim.pid")" >/dev/null
  F1=$(start floor-1cpu taskset -c 0 "$BIN/floor" 127.0.0.1:0 "$SIM")
  G1=$(RAMPART_UPSTREAM__BASE_URL="http://$SIM" RAMPART_UPSTREAM_API_KEY=sk-ant-bench RAMPART_API_KEYS="$KEY" \
    start gateway-1cpu taskset -c 0 "$BIN/rampart" serve --listen 127.0.0.1:0)
  GWS1=$(export "${STORE_ENV[@]}" RAMPART_LEDGER__ENABLED=false; start gateway-store-1cpu taskset -c 0 "$BIN/rampart" serve --listen 127.0.0.1:0 --data-dir "$WORK/store-1cpu")
  GWL1=$(export "${STORE_ENV[@]}"; start gateway-ledger-1cpu taskset -c 0 "$BIN/rampart" serve --listen 127.0.0.1:0 --data-dir "$WORK/ledger-1cpu")
  GWLIM1=$(export "${LIMITS_ENV[@]}"; start gateway-limits-1cpu taskset -c 0 "$BIN/rampart" serve --listen 127.0.0.1:0 --data-dir "$WORK/limits-1cpu")
  GWA1=$(export "${ALL_ENV[@]}"; start gateway-all-1cpu taskset -c 0 "$BIN/rampart" serve --listen 127.0.0.1:0 --data-dir "$WORK/all-1cpu")
  WRK_PIN="taskset -c $REST"
  for mode in json sse; do
    targets=(rampart:$G1)
    [ "$mode" = json ] && targets+=(rampart-store:$GWS1 limits:$GWLIM1)
    targets+=(rampart-ledger:$GWL1 all:$GWA1)
    for round in $(seq 1 "$ROUNDS_1CONN"); do
      paired_round "$mode@own-cpu" 1 "$round" "$SIM" "$F1" "${targets[@]}"
    done
  done
  WRK_PIN=
  for name in floor-1cpu gateway-1cpu gateway-store-1cpu gateway-ledger-1cpu gateway-limits-1cpu gateway-all-1cpu; do
    kill "$(cat "$WORK/$name.pid")" 2>/dev/null || true
    rm -f "$WORK/$name.pid"
  done
  let_sleep
  taskset -a -p -c "0-$(($(nproc) - 1))" "$(cat "$WORK/sim.pid")" >/dev/null
fi
echo "== SSE time to first byte (curl, 300 sequential requests per target, interleaved)"
ttfb

# Redis round trips per request of the Redis-backed gateways, from their own metrics.
curl -s "http://$GWLR/metrics" | python3 bench/redis_round_trips.py limits-redis >>"$RESULTS"
curl -s "http://$GWAR/metrics" | python3 bench/redis_round_trips.py all-redis >>"$RESULTS"

# Where the CPU goes: each gateway's CPU time per request by thread (its /proc task stats around
# one more JSON run at 32 connections, then one at 1): request workers, the ledger writer (its task on the main
# runtime and the batch's SQLite transaction on a blocking thread), accounting and the log writer.
echo "== CPU per request by thread (JSON, 32 and 1 conns, $DURATION each)"
threads_cpu() { for t in /proc/"$1"/task/*; do
  printf '%s %s\n' "$(tr ' ' '_' <"$t/comm")" "$(sed 's/.*) //' "$t/stat" | awk '{print $12 + $13}')"; done; }
# At 1 conn the background threads' own wake-ups (timers, hand-offs) show beside the request
# path's CPU: on two cores they compete with wrk, the simulator and the worker.
# (The loop over targets is not indented under this one: its here-document ends at column 0.)
for conns in 32 1; do
threads=2; [ "$conns" -eq 1 ] && threads=1
for t in rampart:gateway rampart-store:gateway-store limits:gateway-limits rampart-ledger:gateway-ledger all:gateway-all all-redis:gateway-all-redis; do
  target=${t%%:*}; pid=$(cat "$WORK/${t#*:}.pid")
  want "$target" || continue
  addr=$(grep -m1 "^listening on http://" "$WORK/${t#*:}.out" | sed 's#listening on http://##')
  key=$KEY
  case "$target" in rampart-store) key=$STORE_KEY ;; rampart-ledger) key=$LEDGER_KEY ;; limits) key=$LIMITS_KEY ;; all | all-redis) key=$ALL_KEY ;; esac
  threads_cpu "$pid" >"$WORK/cpu0"
  line=$(BODY_FILE="$WORK/json.json" API_KEY="$key" wrk -t"$threads" -c"$conns" -d"$DURATION" -s bench/wrk-report.lua "http://$addr" | grep '^WRK_JSON' | sed 's/^WRK_JSON //')
  sleep 0.5 # the ledger writer's next drain (every 200 ms) is part of the cost
  threads_cpu "$pid" >"$WORK/cpu1"
  python3 - "$target" "$line" "$(getconf CLK_TCK)" "$WORK/cpu0" "$WORK/cpu1" "$conns" >>"$RESULTS" <<'PY'
import collections, json, sys
target, wrk, tck = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
conns = int(sys.argv[6])
def read(path):
    d = collections.Counter()
    for line in open(path):
        name, ticks = line.rsplit(" ", 1)
        d[name] += int(ticks)
    return d
a, b = read(sys.argv[4]), read(sys.argv[5])
us = {k: (b[k] - a[k]) * 1e6 / tck / max(wrk["requests"], 1) for k in b}
print(json.dumps({"target": target, "mode": "cpu_by_thread", "conns": conns, "requests": wrk["requests"], "us_per_request": us}))
PY
  echo "  $target c=$conns: $(tail -n 1 "$RESULTS")"
done
done

RSS_KB=$(awk '/VmHWM/ {print $2}' "/proc/$GW_PID/status")
# The ledger gateway must have recorded every request it answered (after its SIGTERM drain).
GWL_PID=$(cat "$WORK/gateway-ledger.pid")
kill -TERM "$GWL_PID"; while kill -0 "$GWL_PID" 2>/dev/null; do sleep 0.1; done
LEDGER_ROWS=$(python3 -c "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('SELECT COUNT(*) FROM usage_records').fetchone()[0])" "$WORK/ledger/rampart.db")
echo "usage records written by the ledger gateway: $LEDGER_ROWS"
# Everything on: every request the gateway counted has exactly one usage record after its
# SIGTERM drain (the metrics count /v1/messages requests, the ledger records them).
for t in all:gateway-all all-redis:gateway-all-redis; do
  name=${t#*:}; pid=$(cat "$WORK/$name.pid")
  addr=$(grep -m1 "^listening on http://" "$WORK/$name.out" | sed 's#listening on http://##')
  served=$(curl -s "http://$addr/metrics" | python3 -c 'import re, sys
text = sys.stdin.read()
print(int(sum(float(v) for v in re.findall(r"^rampart_http_requests_total\{[^}]*route=\"/v1/messages\"[^}]*\} (\S+)$", text, re.M))))')
  kill -TERM "$pid"; while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  rows=$(python3 -c "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('SELECT COUNT(*) FROM usage_records').fetchone()[0])" "$WORK/${t%%:*}/rampart.db")
  echo "{\"target\": \"${t%%:*}\", \"mode\": \"ledger_rows\", \"served\": $served, \"rows\": $rows}" >>"$RESULTS"
  echo "${t%%:*}: $served requests served, $rows usage records"
done
cp "$RESULTS" "$OUT/latest.jsonl" # the raw results: `python3 bench/report.py` can be rerun on them
python3 bench/report.py "$RESULTS" "$RSS_KB" "$DURATION" "$ROUNDS" "$LEDGER_ROWS" | tee "$OUT/latest.md"
echo "(written to $OUT/latest.md and latest.jsonl)"
