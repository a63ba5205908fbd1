#!/usr/bin/env bash
# GPU call (4 x H200), session 2: the measurements that decide the session's speed work.
#   GPU 0: benchmarks/train_speed.py, plain nanoGPT loop vs mstlib dense vs MST, 3 interleaved repeats (issue 5)
#   GPU 1: benchmarks/topology_update.py --profile: where an MST topology update spends its time (issue 9)
# Usage on the GPU machine, from the repository root: OUT=<folder> bash tools/gpu/diagnose.sh
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu-out}
L=$OUT/logs
mkdir -p "$L" results/bench
nvidia-smi --query-gpu=index,name --format=csv,noheader
T=${T:-480}
(
  CUDA_VISIBLE_DEVICES=0 timeout $T python3 benchmarks/train_speed.py --preset mini --steps 200 --repeats 3 \
    --data synthetic --methods dense mst --json results/bench/train_speed_repeats_mini.json >"$L/train_speed_repeats.log" 2>&1
) &
(
  CUDA_VISIBLE_DEVICES=1 timeout $T python3 benchmarks/topology_update.py --models mini paper --profile --repeats 5 \
    --json results/bench/topology_update_profile.json >"$L/topology_update_profile.log" 2>&1
) &
wait
for f in "$L"/*.log; do echo "== $f"; grep -v "step/s\|it/s" "$f" | tail -40; done
tar czf "$OUT/diagnose.tar.gz" results/bench "$L"
