#!/usr/bin/env bash
# Counts the user-space instructions s3replicad executes per W1 object
# (64 KiB, plain HTTP), under valgrind's cachegrind: unlike CPU time on a
# shared machine, which moves 20% between runs of the same build, the count
# moves a few percent, so a 10% change shows in one run of each build.
#
#   scripts/instructions-per-object.sh [BINARY...]   (default: bin/s3replicad)
#
# Each build drains 200 and then 600 objects (make bench's servers, one round
# each); the difference over the 400 extra objects leaves start-up out.
# Kernel time (system calls, the state file's fdatasyncs) is not counted:
# make bench reports system calls, state commits and pages per object.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "instructions-per-object: valgrind is required" >&2; exit 1; }
[ $# -gt 0 ] || set -- bin/s3replicad
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

count() { # binary objects -> instructions of the measured round
  local bin=$1 n=$2 wrap="$work/wrap"
  rm -f "$work"/cg.*
  cat >"$wrap" <<EOF
#!/bin/sh
exec valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file=$work/cg.\$\$ "$bin" "\$@"
EOF
  chmod +x "$wrap"
  go run ./internal/bench -plain -workloads w1 -w1-count "$n" -memcheck-size 0 -no-rclone -rounds 1 -bin "$wrap" >"$work/bench.log" 2>&1 ||
    { cat "$work/bench.log" >&2; exit 1; }
  # The warm-up and the round each drain n objects; the larger count is the
  # round or the warm-up, whichever paid for more (first connections).
  local most=0 f v
  for f in "$work"/cg.*; do
    v=$(awk '/^summary:/ {print $2}' "$f")
    [ "${v:-0}" -gt "$most" ] && most=$v
  done
  echo "$most"
}

for bin in "$@"; do
  bin=$(realpath "$bin")
  small=$(count "$bin" 200)
  large=$(count "$bin" 600)
  echo "$bin: $(( (large - small) / 400 )) instructions per object (200 objects: $small, 600: $large)"
done
