#!/usr/bin/env bash
# GPU call (1 x H200), session 4, call 2: the step table with interleaved rounds (ratios paired per round).
#   1. one attention layer, paper and mini shapes, output gradient in the model's layout
#   2. mini-model steps, 3 interleaved rounds: MST phases and the HSA variants
#   3. paper-model steps, 2 interleaved rounds: MST phases and the variants call 1 did not time
# Usage on the GPU machine, from the repository root: OUT=<folder> TAG=<name> bash tools/gpu/speed8.sh
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu-out}
L=$OUT/logs
mkdir -p "$L" results/bench
TAG=${TAG:-session4b}
timeout ${T_ATTN:-110} python3 benchmarks/attention_speed.py --models paper mini --contexts 1024 4096 \
    --variants dense flex:local flex:local_strided flash_split:local flash_split:strided flash_split:local_strided \
    --out results/bench/attention_speed_$TAG.json >"$L/attention_speed.log" 2>&1
timeout ${T_MINI:-270} python3 -m mstlib bench --models mini --contexts 1024 4096 --repeats 15 --warmup 3 --rounds 3 \
    --variants dense mst_warmup mst_restoration mst_ultra mst_ultra_flash hsa_flex:local_strided \
    hsa_flash:local_strided hsa_flash:strided \
    --out results/bench/step_times_mini_$TAG.json >"$L/bench_mini.log" 2>&1
timeout ${T_PAPER:-150} python3 -m mstlib bench --models paper --contexts 1024 4096 --repeats 15 --warmup 3 --rounds 2 \
    --variants dense mst_warmup mst_restoration hsa_flex:local hsa_flash:local hsa_sdpa:local_strided \
    --out results/bench/step_times_paper_$TAG.json >"$L/bench_paper.log" 2>&1
for f in "$L"/*.log; do echo "== $f"; grep -v "it/s\]\|DEBUG\|Warning\|_warn_once" "$f" | tail -26 | cut -c1-200; done
tar czf "$OUT/speed8.tar.gz" results/bench/*_$TAG.json "$L"
