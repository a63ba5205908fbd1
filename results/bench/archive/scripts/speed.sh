#!/usr/bin/env bash
# GPU call (4 x H200), session 2: the speed tables of issues 5 and 9, each comparison inside one process.
#   GPU 0: mstlib bench, mini model, contexts 1024 and 4096 (dense, MST phases, flex / split / SDPA-mask HSA)
#   GPU 1: the GPU-only tests of attention and blocksparse, then benchmarks/block_sparse.py
#   GPU 2: benchmarks/train_speed.py (plain loop vs mstlib dense vs MST, 3 interleaved repeats), then
#          benchmarks/topology_update.py
#   GPU 3: mstlib bench, paper model, contexts 1024 and 4096
# Usage on the GPU machine, from the repository root: OUT=<folder> bash tools/gpu/speed.sh
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu-out}
L=$OUT/logs
mkdir -p "$L" results/bench
nvidia-smi --query-gpu=index,name --format=csv,noheader
T=${T:-540}
TAG=${TAG:-session2}
(
  CUDA_VISIBLE_DEVICES=0 timeout $T python3 -m mstlib bench --models mini --contexts 1024 4096 --repeats 15 \
    --warmup 3 --out results/bench/step_times_mini_$TAG.json >"$L/bench_mini.log" 2>&1
) &
(
  CUDA_VISIBLE_DEVICES=1 timeout 240 python3 -m pytest tests/test_attention.py tests/test_blocksparse.py tests/test_topology.py tests/test_masks.py -q \
    -p no:cacheprovider >"$L/pytest_gpu.log" 2>&1
  CUDA_VISIBLE_DEVICES=1 timeout $((T - 240)) python3 benchmarks/block_sparse.py --max-seconds 250 \
    --out results/bench/block_sparse_$TAG.json >"$L/block_sparse.log" 2>&1
) &
(
  CUDA_VISIBLE_DEVICES=2 timeout 420 python3 benchmarks/train_speed.py --preset mini --steps 200 --repeats 3 \
    --data synthetic --methods dense mst --json results/bench/train_speed_repeats_mini_$TAG.json >"$L/train_speed.log" 2>&1
  CUDA_VISIBLE_DEVICES=2 timeout 100 python3 benchmarks/topology_update.py --models mini paper --repeats 5 --profile \
    --json results/bench/topology_update_$TAG.json >"$L/topology_update.log" 2>&1
) &
(
  CUDA_VISIBLE_DEVICES=3 timeout $T python3 -m mstlib bench --models paper --contexts 1024 4096 --repeats 15 \
    --warmup 3 --out results/bench/step_times_paper_$TAG.json >"$L/bench_paper.log" 2>&1
) &
wait
for f in "$L"/*.log; do echo "== $f"; grep -v "step/s\|it/s\|Warning\|warn" "$f" | tail -45; done
tar czf "$OUT/speed.tar.gz" results/bench "$L"
