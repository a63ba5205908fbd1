#!/usr/bin/env bash
# GPU call (1 x H200), session 7, call 1: does replaying the compiled step as CUDA graphs remove the mini model's
# host gaps with hybrid sparse attention? (Session 6: compiled mini steps with the split backends kept the GPU
# busy 84% of the time against dense's 92%; their kernels were at parity with dense.)
#   1. compiled mini-model steps at 1024, mode reduce-overhead (CUDA graphs), kernel time, 2 interleaved rounds
#   2. the same in the default mode (how the presets train), at this commit
#   3. GPU tests: the whole of tests/test_flash_split.py (the session-6 autocast fix and review mends never ran
#      there in full)
#   4. compiled paper-model steps at 1024 with CUDA graphs, as far as the call's time goes
# Usage on the GPU machine, from the repository root: OUT=<folder> TAG=<name> bash tools/gpu/speed17.sh
set -uo pipefail
export PYTHONUNBUFFERED=1 TORCH_LOGS=perf_hints
OUT=${OUT:-/tmp/gpu-out}
L=$OUT/logs
mkdir -p "$L" results/bench
TAG=${TAG:-session7a}
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/nvidia_cudnn_frontend-*cp312*.whl \
    >"$L/pip.log" 2>&1
export PYTHONPATH=/tmp/site
pack() { tar czf "$OUT/speed17.tar.gz" results/bench/*_$TAG*.json "$L" 2>/dev/null; }
B="python3 -m mstlib bench --contexts 1024 --repeats 15 --warmup 3 --rounds 2 --profile"
V="dense mst_ultra hsa_cudnn:local_strided hsa_flash:local_strided"
timeout ${T_GRAPHS:-170} $B --compile reduce-overhead --models mini --variants $V \
    --out results/bench/step_times_mini_${TAG}_graphs.json >"$L/bench_mini_graphs.log" 2>&1
pack
timeout ${T_MINI:-130} $B --compile --models mini --variants $V \
    --out results/bench/step_times_mini_${TAG}_compiled.json >"$L/bench_mini.log" 2>&1
pack
timeout ${T_TEST:-170} python3 -m pytest -q -p no:cacheprovider tests/test_flash_split.py -rs \
    >"$L/pytest_flash_split.log" 2>&1
pack
timeout ${T_PAPER:-100} $B --compile reduce-overhead --models paper --variants dense mst_ultra hsa_cudnn:local_strided \
    --out results/bench/step_times_paper_${TAG}_graphs.json >"$L/bench_paper_graphs.log" 2>&1
for f in "$L"/*.log; do echo "== $f"; grep -v "it/s\]\|DEBUG\|Warning\|warn\|leaked\|nanobind\|skipped remainder\|could not build" "$f" \
    | tail -8 | cut -c1-200; done
grep -h "skipping cudagraphs" "$L"/*.log | sort | uniq -c | head -5
pack
