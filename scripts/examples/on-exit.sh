#!/usr/bin/env bash
# on-exit.sh: reacts to every container exit of a pidvisor supervisor.
#
# An example of a shell subscriber that talks to the supervisor through its
# FIFOs only (no pidvisor CLI): bash and jq. See `on-exit.sh -h`.
#
# How the FIFOs are used, and why:
#   1. mkfifo the subscriber FIFO and open it read-write (fd 3): an O_RDWR
#      open of a FIFO never blocks on Linux (fifo(7)), so the read end exists
#      before the supervisor opens its write end (it refuses a FIFO that
#      nobody reads).
#   2. Send `subscribe` with a `reply` FIFO and wait for the one reply line.
#      The supervisor opens the subscriber FIFO before it replies, so once
#      the reply is in, the supervisor is a writer of the FIFO.
#   3. Open the FIFO again read-only (fd 4; it does not block, writers exist)
#      and close fd 3. Now the supervisor is the only writer: when it exits,
#      or drops us, `read` on fd 4 sees end-of-file. Had we kept fd 3, we
#      would be a writer of our own FIFO and never see end-of-file.
set -u

prog=${0##*/}

usage() {
  cat <<EOF
Usage: $prog [--root DIR] [--] [HOOK [ARG...]]

Subscribes to the "stopped" events of the pidvisor supervisor on DIR and,
for each container exit, prints one line on stdout:

  job1 exited with status 3
  job2 killed by SIGKILL (status 137)
  job3 failed to start: <error> (status 127)

With HOOK, also runs HOOK [ARG...] once per exit (one at a time, in event
order), with stdin from /dev/null and these variables in its environment:

  PIDVISOR_ID PIDVISOR_INSTANCE PIDVISOR_PID PIDVISOR_STATUS
  PIDVISOR_EXIT_CODE PIDVISOR_SIGNAL PIDVISOR_CORE_DUMPED PIDVISOR_ERROR
  PIDVISOR_SEQ PIDVISOR_TIME PIDVISOR_ROOT
  PIDVISOR_EVENT    the event's JSON line

(PIDVISOR_EXIT_CODE is empty when a signal killed the process,
PIDVISOR_SIGNAL empty when it exited, PIDVISOR_ERROR empty unless it
failed to exec.) A failing hook is reported on stderr and does not stop
$prog.

Only exits after the subscription count: start $prog first. Once it is
subscribed it says "$prog: subscribed" on stderr.

$prog runs until the supervisor exits (end-of-file on the FIFO): it then
exits 0. It exits 1 if the subscription fails or it fell too far behind
(an "overflow" line: resume with a subscription with "since"), 2 on a usage
error.

Options:
  --root DIR   the supervisor's root; default \$PIDVISOR_ROOT, else
               \$XDG_RUNTIME_DIR/pidvisor, else /run/pidvisor (root) or
               /tmp/pidvisor-\$UID
  -h, --help   this text
EOF
}

die() {
  printf '%s: %s\n' "$prog" "$*" >&2
  exit 1
}

usage_error() {
  printf '%s: %s\n' "$prog" "$*" >&2
  printf "Try '%s -h'.\n" "$prog" >&2
  exit 2
}

root=
while [ $# -gt 0 ]; do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --root) [ $# -ge 2 ] || usage_error "--root needs a directory"; root=$2; shift 2 ;;
    --root=*) root=${1#--root=}; shift ;;
    --) shift; break ;;
    -*) usage_error "unknown option: $1" ;;
    *) break ;;
  esac
done
# What is left ("$@") is the hook.

# shellcheck source=subscribe.sh
. "$(dirname "$0")/subscribe.sh"
# shellcheck disable=SC2317 # called from subscribe.sh
fail() { die "$@"; }
pv_find_root "$root"
pv_subscribe '{types: ["stopped"]}'
printf '%s: subscribed\n' "$prog" >&2

# One jq per event: its fields, joined by the unit separator (not a
# whitespace character, so that empty fields are kept by `read`).
us=$'\037'
fields='[.type, .id, .instance, .pid, .status, .exit_code, .signal,
         .core_dumped, .error, .seq, .time, .next]
        | map(if . == null then "" else tostring end) | join("\u001f")'

while IFS= read -r event <&4; do
  IFS=$us read -r type id instance pid status exit_code signal core error seq time next \
    < <(jq -r "$fields" <<<"$event" 2>/dev/null) || true
  case ${type:-} in
    stopped) ;;
    overflow)
      die "fell too far behind the supervisor: events from seq ${next:-?} on were lost (resubscribe with \"since\")"
      ;;
    *)
      printf '%s: ignoring an unexpected line: %s\n' "$prog" "$event" >&2
      continue
      ;;
  esac

  suffix=
  [ "$core" = true ] && suffix=" (core dumped)"
  if [ -n "$error" ]; then
    printf '%s failed to start: %s (status %s)\n' "$id" "$error" "$status"
  elif [ -n "$signal" ]; then
    printf '%s killed by %s (status %s)%s\n' "$id" "$signal" "$status" "$suffix"
  else
    printf '%s exited with status %s%s\n' "$id" "$status" "$suffix"
  fi

  if [ $# -gt 0 ]; then
    PIDVISOR_ID=$id PIDVISOR_INSTANCE=$instance PIDVISOR_PID=$pid \
      PIDVISOR_STATUS=$status PIDVISOR_EXIT_CODE=$exit_code \
      PIDVISOR_SIGNAL=$signal PIDVISOR_CORE_DUMPED=$core \
      PIDVISOR_ERROR=$error PIDVISOR_SEQ=$seq PIDVISOR_TIME=$time \
      PIDVISOR_ROOT=$root PIDVISOR_EVENT=$event \
      "$@" </dev/null 4<&-
    hook_status=$?
    [ "$hook_status" = 0 ] || printf '%s: hook %s failed with status %s for %s\n' \
      "$prog" "$1" "$hook_status" "$id" >&2
  fi
done

# End-of-file: the supervisor exited (or dropped this subscriber).
exit 0
