#!/bin/bash
# The bf16 gate's A/B: each model's bf16 training and inference step with the bf16 kernels (-k-) and with
# PyTorch's autocast path (EANET_BF16_KERNELS=0, -a-), alternated, two rounds. Run on an otherwise idle machine.
#
#   docs/speed-runs/2026-12-01-gate/ab.sh OUT_DIR
OUT=$(realpath -m "${1:?usage: ab.sh OUT_DIR}"); mkdir -p "$OUT"
cd "$(dirname "$0")/../../.." || exit 1  # the repository root
E=${EANET:-eanet}
for rep in 1 2; do
  for cfg in "fast32:--recipe cifar100-fast" "m30_32:--recipe cifar100-30min" \
             "fast24:--recipe cifar100-fast --set model_args.img_size=24" \
             "keras16:--model eanet_keras --set model_args.img_size=16" \
             "keras24:--model eanet_keras --set model_args.img_size=24"; do
    name=${cfg%%:*}; args=${cfg#*:}
    # shellcheck disable=SC2086  # args is a list of words
    $E benchmark $args --dtype bf16 --no-memory --json > "$OUT/$name-k-$rep.json" 2>/dev/null
    # shellcheck disable=SC2086
    EANET_BF16_KERNELS=0 $E benchmark $args --dtype bf16 --no-memory --json > "$OUT/$name-a-$rep.json" 2>/dev/null
    echo "$(date -u +%T) $name rep $rep"
  done
done
