#!/usr/bin/env python
"""Resume a training run on a lent GPU for a few minutes, in one command, and bring back what matters.

    python scripts/gpu_burst.py campaign-frames "$OUT" --minutes 9      # on the GPU machine

Why a script: a GPU is lent rarely and briefly (about 15 minutes a session, at most 10 per command,
a few files of 16 MiB back), so the burst must start at once and waste nothing. It forks RUN's
checkpoint into a scratch run with a batch that fills the GPU and a constant learning rate (the
burst ends on the clock, not at a step count, so a decaying schedule would never reach its end),
trains through the normal `msdn train --resume` path in bf16 with `--render-workers` processes
rendering the synthetic blur ahead of the GPU, stops a minute before `--minutes`, and writes to OUT:

* `last.pt`: the checkpoint without Adam's moments (generator + EMA: about 12 MB, under the
  transfer limit; Adam restarts, as `fork_run.py reset_optimizer=1` does),
* `best.safetensors`, `metrics.jsonl`, `train.log`: the EMA chosen by validation and the curve.

Merge it back on CPU: `python scripts/fork_run.py OUT/last.pt campaign-gpu batch_size=16
render_workers=0 'device="auto"'` and resume that folder as usual (docs/TRAINING.md). The same code
path dry-runs on CPU in the tests (`--device cpu --steps 2`).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from fork_run import fork

from deblur_cli.weights.checkpoint import CHECKPOINT, load_training_checkpoint, save_checkpoint

MARGIN_MINUTES = 1.0  # start-up, the final checkpoint and the copy back
BACK = ("best.safetensors", "metrics.jsonl")


def burst_changes(checkpoint: dict, work: Path, batch: int, lr: float | None, steps: int, workers: int) -> dict:
    """The fork's changes: a big batch, a constant lr for `steps` more steps, this machine's folders."""
    train = checkpoint["train_config"]
    changes = {"batch_size": batch, "checkpoint_dir": str(work), "render_workers": workers,
               "schedule": "paper", "constant_fraction": 1.0, "steps": int(checkpoint["step"]) + steps,
               "lr": lr if lr is not None else train["lr"], "reset_optimizer": 1, "export": None}
    if train.get("val_real") and not Path(train["val_real"]).is_dir():
        changes["val_real"] = None  # the real-blur pairs stay on the CPU machines
    return changes


def slim(checkpoint: dict) -> dict:
    """The checkpoint without Adam's moments: small enough to come back, still resumable."""
    out = {**checkpoint, "opt_g": {**checkpoint["opt_g"], "state": {}}}
    if checkpoint.get("opt_d"):
        out["opt_d"] = {**checkpoint["opt_d"], "state": {}}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="run folder or checkpoint to continue")
    ap.add_argument("out", type=Path, help="folder for what comes back (created)")
    ap.add_argument("--minutes", type=float, default=9.0, help="wall-time limit of the whole command")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--amp", default="bf16")
    ap.add_argument("--batch", type=int, default=64, help="crops per step")
    ap.add_argument("--lr", type=float, default=None, help="constant learning rate (default: the run's)")
    ap.add_argument("--steps", type=int, default=1_000_000, help="at most this many steps (the clock stops it first)")
    ap.add_argument("--render-workers", type=int, default=14)
    ap.add_argument("--data", type=Path, default=Path("data/photos/train"))
    ap.add_argument("--val-data", type=Path, default=Path("data/photos/val"))
    ap.add_argument("--val-every", type=int, default=500)
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="msdn-burst-") as scratch:
        work = Path(scratch) / "run"
        work.mkdir()
        source = load_training_checkpoint(args.run)
        changes = burst_changes(source, work, args.batch, args.lr, args.steps, args.render_workers)
        save_checkpoint(work / CHECKPOINT, fork(source, changes))
        minutes = max(args.minutes - MARGIN_MINUTES, 0.1)
        command = [sys.executable, "-m", "deblur_cli", "train", "--resume", str(work), "--data", str(args.data),
                   "--val-data", str(args.val_data), "--device", args.device, "--amp", args.amp,
                   "--max-minutes", str(minutes), "--val-every", str(args.val_every),
                   "--checkpoint-every", str(10 * args.val_every)]
        with open(args.out / "train.log", "w") as log:
            code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode
        if (work / CHECKPOINT).is_file():
            done = load_training_checkpoint(work)
            save_checkpoint(args.out / CHECKPOINT, slim(done))
            print(f"burst: steps {source['step']} -> {done['step']} at batch {args.batch}")
        for name in BACK:
            if (work / name).is_file():
                shutil.copyfile(work / name, args.out / name)
    return code


if __name__ == "__main__":
    sys.exit(main())
