#!/usr/bin/env bash
# GPU call (1 x H200), session 6, call 2: the split backends compiled as one graph.
#   1. compile probe: graph breaks of the mini model with each attention backend (torch._dynamo.explain)
#   2. GPU tests: the cuDNN band (statistics layouts found per direction), no graph breaks
#   3. mini-model steps at 1024 with kernel time (--profile), 2 interleaved rounds: eager, then compiled
#   4. paper-model steps at 1024, compiled, 2 rounds
# Usage on the GPU machine, from the repository root: OUT=<folder> TAG=<name> bash tools/gpu/speed14.sh
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu-out}
L=$OUT/logs
mkdir -p "$L" results/bench
TAG=${TAG:-session6b}
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/nvidia_cudnn_frontend-*cp312*.whl \
    >"$L/pip.log" 2>&1
export PYTHONPATH=/tmp/site
pack() { tar czf "$OUT/speed14.tar.gz" results/bench/*_$TAG*.json "$L"; }
timeout ${T_PROBE:-90} python3 tools/gpu/compile_probe.py "$L/compile_probe.json" >"$L/compile_probe.log" 2>&1
timeout ${T_TEST0:-100} python3 -m pytest -q -p no:cacheprovider tests/test_flash_split.py -rs -k "cudnn or graph" \
    >"$L/pytest_cudnn.log" 2>&1
pack
V="dense mst_ultra hsa_cudnn:local_strided hsa_flash:local_strided"
B="python3 -m mstlib bench --contexts 1024 --repeats 15 --warmup 3 --rounds 2 --profile --variants $V"
timeout ${T_EAGER:-60} $B --models mini --out results/bench/step_times_mini_${TAG}_eager.json >"$L/bench_eager.log" 2>&1
pack
timeout ${T_COMPILE:-150} $B --models mini --compile --out results/bench/step_times_mini_${TAG}_compiled.json \
    >"$L/bench_compiled.log" 2>&1
pack
timeout ${T_PAPER:-150} $B --models paper --compile --out results/bench/step_times_paper_${TAG}_compiled.json \
    >"$L/bench_paper_compiled.log" 2>&1
for f in "$L"/*.log; do echo "== $f"; grep -v "it/s\]\|DEBUG\|Warning\|_warn_once\|leaked\|nanobind\|skipped remainder" "$f" \
    | tail -12 | cut -c1-240; done
pack
