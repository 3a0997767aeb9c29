"""Fork a training run with a changed recipe, for comparisons from one checkpoint (docs/TRAINING.md).

    python scripts/fork_run.py campaign runs/crop256 crop=256 batch_size=4
    python -m deblur_cli train --resume runs/crop256 --threads 1 --max-minutes 60 --val-every 200

`--resume` refuses a flag that would change what a run computes, so that a resumed run repeats
nothing; a deliberate fork changes the stored settings instead. Values are JSON (`lr=2e-3`,
`blur_families=["poly","walk"]`); with a changed `lr` the run continues the schedule a run started
at that lr has. `reset_optimizer=1` drops Adam's moments (measured in
session 4: changing the loss but keeping them lost 0.2 dB). A fork that turns the adversarial term
on (`adv_weight=1`) of a run that had none gets a freshly initialised critic at the fork's lr, so a
PSNR-trained generator can be finished the way DeblurGAN-style models are.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch

from deblur_cli.weights.checkpoint import CHECKPOINT, load_training_checkpoint, save_checkpoint
from deblur_cli.nets.architectures import config_from_dict
from deblur_cli.nets.model import MSDNConfig
from deblur_cli.training.trainconfig import TrainConfig
from deblur_cli.training.trainstep import build_nets, lr_schedule

TRAIN_FIELDS = frozenset(f.name for f in dataclasses.fields(TrainConfig))  # a stored config may predate some
MODEL_FIELDS = frozenset(f.name for f in dataclasses.fields(MSDNConfig))


def fork(checkpoint: dict, changes: dict) -> dict:
    """The checkpoint with `changes` applied to its train_config (or model_config for model fields)."""
    reset = bool(changes.pop("reset_optimizer", False))
    train, model = dict(checkpoint["train_config"]), dict(checkpoint["model_config"])
    for key, value in changes.items():
        target = train if key in train or key in TRAIN_FIELDS else model if key in model or key in MODEL_FIELDS else None
        if target is None:
            raise SystemExit(f"error: {key!r} is neither a train_config nor a model_config field")
        target[key] = tuple(value) if isinstance(value, list) else value
    # The fork's folder starts without best.safetensors, so its best score starts afresh too: carried over,
    # a parent's best that no validation of the fork beats left best.safetensors as whatever generator
    # the fork's first slice ended with, never updated again.
    out = {**checkpoint, "train_config": train, "model_config": model, "best_val_psnr": None}
    config = TrainConfig.from_dict(train)
    if "lr" in changes:  # the schedule a run started at the new lr has, from the checkpoint's step on
        step = out["sched_g"]["last_epoch"]
        lr = config.lr * lr_schedule(config, config.steps or checkpoint["total_steps"])(step)
        sched = {**out["sched_g"], "base_lrs": [config.lr], "_last_lr": [lr]}
        groups = [{**g, "lr": lr, "initial_lr": config.lr} for g in out["opt_g"]["param_groups"]]
        out["sched_g"], out["opt_g"] = sched, {**out["opt_g"], "param_groups": groups}
    if reset:
        out["opt_g"] = {**out["opt_g"], "state": {}}
    if config.adv_weight > 0 and not checkpoint.get("critic"):
        out.update(_fresh_critic(out, config))
    return out


def _fresh_critic(checkpoint: dict, config: TrainConfig) -> dict:
    """The critic's parts of a run that never had one: new weights and Adam, its lr schedule where the generator's is."""
    model = config_from_dict(checkpoint["model_config"])
    torch.manual_seed(config.seed)  # the same fork command gives the same critic
    nets = build_nets(config, model, torch.device("cpu"), None, False, config.steps or checkpoint["total_steps"])
    lr = checkpoint["sched_g"]["_last_lr"]
    sched = {**nets.sched_d.state_dict(), **{k: checkpoint["sched_g"][k] for k in ("last_epoch", "_step_count")},
             "_last_lr": lr}
    opt = nets.opt_d.state_dict()
    opt["param_groups"] = [{**g, "lr": lr[0]} for g in opt["param_groups"]]
    return {"critic": nets.critic.state_dict(), "opt_d": opt, "sched_d": sched, "scaler_d": nets.scaler_d.state_dict()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", type=Path, help="run folder or checkpoint to fork")
    ap.add_argument("run", type=Path, help="new run folder (must not exist)")
    ap.add_argument("changes", nargs="*", help="field=JSON value")
    args = ap.parse_args()
    changes = {}
    for item in args.changes:
        key, _, text = item.partition("=")
        try:
            changes[key] = json.loads(text)
        except json.JSONDecodeError:
            changes[key] = text  # a bare string, e.g. content_loss=psnr
    args.run.mkdir(parents=True, exist_ok=False)
    changes.setdefault("checkpoint_dir", str(args.run.resolve()))
    out = fork(load_training_checkpoint(args.source), changes)
    save_checkpoint(args.run / CHECKPOINT, out)
    print(f"forked step {out['step']} of {args.source} into {args.run}: {args.changes}")


if __name__ == "__main__":
    main()
