#!/usr/bin/env bash
# On the GPU machine, in every call that carries a transfer folder of a packed corpus (tools/stage_corpus.sh):
#   bash tools/gpu/receive_corpus.sh [NAME] [PREFIX_NAME ...]          default NAME: offline
# Says which folders have arrived; once all are there, unpacks and verifies data/NAME/ (idempotent). Each
# PREFIX_NAME is a corpus whose train split is a prefix of NAME's (offline-50m of offline): carry its
# meta.json and documents.tsv in .gpu/corpus/prefix/PREFIX_NAME/ and it is cut from data/NAME/ and verified
# against its own sha256, so it needs no transfer of its own.
set -euo pipefail
NAME=${1:-offline}; shift || true
SRC=.gpu/corpus/$NAME
python3 - "$SRC" <<'PY' || exit 3
import json, sys
from pathlib import Path
src = Path(sys.argv[1])
packs = sorted(src.glob("t*/pack.json"))
if not packs:
    sys.exit(f"no transfer folder of {src} has arrived yet")
man = json.loads(packs[0].read_text())
folders = sorted({p["path"].split("/")[0] for p in man["pieces"]})
have = [t for t in folders if all((src / p["path"]).is_file() for p in man["pieces"] if p["path"].startswith(t + "/"))]
print(f"{man['name']}: {len(have)} of {len(folders)} transfer folders here ({', '.join(have)}); "
      f"missing: {', '.join(sorted(set(folders) - set(have))) or 'none'}")
sys.exit(0 if len(have) == len(folders) else 3)
PY
python3 -m mstlib data unpack "$SRC" --quiet
for P in "$@"; do
  M=.gpu/corpus/prefix/$P
  [ -f "data/$P/meta.json" ] && python3 -m mstlib data verify --corpus "$P" >/dev/null 2>&1 && { echo "$P ok"; continue; }
  mkdir -p "data/$P"
  BYTES=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['splits']['train']['bytes'])" "$M/meta.json")
  head -c "$BYTES" "data/$NAME/train.bin" > "data/$P/train.bin"
  cp "data/$NAME/val.bin" "data/$P/val.bin"
  cp "$M/meta.json" "$M/documents.tsv" "data/$P/"
  python3 -m mstlib data verify --corpus "$P" | tail -1
done
