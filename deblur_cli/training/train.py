"""Training loop for MSDN: the DeblurGAN recipe (WGAN-GP + perceptual loss), resumable and distributed.

Recipe defaults, as in DeblurGAN (Kupyn et al. 2018, whose training MSDN adopts) and the MSDN paper:
Adam lr 1e-4, betas (0.5, 0.999); 300 epochs, the rate constant for the first 200 and then linear
to 1e-8 (`--steps` runs keep those proportions); 5 critic updates per generator update on the same
batch (DeblurGAN's `criticUpdates = 5` for wgan-gp); gradient penalty weight 10; generator loss
`100 * perceptual + 1 * (-D(G(x)))` with the perceptual term on VGG-19 conv5_4 (see vgg.py).
`adv_weight=0` drops the critic entirely for PSNR-oriented training.

Exact resume: the checkpoint holds both networks, both optimizers and schedulers, the AMP
scalers, the torch (CPU and CUDA) and Python RNG states, the step and both configs. Data
randomness is a function of (seed, key/step) (see data.py), the DataLoader gets its own generator
so it never draws from the global RNG, and validation draws no random numbers. So train 2k steps
== train k, kill, resume, train k, bit for bit on CPU (tests/test_train.py).

The settings live in trainconfig.py, the batches in trainingdata.py, validation in validation.py, the
schedules in schedules.py, the processes' RNG streams in distributed.py and the run folder's log and
best weights in runfiles.py; this module is the loop.

Checkpoints contain only tensors and primitives so they load with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import DataLoader

from deblur_cli.training import data as D
from deblur_cli.training import synthetic as S
from deblur_cli.training.budget import StepStart, over_budget
from deblur_cli.weights.checkpoint import (CHECKPOINT, LEARNED_KEYS, first_non_finite, load_training_checkpoint,
                                  save_checkpoint, state_error)
from deblur_cli.weights.configfile import config_from, config_json, side_files
from deblur_cli.training.distributed import Dist, broadcast, gather_rng, init_distributed, rng_state, set_rng_state
from deblur_cli.errors import MsdnError, first_line
from deblur_cli.files import atomic_write_bytes, remove_stale_temps
from deblur_cli.inference.engine import autocast, resolve_amp, select_device
from deblur_cli.nets.model import MSDN, MSDNConfig, count_parameters
from deblur_cli.training.resume import merge, with_absolute_paths
from deblur_cli.training.runfiles import BEST, METRICS, MetricsLog, export_generator
from deblur_cli.training.schedules import cosine_factor, ema_decay_at, ema_update, lr_factor
from deblur_cli.training.trainconfig import PAPER_RECIPE, TrainConfig
from deblur_cli.training.trainstep import (ContentLoss, Nets, build_nets, content_loss, critic_updates, generator_update,
                                  wrap_for_training)
from deblur_cli.training.trainingdata import DataSplit, pairs, prepare_data
from deblur_cli.training.validation import SyntheticValidation, Validation, best_so_far

# Re-exported: `from deblur_cli.training.train import train, TrainConfig, PAPER_RECIPE` is the training API.
__all__ = ["BEST", "CHECKPOINT", "METRICS", "PAPER_RECIPE", "DataSplit", "SyntheticValidation", "TrainConfig",
           "TrainResult", "Validation", "cosine_factor", "ema_decay_at", "ema_update", "lr_factor", "prepare_data",
           "rng_state", "set_rng_state", "train"]
_best_so_far = best_so_far  # the name the tests know

Callback = Callable[[dict[str, Any]], None]


@dataclass
class TrainResult:
    step: int
    best_val_psnr: float | None
    checkpoint: Path | None
    exported: Path | None
    run_dir: Path
    generator: MSDN  # the final generator (training form, on the training device)
    stopped: bool = False  # ended early by `stop` (SIGTERM), with a checkpoint of its last finished step


def _select_device(name: str, local_rank: int | None) -> torch.device:
    device = select_device(name)
    if local_rank is not None and device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return device


def train(config: TrainConfig | None, model_config: MSDNConfig | None = None, *, resume: Path | None = None,
          overrides: Mapping[str, Any] | None = None, model_overrides: Mapping[str, Any] | None = None,
          recipe: tuple[str, Mapping[str, Any]] | None = None, callback: Callback | None = None,
          overwrite: bool = False, stop: Callable[[], bool] | None = None) -> TrainResult:
    """Train (or resume training) a generator; `callback(event)` receives progress on rank 0.

    Events are dicts with "event": "notice" | "start" | "step" | "val" | "checkpoint" | "time_limit" |
    "stopped" | "end". `stop()` asking to stop (the CLI binds it to SIGTERM) ends the run as a time limit
    does: the step under way is finished or rolled back and the last finished one checkpointed. A resumed run trains with its stored settings and `overrides`, the options given again
    (resume.py; `config` must be None then). A fresh run refuses a run folder that already holds a
    checkpoint, and an existing `export` file or its config beside it, unless `overwrite`: hours of
    someone's training are not replaced silently.
    """
    notices: tuple[str, ...] = ()
    own_export = None  # a resumed run's own export is its to replace
    checkpoint = load_training_checkpoint(resume) if resume is not None else None
    if checkpoint is not None:
        if config is not None:
            raise ValueError("a resumed run takes its settings from the checkpoint: pass overrides, not a config")
        assert resume is not None
        stored = _stored_config(checkpoint, resume)
        own_export = stored.export
        resumed = merge(stored, overrides or {},
                        stored_model=config_from(checkpoint["model_config"], f"{resume} model_config"),
                        given_model=model_overrides, recipe=recipe, step=int(checkpoint["step"]),
                        run_dir=resume if Path(resume).is_dir() else Path(resume).parent)
        config, model_config, notices = resumed.config, resumed.model_config, resumed.notices
    elif config is None:
        raise ValueError("a fresh run needs a TrainConfig")
    else:
        config = with_absolute_paths(config)
        if Path(config.checkpoint_dir).exists() and not Path(config.checkpoint_dir).is_dir():
            raise MsdnError(f"--checkpoint-dir {config.checkpoint_dir} is a file, not a folder: name a folder for "
                            "the run")
        if not overwrite and (Path(config.checkpoint_dir) / CHECKPOINT).is_file():
            raise MsdnError(f"{config.checkpoint_dir} already holds a training run: continue it with --resume "
                            f"{config.checkpoint_dir}, choose another --checkpoint-dir, or pass --overwrite")
    if config.export and Path(config.export).exists() and not Path(config.export).is_file():
        from deblur_cli.imaging.images import file_kind

        raise MsdnError(f"--export {config.export} is {file_kind(Path(config.export))}: name a .safetensors file")
    if config.export and config.export != own_export and not overwrite:  # the export and the config written beside it
        for target in (Path(config.export), side_files(Path(config.export))[0]):
            if target.exists():
                raise MsdnError(f"{target} already exists (pass --overwrite to replace it)")
    model_config = model_config or MSDNConfig()
    if config.deep_supervision > 0 and getattr(model_config, "scales", 1) < 2:
        raise MsdnError("--deep-supervision weights the coarser passes of a multi-scale network: it needs "
                        "--scales 2 or more")
    ddp = init_distributed(config.device)
    try:
        return _train(config, model_config, checkpoint, ddp, callback if ddp.main else None, notices, resume, stop)
    finally:
        if ddp.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _stored_config(checkpoint: Mapping[str, Any], path: Path) -> TrainConfig:
    """The TrainConfig a checkpoint stores; a damaged one is one line."""
    try:
        return TrainConfig.from_dict(dict(checkpoint["train_config"]))
    except (TypeError, ValueError) as exc:
        raise MsdnError(f"{path} holds an invalid train_config ({first_line(exc)})") from None


@dataclass
class _Run:
    """One training run in progress: its settings, parts, and the counters the loop advances."""

    config: TrainConfig
    model_config: MSDNConfig
    ddp: Dist
    device: torch.device
    amp: str | None
    nets: Nets
    validation: Validation | SyntheticValidation
    emit: Callback
    run_dir: Path
    total: int
    val_every: int
    log: MetricsLog | None = None
    step: int = 0
    best: float | None = None
    val_pending: bool = False
    val_seconds: float = 0.0
    started: float = field(default_factory=time.perf_counter)
    tick: float = 0.0
    last_checkpoint: Path | None = None
    stop: Callable[[], bool] | None = None
    stopped: bool = False

    def __post_init__(self) -> None:
        self.tick = self.started

    def out_of_time(self, ahead: float = 0.0) -> bool:
        """Whether to stop now: the --max-minutes budget is spent, or `stop()` asks for it (rank 0 decides)."""
        if not self.stoppable:
            return False
        asked = self.stop is not None and self.stop()
        over = asked or over_budget(self.started, self.config.max_minutes, ahead)
        over = bool(broadcast(float(over))) if self.ddp.world > 1 else over
        self.stopped = self.stopped or (over and asked)
        return over

    @property
    def stoppable(self) -> bool:
        return self.config.max_minutes is not None or self.stop is not None

    def stop_event(self) -> dict[str, Any]:
        if self.stopped:
            return {"event": "stopped", "step": self.step}
        return {"event": "time_limit", "step": self.step, "minutes": self.config.max_minutes}


def _train(config: TrainConfig, model_config: MSDNConfig, checkpoint: dict[str, Any] | None, ddp: Dist,
           callback: Callback | None, notices: tuple[str, ...] = (), source: Path | None = None,
           stop: Callable[[], bool] | None = None) -> TrainResult:
    emit = callback or (lambda event: None)
    for notice in notices:
        emit({"event": "notice", "message": notice})
    device = _select_device(config.device, ddp.local_rank)
    amp_name = resolve_amp(config.amp, device)
    autocast(amp_name, device)  # refuse an impossible --amp before any data is read
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    # channels_last: oneDNN and cuDNN run NHWC convolutions faster (1-thread CPU step: 5.8 vs 4.4 samples/s)
    channels_last = config.channels_last if config.channels_last is not None else device.type in ("cuda", "cpu")
    split = prepare_data(config)
    content_fn = content_loss(config, device) if config.content_weight > 0 else None

    torch.manual_seed(D.mix_seed(config.seed, ddp.rank))
    random.seed(D.mix_seed(config.seed, ddp.rank, 1))
    sampler = D.EpochSampler(len(split.train), config.batch_size, config.seed, ddp.rank, ddp.world,
                             fixed=config.fixed_crops)
    total = config.steps or config.epochs * sampler.steps_per_epoch
    nets = build_nets(config, model_config, device, amp_name, channels_last, total)
    if checkpoint is not None:
        _restore(checkpoint, source, nets.restorable(), ddp.rank)
    wrap_for_training(nets, config, ddp, device)
    if nets.ema is not None and checkpoint is not None and checkpoint.get("ema"):
        _restore(checkpoint, source, {"ema": nets.ema}, None)
    bank = S.PhotoBank(split.train) if config.synthetic_blur and not config.fixed_crops else None
    loader = None if bank is not None else DataLoader(
        D.CropDataset(split.train, config.crop, config.seed, flips=True),
        batch_size=config.batch_size, sampler=sampler, num_workers=config.workers,
        pin_memory=device.type == "cuda", persistent_workers=config.workers > 0,
        generator=torch.Generator(),  # keeps the loader off the global RNG (exact resume)
    )
    validation = (SyntheticValidation if bank is not None else Validation)(config, split, device)
    run = _Run(config, model_config, ddp, device, amp_name, nets, validation, emit, Path(config.checkpoint_dir), total,
               config.val_every or (max(1, total // 10) if config.steps else sampler.steps_per_epoch), stop=stop)
    if checkpoint is not None:
        run.step, run.best = int(checkpoint["step"]), best_so_far(checkpoint, validation.metric)
        run.val_pending = bool(checkpoint.get("val_pending"))
    _open_run_dir(run, resumed=checkpoint is not None)
    emit({"event": "start", "step": run.step, "total_steps": total, "train_files": len(split.train),
          "val_files": len(validation), "skipped": split.skipped, "device": str(device),
          "amp": amp_name or "none", "parameters": count_parameters(nets.generator), "world_size": ddp.world,
          "steps_per_epoch": sampler.steps_per_epoch, "run_dir": str(run.run_dir)})
    run.started = run.tick = time.perf_counter()
    if run.val_pending:  # the validation a time limit postponed, then a checkpoint that no longer waits for it
        _validate(run)
        run.val_pending = False
        _checkpoint(run, announce=False)
    batches = pairs(loader, sampler, bank, config, device, run.step, total, ddp.rank, channels_last)
    for run.step, blurred, sharp in batches:
        if not _step(run, blurred, sharp, content_fn) or _after_step(run):
            break
    return _finish(run)


def _open_run_dir(run: _Run, resumed: bool) -> None:
    """Rank 0: the run folder, cleared of a killed run's temporary files, and its metrics log."""
    if not run.ddp.main:
        return
    run.run_dir.mkdir(parents=True, exist_ok=True)
    for folder in {run.run_dir, *([Path(run.config.export).parent] if run.config.export else [])}:
        remove_stale_temps(folder)  # left by a run killed mid-write (SIGKILL, power loss)
    run.log = MetricsLog(run.run_dir, run.step if resumed else None)


def _record(run: _Run, record: dict[str, Any]) -> None:
    if run.log is not None:
        run.log.write(record)
    run.emit(record)


def _refuse_divergence(run: _Run, record: Mapping[str, Any]) -> None:
    """A NaN or infinite loss ends the run before anything is written: the last checkpoint and best
    weights stay as they were (a diverged step would replace them with NaN)."""
    bad = next((k for k, v in record.items() if isinstance(v, float) and not math.isfinite(v)), None)
    if bad is not None:
        raise MsdnError(f"training diverged at step {run.step + 1} ({bad} is {record[bad]}); nothing of it was "
                        f"saved, {run.run_dir} keeps its last checkpoint: resume with a lower --lr")


def _checkpoint(run: _Run, announce: bool = True) -> None:
    """Gather every rank's RNG streams and write the checkpoint (rank 0), never one holding NaN."""
    rngs = gather_rng(run.ddp)
    if run.ddp.main:
        states = run.nets.states()
        bad = first_non_finite({key: states[key] for key in LEARNED_KEYS})
        if bad is not None:
            raise MsdnError(f"training diverged at step {run.step} ({bad} holds NaN or infinite values); nothing "
                            f"of it was saved, {run.run_dir} keeps its last checkpoint: resume with a lower --lr")
        state = {**states, "rng": rngs, "step": run.step, "total_steps": run.total,
                 "best_val_psnr": run.best, "best_metric": run.validation.metric, "val_pending": run.val_pending,
                 "model_config": run.model_config.to_dict(), "train_config": run.config.to_dict()}
        run.last_checkpoint = run.run_dir / CHECKPOINT
        save_checkpoint(run.last_checkpoint, state)
        if announce:
            run.emit({"event": "checkpoint", "step": run.step, "path": str(run.last_checkpoint)})


def _validate(run: _Run) -> None:
    """Score the shipped generator (rank 0); a new best is exported to best.safetensors at once."""
    if len(run.validation) and run.ddp.main:
        val_start = time.perf_counter()
        scores = run.validation.run(run.nets.shipped, run.amp)
        scores["seconds"] = run.val_seconds = time.perf_counter() - val_start
        if run.best is None or scores["psnr"] > run.best:
            run.best = scores["psnr"]
            export_generator(run.run_dir / BEST, run.nets.shipped, run.model_config, run.step, scores["psnr"])
        _record(run, {"event": "val", "step": run.step, **scores, "best_psnr": run.best})
    if run.ddp.world > 1:
        run.best = broadcast(run.best)
        dist.barrier()
    run.tick = time.perf_counter()


def _step(run: _Run, blurred: Tensor, sharp: Tensor, content_fn: ContentLoss | None) -> bool:
    """One training step (critic updates, then the generator's); False when the time budget ran out
    during the critic updates, with the step rolled back and checkpointed."""
    config, nets, device = run.config, run.nets, run.device
    record: dict[str, Any] = {"event": "step", "step": run.step + 1, "lr": nets.opt_g.param_groups[0]["lr"]}
    began = StepStart({"critic": nets.critic, "opt_d": nets.opt_d, "scaler_d": nets.scaler_d}, rng_state) \
        if run.stoppable and nets.critic is not None else None
    assert nets.g_forward is not None
    with autocast(run.amp, device):
        if config.deep_supervision > 0:  # every pass's output, coarsest first
            *coarse, fake = nets.g_forward(blurred, all_scales=True)
        else:
            coarse, fake = [], nets.g_forward(blurred)
    if nets.d_train is not None:
        critic_record = critic_updates(nets, config, run.amp, fake, sharp,
                                       run.out_of_time if began is not None else None)
        if critic_record is None and began is not None:  # out of time mid-step: back to the last finished step
            began.restore(set_rng_state)
            _checkpoint(run)
            run.emit(run.stop_event())
            return False
        record.update(critic_record or {})
    loss_g = generator_update(nets, config, run.amp, fake, sharp, content_fn, record, coarse)
    _refuse_divergence(run, {**record, "loss_g": loss_g})
    run.step += 1
    record["loss_g"] = loss_g
    now = time.perf_counter()
    record["samples_per_s"] = config.batch_size * run.ddp.world / max(now - run.tick, 1e-9)
    run.tick = now
    _record(run, record)
    return True


def _after_step(run: _Run) -> bool:
    """Validate and checkpoint when due; True when the time budget ends this slice of the run."""
    if run.step % run.val_every == 0 or run.step == run.total:
        # a validation expected to overrun the budget waits for the resumed run (the checkpoint says so)
        run.val_pending = run.out_of_time(ahead=run.val_seconds)
        if not run.val_pending:
            _validate(run)
    out_of_time = run.val_pending or run.out_of_time()
    if run.step % run.config.checkpoint_every == 0 or run.step == run.total or out_of_time:
        _checkpoint(run)
        run.tick = time.perf_counter()
    if out_of_time and (run.step < run.total or run.val_pending):
        run.emit(run.stop_event())
        return True
    return False


def _finish(run: _Run) -> TrainResult:
    """Rank 0: best.safetensors (the last generator if nothing was validated), the --export copy, the end event."""
    exported = None
    if run.ddp.main:
        if not (run.run_dir / BEST).is_file():  # no validation ran: the last generator is the result
            export_generator(run.run_dir / BEST, run.nets.shipped, run.model_config, run.step, None)
        if run.config.export and run.step == run.total and not run.val_pending:  # a --max-minutes slice exports at the end
            exported = Path(run.config.export)
            exported.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(exported, (run.run_dir / BEST).read_bytes())
            atomic_write_bytes(side_files(exported)[0], config_json(run.model_config))
        if run.log is not None:
            run.log.close()
        run.emit({"event": "end", "step": run.step, "best_val_psnr": run.best,
                  "exported": str(exported) if exported else None})
    return TrainResult(step=run.step, best_val_psnr=run.best, checkpoint=run.last_checkpoint, exported=exported,
                       run_dir=run.run_dir, generator=run.nets.generator,
                       stopped=run.stopped and (run.step < run.total or run.val_pending))


def _restore(checkpoint: Mapping[str, Any], source: Path | None, parts: Mapping[str, Any], rank: int | None) -> None:
    """Load the saved states into `parts` (and the RNG streams of `rank`); a damaged checkpoint
    (a state missing, a tensor of the wrong shape) is one line, not a traceback."""
    try:
        for key, part in parts.items():
            part.load_state_dict(checkpoint[key])
        if rank is not None:
            set_rng_state(checkpoint["rng"][rank] if isinstance(checkpoint["rng"], list) else checkpoint["rng"])
    except (KeyError, RuntimeError, ValueError, TypeError, IndexError, AttributeError) as exc:
        raise MsdnError(f"{source} is a damaged training checkpoint ({state_error(exc)})") from None
