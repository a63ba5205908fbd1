#!/usr/bin/env bash
# GPU call (4 x H200), session 2, second speed call: the step-time table again after the split backend's
# fix (same GPU, same process per model), and the whole-run comparison with MST through it.
#   GPU 0: mstlib bench, mini model, contexts 1024 and 4096
#   GPU 1: the GPU tests of attention, topology and masks
#   GPU 2: benchmarks/train_speed.py, plain loop vs mstlib dense vs MST, 3 interleaved repeats
#   GPU 3: mstlib bench, paper model, contexts 1024 and 4096
# Usage on the GPU machine, from the repository root: OUT=<folder> TAG=<name> bash tools/gpu/speed2.sh
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu-out}
L=$OUT/logs
mkdir -p "$L" results/bench
T=${T:-540}
TAG=${TAG:-session2b}
for lane in "0 mini" "3 paper"; do
  set -- $lane
  ( CUDA_VISIBLE_DEVICES=$1 timeout $T python3 -m mstlib bench --models $2 --contexts 1024 4096 --repeats 15 \
      --warmup 3 --out results/bench/step_times_$2_$TAG.json >"$L/bench_$2.log" 2>&1 ) &
done
( CUDA_VISIBLE_DEVICES=1 timeout 300 python3 -m pytest tests/test_attention.py tests/test_topology.py tests/test_masks.py \
    -q -p no:cacheprovider >"$L/pytest_gpu.log" 2>&1 ) &
( CUDA_VISIBLE_DEVICES=2 timeout 450 python3 benchmarks/train_speed.py --preset mini --steps 200 --repeats 3 \
    --data synthetic --methods dense mst ${SPEED_EXTRA:-} --json results/bench/train_speed_repeats_mini_$TAG.json >"$L/train_speed.log" 2>&1 ) &
wait
for f in "$L"/*.log; do echo "== $f"; grep -v "step/s\|it/s\|Warn\|warn" "$f" | tail -32; done
tar czf "$OUT/speed2.tar.gz" results/bench "$L"
