#!/usr/bin/env bash
# Run a command inside a fresh cgroup v1 memory cgroup with a hard limit, then report what it used.
#
#   scripts/llamacpp/run_in_cgroup.sh LIMIT -- CMD [ARGS...]
#
# LIMIT is bytes or a number with K, M or G (binary: 3400M = 3400 * 2^20 bytes).
# The limit is written to memory.limit_in_bytes (and memory.memsw.limit_in_bytes when present, so
# swap cannot extend it). In cgroup v1 the page cache a process brings in - including the pages of
# an mmapped model file - is charged to its cgroup: under a limit smaller than the model, llama.cpp
# with mmap must drop pages and read them from disk again.
#
# At exit, on stderr (stdout stays the command's): limit, memory.max_usage_in_bytes,
# memory.failcnt, the OOM killer's count from memory.oom_control; with CGROUP_REPORT=FILE also as
# JSON in FILE. The cgroup is removed afterwards. Exit status is the command's.
# Needs a writable /sys/fs/cgroup/memory (root; true on the project's machines). CGROUP_ROOT overrides.
set -euo pipefail

if [ $# -lt 3 ] || [ "$2" != "--" ]; then
    echo "usage: $0 LIMIT -- CMD [ARGS...]" >&2
    exit 2
fi
LIMIT_ARG="$1"
shift 2

to_bytes() {
    local v="$1" n u
    n="${v%[KkMmGg]}"
    u="${v:${#n}}"
    case "$u" in
        "") echo "$n" ;;
        K|k) echo $(( n * 1024 )) ;;
        M|m) echo $(( n * 1024 * 1024 )) ;;
        G|g) echo $(( n * 1024 * 1024 * 1024 )) ;;
    esac
}
LIMIT="$(to_bytes "$LIMIT_ARG")"
if ! [[ "$LIMIT" =~ ^[0-9]+$ ]]; then
    echo "bad LIMIT: $LIMIT_ARG" >&2
    exit 2
fi

ROOT="${CGROUP_ROOT:-/sys/fs/cgroup/memory}"
if [ ! -w "$ROOT" ]; then
    echo "$ROOT is not a writable cgroup v1 memory hierarchy" >&2
    exit 2
fi
GROUP="$ROOT/moe-serve-llamacpp-$$"
mkdir "$GROUP"

cleanup() {
    # Move whatever is left back to the parent's accounting, then remove the group.
    if [ -d "$GROUP" ]; then
        echo 0 > "$GROUP/memory.force_empty" 2>/dev/null || true
        rmdir "$GROUP" 2>/dev/null || echo "warning: could not remove $GROUP" >&2
    fi
}
trap cleanup EXIT

echo "$LIMIT" > "$GROUP/memory.limit_in_bytes"
if [ -e "$GROUP/memory.memsw.limit_in_bytes" ]; then
    echo "$LIMIT" > "$GROUP/memory.memsw.limit_in_bytes"
fi

set +e
# The child enters the cgroup, then becomes CMD; this script stays outside to report and clean up.
bash -c 'echo $$ > "$0/cgroup.procs" && exec "$@"' "$GROUP" "$@"
STATUS=$?
set -e

MAX_USAGE="$(cat "$GROUP/memory.max_usage_in_bytes")"
FAILCNT="$(cat "$GROUP/memory.failcnt")"
MEMSW_MAX="$(cat "$GROUP/memory.memsw.max_usage_in_bytes" 2>/dev/null || echo null)"
MEMSW_FAILCNT="$(cat "$GROUP/memory.memsw.failcnt" 2>/dev/null || echo null)"
OOM_KILL="$(awk '$1 == "oom_kill" {print $2}' "$GROUP/memory.oom_control")"
OOM_KILL="${OOM_KILL:-0}"
UNDER_OOM="$(awk '$1 == "under_oom" {print $2}' "$GROUP/memory.oom_control")"

{
    echo "cgroup: limit $LIMIT bytes ($LIMIT_ARG) | max usage $MAX_USAGE bytes ($(( MAX_USAGE / 1048576 )) MiB, page cache included) | failcnt $FAILCNT (memsw $MEMSW_FAILCNT) | oom_kill $OOM_KILL | exit status $STATUS"
} >&2
if [ -n "${CGROUP_REPORT:-}" ]; then
    printf '{"limit_bytes": %s, "max_usage_bytes": %s, "memsw_max_usage_bytes": %s, "failcnt": %s, "memsw_failcnt": %s, "oom_kill": %s, "under_oom": %s, "exit_status": %s}\n' \
        "$LIMIT" "$MAX_USAGE" "$MEMSW_MAX" "$FAILCNT" "$MEMSW_FAILCNT" "$OOM_KILL" "${UNDER_OOM:-0}" "$STATUS" > "$CGROUP_REPORT"
fi
exit "$STATUS"
