#!/usr/bin/env bash
# Local batch throughput: a BATCH_ITEMS-item (default 10,000) local-mode batch through a real
# `rampart serve` (SQLite store, usage ledger on) against the zero-latency simulator, timed from
# the batch's created_at to its ended_at; in the same run, the same items sent as individual
# POST /v1/messages requests through the same gateway (curl --parallel, as many at once as the
# batch runs: BATCH_WORKERS). Reported as items per second and as the ratio batch / individual.
#
#   bench/batches.sh                                   # 10,000 items, 64 at once, 2 rounds
#   BATCH_ITEMS=2000 BATCH_ROUNDS=1 bench/batches.sh   # a quick look
#   BATCH_KEY_FLAGS="--rpm 1000000000 --itpm 1000000000 --otpm 1000000000" bench/batches.sh
#                                                      # a key with limits: items are admitted
#                                                      # under them (far above what is used)
#
# Needs: curl, python3. Writes bench/results/batches.md (BENCH_OUT to change the directory).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
N=${BATCH_ITEMS:-10000}
WORKERS=${BATCH_WORKERS:-64}
ROUNDS=${BATCH_ROUNDS:-2}
OUT=${BENCH_OUT:-$ROOT/bench/results}
mkdir -p "$OUT"
WORK=$(mktemp -d)
cleanup() { for f in "$WORK"/*.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; done; sleep 0.5; rm -rf "$WORK"; }
trap cleanup EXIT

echo "== building the release binary"
cargo build --release --locked -p rampart 2>&1 | tail -1
BIN=${RAMPART_BIN:-$ROOT/target/release/rampart}

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

SIM=$(start sim "$BIN" sim --listen 127.0.0.1:0 --latency-ms 0 --tokens-per-sec 0)
ENV=(RAMPART_UPSTREAM__BASE_URL="http://$SIM" RAMPART_UPSTREAM_API_KEY=sk-ant-bench
  RAMPART_JWT_SECRET="$("$BIN" keygen)" RAMPART_MASTER_KEY="$("$BIN" keygen)"
  RAMPART_LOG=warn RAMPART_BATCHES__MODE=local RAMPART_BATCHES__WORKERS="$WORKERS"
  RAMPART_BATCHES__TEAM_CONCURRENCY="$WORKERS" RAMPART_BATCHES__CLAIM_INTERVAL_MS=10)
env "${ENV[@]}" "$BIN" teams create bench --data-dir "$WORK/store" >/dev/null
# shellcheck disable=SC2086 # the flags are words
KEY=$(env "${ENV[@]}" "$BIN" keys create --name bench --team bench ${BATCH_KEY_FLAGS:-} --data-dir "$WORK/store" | tail -n 1)
GW=$(start gateway env "${ENV[@]}" "$BIN" serve --listen 127.0.0.1:0 --data-dir "$WORK/store")
echo "simulator $SIM, gateway $GW, $N items, $WORKERS at once, $ROUNDS round(s)"

python3 - "$N" "$WORK" "$GW" "$KEY" <<'EOF'
import json, sys
n, work, gw, key = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
params = lambda i: {"model": "claude-sonnet-4-6", "max_tokens": 16, "messages": [{"role": "user", "content": f"echo: item {i}"}]}
with open(f"{work}/batch.json", "w") as f:
    json.dump({"requests": [{"custom_id": f"item-{i}", "params": params(i)} for i in range(n)]}, f)
with open(f"{work}/single.curl", "w") as f:
    for i in range(n):
        f.write(f'url = "http://{gw}/v1/messages"\nheader = "x-api-key: {key}"\n'
                'header = "anthropic-version: 2023-06-01"\nheader = "content-type: application/json"\n'
                f"data = {json.dumps(json.dumps(params(i)))}\noutput = \"/dev/null\"\n"
                'write-out = "%{http_code}\\n"\n')
        if i + 1 < n:
            f.write("next\n")
EOF

H=(-H "x-api-key: $KEY" -H "anthropic-version: 2023-06-01" -H "content-type: application/json")

run_batch() {
  local id
  id=$(curl -sf "${H[@]}" "http://$GW/v1/messages/batches" --data-binary @"$WORK/batch.json" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  while :; do
    curl -sf "${H[@]}" "http://$GW/v1/messages/batches/$id" >"$WORK/b.json"
    if python3 -c 'import json,sys; sys.exit(0 if json.load(open(sys.argv[1]))["processing_status"] == "ended" else 1)' "$WORK/b.json"; then
      break
    fi
    sleep 0.1
  done
  python3 - "$WORK/b.json" "$N" <<'EOF'
import json, sys
from datetime import datetime
b = json.load(open(sys.argv[1]))
n = int(sys.argv[2])
assert b["request_counts"]["succeeded"] == n, b["request_counts"]
secs = (datetime.fromisoformat(b["ended_at"].replace("Z", "+00:00")) - datetime.fromisoformat(b["created_at"].replace("Z", "+00:00"))).total_seconds()
print(f"{secs:.3f}")
EOF
}

run_single() {
  local t0 t1 codes
  t0=$(date +%s.%N)
  codes=$(curl -s --no-progress-meter --parallel --parallel-max "$WORKERS" -K "$WORK/single.curl" | sort | uniq -c | tr -s ' ')
  t1=$(date +%s.%N)
  [[ "$codes" == " $N 200" ]] || { echo "individual requests: not all 200: $codes" >&2; exit 1; }
  python3 -c "print(f'{$t1 - $t0:.3f}')"
}

BATCH_S=(); SINGLE_S=()
for r in $(seq 1 "$ROUNDS"); do
  b=$(run_batch); BATCH_S+=("$b"); echo "round $r: batch of $N ended in ${b}s"
  s=$(run_single); SINGLE_S+=("$s"); echo "round $r: $N individual requests in ${s}s"
done
RSS=$(awk '/VmHWM/ {print $2}' "/proc/$(cat "$WORK/gateway.pid")/status")
ITEMS=$(python3 - "$WORK/store/rampart.db" <<'EOF'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
print(db.execute("SELECT COUNT(*), COUNT(DISTINCT request_id) FROM usage_records WHERE request_id LIKE 'req_batch_%'").fetchone())
EOF
)

python3 - "$N" "$WORKERS" "$OUT/batches.md" "$RSS" "$ITEMS" "${BATCH_S[*]}" "${SINGLE_S[*]}" "${BATCH_KEY_FLAGS:-}" <<'EOF'
import statistics, sys, datetime
n, workers, out, rss, items = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
flags = sys.argv[8]
batch = [float(x) for x in sys.argv[6].split()]
single = [float(x) for x in sys.argv[7].split()]
rows = ["| round | batch: s | batch: items/s | individual: s | individual: req/s | batch / individual |", "|---|---|---|---|---|---|"]
for i, (b, s) in enumerate(zip(batch, single), 1):
    rows.append(f"| {i} | {b:.2f} | {n / b:,.0f} | {s:.2f} | {n / s:,.0f} | {s / b:.2f} |")
mb, ms = statistics.median(batch), statistics.median(single)
rows.append(f"| median | {mb:.2f} | {n / mb:,.0f} | {ms:.2f} | {n / ms:,.0f} | {ms / mb:.2f} |")
text = "\n".join([
    f"Local batch throughput ({datetime.date.today()}): {n:,} items, {workers} in flight, zero-latency simulator, "
    f"SQLite store with the usage ledger on, release build, everything on one machine"
    + (f"; the key made with `{flags}`." if flags else "; a key without limits."),
    "",
    *rows,
    "",
    f"Gateway peak RSS: {rss / 1024:.1f} MiB. Usage records of batch items (count, distinct request ids): {items}.",
])
open(out, "w").write(text + "\n")
print(text)
EOF
