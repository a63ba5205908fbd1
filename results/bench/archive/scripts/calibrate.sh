#!/usr/bin/env bash
# GPU call 1 (4 x H200): check the code on the GPU and measure what the book needs before the sweep.
#   GPU 0: benchmarks/train_speed.py (plain nanoGPT loop vs mstlib dense vs MST vs MST without HSA), then
#          the 2-GPU DDP run with GPU 2
#   GPU 1: the FlexAttention equality tests, then one full `mini` MST run with evaluation (its wall time
#          sizes the sweep)
#   GPU 2: the 1-GPU DDP reference run and its repeat (the noise level)
#   GPU 3: `python -m mstlib bench` (issue 9: dense, MST phases, FlexAttention vs masked SDPA)
# Usage on the GPU machine, from the repository root: OUT=<folder> bash tools/gpu/calibrate.sh
set -uo pipefail
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
OUT=${OUT:-/tmp/gpu-out}
L=$OUT/logs
mkdir -p "$L" results/bench
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv | tee "$L/nvidia-smi.csv"
python3 -c "import sys, torch; print(sys.version.split()[0], torch.__version__, torch.cuda.device_count())"
mkdir -p .gpu/eval && tar xJf .gpu/eval.tar.xz -C .gpu/eval   # the evaluation sets (../shared does not travel)
export MST_EVAL_DIR=$PWD/.gpu/eval/eval
python3 -m mstlib data unpack .gpu/corpus/offline-50m >"$L/unpack.log" 2>&1 || { tail -20 "$L/unpack.log"; exit 1; }
tail -3 "$L/unpack.log"
T=${T:-520}   # seconds any one lane may run, leaving time to pack
DDP="--preset mini --method dense --set train.max_iters=300 --set train.compile=false --no-progress"
(
  CUDA_VISIBLE_DEVICES=0 timeout $T python3 benchmarks/train_speed.py --preset mini --steps 200 \
    --methods dense mst mst+attention.pattern=dense --json results/bench/train_speed_mini.json >"$L/train_speed.log" 2>&1
  while [ ! -f "$L/ddp_one.done" ]; do sleep 2; done
  CUDA_VISIBLE_DEVICES=0,2 timeout 200 torchrun --standalone --nproc_per_node=2 -m mstlib train $DDP \
    --results results-ddp/two >"$L/ddp_two.log" 2>&1
) &
(
  CUDA_VISIBLE_DEVICES=1 timeout 120 python3 -m pytest tests/test_attention.py -q -p no:cacheprovider >"$L/pytest_attention.log" 2>&1
  CUDA_VISIBLE_DEVICES=1 timeout $T python3 -m mstlib train --preset mini --method mst --evaluate \
    --results results-calib --no-progress >"$L/mini_mst.log" 2>&1
) &
(
  CUDA_VISIBLE_DEVICES=2 timeout 200 python3 -m mstlib train $DDP --results results-ddp/one >"$L/ddp_one.log" 2>&1
  CUDA_VISIBLE_DEVICES=2 timeout 200 python3 -m mstlib train $DDP --results results-ddp/one-again >"$L/ddp_one_again.log" 2>&1
  touch "$L/ddp_one.done"
) &
(
  CUDA_VISIBLE_DEVICES=3 timeout $T python3 -m mstlib bench --models mini paper --contexts 1024 4096 \
    --repeats 10 --warmup 3 --out results/bench/h200_step_times.json >"$L/bench.log" 2>&1
) &
wait
python3 benchmarks/compare_logs.py results-ddp/one/mini/dense/* results-ddp/two/mini/dense/* \
  results-ddp/one-again/mini/dense/* --json results/bench/ddp_compare_mini.json >"$L/ddp_compare.log" 2>&1
for f in "$L"/*.log; do echo "== $f"; tail -6 "$f"; done
tar czf "$OUT/call1.tar.gz" results results-calib results-ddp "$L" 2>/dev/null
ls -la "$OUT"
