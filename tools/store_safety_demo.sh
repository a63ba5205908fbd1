#!/usr/bin/env bash
# What a hostile user of the run store sees, on the smoke preset (CPU, about 5 minutes on 2 cores):
#   bash tools/store_safety_demo.sh [TREE]
# TREE (default: this checkout) is a checkout of mstlib, e.g. an older commit's worktree
# (git worktree add --detach /tmp/old 350d6a1) to see the same cases before the run store was made safe; it
# runs with this checkout's .venv (PY overrides) and mstlib from TREE. Each case prints its exit status and
# last line: a second trainer of one run, a sweep stopped with SIGTERM, a non-finite setting, a negative
# --stop-after, a truncated results pack, the smoke corpus on first use, data verify and the evaluation sets.
HERE=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-$HERE/.venv/bin/python}
[ -d "$HERE/../shared" ] && export MST_SHARED_DIR=${MST_SHARED_DIR:-$(cd "$HERE/../shared" && pwd)}
cd "${1:-$HERE}" || exit 2; export PYTHONPATH=.
W=$(mktemp -d); R=$W/results; M="$PY -m mstlib"
say() { echo; echo "== $*"; }
say "E. train --preset smoke on a clone without data/offline-smoke"
[ "$PWD" = "$HERE" ] || rm -rf data/offline-smoke  # this checkout's own copy is kept
$M train --preset smoke --method dense --results $R --no-progress > $W/e.log 2>&1; echo "exit $?"; tail -2 $W/e.log
# an older checkout may not make the smoke corpus itself (case E): this checkout makes it
[ -d data/offline-smoke ] || { (cd "$HERE" && "$PY" -m mstlib train --preset smoke --method dense --set train.max_iters=1 \
  --results "$W/make-corpus" --no-progress >/dev/null 2>&1); mkdir -p data; cp -r "$HERE/data/offline-smoke" data/; }
say "A. two trainers on one run id"
$M train --preset smoke --method mst --seed 5 --set train.max_iters=60 --results $R --no-progress > $W/a1.log 2>&1 & P1=$!
sleep 3; $M train --preset smoke --method mst --seed 5 --set train.max_iters=60 --results $R --no-progress > $W/a2.log 2>&1; echo "second exit $?"; tail -1 $W/a2.log
wait $P1; echo "first exit $?"
L=$(ls $R/smoke/mst/*/log.csv | head -1); echo "log rows $(($(wc -l < $L)-1)), distinct steps $(tail -n +2 $L | cut -d, -f1 | sort -u | wc -l)"
say "B. sweep stopped with SIGTERM"
ls -d /tmp/mstlib-sweep-* 2>/dev/null | wc -l > $W/tmpbefore
setsid $M sweep --preset smoke --methods rigl --seeds 7 --set train.max_iters=400 --results $R > $W/b.log 2>&1 & S=$!
for i in $(seq 60); do pgrep -f "mstlib train.*$W" >/dev/null && break; sleep 0.5; done; sleep 2
kill -TERM $S; sleep 3
echo "sweep alive: $(kill -0 $S 2>/dev/null && echo yes || echo no); trainers left: $(pgrep -fc "mstlib train.*$W" || true); temp folders left: $(( $(ls -d /tmp/mstlib-sweep-* 2>/dev/null | wc -l) - $(cat $W/tmpbefore) ))"
pkill -f "mstlib train.*$W" 2>/dev/null; sleep 1
say "C. --set train.lr=Infinity --set train.max_iters=1"
$M train --preset smoke --method dense --seed 8 --set train.lr=Infinity --set train.max_iters=1 --results $R --no-progress > $W/c.log 2>&1; echo "exit $?"; tail -1 $W/c.log
D=$(ls -d $R/smoke/dense/* 2>/dev/null | while read d; do grep -l '"lr": Infinity' $d/config.json 2>/dev/null; done | head -1)
[ -n "$D" ] && echo "stored: $(ls $(dirname $D)); final_val_loss: $(grep -o '"final_val_loss": [^,]*' $(dirname $D)/metrics.json 2>/dev/null)"
say "D. --stop-after -1"
$M train --preset smoke --method dense --seed 9 --stop-after -1 --results $R --no-progress > $W/d.log 2>&1; echo "exit $?"; tail -1 $W/d.log
say "F. a truncated results pack"
$M sweep --preset smoke --methods dense --results $R --pack $W/p.tar.gz > /dev/null 2>&1; head -c 2000 $W/p.tar.gz > $W/t.tar.gz
$M sweep --unpack $W/t.tar.gz --results $W/other > $W/f.log 2>&1; echo "exit $?"; tail -1 $W/f.log | cut -c1-300
say "G. data verify names the evaluation sets"
$M data verify > $W/g.log 2>&1; echo "exit $?"; grep -i -c "eval\|lambada\|wikitext" $W/g.log
rm -rf $W
