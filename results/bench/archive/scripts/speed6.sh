#!/usr/bin/env bash
# GPU call (1 x H200), session 3, last call: the far-part Triton kernels rewritten as 2D tiles. Two bf16
# correctness tests, one attention layer (paper shapes), and paper-model steps for the variants they change.
# Usage on the GPU machine, from the repository root: OUT=<folder> TAG=<name> bash tools/gpu/speed6.sh
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu-out}
L=$OUT/logs
mkdir -p "$L" results/bench
TAG=${TAG:-session3d}
timeout ${T_TEST:-60} python3 -m pytest tests/test_flash_split.py -q -p no:cacheprovider \
    -k "bf16 and (local_strided-1024 or strided-1024-128)" >"$L/pytest_flash_split.log" 2>&1
timeout ${T_ATTN:-75} python3 benchmarks/attention_speed.py --models paper --contexts 1024 4096 \
    --variants dense flash_split:strided flash_split:local_strided \
    --out results/bench/attention_speed_paper_$TAG.json >"$L/attention_speed_paper.log" 2>&1
timeout ${T_BENCH:-150} python3 -m mstlib bench --models paper --contexts 1024 4096 --repeats 15 --warmup 3 \
    --variants dense hsa_flex:local_strided hsa_flash:local_strided hsa_flash:strided mst_ultra_flash \
    --out results/bench/step_times_paper_$TAG.json >"$L/bench_paper.log" 2>&1
for f in "$L"/*.log; do echo "== $f"; grep -v "it/s\]\|DEBUG\|Warning\|_warn_once" "$f" | tail -16 | cut -c1-220; done
tar czf "$OUT/speed6.tar.gz" results/bench/*_$TAG.json "$L"
