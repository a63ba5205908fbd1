#!/usr/bin/env bash
# GPU sweep call: train + evaluate a run list on every GPU of the machine, then pack the results (no
# checkpoints) into $OUT/<name>.tar.gz for the trip back.
#   OUT=<folder> bash tools/gpu/sweep.sh .gpu/runs/callA.json [seconds] [extra sweep args...]
# Before: tools/stage_corpus.sh (the offline-50m corpus) and .gpu/eval.tar.xz (the evaluation sets);
# after, here: python -m mstlib sweep --unpack <archive>
set -uo pipefail
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
RUNS=$1; LIMIT=${2:-480}; shift 2 || shift $#
OUT=${OUT:-/tmp/gpu-out}; NAME=$(basename "$RUNS" .json); L=$OUT/logs; mkdir -p "$L"
if [ ! -d .gpu/eval/eval ]; then mkdir -p .gpu/eval && tar xJf .gpu/eval.tar.xz -C .gpu/eval; fi
export MST_EVAL_DIR=$PWD/.gpu/eval/eval
if [ ! -f data/offline-50m/meta.json ]; then
  python3 -m mstlib data unpack .gpu/corpus/offline-50m >"$L/unpack.log" 2>&1 || { tail "$L/unpack.log"; exit 1; }
fi
nvidia-smi --query-gpu=index,name --format=csv,noheader
start=$(date +%s)
timeout "$LIMIT" python3 -m mstlib sweep --runs "$RUNS" --evaluate --results results "$@" >"$L/$NAME.log" 2>&1
echo "sweep exit $? after $(( $(date +%s) - start )) s"
python3 -m mstlib sweep --runs "$RUNS" --evaluate --results results --pack-only --pack "$OUT/$NAME.tar.gz" >>"$L/$NAME.log" 2>&1
tail -45 "$L/$NAME.log"
ls -la "$OUT"
