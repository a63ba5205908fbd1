#!/usr/bin/env bash
# GPU call (1 x H200), session 6, call 3: the split backends compiled without graph breaks (the compiled far part
# is no longer an argument of Function.apply, which torch 2.11's tracing broke on).
#   1. compile probe: graph breaks of the mini model with each attention backend
#   2. compiled mini- and paper-model steps at 1024 with kernel time (--profile), 2 interleaved rounds
#   3. GPU tests of the split backends (tests/test_flash_split.py)
# Usage on the GPU machine, from the repository root: OUT=<folder> TAG=<name> bash tools/gpu/speed15.sh
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu-out}
L=$OUT/logs
mkdir -p "$L" results/bench
TAG=${TAG:-session6c}
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/nvidia_cudnn_frontend-*cp312*.whl \
    >"$L/pip.log" 2>&1
export PYTHONPATH=/tmp/site
pack() { tar czf "$OUT/speed15.tar.gz" results/bench/*_$TAG*.json "$L" 2>/dev/null; }
timeout ${T_PROBE:-60} python3 tools/gpu/compile_probe.py "$L/compile_probe.json" >"$L/compile_probe.log" 2>&1
grep -h '"backend"\|"graphs"\|"breaks"' "$L/compile_probe.log"
V="dense mst_ultra hsa_cudnn:local_strided hsa_flash:local_strided"
B="python3 -m mstlib bench --contexts 1024 --repeats 15 --warmup 3 --rounds 2 --profile --compile --variants $V"
for M in mini paper; do
  timeout ${T_BENCH:-150} $B --models $M --out results/bench/step_times_${M}_${TAG}_compiled.json >"$L/bench_${M}.log" 2>&1
  pack
done
timeout ${T_TEST:-170} python3 -m pytest -q -p no:cacheprovider tests/test_flash_split.py -rs -x >"$L/pytest_flash_split.log" 2>&1
for f in "$L"/*.log; do echo "== $f"; grep -v "it/s\]\|DEBUG\|Warning\|_warn_once\|leaked\|nanobind\|skipped remainder\|could not build" "$f" \
    | tail -10 | cut -c1-240; done
pack
