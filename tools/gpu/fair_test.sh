#!/usr/bin/env bash
# The fair test's runs on one GPU machine, spread over consecutive device calls while it stays warm.
#   bash tools/gpu/fair_test.sh start [PER_GPU]    the campaign in the background (setsid: it outlives the call)
#   bash tools/gpu/fair_test.sh wait SECONDS       report progress every minute, then pack what is done
#   bash tools/gpu/fair_test.sh pack               pack every done run of the lists into $OUT/fair_test.tar.gz
# The campaign trains, in this order, run lists written here beforehand (python -m mstlib sweep ...
# --write-runs, see README "The fair test on a GPU"): .gpu/runs/first.json (no dependence on the schedule
# choice: the schedule search, then the baselines of the first rung), and, as soon as the search's runs are
# done, the runs that use the chosen schedule (the experiments named in .gpu/runs/chosen.txt, written out on
# this machine, where the search's results are) beside it; then .gpu/runs/last.json. A run already done is
# skipped, so `start` may be repeated; runs listed twice train once (the second list drops them).
# Needs data/offline (tools/gpu/receive_corpus.sh) and, for last.json's ablation runs, data/offline-50m.
# Back here: python -m mstlib sweep --unpack fair_test.tar.gz (into results/).
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu-out}; C=.gpu/campaign; mkdir -p "$C" "$OUT"
PRESET=${PRESET:-mini}
# the run store lives in an ignored folder: a later call's copy of the working tree leaves it alone
export R=${RESULTS:-.gpu/results}
cmd=${1:-status}; shift || true

lists() { ls .gpu/runs/first.json "$C"/chosen.json .gpu/runs/last.json 2>/dev/null; }

case "$cmd" in
start)
  PER_GPU=${1:-4}
  if [ -f "$C/pid" ] && kill -0 "$(cat "$C/pid")" 2>/dev/null; then echo "campaign already running (pid $(cat "$C/pid"))"; exit 0; fi
  # bash reads a script as it runs: run a copy, so a later call's copy of the working tree cannot change it
  cp "$0" "$C/campaign.sh"
  setsid nohup bash "$C/campaign.sh" run "$PER_GPU" >"$C/campaign.log" 2>&1 < /dev/null &
  echo $! >"$C/pid"; echo "campaign started (pid $!), log $C/campaign.log"
  ;;
run)
  PER_GPU=${1:-4}
  sweep() { python3 -m mstlib sweep --runs "$1" --results "$R" --per-gpu "$2" >"$C/$(basename "$1" .json).log" 2>&1; }
  echo "$(date -u +%T) first: $(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))))' .gpu/runs/first.json) runs"
  sweep .gpu/runs/first.json "$PER_GPU" & FIRST=$!
  # the chosen schedule exists once the search's runs are done: then write the runs that use it, minus first's
  [ -s .gpu/runs/chosen.txt ] || echo "$(date -u +%T) no chosen.txt: the chosen schedule's runs are in first.json"
  [ -s .gpu/runs/chosen.txt ] && until python3 -c "from mstlib import ladder; from mstlib.results import RunStore; ladder.chosen_schedule('$PRESET', RunStore('$R'))" 2>/dev/null; do
    kill -0 $FIRST 2>/dev/null || { echo "$(date -u +%T) first ended before the search was complete: no chosen runs"; break; }
    sleep 15
  done
  CHOSEN=
  if [ -s .gpu/runs/chosen.txt ] && python3 -c "from mstlib import ladder; from mstlib.results import RunStore; ladder.chosen_schedule('$PRESET', RunStore('$R'))" 2>/dev/null; then
  for e in $(cat .gpu/runs/chosen.txt); do
    python3 -m mstlib sweep --experiment "$e" --preset "$PRESET" --results "$R" --write-runs "$C/$e.json" >/dev/null
  done
  python3 - "$C" .gpu/runs/first.json $(sed "s#^#$C/#; s#\$#.json#" .gpu/runs/chosen.txt) <<'PY'
import json, sys
from mstlib.config import RunConfig
c, first, parts = sys.argv[1], sys.argv[2], sys.argv[3:]
seen = {RunConfig.from_dict(d).run_id() for d in json.load(open(first))}
out = []
for p in parts:
    for d in json.load(open(p)):
        i = RunConfig.from_dict(d).run_id()
        if i not in seen:
            seen.add(i); out.append(d)
json.dump(out, open(f"{c}/chosen.json", "w"))
print(f"chosen schedule's runs: {len(out)}")
PY
  echo "$(date -u +%T) chosen: $(python3 -c "from mstlib import ladder; from mstlib.results import RunStore; print(ladder.chosen_schedule('$PRESET', RunStore('$R')))")"
  sweep "$C/chosen.json" $(( PER_GPU / 2 > 0 ? PER_GPU / 2 : 1 )) & CHOSEN=$!
  fi
  wait $FIRST; echo "$(date -u +%T) first done"
  [ -f .gpu/runs/last.json ] && sweep .gpu/runs/last.json "$PER_GPU"; echo "$(date -u +%T) last done"
  [ -n "$CHOSEN" ] && wait $CHOSEN; echo "$(date -u +%T) campaign done"
  ;;
status|wait|pack)
  SECS=${1:-0}; T0=$(date +%s)
  while :; do
    python3 - $(lists) <<'PY'
import json, os, sys, time
from mstlib.config import RunConfig
from mstlib.results import RunStore
store = RunStore(os.environ["R"])
done = run = todo = 0; lines = []
for f in sys.argv[1:]:
    for d in json.load(open(f)):
        r = RunConfig.from_dict(d)
        log = store.run_dir(r) / "log.csv"
        if store.is_done(r):
            done += 1
        elif log.is_file() and time.time() - log.stat().st_mtime < 120:
            run += 1; n = sum(1 for _ in open(log)) - 1
            lines.append(f"  running {r.preset}/{r.method} s{r.seed} {r.run_id()} step {n}/{r.train.max_iters}")
        else:
            todo += 1
print(time.strftime("%H:%M:%S"), f"done {done}, running {run}, to do {todo}"); print("\n".join(lines))
PY
    [ $(( $(date +%s) - T0 + 60 )) -le "$SECS" ] || break
    sleep 60
  done
  [ "$cmd" = status ] && exit 0
  tail -3 "$C/campaign.log" 2>/dev/null
  nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader 2>/dev/null
  # done runs only (a run still training stays here to finish in a later call)
  python3 - "$OUT/fair_test.tar.gz" $(lists) <<'PY'
import json, os, sys
from mstlib.config import RunConfig
from mstlib.results import RunStore
from mstlib.sweep import pack
store = RunStore(os.environ["R"])
runs = [RunConfig.from_dict(d) for f in sys.argv[2:] for d in json.load(open(f))]
done = [r for r in runs if store.is_done(r)]
pack(done, store, sys.argv[1])
print(f"packed {len(done)} done runs of {len(runs)} into {sys.argv[1]}")
PY
  tar czf "$OUT/campaign_logs.tar.gz" "$C"/*.log 2>/dev/null
  ;;
*) echo "usage: $0 start [PER_GPU] | wait SECONDS | status | pack" >&2; exit 2;;
esac
