#!/usr/bin/env bash
# GPU call (1 x H200), session 4, call 1: the far part's kernels on tensor cores (one tile per residue
# group, one backward kernel).
#   1. every flash_split GPU test
#   2. one attention layer per backend, paper and mini shapes, with the per-kernel profile
#   3. paper-model steps for the attention variants the kernels change, with dense in the same process
# Usage on the GPU machine, from the repository root: OUT=<folder> TAG=<name> bash tools/gpu/speed7.sh
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu-out}
L=$OUT/logs
mkdir -p "$L" results/bench
TAG=${TAG:-session4a}
timeout ${T_TEST:-180} python3 -m pytest tests/test_flash_split.py -q -p no:cacheprovider -rs \
    >"$L/pytest_flash_split.log" 2>&1
timeout ${T_ATTN:-150} python3 benchmarks/attention_speed.py --models paper mini --contexts 1024 4096 \
    --variants dense flex:local flex:local_strided flash_split:local flash_split:strided flash_split:local_strided \
    --out results/bench/attention_speed_$TAG.json >"$L/attention_speed.log" 2>&1
timeout ${T_BENCH:-200} python3 -m mstlib bench --models paper --contexts 1024 4096 --repeats 15 --warmup 3 \
    --variants dense hsa_flex:local_strided hsa_flash:local_strided hsa_flash:strided mst_ultra mst_ultra_flash \
    --out results/bench/step_times_paper_$TAG.json >"$L/bench_paper.log" 2>&1
for f in "$L"/*.log; do echo "== $f"; grep -v "it/s\]\|DEBUG\|Warning\|_warn_once" "$f" | tail -30 | cut -c1-220; done
tar czf "$OUT/speed7.tar.gz" results/bench/*_$TAG.json "$L"
