#!/usr/bin/env bash
# The speed table of docs/speed.md in one sitting: the Keras reference harness, then eanet's models in fp32 and
# bf16 (with the bf16 kernels, with PyTorch's autocast path and with glibc's default allocator thresholds for
# comparison), then the Keras reference again.
# Run it on an otherwise idle machine (pause long trainings with `kill -STOP PID`, resume with `kill -CONT PID`).
#
#   KERAS_REFERENCE=path/to/keras_reference.py KERAS_PYTHON=path/to/venv/bin/python scripts/speed_table.sh OUT_DIR
#
# The Keras reference needs its own virtual environment (keras + tensorflow-cpu); without KERAS_REFERENCE its rows
# are skipped. Every command's output goes to OUT_DIR/NN-name.txt (JSON for eanet's rows), the summary to stdout.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: scripts/speed_table.sh OUT_DIR}
mkdir -p "$OUT"
EANET=${EANET:-eanet}
n=0

step() {  # step NAME COMMAND...: run one row, output to OUT/NN-NAME.txt
  local name=$1; shift
  n=$((n + 1))
  local file; file=$(printf '%s/%02d-%s.txt' "$OUT" "$n" "$name")
  { echo "# $(date -u +%H:%M:%S) load $(cut -d' ' -f1 /proc/loadavg): $*"; "$@"; } > "$file" 2>&1
  echo "$file"
}

keras() {
  if [ -n "${KERAS_REFERENCE:-}" ]; then
    step "keras-$1" env KERAS_BACKEND=tensorflow TF_CPP_MIN_LOG_LEVEL=3 "${KERAS_PYTHON:-python3}" \
      "$KERAS_REFERENCE" external_attention 8 3
  fi
}

lscpu | grep 'Model name' > "$OUT/00-machine.txt"
keras 1
step eanet-keras-fp32 "$EANET" benchmark --model eanet_keras --no-memory --json
step eanet-keras-bf16 "$EANET" benchmark --model eanet_keras --dtype bf16 --no-memory --json
step eanet-keras-bf16-autocast env EANET_BF16_KERNELS=0 "$EANET" benchmark --model eanet_keras --dtype bf16 \
  --no-memory --json
step eanet-keras-bf16-mallopt-off env EANET_MALLOPT=0 "$EANET" benchmark --model eanet_keras --dtype bf16 \
  --no-memory --json
for recipe in cifar100-fast cifar100-30min; do
  step "$recipe-fp32" "$EANET" benchmark --recipe "$recipe" --no-memory --json
  step "$recipe-bf16" "$EANET" benchmark --recipe "$recipe" --dtype bf16 --no-memory --json
  step "$recipe-bf16-autocast" env EANET_BF16_KERNELS=0 "$EANET" benchmark --recipe "$recipe" --dtype bf16 \
    --no-memory --json
  step "$recipe-bf16-mallopt-off" env EANET_MALLOPT=0 "$EANET" benchmark --recipe "$recipe" --dtype bf16 \
    --no-memory --json
done
step vit-keras-bf16 "$EANET" benchmark --model vit_keras --dtype bf16 --no-memory --steps 3 --repeats 3 --json
keras 2

# summary: one line per row
"${PYTHON:-python3}" - "$OUT" <<'PY'
import json, re, sys
from pathlib import Path

for f in sorted(Path(sys.argv[1]).glob("[0-9][0-9]-*.txt")):
    text = f.read_text()
    if f.name.startswith("00-"):
        continue
    if re.match(r"\d\d-keras-\d", f.name):
        train, infer = re.search(r"train ([\d.]+)", text), re.search(r"infer ([\d.]+)", text)
        print(f"{f.stem:32s} train {train and train.group(1)} img/s, inference {infer and infer.group(1)} img/s")
        continue
    try:
        r = json.loads(text.splitlines()[-1])
    except (ValueError, IndexError):
        print(f"{f.stem:32s} failed: see {f}")
        continue
    print(f"{f.stem:32s} train {r['train_images_per_second']:7.1f} img/s ({100 * r['train_fraction_of_peak']:4.1f}% "
          f"of the {r['matmul_peak_dtype']} peak {r['matmul_peak_flops'] / 1e9:.0f} GFLOP/s), inference "
          f"{r['inference_images_per_second']:7.1f} img/s ({100 * r['inference_fraction_of_peak']:4.1f}%), "
          f"kernels {r['kernel_precision']}")
PY
