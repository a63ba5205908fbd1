#!/usr/bin/env bash
# GPU call (1 x H200), session 3, first call: the flash_split backend's GPU tests, then one attention layer
# timed for every backend (benchmarks/attention_speed.py), paper and mini shapes, contexts 1024 and 4096.
# Usage on the GPU machine, from the repository root: OUT=<folder> TAG=<name> bash tools/gpu/speed3.sh
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu-out}
L=$OUT/logs
mkdir -p "$L" results/bench
TAG=${TAG:-session3}
nvidia-smi --query-gpu=name,driver_version --format=csv >"$L/gpu.txt" 2>&1
timeout ${T_TEST:-200} python3 -m pytest tests/test_flash_split.py -q -p no:cacheprovider -x >"$L/pytest_flash_split.log" 2>&1
timeout ${T_ATTN:-330} python3 benchmarks/attention_speed.py --models paper mini --contexts 1024 4096 \
    --variants ${VARIANTS:-dense flex:local flex:local_strided flash_split:local flash_split:strided flash_split:local_strided flash_split:fixed} \
    --out results/bench/attention_speed_$TAG.json >"$L/attention_speed.log" 2>&1
for f in "$L"/*.log; do echo "== $f"; tail -40 "$f" | cut -c1-300; done
tar czf "$OUT/speed3.tar.gz" results/bench/attention_speed_$TAG.json "$L"
