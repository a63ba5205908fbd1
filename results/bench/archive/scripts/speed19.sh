#!/usr/bin/env bash
# GPU call (1 x H200), session 7, call 3: paper-model steps at 1024 compiled in both modes (default, and
# reduce-overhead: CUDA graphs) in the same rounds, with the loss-only forward; kernel time; 2 rounds.
# Usage on the GPU machine, from the repository root: OUT=<folder> TAG=<name> bash tools/gpu/speed19.sh
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu-out}
L=$OUT/logs
mkdir -p "$L" results/bench
TAG=${TAG:-session7c}
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/nvidia_cudnn_frontend-*cp312*.whl \
    >"$L/pip.log" 2>&1
export PYTHONPATH=/tmp/site
timeout ${T_PAPER:-420} python3 -m mstlib bench --contexts 1024 --repeats 12 --warmup 3 --rounds 2 --profile \
    --compile default reduce-overhead --models paper --variants dense mst_ultra hsa_cudnn:local_strided \
    --out results/bench/step_times_paper_${TAG}_modes.json >"$L/bench_paper.log" 2>&1
grep -v "it/s\]\|DEBUG\|Warning\|warn\|leaked\|nanobind\|skipped remainder\|could not build" "$L/bench_paper.log" | tail -9 | cut -c1-200
tar czf "$OUT/speed19.tar.gz" results/bench/*_$TAG*.json "$L" 2>/dev/null
