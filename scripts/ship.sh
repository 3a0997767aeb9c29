#!/usr/bin/env bash
# Ship a trained generator (its EMA, chosen on validation) as the bundled default model, if its
# aligned gain is positive on every group (docs/TRAINING.md; issue #22 withdrew the +1.0 dB bar).
#
#   scripts/ship.sh [WEIGHTS]      # default campaign-1/best.safetensors
#
# Exports fp16 and scores it with the identity baseline and --align 4 on the eval set's three
# synthetic groups (data/eval/{train,heldout,frames-heldout}, made on first use) and on the real
# camera blur of $REAL (default ../shared/data/real-blur, validation only, never shipped), and on the
# unblurred photos of data/eval/still (recorded in the entry, not a condition), then
# `scripts/manifest_entry.py --apply` bundles it in deblur_cli/weights/ and makes it the default.
# Reports stay in $OUT (default: a temp folder).
set -euo pipefail
cd "$(dirname "$0")/.."
WEIGHTS=${1:-campaign-1/best.safetensors}
NAME=${NAME:-msdn-photos}
OUT=${OUT:-$(mktemp -d)}
REAL=${REAL:-../shared/data/real-blur}
[ -d data/eval/frames-heldout ] && [ -d data/eval/still ] || python scripts/make_eval_set.py
python -m deblur_cli weights export "$WEIGHTS" -o "$OUT/$NAME.safetensors" --dtype fp16 --overwrite
score() {  # score GROUP FOLDER
  python -m deblur_cli eval "$2" --weights "$OUT/$NAME.safetensors" --baseline identity --align 4 \
    --json "$OUT/$1.json" --overwrite | tee "$OUT/$1.txt"
}
score train data/eval/train
score heldout data/eval/heldout
score frames data/eval/frames-heldout
args=(--eval-json "$OUT/train.json" --heldout-json "$OUT/heldout.json" --frames-json "$OUT/frames.json")
if [ -d "$REAL/blur" ]; then score real "$REAL"; args+=(--real-json "$OUT/real.json"); fi
score still data/eval/still
args+=(--still-json "$OUT/still.json" --run "$(dirname "$WEIGHTS")")  # the run's still share
python scripts/manifest_entry.py "$OUT/$NAME.safetensors" "${args[@]}" --apply > "$OUT/entry.json"
echo "shipped $NAME (reports in $OUT)"
