# shellcheck shell=bash disable=SC2154 # prog and fail come from the caller
# subscribe.sh: the FIFO subscription that on-exit.sh and wait-all.sh share,
# sourced by both (bash and jq). It talks to the supervisor through its FIFOs
# only, as any shell script can.
#
# The caller sets `prog` and defines `fail MESSAGE` (print and exit), then
# calls, in order:
#   pv_find_root ROOT        sets `root` and `ctl`; ROOT may be empty (defaults)
#   pv_subscribe JQ_FIELDS [ARGS...]
#                            subscribes with the fields of the jq object
#                            JQ_FIELDS (jq -n, with ARGS as --args); sets
#                            `answer` to the reply; the events are then read
#                            from fd 4, which sees end-of-file when the
#                            supervisor exits, shuts down or drops us.
#
# How the FIFOs are used: the subscriber FIFO is opened read-write until the
# supervisor has replied (the reply comes after it opened its write end), then
# read through a read-only fd only, so that its exit is seen as end-of-file.
# Opened read-write, ctl never blocks even if the supervisor just died, and a
# request of less than 4096 bytes is written atomically.

pv_find_root() {
  root=$1
  if [ -z "$root" ]; then
    if [ -n "${PIDVISOR_ROOT:-}" ]; then
      root=$PIDVISOR_ROOT
    elif [ -n "${XDG_RUNTIME_DIR:-}" ]; then
      root=$XDG_RUNTIME_DIR/pidvisor
    elif [ "$(id -u)" = 0 ]; then
      root=/run/pidvisor
    else
      root=/tmp/pidvisor-$(id -u)
    fi
  fi
  command -v jq >/dev/null 2>&1 || fail "jq is required (apt-get install jq)"
  # The supervisor wants absolute paths; the root may be given relative.
  root=$(cd "$root" 2>/dev/null && pwd -P) || fail "no such root directory: $root"
  ctl=$root/ctl
  [ -p "$ctl" ] || fail "no supervisor on root $root (no control FIFO $ctl)"
  pv_supervisor_alive || fail "no supervisor runs on root $root"
}

# Whether a supervisor holds the root's lock (it does as long as it runs).
pv_supervisor_alive() {
  if command -v flock >/dev/null 2>&1; then
    ! flock -n -s "$root/lock" true 2>/dev/null
  else
    local pid
    pid=$(head -n1 "$root/lock" 2>/dev/null) && [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
  fi
}

pv_subscribe() {
  local fields=$1
  shift
  pv_tmp=$(mktemp -d "${TMPDIR:-/tmp}/pidvisor-$prog.XXXXXX") || fail "mktemp failed"
  pv_tmp=$(cd "$pv_tmp" && pwd -P)
  trap 'rm -rf "$pv_tmp"' EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  trap 'exit 129' HUP
  local events=$pv_tmp/events reply=$pv_tmp/reply request line rc message
  mkfifo -m 600 "$events" "$reply" || fail "mkfifo failed in $pv_tmp"
  exec 3<>"$events" 5<>"$reply"
  request=$(jq -cn --arg path "$events" --arg reply "$reply" \
    "$fields + {op: \"subscribe\", path: \$path, reply: \$reply}" --args "$@") || fail "cannot build the request"
  [ "${#request}" -lt 4096 ] || fail "the subscribe request is too long (4096 bytes at most)"
  printf '%s\n' "$request" 1<>"$ctl" || fail "cannot write to $ctl"

  # Waits for the reply, checking every second that the supervisor still
  # runs (so that a supervisor that dies now is an error, not a hang).
  answer=
  while :; do
    line=
    IFS= read -r -t 1 line <&5
    rc=$?
    answer+=$line # a timed-out read keeps what it read so far
    [ "$rc" = 0 ] && break
    [ "$rc" -gt 128 ] || fail "cannot read the reply FIFO"
    pv_supervisor_alive || fail "the supervisor exited before it answered"
  done
  exec 5<&-
  if [ "$(jq -r '.ok' <<<"$answer" 2>/dev/null)" != true ]; then
    message=$(jq -r '.error.message // empty' <<<"$answer" 2>/dev/null)
    fail "subscribe failed: ${message:-$answer}"
  fi
  exec 4<"$events" 3<&-
}
