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
