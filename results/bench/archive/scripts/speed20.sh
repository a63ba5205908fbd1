#!/usr/bin/env bash
# GPU call (1 x H200), session 7, call 4: whole training runs of the mini preset through mstlib.train, dense and
# MST, each compiled as the presets train (train.compile=true) and with CUDA graphs
# (train.compile=reduce-overhead); random tokens; 300 steps (MST's phases, topology updates and hybrid sparse
# attention window compressed into them). The runs' logs come back for per-phase speeds.
# Usage on the GPU machine, from the repository root: OUT=<folder> TAG=<name> bash tools/gpu/speed20.sh
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu-out}
L=$OUT/logs
mkdir -p "$L" results/bench
TAG=${TAG:-session7d}
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/nvidia_cudnn_frontend-*cp312*.whl \
    >"$L/pip.log" 2>&1
export PYTHONPATH=/tmp/site
timeout ${T_TRAIN:-420} python3 benchmarks/train_speed.py --preset mini --steps 300 --no-plain --data synthetic \
    --methods dense mst dense+train.compile=reduce-overhead mst+train.compile=reduce-overhead \
    --keep /tmp/keep --json results/bench/train_speed_graphs_mini_${TAG}.json >"$L/train_speed.log" 2>&1
grep -v "it/s\]\|DEBUG\|Warning\|warn\|leaked\|nanobind\|skipped remainder\|could not build\|s/it\]" "$L/train_speed.log" | tail -12 | cut -c1-200
mkdir -p "$L/runs" && (cd /tmp/keep && find . -name log.csv -o -name config.json -o -name metrics.json | tar czf "$L/runs/runs.tar.gz" -T -)
tar czf "$OUT/speed20.tar.gz" results/bench/*_$TAG*.json "$L" 2>/dev/null
