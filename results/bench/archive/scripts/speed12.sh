#!/usr/bin/env bash
# GPU call (1 x H200), session 5, call 4 (final code): eager calls of our custom operators skip the dispatch.
#   1. probe 2: host time per call of the cuDNN band through mstlib, against the package's operators
#   2. mini-model steps, 3 interleaved rounds; paper-model steps, 2 interleaved rounds: dense, MST phases
#      ("auto" = cudnn_split in the ultra phase), the ultra phase and local_strided through both bands
#   3. GPU tests: flash_split / cudnn_split, custom operators, block-sparse kernels
# Usage on the GPU machine, from the repository root: OUT=<folder> TAG=<name> bash tools/gpu/speed12.sh
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu-out}
L=$OUT/logs
mkdir -p "$L" results/bench
TAG=${TAG:-session5d}
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/nvidia_cudnn_frontend-*cp312*.whl \
    >"$L/pip.log" 2>&1
export PYTHONPATH=/tmp/site
timeout 60 python3 tools/gpu/cudnn_probe2.py "$L/cudnn_probe2.json" >"$L/probe2.log" 2>&1
V="dense mst_warmup mst_restoration mst_ultra mst_ultra_flash hsa_flash:local_strided hsa_cudnn:local_strided"
timeout ${T_MINI:-120} python3 -m mstlib bench --models mini --contexts 1024 4096 --repeats 15 --warmup 3 --rounds 3 \
    --variants $V --out results/bench/step_times_mini_$TAG.json >"$L/bench_mini.log" 2>&1
timeout ${T_PAPER:-150} python3 -m mstlib bench --models paper --contexts 1024 4096 --repeats 15 --warmup 3 --rounds 2 \
    --variants $V --out results/bench/step_times_paper_$TAG.json >"$L/bench_paper.log" 2>&1
tar czf "$OUT/speed12.tar.gz" results/bench/*_$TAG.json "$L"  # the steps first, in case the tests run out of time
timeout ${T_TEST1:-170} python3 -m pytest -q -p no:cacheprovider tests/test_flash_split.py -rs \
    >"$L/pytest_flash_split.log" 2>&1
timeout ${T_TEST2:-110} python3 -m pytest -q -p no:cacheprovider tests/test_blocksparse.py -rs \
    >"$L/pytest_blocksparse.log" 2>&1
for f in "$L"/*.log; do echo "== $f"; grep -v "it/s\]\|DEBUG\|Warning\|_warn_once\|leaked\|nanobind\|skipped remainder" "$f" \
    | tail -20 | cut -c1-200; done
tar czf "$OUT/speed12.tar.gz" results/bench/*_$TAG.json "$L"
