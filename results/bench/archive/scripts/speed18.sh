#!/usr/bin/env bash
# GPU call (1 x H200), session 7, call 2: the loss-only forward (no logits output: no zero gradient of the
# step's largest tensor) and CUDA graphs in the trainer.
#   1. GPU tests: the trainer with train.compile="reduce-overhead" against true (gradient accumulation,
#      topology updates, attention switch, resume); the model's loss-only forward
#   2. mini-model steps at 1024, compiled in both modes in the same rounds (dense, MST ultra, local_strided
#      through cudnn_split), kernel time, 2 interleaved rounds
# Usage on the GPU machine, from the repository root: OUT=<folder> TAG=<name> bash tools/gpu/speed18.sh
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu-out}
L=$OUT/logs
mkdir -p "$L" results/bench
TAG=${TAG:-session7b}
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/nvidia_cudnn_frontend-*cp312*.whl \
    >"$L/pip.log" 2>&1
export PYTHONPATH=/tmp/site
pack() { tar czf "$OUT/speed18.tar.gz" results/bench/*_$TAG*.json "$L" 2>/dev/null; }
timeout ${T_TEST:-200} python3 -m pytest -q -p no:cacheprovider -rs tests/test_train.py tests/test_model.py \
    -k "cuda_graphs or loss_only" >"$L/pytest_train.log" 2>&1
pack
B="python3 -m mstlib bench --contexts 1024 --repeats 15 --warmup 3 --rounds 2 --profile --compile default reduce-overhead"
timeout ${T_MINI:-330} $B --models mini --variants dense mst_ultra hsa_cudnn:local_strided \
    --out results/bench/step_times_mini_${TAG}_modes.json >"$L/bench_mini.log" 2>&1
for f in "$L"/*.log; do echo "== $f"; grep -v "it/s\]\|DEBUG\|Warning\|warn\|leaked\|nanobind\|skipped remainder\|could not build" "$f" \
    | tail -9 | cut -c1-200; done
pack
