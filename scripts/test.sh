#!/usr/bin/env bash
# Rampart's one test command: builds the workspace, runs the Rust tests, then the conformance suites
# (official Python SDK, official TypeScript SDK, Claude Code) against the real `rampart` binary.
#
#   ./scripts/test.sh                 # everything (what CI runs)
#   ./scripts/test.sh python node     # only some stages, in the order given
#
# Stages: deps build cargo python node claude  (deps = python venv + npm packages; python = pytest,
# then schemathesis against the admin API's OpenAPI document)
#
# Environment:
#   RAMPART_SKIP_BUILD=1      skip `cargo build` (use the binary already in target/)
#   RAMPART_SKIP_CARGO_TEST=1 skip `cargo test`
#   RAMPART_BIN=PATH          binary under test (default: <target dir>/debug/rampart)
#   PYTEST_ARGS="..."         extra arguments for pytest (e.g. "-k batches -x")
#   ST_MAX_EXAMPLES=N         schemathesis examples per operation (default 50; see tests/schemathesis/run.py)
#
# Every stage prints its runner's own summary; the script exits non-zero on the first failure.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

CONFORMANCE="$ROOT/tests/conformance"
PY_DIR="$CONFORMANCE/python"
NODE_DIR="$CONFORMANCE/node"
VENV="$ROOT/.venv"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
export RAMPART_BIN="${RAMPART_BIN:-$TARGET_DIR/debug/rampart}"
# Keep the developer's own Anthropic settings out of the tests: every test passes its own.
unset ANTHROPIC_BASE_URL ANTHROPIC_API_KEY ANTHROPIC_AUTH_TOKEN ANTHROPIC_CUSTOM_HEADERS ANTHROPIC_PROFILE \
  ANTHROPIC_CONFIG_DIR ANTHROPIC_LOG 2>/dev/null || true

START_TS=$(date +%s)

banner() {
  local now
  now=$(date +%s)
  printf '\n==================== %s  (+%ss) ====================\n' "$*" "$((now - START_TS))"
}

die() {
  printf 'test.sh: %s\n' "$*" >&2
  exit 1
}

sha() { sha256sum "$@" | sha256sum | cut -c1-64; }

# --- dependencies -------------------------------------------------------------------------------

setup_python() {
  banner "python: venv + pinned requirements"
  local req="$PY_DIR/requirements.txt" stamp="$VENV/.rampart-requirements.sha256"
  if [[ ! -x "$VENV/bin/python" ]]; then
    python3 -m venv "$VENV" || die "python3 -m venv failed (on Debian: apt-get install python3-venv)"
  fi
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$(sha "$req")" ]] && "$VENV/bin/python" -c 'import anthropic, pytest, jwt, schemathesis' 2>/dev/null; then
    echo "reusing $VENV (requirements unchanged)"
  else
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
    sha "$req" >"$stamp"
  fi
  "$VENV/bin/python" -c 'import anthropic, pytest; print("anthropic", anthropic.__version__, "| pytest", pytest.__version__)'
}

setup_node() {
  banner "node: npm ci"
  command -v node >/dev/null || die "node is not installed"
  local stamp="$NODE_DIR/node_modules/.rampart-lock.sha256"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$(sha "$NODE_DIR/package-lock.json" "$NODE_DIR/package.json")" ]]; then
    echo "reusing $NODE_DIR/node_modules (lockfile unchanged)"
  else
    (cd "$NODE_DIR" && npm ci --no-audit --no-fund --loglevel=error)
    sha "$NODE_DIR/package-lock.json" "$NODE_DIR/package.json" >"$stamp"
  fi
  echo "node $(node --version) | claude $("$NODE_DIR/node_modules/.bin/claude" --version)"
}

# --- services -----------------------------------------------------------------------------------
# Backing services the suites need, started before the first stage and stopped by stop_services,
# which runs on every exit (Redis: see start_redis). PostgreSQL: a throwaway cluster (the machine's PostgreSQL 15) under a
# temp dir on a free port, fsync off; the store's PostgreSQL tests read RAMPART_TEST_DATABASE_URL.
# A RAMPART_TEST_DATABASE_URL already in the environment is used as it is.

PG_DIR=""
PG_BIN=""

# Run a PostgreSQL binary: as the `postgres` OS user when we are root (the server refuses root).
as_pg() {
  if [[ "$(id -u)" == 0 ]]; then
    local runuser
    runuser="$(command -v runuser || echo /usr/sbin/runuser)"
    (cd "$PG_DIR" && "$runuser" -u postgres -- "$@")
  else
    (cd "$PG_DIR" && "$@")
  fi
}

find_pg_bin() {
  local dir
  for dir in "$(dirname "$(command -v pg_ctl 2>/dev/null || echo /nonexistent/pg_ctl)")" /usr/lib/postgresql/15/bin; do
    if [[ -x "$dir/initdb" && -x "$dir/pg_ctl" ]]; then
      PG_BIN="$dir"
      return 0
    fi
  done
  return 1
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start_postgres() {
  if [[ -n "${RAMPART_TEST_DATABASE_URL:-}" ]]; then
    banner "postgres: using the RAMPART_TEST_DATABASE_URL from the environment"
    return
  fi
  banner "postgres: throwaway PostgreSQL 15 cluster"
  if ! find_pg_bin; then
    echo "initdb/pg_ctl not found: installing Debian's postgresql-15"
    [[ "$(id -u)" == 0 ]] || die "PostgreSQL 15 is not installed and we are not root (apt-get install postgresql-15)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 >/dev/null \
      || die "apt-get install postgresql-15 failed"
    find_pg_bin || die "postgresql-15 installed but initdb/pg_ctl are still missing"
  fi
  if [[ "$(id -u)" == 0 ]] && ! id postgres >/dev/null 2>&1; then
    useradd --system --no-create-home --shell /usr/sbin/nologin postgres || die "cannot create the postgres user"
  fi
  # Under /tmp when root: the postgres user must be able to reach the directory.
  local tmp="${TMPDIR:-/tmp}"
  if [[ "$(id -u)" == 0 ]]; then tmp=/tmp; fi
  PG_DIR="$(mktemp -d "$tmp/rampart-pg.XXXXXX")"
  chmod 0755 "$PG_DIR"
  if [[ "$(id -u)" == 0 ]]; then chown postgres: "$PG_DIR"; fi
  as_pg "$PG_BIN/initdb" -D "$PG_DIR/data" -U postgres --auth=trust -E UTF8 --no-locale --no-sync >"$PG_DIR/initdb.log" 2>&1 \
    || { cat "$PG_DIR/initdb.log" >&2; die "initdb failed"; }
  # A free port picked now can be taken before the server binds it: try a few.
  local port attempt
  for attempt in 1 2 3; do
    port="$(free_port)"
    if as_pg "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w -t 60 \
      -o "-c listen_addresses=127.0.0.1 -p $port -k $PG_DIR -c fsync=off -c full_page_writes=off -c synchronous_commit=off -c max_connections=200 -c log_statement=ddl" \
      start >/dev/null; then
      break
    fi
    if [[ "$attempt" == 3 ]]; then
      cat "$PG_DIR/server.log" >&2 || true
      die "PostgreSQL did not start"
    fi
    echo "PostgreSQL did not start on port $port; trying another"
  done
  export RAMPART_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
  export RAMPART_TEST_PG_BIN="$PG_BIN"
  echo "PostgreSQL $("$PG_BIN/pg_ctl" --version | awk '{print $3}') ready at $RAMPART_TEST_DATABASE_URL (data in $PG_DIR)"
}

stop_postgres() {
  [[ -n "$PG_DIR" ]] || return 0
  banner "postgres: stop and remove $PG_DIR"
  # Evidence that the PostgreSQL tests ran rather than skipped: each makes its own database.
  if [[ -f "$PG_DIR/server.log" ]]; then
    echo "PostgreSQL served $(grep -c 'CREATE DATABASE rampart_test_' "$PG_DIR/server.log" || true) throwaway test databases"
  fi
  as_pg "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m immediate -w stop >/dev/null 2>&1 || true
  rm -rf "$PG_DIR"
  PG_DIR=""
}

# Redis: a throwaway redis-server (Debian's `redis-server`, installed when missing) under a temp
# dir on a free port, no persistence; the limits suites read RAMPART_TEST_REDIS_URL. A
# RAMPART_TEST_REDIS_URL already in the environment is used as it is.
REDIS_DIR=""

start_redis() {
  if [[ -n "${RAMPART_TEST_REDIS_URL:-}" ]]; then
    banner "redis: using the RAMPART_TEST_REDIS_URL from the environment"
    return
  fi
  banner "redis: throwaway redis-server"
  if ! command -v redis-server >/dev/null; then
    echo "redis-server not found: installing Debian's redis-server"
    [[ "$(id -u)" == 0 ]] || die "redis-server is not installed and we are not root (apt-get install redis-server)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null \
      || die "apt-get install redis-server failed"
    command -v redis-server >/dev/null || die "redis-server installed but not on PATH"
  fi
  REDIS_DIR="$(mktemp -d "${TMPDIR:-/tmp}/rampart-redis.XXXXXX")"
  local port attempt
  for attempt in 1 2 3; do
    port="$(free_port)"
    if redis-server --bind 127.0.0.1 --port "$port" --dir "$REDIS_DIR" --save '' --appendonly no \
      --daemonize yes --pidfile "$REDIS_DIR/redis.pid" --logfile "$REDIS_DIR/redis.log" \
      && for _ in $(seq 50); do
        redis-cli -p "$port" ping 2>/dev/null | grep -q PONG && break
        sleep 0.1
      done && redis-cli -p "$port" ping 2>/dev/null | grep -q PONG; then
      break
    fi
    if [[ "$attempt" == 3 ]]; then
      cat "$REDIS_DIR/redis.log" >&2 || true
      die "redis-server did not start"
    fi
    echo "redis-server did not start on port $port; trying another"
  done
  export RAMPART_TEST_REDIS_URL="redis://127.0.0.1:$port"
  echo "$(redis-server --version | awk '{print $3}') ready at $RAMPART_TEST_REDIS_URL (data in $REDIS_DIR)"
}

stop_redis() {
  [[ -n "$REDIS_DIR" ]] || return 0
  banner "redis: stop and remove $REDIS_DIR"
  if [[ -f "$REDIS_DIR/redis.pid" ]]; then
    # Evidence that the Redis suites ran rather than skipped.
    echo "redis-server ran $(redis-cli -u "$RAMPART_TEST_REDIS_URL" info stats 2>/dev/null | grep -E '^total_commands_processed' | cut -d: -f2 | tr -d '\r') commands"
    kill "$(cat "$REDIS_DIR/redis.pid")" 2>/dev/null || true
  fi
  rm -rf "$REDIS_DIR"
  REDIS_DIR=""
}

# libfaketime (Debian's `faketime`, installed when missing): the suites that step the wall clock
# under a running gateway (a clock corrected after start) preload it; they read
# RAMPART_TEST_LIBFAKETIME. One already in the environment is used as it is.
find_libfaketime() {
  if [[ -n "${RAMPART_TEST_LIBFAKETIME:-}" ]]; then
    banner "libfaketime: using the RAMPART_TEST_LIBFAKETIME from the environment"
    return
  fi
  banner "libfaketime"
  local lib
  lib="$(find /usr/lib -name 'libfaketimeMT.so.1' 2>/dev/null | head -n 1)"
  if [[ -z "$lib" ]]; then
    echo "libfaketime not found: installing Debian's faketime"
    [[ "$(id -u)" == 0 ]] || die "libfaketime is not installed and we are not root (apt-get install faketime)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq faketime >/dev/null \
      || die "apt-get install faketime failed"
    lib="$(find /usr/lib -name 'libfaketimeMT.so.1' 2>/dev/null | head -n 1)"
    [[ -n "$lib" ]] || die "faketime installed but libfaketimeMT.so.1 not found under /usr/lib"
  fi
  export RAMPART_TEST_LIBFAKETIME="$lib"
  echo "$lib"
}

start_services() {
  start_postgres
  start_redis
  find_libfaketime
}

stop_services() {
  stop_redis
  stop_postgres
}

# --- Rust ---------------------------------------------------------------------------------------

build_rust() {
  if [[ "${RAMPART_SKIP_BUILD:-}" == 1 ]]; then
    banner "cargo build (skipped: RAMPART_SKIP_BUILD=1)"
  else
    banner "cargo build --locked --bins"
    cargo build --locked --bins
  fi
  [[ -x "$RAMPART_BIN" ]] || die "no rampart binary at $RAMPART_BIN"
}

test_rust() {
  if [[ "${RAMPART_SKIP_CARGO_TEST:-}" == 1 ]]; then
    banner "cargo test (skipped: RAMPART_SKIP_CARGO_TEST=1)"
    return
  fi
  banner "cargo test --workspace --locked"
  cargo test --workspace --locked
}

# --- conformance suites -------------------------------------------------------------------------

test_schemathesis() {
  banner "schemathesis: the admin API against its own OpenAPI document"
  local rc=0
  timeout --kill-after=30 600 "$VENV/bin/python" "$ROOT/tests/schemathesis/run.py" || rc=$?
  case "$rc" in
    0) ;;
    124) die "schemathesis timed out" ;;
    *) die "schemathesis failed (exit $rc)" ;;
  esac
}

test_python() {
  banner "pytest: official Python SDK against rampart ($RAMPART_BIN)"
  local rc=0
  # shellcheck disable=SC2086 # PYTEST_ARGS is a list of words on purpose
  (cd "$PY_DIR" && timeout --kill-after=30 900 "$VENV/bin/python" -m pytest -p no:cacheprovider -rfEs ${PYTEST_ARGS:-}) || rc=$?
  case "$rc" in
    0) ;;
    5) die "pytest collected no tests (exit 5)" ;;
    124) die "pytest timed out" ;;
    *) die "pytest failed (exit $rc)" ;;
  esac
  # The admin suites once more with every server on a fresh PostgreSQL database (the SDK and
  # gateway suites above are engine-independent; the admin plane is where SQL differs).
  if [[ -z "${PYTEST_ARGS:-}" ]]; then
    banner "pytest: admin suites on PostgreSQL"
    (cd "$PY_DIR" && RAMPART_ADMIN_TEST_ENGINE=postgres timeout --kill-after=30 900 \
      "$VENV/bin/python" -m pytest -p no:cacheprovider -q -rfEs test_admin_*.py) || rc=$?
    [[ "$rc" == 0 ]] || die "pytest (admin suites on PostgreSQL) failed (exit $rc)"
  fi
}

node_test() {
  # node --test on the files matching a glob relative to $NODE_DIR (node 20 does not expand globs
  # itself); prints the runner's own summary (tests/pass/fail).
  local pattern="$1" rc=0 files
  files=$(cd "$NODE_DIR" && compgen -G "$pattern" || true)
  [[ -n "$files" ]] || die "no node test files match $NODE_DIR/$pattern"
  local tap
  tap=$(mktemp)
  # Readable spec output on the terminal, TAP in a file for the canonical summary lines.
  # shellcheck disable=SC2086 # one file per word
  (cd "$NODE_DIR" && timeout --kill-after=30 900 node --test --test-concurrency=1 \
    --test-reporter=spec --test-reporter-destination=stdout \
    --test-reporter=tap --test-reporter-destination="$tap" $files) || rc=$?
  echo "--- node --test summary ($pattern) ---"
  grep -E '^# (tests|suites|pass|fail|cancelled|skipped|todo|duration_ms) ' "$tap" || true
  rm -f "$tap"
  case "$rc" in
    0) ;;
    124) die "node --test timed out: $pattern" ;;
    *) die "node --test failed (exit $rc): $pattern" ;;
  esac
}

test_node() {
  banner "node --test: official TypeScript SDK against rampart"
  node_test "test/*.test.mjs"
}

test_claude_code() {
  banner "node --test: Claude Code ($("$NODE_DIR/node_modules/.bin/claude" --version)) through rampart"
  node_test "claude-code/*.test.mjs"
}

# --- main ---------------------------------------------------------------------------------------

run_stage() {
  case "$1" in
    deps) setup_python; setup_node ;;
    build) build_rust ;;
    cargo) test_rust ;;
    python) setup_python; build_rust_if_missing; test_python; test_schemathesis ;;
    node) setup_node; build_rust_if_missing; test_node ;;
    claude) setup_node; build_rust_if_missing; test_claude_code ;;
    *) die "unknown stage '$1' (stages: deps build cargo python node claude)" ;;
  esac
}

BUILT=0
build_rust_if_missing() {
  # When stages are picked by hand, still build once so the suites never test a stale binary.
  if [[ "$BUILT" == 0 ]]; then
    build_rust
    BUILT=1
  fi
}

main() {
  # Every temporary file of the run (the suites' data directories and process logs, Claude
  # Code's homes, the PostgreSQL and Redis directories) goes under one directory, removed at
  # the end: a run leaves nothing behind in the system's temporary directory.
  RUN_TMP="$(mktemp -d "${TMPDIR:-/tmp}/rampart-tests.XXXXXX")"
  export TMPDIR="$RUN_TMP"
  trap 'stop_services; rm -rf "$RUN_TMP"' EXIT
  start_services
  if [[ $# -eq 0 ]]; then
    setup_python
    setup_node
    build_rust
    BUILT=1
    test_rust
    test_python
    test_schemathesis
    test_node
    test_claude_code
  else
    for stage in "$@"; do
      [[ "$stage" == build ]] && BUILT=1
      run_stage "$stage"
    done
  fi
  banner "all stages passed in $(($(date +%s) - START_TS))s"
}

main "$@"
