#!/usr/bin/env bash
# GPU call (1 x H200), session 5, call 3: the cuDNN band executing its own cached graphs.
#   1. probes: the band's left bound and error; host time per call (package operators against ours)
#   2. GPU tests: flash_split / cudnn_split (all), block-sparse kernels
#   3. one attention layer: FlashAttention's band against cuDNN's, alone and with the strided part
#   4. paper-model steps, 2 interleaved rounds: dense, MST warm-up and ultra phases ("auto" = cudnn_split in the ultra phase),
#      the ultra phase and local_strided through both bands
# Usage on the GPU machine, from the repository root: OUT=<folder> TAG=<name> bash tools/gpu/speed11.sh
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu-out}
L=$OUT/logs
mkdir -p "$L" results/bench
TAG=${TAG:-session5c}
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/nvidia_cudnn_frontend-*cp312*.whl \
    >"$L/pip.log" 2>&1
export PYTHONPATH=/tmp/site
timeout 60 python3 tools/gpu/cudnn_probe.py >"$L/probe.log" 2>&1
timeout 70 python3 tools/gpu/cudnn_probe2.py "$L/cudnn_probe2.json" >"$L/probe2.log" 2>&1
timeout ${T_TEST:-170} python3 -m pytest -q -p no:cacheprovider tests/test_flash_split.py tests/test_blocksparse.py \
    -rs >"$L/pytest_gpu.log" 2>&1
timeout ${T_ATTN:-100} python3 benchmarks/attention_speed.py --models paper mini --contexts 1024 4096 \
    --variants dense flash_split:local cudnn_split:local flash_split:local_strided cudnn_split:local_strided \
    --out results/bench/attention_speed_$TAG.json >"$L/attention_speed.log" 2>&1
timeout ${T_PAPER:-165} python3 -m mstlib bench --models paper --contexts 1024 4096 --repeats 15 --warmup 3 --rounds 2 \
    --variants dense mst_warmup mst_ultra mst_ultra_flash hsa_flash:local_strided hsa_cudnn:local_strided \
    --out results/bench/step_times_paper_$TAG.json >"$L/bench_paper.log" 2>&1
for f in "$L"/*.log; do echo "== $f"; grep -v "it/s\]\|DEBUG\|Warning\|_warn_once" "$f" | tail -24 | cut -c1-200; done
tar czf "$OUT/speed11.tar.gz" results/bench/*_$TAG.json "$L"
