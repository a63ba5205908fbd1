#!/usr/bin/env bash
# GPU call (1 x H200), session 5, call 1: the band through cuDNN's sliding window (cudnn_split).
#   0. nvidia-cudnn-frontend from .whl/ (no dependencies: the cuDNN backend engines need none of them)
#   1. probe: versions, the band's left bound, forward error
#   2. GPU tests of the cuDNN band (against FlexAttention and the float64 truth; inside a compiled model)
#   3. one attention layer: FlashAttention's band against cuDNN's, alone and with the strided part
#   4. paper-model steps, 2 interleaved rounds: dense, local_strided through both bands, MST ultra with cuDNN
# Usage on the GPU machine, from the repository root: OUT=<folder> TAG=<name> bash tools/gpu/speed9.sh
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu-out}
L=$OUT/logs
mkdir -p "$L" results/bench
TAG=${TAG:-session5a}
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/nvidia_cudnn_frontend-*cp312*.whl \
    >"$L/pip.log" 2>&1
export PYTHONPATH=/tmp/site
timeout 90 python3 tools/gpu/cudnn_probe.py >"$L/probe.log" 2>&1
timeout ${T_TEST:-150} python3 -m pytest -q -x -p no:cacheprovider tests/test_flash_split.py -k "cudnn" -rs \
    >"$L/pytest_cudnn.log" 2>&1
timeout ${T_ATTN:-120} python3 benchmarks/attention_speed.py --models paper mini --contexts 1024 4096 \
    --variants dense flash_split:local cudnn_split:local flash_split:local_strided cudnn_split:local_strided \
    --out results/bench/attention_speed_$TAG.json >"$L/attention_speed.log" 2>&1
timeout ${T_PAPER:-170} python3 -m mstlib bench --models paper --contexts 1024 4096 --repeats 15 --warmup 3 --rounds 2 \
    --variants dense hsa_flash:local_strided hsa_cudnn:local_strided mst_ultra_cudnn \
    --out results/bench/step_times_paper_$TAG.json >"$L/bench_paper.log" 2>&1
for f in "$L"/*.log; do echo "== $f"; grep -v "it/s\]\|DEBUG\|Warning\|_warn_once" "$f" | tail -22 | cut -c1-220; done
tar czf "$OUT/speed9.tar.gz" results/bench/*_$TAG.json "$L"
