#!/usr/bin/env bash
# GPU call (1 x H200), session 3: flash_split with autotuned Triton far-part kernels behind custom operators.
#   1. the flash_split GPU tests (PYTEST_K selects a subset)
#   2. one attention layer per backend (benchmarks/attention_speed.py) for $MODEL
#   3. the step-time table for $MODEL (mstlib bench), contexts 1024 and 4096, one process
# Usage on the GPU machine, from the repository root: OUT=<folder> TAG=<name> MODEL=paper bash tools/gpu/speed5.sh
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu-out}
L=$OUT/logs
mkdir -p "$L" results/bench
TAG=${TAG:-session3c}
MODEL=${MODEL:-paper}
timeout ${T_TEST:-90} python3 -m pytest tests/test_flash_split.py -q -p no:cacheprovider ${PYTEST_K:+-k "$PYTEST_K"} \
    >"$L/pytest_flash_split_$MODEL.log" 2>&1
timeout ${T_ATTN:-120} python3 benchmarks/attention_speed.py --models $MODEL --contexts 1024 4096 \
    --variants dense flex:local flex:local_strided flash_split:local flash_split:strided flash_split:local_strided \
    --out results/bench/attention_speed_${MODEL}_$TAG.json >"$L/attention_speed_$MODEL.log" 2>&1
timeout ${T_BENCH:-330} python3 -m mstlib bench --models $MODEL --contexts 1024 4096 --repeats 15 --warmup 3 \
    --variants dense mst_warmup mst_ultra mst_ultra_flash mst_restoration hsa_flex:local hsa_flex:local_strided \
    hsa_flash:local hsa_flash:local_strided hsa_flash:strided hsa_flash:fixed hsa_sdpa:local_strided \
    --out results/bench/step_times_${MODEL}_$TAG.json >"$L/bench_$MODEL.log" 2>&1
for f in "$L"/*.log; do echo "== $f"; grep -v "it/s\]\|DEBUG" "$f" | tail -28 | cut -c1-250; done
tar czf "$OUT/speed5.tar.gz" results/bench/*_$TAG.json "$L"
