#!/usr/bin/env bash
# GPU call (1 x H200), session 5, call 2:
#   1. cuDNN band probe 2: host time per call by way of execution (and whether a call synchronises); every
#      cuDNN plan's kernel time for the band's forward and backward
#   2. block-sparse weights: the stored run with profiler kernel times (dense, dense-masked, triton_bsr, triton)
#   3. mini-model steps, 3 interleaved rounds: dense, MST warm-up, local_strided and MST ultra through both bands
# Usage on the GPU machine, from the repository root: OUT=<folder> TAG=<name> bash tools/gpu/speed10.sh
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu-out}
L=$OUT/logs
mkdir -p "$L" results/bench
TAG=${TAG:-session5b}
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/nvidia_cudnn_frontend-*cp312*.whl \
    >"$L/pip.log" 2>&1
export PYTHONPATH=/tmp/site
timeout 100 python3 tools/gpu/cudnn_probe2.py "$L/cudnn_probe2.json" >"$L/probe2.log" 2>&1
timeout ${T_BS:-170} python3 benchmarks/block_sparse.py --backends dense dense_masked triton_bsr triton \
    --tokens 32768 --densities 1.0 0.5 0.25 0.1 --blocks 64 128 --max-seconds 150 \
    --out results/bench/block_sparse_$TAG.json >"$L/block_sparse.log" 2>&1
timeout ${T_MINI:-240} python3 -m mstlib bench --models mini --contexts 1024 4096 --repeats 15 --warmup 3 --rounds 3 \
    --variants dense mst_warmup hsa_flash:local_strided hsa_cudnn:local_strided mst_ultra_flash mst_ultra_cudnn \
    --out results/bench/step_times_mini_$TAG.json >"$L/bench_mini.log" 2>&1
for f in "$L"/*.log; do echo "== $f"; grep -v "it/s\]\|DEBUG\|Warning\|_warn_once" "$f" | tail -30 | cut -c1-200; done
tar czf "$OUT/speed10.tar.gz" results/bench/*_$TAG.json "$L"
