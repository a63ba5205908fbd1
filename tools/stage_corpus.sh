#!/usr/bin/env bash
# Stage a subset of the offline corpus for a GPU machine that has no shared folder and receives at most
# 64 MiB per transfer (working tree included).
#
#   tools/stage_corpus.sh [TOKENS] [NAME]        defaults: TOKENS=50M  NAME=offline-<tokens>
#
# 1. prepares data/NAME/ = the first TOKENS train tokens of the offline corpus (Wikipedia and Gutenberg
#    interleaved in proportion, see `python -m mstlib data describe --corpus NAME`) plus the full val split;
# 2. packs it as xz pieces in transfer folders .gpu/corpus/NAME/t00, t01, ... (56 MiB each at most; GPT-2
#    tokens compress to about 1.07 bytes/token with xz -6, so one folder holds about 50M train tokens);
# 3. prints how to carry and unpack it. On the GPU machine, carry each tNN folder (one device call each, the
#    machine must stay warm in between), then run `python -m mstlib data unpack .gpu/corpus/NAME`: it checks
#    every piece's and file's sha256 and installs data/NAME/ plus the tokenizer cache.
set -euo pipefail
cd "$(dirname "$0")/.."
TOKENS=${1:-50M}
NAME=${2:-offline-$(echo "$TOKENS" | tr '[:upper:]' '[:lower:]')}
PY=${PYTHON:-.venv/bin/python}
"$PY" -m mstlib data prepare --corpus offline --name "$NAME" --max-tokens "$TOKENS"
"$PY" -m mstlib data pack --corpus "$NAME" --out .gpu/corpus --transfer-mib "${TRANSFER_MIB:-56}"
echo
echo "Carry (one device call per folder): $(ls -d .gpu/corpus/"$NAME"/t* | tr '\n' ' ')"
echo "Then on the GPU machine: python -m mstlib data unpack .gpu/corpus/$NAME   (installs data/$NAME/)"
