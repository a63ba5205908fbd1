#!/usr/bin/env bash
# GPU call (1 x H200), session 6, call 5: compiled steps with the autocast fix (no autocast context inside the
# autograd function's forward: torch 2.11's tracing leaked it, and every layer after the first traced in float32).
#   1. compiled mini-model steps at 1024 with kernel time (--profile), 2 interleaved rounds
#   2. compiled paper-model steps at 1024, 2 interleaved rounds (dense, MST ultra via "auto", local_strided cuDNN)
#   3. GPU tests: one graph, autocast precision, compiled model
# Usage on the GPU machine, from the repository root: OUT=<folder> TAG=<name> bash tools/gpu/speed16.sh
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu-out}
L=$OUT/logs
mkdir -p "$L" results/bench
TAG=${TAG:-session6e}
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/nvidia_cudnn_frontend-*cp312*.whl \
    >"$L/pip.log" 2>&1
export PYTHONPATH=/tmp/site
pack() { tar czf "$OUT/speed16.tar.gz" results/bench/*_$TAG*.json "$L" 2>/dev/null; }
B="python3 -m mstlib bench --contexts 1024 --repeats 15 --warmup 3 --rounds 2 --profile --compile"
timeout ${T_MINI:-150} $B --models mini --variants dense mst_ultra hsa_cudnn:local_strided hsa_flash:local_strided \
    --out results/bench/step_times_mini_${TAG}_compiled.json >"$L/bench_mini.log" 2>&1
pack
timeout ${T_PAPER:-190} $B --models paper --variants dense mst_ultra hsa_cudnn:local_strided \
    --out results/bench/step_times_paper_${TAG}_compiled.json >"$L/bench_paper.log" 2>&1
pack
timeout ${T_TEST:-60} python3 -m pytest -q -p no:cacheprovider tests/test_flash_split.py -rs \
    -k "graph or autocast or compiled_model" >"$L/pytest_flash_split.log" 2>&1
for f in "$L"/*.log; do echo "== $f"; grep -v "it/s\]\|DEBUG\|Warning\|warn\|leaked\|nanobind\|skipped remainder\|could not build" "$f" \
    | tail -8 | cut -c1-200; done
pack
