#!/usr/bin/env bash
# Profile-guided build of rampart and the floor: the `dist` profile (fat LTO, one codegen unit)
# plus a profile of the proxy workload, the way a release build is made.
#
#   bench/pgo.sh            # prints the directory holding the optimised `rampart` and `floor`
#
# 1. build both instrumented (-Cprofile-generate) into target/pgo-gen;
# 2. train: the simulator, the floor, the plain pass-through and everything on (in process, and in
#    Redis when redis-server is there) each serve JSON and SSE messages at 1 and 32 connections;
# 3. merge the profiles (llvm-profdata of the LLVM that rustc is built on: `llvm-NN`, installed
#    with apt-get when missing) and build both with -Cprofile-use into target/pgo.
# Both binaries get the same treatment, so the floor stays the floor of the build that ships.
# Takes about 15 minutes on two cores, 8 when the tree is unchanged since the last run (the
# instrumented build is reused); wrk and llvm-NN are installed with apt-get when missing; progress
# goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
say() { echo "$@" >&2; }

LLVM_MAJOR=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
PROFDATA=/usr/lib/llvm-$LLVM_MAJOR/bin/llvm-profdata
if [ ! -x "$PROFDATA" ]; then
  say "installing llvm-$LLVM_MAJOR (llvm-profdata for rustc's LLVM $LLVM_MAJOR)..."
  apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "llvm-$LLVM_MAJOR" >&2 ||
    { say "no llvm-$LLVM_MAJOR to install: build with \`cargo build --profile dist\` (or BENCH_BUILD=release bench/run.sh)"; exit 1; }
fi

if ! command -v wrk >/dev/null; then
  say "installing wrk..."; apt-get update -qq >&2 && apt-get install -y -qq wrk >&2
fi

WORK=$(mktemp -d)
cleanup() {
  for f in "$WORK"/*.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
# Fixed paths (they are part of RUSTFLAGS): an unchanged tree reuses the instrumented build.
RAW=$ROOT/target/pgo-gen/raw
mkdir -p "$ROOT/target/pgo"

say "== pgo: building instrumented binaries"
CARGO_TARGET_DIR=$ROOT/target/pgo-gen RUSTFLAGS="-Cprofile-generate=$RAW" \
  cargo build --profile dist --locked -p rampart -p rampart-bench-floor 2>&1 | tail -n 1 >&2
BIN=$ROOT/target/pgo-gen/dist
# Only the training's profiles (the build scripts, instrumented too, wrote theirs here as well).
rm -rf "$RAW"; mkdir -p "$RAW"

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
export LLVM_PROFILE_FILE="$RAW/%p-%m.profraw"
KEY="rk_bench_$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
SIM=$(start sim "$BIN/rampart" sim --listen 127.0.0.1:0 --latency-ms 0 --tokens-per-sec 0)
FLOOR=$(start floor "$BIN/floor" 127.0.0.1:0 "$SIM")
GW=$(RAMPART_UPSTREAM__BASE_URL="http://$SIM" RAMPART_UPSTREAM_API_KEY=sk-ant-bench RAMPART_API_KEYS="$KEY" \
  start gateway "$BIN/rampart" serve --listen 127.0.0.1:0)
ALL_ENV=(RAMPART_UPSTREAM__BASE_URL="http://$SIM" RAMPART_UPSTREAM_API_KEY=sk-ant-bench
  RAMPART_JWT_SECRET="$("$BIN/rampart" keygen)" RAMPART_MASTER_KEY="$("$BIN/rampart" keygen)"
  RAMPART_ADMIN__ENABLED=false RAMPART_KEY_PEPPER="pepper-pgo-$KEY")
ALL_KEY=$(env "${ALL_ENV[@]}" "$BIN/rampart" keys create --name pgo-all --model 'claude-*' \
  --rpm 1000000000 --itpm 1000000000 --otpm 1000000000 --concurrency 100000 \
  --budget-usd 1000000000 --budget-period month --data-dir "$WORK/all" | tail -n 1)
cp -r "$WORK/all" "$WORK/all-redis"
GWA=$(export "${ALL_ENV[@]}"; start gateway-all "$BIN/rampart" serve --listen 127.0.0.1:0 --data-dir "$WORK/all")
TARGETS=("$SIM:$KEY" "$FLOOR:$KEY" "$GW:$KEY" "$GWA:$ALL_KEY")
if command -v redis-server >/dev/null; then
  REDIS_PORT=$(start_redis)
  GWAR=$(export "${ALL_ENV[@]}" RAMPART_LIMITS__BACKEND=redis RAMPART_REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
    start gateway-all-redis "$BIN/rampart" serve --listen 127.0.0.1:0 --data-dir "$WORK/all-redis")
  TARGETS+=("$GWAR:$ALL_KEY")
fi

bench_bodies "$WORK"

say "== pgo: training (JSON and SSE at 1 and 32 connections on each)"
for t in "${TARGETS[@]}"; do
  for mode in json sse; do
    for conns in 1 32; do
      threads=1; [ "$conns" -gt 1 ] && threads=2
      BODY_FILE="$WORK/$mode.json" API_KEY="${t##*:}" wrk -t"$threads" -c"$conns" -d3s \
        -s bench/wrk-report.lua "http://${t%:*}" >/dev/null
    done
  done
done
# A normal exit writes each process's profile.
for name in gateway gateway-all gateway-all-redis floor sim; do
  f=$WORK/$name.pid; [ -f "$f" ] || continue
  pid=$(cat "$f"); kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  rm -f "$f"
done
"$PROFDATA" merge -o "$WORK/merged.profdata" "$RAW"/*.profraw
# Named by its content: cargo sees a new profile as a change of RUSTFLAGS and rebuilds.
PROFILE=$ROOT/target/pgo/$(sha256sum "$WORK/merged.profdata" | cut -c1-16).profdata
rm -f "$ROOT"/target/pgo/*.profdata
cp "$WORK/merged.profdata" "$PROFILE"

say "== pgo: building with the profile"
CARGO_TARGET_DIR=$ROOT/target/pgo RUSTFLAGS="-Cprofile-use=$PROFILE" \
  cargo build --profile dist --locked -p rampart -p rampart-bench-floor 2>&1 | tail -n 1 >&2
echo "$ROOT/target/pgo/dist"
