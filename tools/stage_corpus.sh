#!/usr/bin/env bash
# Stage the offline corpus (or its first TOKENS) for a GPU machine that has no shared folder and receives at
# most 64 MiB per call, working tree included.
#
#   tools/stage_corpus.sh [TOKENS|all] [NAME]     defaults: TOKENS=50M, NAME=offline-<tokens> (all: offline)
#
# 1. prepares data/NAME/ = the first TOKENS train tokens of the offline corpus (Wikipedia and Gutenberg
#    interleaved in proportion, see `python -m mstlib data describe --corpus NAME`; every prefix mixes them
#    in proportion, so offline-50m is the first 100 MB of offline's train.bin) plus the full val split;
#    `all` keeps all 146M train tokens (the fair test's ladder trains on them);
# 2. packs it as xz pieces in transfer folders .gpu/corpus/NAME/t00, t01, ... sized so that one folder and
#    the working tree fit one call (TRANSFER_MIB overrides; GPT-2 tokens compress to about 1.07 bytes/token);
# 3. prints how to carry it: one device call per folder while the machine stays warm (a warm machine keeps
#    what earlier calls brought), each running `bash tools/gpu/receive_corpus.sh NAME`, which reports the
#    folders still missing and, once all are there, unpacks and verifies data/NAME/ (every sha256).
set -euo pipefail
cd "$(dirname "$0")/.."
TOKENS=${1:-50M}
if [ "$TOKENS" = all ]; then NAME=${2:-offline}; MAX=(); else
  NAME=${2:-offline-$(echo "$TOKENS" | tr '[:upper:]' '[:lower:]')}; MAX=(--max-tokens "$TOKENS"); fi
PY=${PYTHON:-.venv/bin/python}
if [ -z "${TRANSFER_MIB:-}" ]; then
  # what travels besides the folder: tracked files and untracked files git does not ignore
  TREE=$(git ls-files -z --cached --others --exclude-standard | xargs -0 stat -c %s 2>/dev/null | awk '{s+=$1} END {print s+0}')
  TRANSFER_MIB=$(( (64 * 1048576 - TREE) / 1048576 - 4 ))  # 4 MiB for the tree to grow and for small carried files
  echo "working tree $(( TREE / 1048576 )) MiB: transfer folders of at most $TRANSFER_MIB MiB"
fi
"$PY" -m mstlib data prepare --corpus offline --name "$NAME" "${MAX[@]}"
"$PY" -m mstlib data pack --corpus "$NAME" --out .gpu/corpus --transfer-mib "$TRANSFER_MIB"
echo
echo "Carry one folder per device call, machine kept warm: $(ls -d .gpu/corpus/"$NAME"/t* | tr '\n' ' ')"
echo "and run in each: bash tools/gpu/receive_corpus.sh $NAME"
