#!/usr/bin/env bash
# GPU sweep call (the same command line as before; the call itself is the plan tools/gpu/plans/sweep.plan):
#   OUT=<folder> bash tools/gpu/sweep.sh .gpu/runs/callA.json [seconds] [extra sweep args...]
set -uo pipefail
RUNS=$1; LIMIT=${2:-480}; shift 2 || shift $#
exec bash "$(dirname "$0")/call.sh" tools/gpu/plans/sweep.plan RUNS="$RUNS" LIMIT="$LIMIT" NAME="$(basename "$RUNS" .json)" ARGS="$*"
