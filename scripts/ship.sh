#!/usr/bin/env bash
# Ship the campaign's best generator (its EMA, chosen on validation) as the bundled default model,
# if its aligned gain on the held-out blur family clears the bar (docs/TRAINING.md, issue #12).
#
#   scripts/ship.sh [WEIGHTS]      # default campaign/best.safetensors
#
# Exports fp16, scores it on both eval groups (data/eval/{train,heldout}, made on first use) with
# the identity baseline and --align 4, then `scripts/manifest_entry.py --apply` bundles it in
# deblur_cli/weights/ and makes it the default. Reports stay in $OUT (default: a temp folder).
set -euo pipefail
cd "$(dirname "$0")/.."
WEIGHTS=${1:-campaign/best.safetensors}
NAME=${NAME:-msdn-photos}
OUT=${OUT:-$(mktemp -d)}
[ -d data/eval/heldout ] || python scripts/make_eval_set.py
python -m deblur_cli weights export "$WEIGHTS" -o "$OUT/$NAME.safetensors" --dtype fp16 --overwrite
for group in train heldout; do
  python -m deblur_cli eval "data/eval/$group" --weights "$OUT/$NAME.safetensors" --baseline identity --align 4 \
    --json "$OUT/$group.json" --overwrite | tee "$OUT/$group.txt"
done
python scripts/manifest_entry.py "$OUT/$NAME.safetensors" --eval-json "$OUT/train.json" \
  --heldout-json "$OUT/heldout.json" --apply > "$OUT/entry.json"
echo "shipped $NAME (reports in $OUT)"
