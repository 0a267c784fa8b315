#!/usr/bin/env bash
# wait-all.sh: waits until every named pidvisor container has stopped and
# reports which failed.
#
# An example of a shell subscriber that talks to the supervisor through its
# FIFOs only (no pidvisor CLI): bash and jq. See `wait-all.sh -h`.
#
# It relies on subscribe-then-check: a subscription with "ids" first replays
# the retained events of those containers, so a container that stopped
# before the subscription is reported as well as one that stops later, and
# no exit can fall between a check and a subscription.
#
# The FIFO handling is in subscribe.sh, shared with on-exit.sh.
set -u

prog=${0##*/}

usage() {
  cat <<EOF
Usage: $prog [--root DIR] [--] ID...

Waits until each container ID of the pidvisor supervisor on DIR has stopped
(including those that stopped before $prog started), then prints one line
per ID, in the order given:

  ok   job1
  FAIL job2 status 3
  FAIL job3 status 137 (killed by SIGKILL)
  FAIL job4 status 127 (failed to start: <error>)
  FAIL job5 unknown: no such container

An ID the supervisor does not know when $prog subscribes counts as failed at
once (it is not waited for).

Exit status: 0 when every ID stopped with status 0; 1 when any failed or is
unknown; 2 on a usage error; 125 when it could not find out: no supervisor,
the subscription failed, or the supervisor exited before every ID stopped
(those are then listed as "LOST").

Options:
  --root DIR   the supervisor's root; default \$PIDVISOR_ROOT, else
               \$XDG_RUNTIME_DIR/pidvisor, else /run/pidvisor (root) or
               /tmp/pidvisor-\$UID
  -h, --help   this text
EOF
}

fatal() {
  printf '%s: %s\n' "$prog" "$*" >&2
  exit 125
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
[ $# -gt 0 ] || usage_error "no container ID given"

# The IDs, in order, each once.
ids=()
declare -A wanted=()
for id in "$@"; do
  [[ $id =~ ^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$ ]] || usage_error "not a valid container ID: '$id'"
  if [ -z "${wanted[$id]:-}" ]; then
    wanted[$id]=1
    ids+=("$id")
  fi
done

# shellcheck source=subscribe.sh
. "$(dirname "$0")/subscribe.sh"
# shellcheck disable=SC2317 # called from subscribe.sh
fail() { fatal "$@"; }
pv_find_root "$root"
# shellcheck disable=SC2016 # a jq program, not shell
pv_subscribe '{ids: $ARGS.positional, types: ["stopped"]}' "${ids[@]}"

# result[ID]: "ok", or the text after "FAIL ".
declare -A result=()
failed=0
while IFS= read -r id; do
  [ -n "$id" ] || continue
  result[$id]="unknown: no such container"
  failed=1
done < <(jq -r '.unknown[]?' <<<"$answer")

pending=0
for id in "${ids[@]}"; do
  [ -n "${result[$id]:-}" ] || pending=$((pending + 1))
done

us=$'\037'
fields='[.type, .id, .status, .signal, .core_dumped, .error, .next]
        | map(if . == null then "" else tostring end) | join("\u001f")'
lost=
while [ "$pending" -gt 0 ]; do
  if ! IFS= read -r event <&4; then
    lost="the supervisor exited before every container stopped"
    break
  fi
  IFS=$us read -r type id status signal core error next \
    < <(jq -r "$fields" <<<"$event" 2>/dev/null) || true
  if [ "${type:-}" = overflow ]; then
    lost="fell too far behind the supervisor (events from seq ${next:-?} on were lost)"
    break
  fi
  [ "${type:-}" = stopped ] || continue
  # The first stop of each ID counts; other IDs cannot come (but be sure).
  if [ -z "${wanted[$id]:-}" ] || [ -n "${result[$id]:-}" ]; then
    continue
  fi
  pending=$((pending - 1))
  if [ "$status" = 0 ]; then
    result[$id]=ok
    continue
  fi
  failed=1
  if [ -n "$error" ]; then
    result[$id]="status $status (failed to start: $error)"
  elif [ -n "$signal" ]; then
    if [ "$core" = true ]; then
      result[$id]="status $status (killed by $signal, core dumped)"
    else
      result[$id]="status $status (killed by $signal)"
    fi
  else
    result[$id]="status $status"
  fi
done
exec 4<&-

for id in "${ids[@]}"; do
  case ${result[$id]:-} in
    ok) printf 'ok   %s\n' "$id" ;;
    '') printf 'LOST %s (had not stopped)\n' "$id" ;;
    *) printf 'FAIL %s %s\n' "$id" "${result[$id]}" ;;
  esac
done

if [ -n "$lost" ]; then
  printf '%s: %s\n' "$prog" "$lost" >&2
  exit 125
fi
exit "$failed"
