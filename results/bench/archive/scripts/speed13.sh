#!/usr/bin/env bash
# GPU call (1 x H200), session 6, call 1: is the mini model's step bound by the host, and does compiling fix it?
#   1. GPU tests of the cuDNN band (its statistics now in the far kernel's [H, B, T] layout, no copies)
#   2. mini-model steps at 1024 with each step's kernel time (--profile: gpu_ms, gpu_busy), 2 interleaved
#      rounds: eager, compiled (how the mini preset trains), compiled with CUDA graphs (reduce-overhead)
# Usage on the GPU machine, from the repository root: OUT=<folder> TAG=<name> bash tools/gpu/speed13.sh
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu-out}
L=$OUT/logs
mkdir -p "$L" results/bench
TAG=${TAG:-session6a}
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/nvidia_cudnn_frontend-*cp312*.whl \
    >"$L/pip.log" 2>&1
export PYTHONPATH=/tmp/site
pack() { tar czf "$OUT/speed13.tar.gz" results/bench/*_$TAG*.json "$L"; }
timeout ${T_TEST0:-90} python3 -m pytest -q -p no:cacheprovider tests/test_flash_split.py -rs -k "cudnn" \
    >"$L/pytest_cudnn.log" 2>&1
V="dense mst_ultra hsa_cudnn:local_strided hsa_flash:local_strided"
B="python3 -m mstlib bench --models mini --contexts 1024 --repeats 15 --warmup 3 --rounds 2 --profile --variants $V"
timeout ${T_EAGER:-70} $B --out results/bench/step_times_mini_${TAG}_eager.json >"$L/bench_eager.log" 2>&1
pack
timeout ${T_COMPILE:-170} $B --compile --out results/bench/step_times_mini_${TAG}_compiled.json \
    >"$L/bench_compiled.log" 2>&1
pack
timeout ${T_GRAPHS:-170} $B --compile reduce-overhead --out results/bench/step_times_mini_${TAG}_graphs.json \
    >"$L/bench_graphs.log" 2>&1
for f in "$L"/*.log; do echo "== $f"; grep -v "it/s\]\|DEBUG\|Warning\|_warn_once\|leaked\|nanobind\|skipped remainder" "$f" \
    | tail -14 | cut -c1-200; done
pack
