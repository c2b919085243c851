#!/usr/bin/env bash
# eanet on a CUDA GPU: the test suite with its CUDA tests, a short training run of the default recipe, and
# the benchmark of the registered models. Every figure goes to OUT_DIR. Meant for a GPU machine whose
# PyTorch is already installed (and must stay as it is) and which may have no network.
#
#   scripts/gpu_check.sh --prepare DATA_DIR   (where CIFAR-100 is: write .gpu-data/, a CIFAR-100 subset small
#                                              enough to travel: 10,000 training and 5,000 test images as PNGs)
#   scripts/gpu_check.sh OUT_DIR              (on the GPU machine; under 10 minutes on one H200)
#
# Without CUDA it says so and skips the GPU parts; the install check and the (skipped) CUDA tests still run.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if [ "${1:-}" = "--prepare" ]; then
  DATA=${2:?usage: scripts/gpu_check.sh --prepare DATA_DIR}
  rm -rf .gpu-data
  EANET_DATA_DIR="$DATA" PYTHONPATH=src "$PY" - <<'PY'
from pathlib import Path

from PIL import Image

from eanet.data import load_dataset

ds = load_dataset("cifar100", val_fraction=0)
for split, images, count in (("train", ds.train, 10_000), ("test", ds.test, 5_000)):
    for i in range(count):
        folder = Path(".gpu-data") / split / ds.classes[int(images.labels[i])]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images.images[i].permute(1, 2, 0).numpy()).save(folder / f"{i:05d}.png")
print("wrote .gpu-data/: 10,000 training and 5,000 test images of CIFAR-100 as PNGs")
PY
  du -sh .gpu-data
  exit 0
fi

OUT=${1:?usage: scripts/gpu_check.sh OUT_DIR}
mkdir -p "$OUT"
log() { echo "== $*" | tee -a "$OUT/summary.txt"; }
: > "$OUT/summary.txt"

# 1. eanet beside the machine's torch: no dependency resolution, so pip cannot replace torch
log "install: pip install --no-deps -e . (torch stays $("$PY" -c 'import torch; print(torch.__version__)'))"
if ! "$PY" -m pip install -q --no-deps --no-build-isolation -e . >"$OUT/install.txt" 2>&1; then
  log "pip could not install the package here; using PYTHONPATH=src"
  export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
fi
missing=$("$PY" - <<'PY'
import importlib.util
needed = ["torch", "numpy", "safetensors", "huggingface_hub", "tensorboard", "matplotlib", "click", "tqdm", "yaml",
          "PIL", "pytest", "onnx", "onnxruntime", "onnxscript"]
print(" ".join(n for n in needed if importlib.util.find_spec(n) is None))
PY
)
[ -n "$missing" ] && log "missing modules (carry them as wheels): $missing"
"$PY" -c "import torch, eanet; print('torch', torch.__version__, '| CUDA', torch.cuda.is_available(), '|',
torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')" | tee -a "$OUT/summary.txt"
CUDA=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))")

# 2. the test suite; the CUDA tests run only where there is a GPU
if [ "$CUDA" = 1 ]; then
  log "tests: the whole suite, CUDA tests included"
  timeout 300 "$PY" -m pytest -q -x -p no:cacheprovider tests -rs >"$OUT/pytest.txt" 2>&1
else
  log "no CUDA here: the CUDA tests are skipped (below), and so are the training run and the GPU benchmarks"
  timeout 300 "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py -rs >"$OUT/pytest.txt" 2>&1
fi
log "tests: $(tail -1 "$OUT/pytest.txt")"
[ "$CUDA" = 1 ] || exit 0

# 3. a short run of the default recipe on the carried CIFAR-100 subset (scripts/gpu_check.sh --prepare)
if [ -d .gpu-data ]; then
  start=$(date +%s)
  timeout 240 "$PY" -m eanet train --dataset imagefolder --data-dir .gpu-data --device cuda --time-budget 2 \
    --out "$OUT/run" --jsonl >"$OUT/train.jsonl" 2>"$OUT/train.err"
  log "train (default recipe, 2-minute budget, 10,000 CIFAR-100 images, cuda): exit $?, $(( $(date +%s) - start )) s"
  "$PY" -c "import json; r = json.load(open('$OUT/run/results.json')); t = r['test'];
print(f\"  {r['model']}: {r['epochs']} epochs, {r['steps']} steps, {r['train_seconds']} s of training; test top-1 \"
      f\"{100 * t['top1']:.2f}%, top-5 {100 * t['top5']:.2f}% on {t['count']} images\")" | tee -a "$OUT/summary.txt"
else
  log "no .gpu-data/: the training run is skipped (run scripts/gpu_check.sh --prepare DATA_DIR where CIFAR-100 is)"
fi

# 4. the benchmark: the Keras example's models and the budget models, fp32, bf16, torch.compile
log "benchmark (batch 128, cuda): model, dtype, compile -> train img/s, inference img/s"
for spec in "--model eanet_keras" "--model vit_keras" "--recipe cifar100-fast" "--recipe cifar100-30min"; do
  for dtype in fp32 bf16; do
    for compile in --no-compile --compile; do
      name=$(echo "$spec $dtype $compile" | tr ' ' '_' | tr -d '-')
      if timeout 180 "$PY" -m eanet benchmark $spec --device cuda --dtype $dtype $compile --steps 10 --repeats 5 \
          --json >"$OUT/bench_$name.json" 2>"$OUT/bench_$name.err"; then
        "$PY" -c "import json; r = json.load(open('$OUT/bench_$name.json'));
print(f\"  {r['model']:<18} {r['dtype']:<5} {'compile' if r['compile'] else 'eager':<8}\"
      f\"{r['train_images_per_second']:>10.0f} {r['inference_images_per_second']:>10.0f}\")" | tee -a "$OUT/summary.txt"
      else
        log "  $spec $dtype $compile: failed ($(tail -1 "$OUT/bench_$name.err"))"
      fi
    done
  done
done
log "done: $OUT"
