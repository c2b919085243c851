#!/usr/bin/env bash
# Fault injection: kill -9 a small training run at random moments, resume it each time, and check that the
# final weights equal those of an uninterrupted run, tensor for tensor.
#
#   scripts/kill_resume.sh [KILLS] [WORK_DIR]      (default 10 kills, a fresh temporary folder)
#
# Prints one line per kill (the step the run had reached) and a summary: runs, kills, mismatching tensors.
# Exit status 0 when every tensor matches.
set -euo pipefail
cd "$(dirname "$0")/.."
KILLS=${1:-10}
WORK=${2:-$(mktemp -d)}
PY=${PYTHON:-.venv/bin/python}
export EANET_CACHE_DIR="$WORK/cache" PYTHONUNBUFFERED=1
ARGS=(train --dataset synthetic --recipe keras-example --epochs 30 --batch-size 32 --threads 1 --quiet
      --set model_args.depth=2 --set model_args.embed_dim=32 --set model_args.num_heads=4
      --set model_args.mlp_dim=32 --set eval_batch_size=100 --set checkpoint_seconds=0)

"$PY" -m eanet "${ARGS[@]}" --out "$WORK/straight"
kills=0
while [ "$kills" -lt "$KILLS" ]; do
  if [ -f "$WORK/killed/results.json" ]; then
    echo "the run finished after $kills kills"; break
  elif [ -f "$WORK/killed/checkpoint-last.pt" ]; then
    "$PY" -m eanet train --resume "$WORK/killed" --quiet & pid=$!
  else  # not started, or killed before its first checkpoint: start it (again)
    "$PY" -m eanet "${ARGS[@]}" --out "$WORK/killed" & pid=$!
  fi
  # a random moment once this process owns the run folder (its pid in .lock): 0-3 s later (a step takes
  # a few ms, so a kill lands anywhere from set-up to mid-epoch to a checkpoint being written)
  for _ in $(seq 600); do
    if [ "$(cat "$WORK/killed/.lock" 2>/dev/null)" = "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then break; fi
    sleep 0.1
  done
  sleep "$("$PY" -c 'import random; print(round(random.uniform(0, 3), 2))')"
  if kill -9 "$pid" 2>/dev/null; then
    kills=$((kills + 1))
    wait "$pid" 2>/dev/null || true
    step=$("$PY" -c "import torch,sys; print(torch.load(sys.argv[1], weights_only=True)['global_step'])" \
           "$WORK/killed/checkpoint-last.pt" 2>/dev/null || echo "none yet")
    echo "kill $kills: checkpoint at step $step"
  else
    wait "$pid"  # it had finished: its exit status must be 0
  fi
done
[ -f "$WORK/killed/results.json" ] || "$PY" -m eanet train --resume "$WORK/killed" --quiet
"$PY" - "$WORK/straight" "$WORK/killed" "$kills" <<'PY'
import sys

import torch
from safetensors.torch import load_file

a, b = (load_file(f"{d}/model.safetensors") for d in sys.argv[1:3])
mismatches = [k for k in a if k not in b or not torch.equal(a[k], b[k])] + [k for k in b if k not in a]
print(f"runs: 2 (one uninterrupted, one killed and resumed); kills: {sys.argv[3]}; tensors: {len(a)}; "
      f"mismatches: {len(mismatches)}")
sys.exit(1 if mismatches else 0)
PY
