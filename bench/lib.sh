# Shared by the bench scripts (sourced; needs $WORK).

# start NAME CMD... ; runs CMD in the background (its pid in $WORK/NAME.pid), waits up to 20 s for
# "listening on http://ADDR" on its stdout and echoes ADDR. start() runs in a command
# substitution (a subshell), so children are tracked through the pid files.
start() {
  local name=$1; shift
  "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" &
  echo $! >"$WORK/$name.pid"
  for _ in $(seq 1 400); do
    if grep -q "^listening on http://" "$WORK/$name.out" 2>/dev/null; then
      grep -m1 "^listening on http://" "$WORK/$name.out" | sed 's#listening on http://##'
      return 0
    fi
    sleep 0.05
  done
  echo "$name did not start" >&2; cat "$WORK/$name.err" >&2; exit 1
}

# start_redis: a throwaway redis-server on a free port (no persistence, pid in $WORK/redis.pid,
# data and log under $WORK/redis); echoes the port once it answers PING.
start_redis() {
  local port
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  mkdir -p "$WORK/redis"
  redis-server --bind 127.0.0.1 --port "$port" --dir "$WORK/redis" --save '' --appendonly no \
    --daemonize yes --pidfile "$WORK/redis.pid" --logfile "$WORK/redis/log"
  for _ in $(seq 1 50); do redis-cli -p "$port" ping 2>/dev/null | grep -q PONG && break; sleep 0.1; done
  echo "$port"
}

# bench_bodies DIR: the benchmark's request bodies, DIR/json.json and DIR/sse.json (streamed).
bench_bodies() {
  cat >"$1/json.json" <<'J'
{"model":"claude-sonnet-4-6","max_tokens":64,"messages":[{"role":"user","content":"Summarise the benefits of a gateway in front of an LLM API in one paragraph."}]}
J
  cat >"$1/sse.json" <<'J'
{"model":"claude-sonnet-4-6","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"Summarise the benefits of a gateway in front of an LLM API in one paragraph."}]}
J
}
