#!/usr/bin/env bash
# GPU call (1 x H200), session 3, second call: flash_split with the Triton far-part kernels. Its GPU tests,
# one attention layer timed per backend (with profiler kernel times), then whole steps of the paper model
# at context 1024 (mstlib bench) for dense, MST's ultra phase and the HSA variants.
# Usage on the GPU machine, from the repository root: OUT=<folder> TAG=<name> bash tools/gpu/speed4.sh
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu-out}
L=$OUT/logs
mkdir -p "$L" results/bench
TAG=${TAG:-session3b}
timeout ${T_TEST:-200} python3 -m pytest tests/test_flash_split.py -q -p no:cacheprovider -x >"$L/pytest_flash_split.log" 2>&1
timeout ${T_ATTN:-200} python3 benchmarks/attention_speed.py --models paper mini --contexts 1024 4096 \
    --variants dense flex:local flex:local_strided flash_split:local flash_split:strided flash_split:local_strided \
    flash_split@torch:local_strided flash_split:fixed \
    --out results/bench/attention_speed_$TAG.json >"$L/attention_speed.log" 2>&1
timeout ${T_BENCH:-150} python3 -m mstlib bench --models paper --contexts 1024 --repeats 15 --warmup 3 \
    --variants dense mst_ultra hsa_flex:local_strided hsa_flash:local hsa_flash:local_strided hsa_flash:strided \
    --out results/bench/step_times_paper_$TAG.json >"$L/bench_paper.log" 2>&1
for f in "$L"/*.log; do echo "== $f"; grep -v "it/s\]" "$f" | tail -30 | cut -c1-250; done
tar czf "$OUT/speed4.tar.gz" results/bench/*_$TAG.json "$L"
