#!/bin/bash
# Runs a command with its reads from one disk throttled to a steady rate, in a fresh cgroup (root; cgroup v1 blkio or
# v2 io.max), removed afterwards. Below the disk's slowest rate the disk then reads at one steady rate, so what a
# setting does to decode time shows through a cloud disk whose own rate swings from run to run (docs/BENCHMARKS.md,
# "Session 26").
# Usage: scripts/run_throttled.sh MB_PER_SECOND PATH -- CMD [ARGS...]   (PATH: a file on the disk to throttle)
set -euo pipefail
if [ $# -lt 4 ] || [ "$3" != "--" ]; then echo "usage: $0 MB_PER_SECOND PATH -- CMD [ARGS...]" >&2; exit 2; fi
MBPS=$1; TARGET=$2; shift 3
# The whole disk under PATH's file system: throttling rules name a disk, not a partition.
source_device=$(findmnt -n -o SOURCE -T "$TARGET")
parent=$(lsblk -no PKNAME "$source_device" 2>/dev/null | head -1)
disk=$source_device; [ -n "$parent" ] && disk=/dev/$parent
device=$(lsblk -ndo MAJ:MIN "$disk" | tr -d ' ')
if [ -d /sys/fs/cgroup/blkio ]; then
  GROUP=/sys/fs/cgroup/blkio/moe-throttle-$$; mkdir -p "$GROUP"
  echo "$device $((MBPS * 1000000))" > "$GROUP/blkio.throttle.read_bps_device"
else
  GROUP=/sys/fs/cgroup/moe-throttle-$$; mkdir -p "$GROUP"
  echo "+io" > /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null || true
  echo "$device rbps=$((MBPS * 1000000))" > "$GROUP/io.max"
fi
trap 'rmdir "$GROUP" 2>/dev/null || true' EXIT
# A child shell joins the group and becomes the command, so the trap above still removes the group.
status=0
sh -c 'echo $$ > "$0/cgroup.procs" && exec "$@"' "$GROUP" "$@" || status=$?
exit $status
