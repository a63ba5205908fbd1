#!/usr/bin/env bash
# One GPU call from a plan file (mstlib/gpu.py says the format): stage what the plan needs from .gpu/, run its
# commands (one lane per GPU), pack the files it collects, every log and call.json into $OUT.
#   OUT=<folder> bash tools/gpu/call.sh PLAN [NAME=VALUE ...] [--dry-run]
# Plans: tools/gpu/plans/ (reusable), results/bench/archive/plans/ (the calls already made, as they ran).
set -uo pipefail
cd "$(dirname "$0")/../.."
export OUT=${OUT:-/tmp/gpu-out}
exec python3 -m mstlib gpu "$@"
