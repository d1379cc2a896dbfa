#!/usr/bin/env bash
# Rampart's one test command: builds the workspace, runs the Rust tests, then the conformance suites
# (official Python SDK, official TypeScript SDK, Claude Code) against the real `rampart` binary.
#
#   ./scripts/test.sh                 # everything (what CI runs)
#   ./scripts/test.sh python node     # only some stages, in the order given
#
# Stages: deps build cargo python node claude  (deps = python venv + npm packages)
#
# Environment:
#   RAMPART_SKIP_BUILD=1      skip `cargo build` (use the binary already in target/)
#   RAMPART_SKIP_CARGO_TEST=1 skip `cargo test`
#   RAMPART_BIN=PATH          binary under test (default: <target dir>/debug/rampart)
#   PYTEST_ARGS="..."         extra arguments for pytest (e.g. "-k batches -x")
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
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$(sha "$req")" ]] && "$VENV/bin/python" -c 'import anthropic, pytest' 2>/dev/null; then
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
# Backing services the suites need (none yet). Postgres/Redis go here: start them, export their
# URLs for the tests, and stop them in stop_services, which runs on every exit.

start_services() {
  :
}

stop_services() {
  :
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
    python) setup_python; build_rust_if_missing; test_python ;;
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
  trap stop_services EXIT
  start_services
  if [[ $# -eq 0 ]]; then
    setup_python
    setup_node
    build_rust
    BUILT=1
    test_rust
    test_python
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
