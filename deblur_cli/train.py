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

Checkpoints contain only tensors and primitives so they load with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader

from deblur_cli import data as D
from deblur_cli import losses as L
from deblur_cli import shake
from deblur_cli import synthetic as S
from deblur_cli.budget import StepStart, over_budget
from deblur_cli.checkpoint import CHECKPOINT, load_training_checkpoint, save_checkpoint, state_error
from deblur_cli.configfile import config_from, config_json, side_files
from deblur_cli.errors import MsdnError, first_line
from deblur_cli.files import atomic_write_bytes, remove_stale_temps
from deblur_cli.inference import AMP_CHOICES, autocast, deblur, resolve_amp, select_device
from deblur_cli.metrics import psnr, ssim
from deblur_cli.model import MSDN, MSDNConfig, count_parameters
from deblur_cli.resume import merge, with_absolute_paths
from deblur_cli.weightfile import save_weights

CONTENT_LOSSES = ("perceptual", "l1", "charbonnier", "psnr")
SCHEDULES = ("paper", "cosine")
BEST = "best.safetensors"
METRICS = "metrics.jsonl"
VAL_CROP = 256  # side of the validation crops of synthetic-blur runs
DIRECT_PIXELS = 1 << 21  # validate photos up to ~2 MP in one pass, tile larger ones
# The paper's recipe (DeblurGAN's training): `--recipe paper` sets these over the CPU defaults.
PAPER_RECIPE: dict[str, Any] = {
    "content_loss": "perceptual", "content_weight": 100.0, "fft_weight": 0.0, "adv_weight": 1.0, "lr": 1e-4,
    "betas": (0.5, 0.999), "schedule": "paper", "crop": 256, "ema_decay": 0.0, "warmup_steps": 0,
}

Callback = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run; saved in every checkpoint."""

    data: str = ""
    val_data: str | None = None
    synthetic_blur: bool = False
    blur_folder: str = "blur"
    skip_bad: bool = False
    val_fraction: float = 0.05
    val_crop: int | None = None  # centre-crop validation photos (None: whole photos)
    fixed_crops: bool = False  # overfit check: same crop, augmentation and blur per photo, validated on them
    crop: int = 128
    batch_size: int = 16
    epochs: int = 300
    steps: int | None = None  # step-based run; the schedule keeps the epoch proportions
    # Defaults are the PSNR-oriented CPU recipe measured to learn fastest here (docs/TRAINING.md);
    # PAPER_RECIPE holds the paper's.
    lr: float = 5e-4
    lr_final: float = 1e-6
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: str = "cosine"  # "paper": constant for constant_fraction, then linear to lr_final
    warmup_steps: int = 200
    constant_fraction: float = 200 / 300
    ema_decay: float = 0.999  # validate and export an exponential moving average (0: the raw weights)
    critic_updates: int = 5
    gp_weight: float = 10.0
    adv_weight: float = 0.0
    content_loss: str = "charbonnier"
    content_weight: float = 1.0
    fft_weight: float = 0.1
    critic_channels: int = 64
    blur_strength: tuple[float, float] = (2.0, 60.0)  # path length in pixels
    blur_families: tuple[str, ...] = shake.TRAIN_FAMILIES
    crop_scales: tuple[float, float] = (0.5, 1.0)  # synthetic blur: crops taken at a random scale in this range
    crop_tries: int = 1  # synthetic blur: keep the most textured of this many random windows
    noise: float = shake.Realism.noise  # camera effects on the blurred input (shake.Realism)
    shot_noise: float = shake.Realism.shot_noise
    highlights: float = shake.Realism.highlights
    jpeg: float = shake.Realism.jpeg
    val_align: int = 4  # validation also scores the best integer shift within this many pixels
    vgg_weights: str | None = None
    seed: int = 0
    amp: str = "auto"
    channels_last: bool | None = None  # None: on for CUDA
    device: str = "auto"
    compile: bool = False
    workers: int = 2
    checkpoint_dir: str = "runs/msdn"
    checkpoint_every: int = 1000
    val_every: int | None = None  # None: every epoch (or steps/10 for --steps runs)
    export: str | None = None
    max_minutes: float | None = None  # stop cleanly (checkpoint written) after this much wall time
    threads: int | None = None  # torch threads (1 pins a background run to one core)

    def __post_init__(self) -> None:
        problems = []
        if self.content_loss not in CONTENT_LOSSES:
            problems.append(f"unknown content loss {self.content_loss!r}; use {', '.join(CONTENT_LOSSES)}")
        if self.schedule not in SCHEDULES:
            problems.append(f"unknown schedule {self.schedule!r}; use {', '.join(SCHEDULES)}")
        unknown = sorted(set(self.blur_families) - set(shake.FAMILIES))
        if unknown or not self.blur_families:
            problems.append(f"unknown blur families {', '.join(unknown) or '(none)'}; use {', '.join(shake.FAMILIES)}")
        if not 0 < self.crop_scales[0] <= self.crop_scales[1] <= 1:
            problems.append(f"crop scales must be 0 < LO <= HI <= 1, got {self.crop_scales[0]},{self.crop_scales[1]}")
        if not 1 <= self.crop_tries <= 16:
            problems.append(f"crop tries must be 1..16, got {self.crop_tries}")
        if not 0 <= self.ema_decay < 1:
            problems.append("ema-decay must be in [0, 1)")
        if self.threads is not None and self.threads < 1:
            problems.append("threads must be at least 1")
        if self.amp not in AMP_CHOICES:
            problems.append(f"unknown --amp {self.amp!r}; use {', '.join(AMP_CHOICES)}")
        lo, hi = self.blur_strength
        if not 0 <= lo <= hi:
            problems.append(f"blur strength must be 0 <= LO <= HI, got {lo},{hi}")
        for name in ("crop", "batch_size", "epochs", "critic_updates", "checkpoint_every"):
            if getattr(self, name) < 1:
                problems.append(f"{name.replace('_', '-')} must be at least 1")
        if self.steps is not None and self.steps < 1:
            problems.append("steps must be at least 1")
        if self.val_every is not None and self.val_every < 1:
            problems.append("val-every must be at least 1")
        if self.max_minutes is not None and self.max_minutes <= 0:
            problems.append("max-minutes must be positive")
        if self.workers < 0:
            problems.append("workers cannot be negative")
        if self.lr <= 0 or self.lr_final < 0:
            problems.append("learning rates must be positive")
        if problems:
            raise MsdnError(problems[0])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def realism(self) -> shake.Realism:
        return shake.Realism(self.noise, self.shot_noise, self.highlights, self.jpeg)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise MsdnError(f"unknown training config keys: {', '.join(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        return cls.from_dict(json.loads(text))


@dataclass
class TrainResult:
    step: int
    best_val_psnr: float | None
    checkpoint: Path | None
    exported: Path | None
    run_dir: Path
    generator: MSDN  # the final generator (training form, on the training device)


# ---------------------------------------------------------------------------------------------
# Small pure pieces
# ---------------------------------------------------------------------------------------------


def lr_factor(step: int, total: int, constant_fraction: float = 200 / 300, final_ratio: float = 1e-4) -> float:
    """Multiplier of the base rate at `step`: 1 for the first part, then linear down to `final_ratio`.

    With total = 300 epochs' worth of steps this is the paper's schedule (constant for epoch < 200,
    1e-8/1e-4 at epoch 300); `--steps` runs scale it.
    """
    start = constant_fraction * total
    if step <= start or total <= start:
        return 1.0
    t = min((step - start) / (total - start), 1.0)
    return 1.0 + t * (final_ratio - 1.0)


def cosine_factor(step: int, total: int, warmup: int = 0, final_ratio: float = 1e-4) -> float:
    """Linear warm-up over `warmup` steps, then a cosine from 1 down to `final_ratio` at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    t = min((step - warmup) / max(total - warmup, 1), 1.0)
    return final_ratio + (1.0 - final_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


def ema_decay_at(decay: float, averaged: int) -> float:
    """The EMA decay after `averaged` updates: (1 + n) / (10 + n), capped at `decay`.

    A fixed 0.999 from step 0 keeps 25% of the untrained network in the average after 1,400
    steps; the warm-up (as in TensorFlow's and timm's EMA) averages about the last tenth of the
    run until the cap takes over.
    """
    return min(decay, (1 + averaged) / (10 + averaged))


def ema_update(decay: float) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """`AveragedModel`'s avg_fn for an EMA with `ema_decay_at`'s warm-up."""
    def update(average: Tensor, current: Tensor, averaged: Tensor) -> Tensor:
        d = ema_decay_at(decay, int(averaged))
        return average + (current - average) * (1.0 - d)
    return update


def rng_state() -> dict[str, Any]:
    """Every global RNG stream the loop draws from, as tensors and primitives (weights_only-safe)."""
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python_version": version,
        "python": torch.tensor(internal, dtype=torch.int64),
        "python_gauss": gauss,
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((state["python_version"], tuple(int(v) for v in state["python"].tolist()), state["python_gauss"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _select_device(name: str, local_rank: int | None) -> torch.device:
    device = select_device(name)
    if local_rank is not None and device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return device


# ---------------------------------------------------------------------------------------------
# Data setup
# ---------------------------------------------------------------------------------------------


@dataclass
class DataSplit:
    train: list[D.Sample]
    val: list[D.Sample]
    skipped: dict[str, int]


def prepare_data(config: TrainConfig) -> DataSplit:
    """Scan, check and split the data folders (every user error surfaces here, before training)."""
    if not config.data:
        raise MsdnError("no training data: pass --data DIR")
    scan = D.find_samples(Path(config.data), synthetic=config.synthetic_blur, blur_folder=config.blur_folder,
                          skip_bad=config.skip_bad)
    checked = D.check_samples(scan, config.crop, config.skip_bad)
    if not checked.samples:
        reasons = ", ".join(f"{n} {why}" for why, n in checked.skipped.items())
        raise MsdnError(f"no usable training images in {config.data} ({reasons}); use a smaller --crop")
    skipped = dict(checked.skipped)
    if config.fixed_crops:
        return DataSplit(checked.samples, [], skipped)
    if config.val_data:
        val_scan = D.find_samples(Path(config.val_data), synthetic=config.synthetic_blur,
                                  blur_folder=config.blur_folder, skip_bad=config.skip_bad)
        val_checked = D.check_samples(val_scan, config.val_crop or 1, config.skip_bad)
        for why, n in val_checked.skipped.items():
            skipped[f"validation: {why}"] = n
        return DataSplit(checked.samples, val_checked.samples, skipped)
    train, val = D.split_by_file(checked.samples, config.val_fraction, config.seed)
    if not train:
        raise MsdnError("the validation split left no training images; lower --val-fraction")
    return DataSplit(train, val, skipped)


def _to_float(x: Tensor, device: torch.device, channels_last: bool) -> Tensor:
    x = x.to(device, non_blocking=True).float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _make_pair(batch: dict[str, Any], config: TrainConfig, device: torch.device,
               channels_last: bool) -> tuple[Tensor, Tensor]:
    """(blurred, sharp) float batch on the device from a loader batch: a pair on disk, or a fixed
    crop that always gets the same blur (seeded by its key)."""
    sharp = _to_float(batch["sharp"], device, channels_last)
    if "blur" in batch:
        return _to_float(batch["blur"], device, channels_last), sharp
    parts = [_blur(sharp[i:i + 1], config, device, D.mix_seed(config.seed, 0xB1, int(k)))
             for i, k in enumerate(batch["key"])]
    return torch.cat(parts), sharp


def _blur(sharp: Tensor, config: TrainConfig, device: torch.device, seed: int) -> Tensor:
    """Blur whole crops (fixed crops and validation photos): the blur margin is reflected in."""
    generator = torch.Generator().manual_seed(seed)
    m = shake.margin_for(config.blur_strength[1])
    padded = torch.nn.functional.pad(sharp.float().cpu(), (m, m, m, m), mode="reflect" if m < min(sharp.shape[-2:])
                                     else "replicate")
    blurred, _ = shake.blur(padded, config.blur_families, config.blur_strength, generator, config.realism)
    return blurred.to(device, sharp.dtype)


class Validation:
    metric = "psnr"  # what "psnr" (which picks the best weights) means; stored with the best value
    """Fixed validation pairs of paired data on disk, or of the fixed crops of an overfit check
    (their blur made once, kept as 8-bit like saved photos)."""

    def __init__(self, config: TrainConfig, split: DataSplit, device: torch.device) -> None:
        self.config, self.device = config, device
        self.pairs: list[tuple[Tensor, Tensor]] | None = None
        self.split = split

    def __len__(self) -> int:
        return len(self.split.train) if self.config.fixed_crops else len(self.split.val)

    def _build(self) -> list[tuple[Tensor, Tensor]]:
        cfg = self.config
        if cfg.fixed_crops:  # the training crops themselves, with the blur training gives them
            dataset: D.CropDataset | D.WholeDataset = D.CropDataset(self.split.train, cfg.crop, cfg.seed)
        else:
            dataset = D.WholeDataset(self.split.val)
        pairs = []
        for key in range(len(dataset)):
            batch = {k: (v[None] if isinstance(v, Tensor) else [v]) for k, v in dataset[key].items()}
            if cfg.fixed_crops:
                blurred, _ = _make_pair(batch, cfg, self.device, False)
                batch["blur"] = _to_uint8(blurred)
            elif cfg.val_crop:  # pairs on disk (synthetic blur validates in SyntheticValidation)
                batch = {k: (_centre(v, cfg.val_crop) if isinstance(v, Tensor) else v) for k, v in batch.items()}
            pairs.append((batch["blur"], batch["sharp"]))
        return pairs

    def run(self, generator: MSDN, amp: str | None) -> dict[str, float]:
        """Mean PSNR and SSIM of the generator (eval mode) over the pairs.

        Photos up to `DIRECT_PIXELS` go through the network whole, as it sees training crops;
        larger ones are tiled like `msdn deblur` so validation never runs out of memory.
        """
        if self.pairs is None:
            self.pairs = self._build()
        was_training = generator.training
        generator.eval()
        scores_p, scores_s = [], []
        try:
            for blurred, sharp in self.pairs:
                image = blurred.float() / 255.0
                if image.shape[-2] * image.shape[-1] <= DIRECT_PIXELS:
                    with torch.no_grad(), autocast(amp, self.device):
                        out = generator(image.to(self.device)).float().cpu()
                else:
                    out = deblur(generator, image, tile=512, overlap=64, amp=amp)
                target = sharp.float() / 255.0
                scores_p.append(float(psnr(out, target)[0]))
                scores_s.append(float(ssim(out, target)[0]))
        finally:
            generator.train(was_training)
        return {"psnr": sum(scores_p) / len(scores_p), "ssim": sum(scores_s) / len(scores_s)}


class SyntheticValidation:
    """Fixed blurred centre crops of the validation photos per level and family group (synthetic.py).

    Scores raw and aligned PSNR/SSIM and their gain over the blurred input; "psnr" (what picks the
    best weights) is the pooled aligned PSNR on the *training* families (`synthetic.score` says
    why pooled), so the held-out family stays a pure measurement.
    """

    metric = "train/psnr_pooled"

    def __init__(self, config: TrainConfig, split: DataSplit, device: torch.device) -> None:
        self.config, self.device, self.split = config, device, split
        self.pairs: list[S.ValPair] | None = None
        self.baseline: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self.split.val)

    def run(self, generator: MSDN, amp: str | None) -> dict[str, float]:
        if self.pairs is None:
            self.pairs = S.validation_pairs(self.split.val, self.config.val_crop or VAL_CROP, self.config.seed)
            self.baseline = S.score(None, self.pairs, self.config.val_align)
        was_training = generator.training
        generator.eval()

        def run(x: Tensor) -> Tensor:
            with torch.no_grad(), autocast(amp, self.device):
                return generator(x.to(self.device))

        try:
            scores = S.score(run, self.pairs, self.config.val_align)
        finally:
            generator.train(was_training)
        gains = {f"{k}_gain": v - self.baseline[k] for k, v in scores.items() if "psnr" in k}
        return {"psnr": scores[self.metric], "ssim": scores["train/ssim_aligned"], **scores, **gains}


def _best_so_far(checkpoint: dict[str, Any], metric: str) -> float | None:
    """The checkpoint's best validation score if it was scored by `metric`, else None (the next
    validation sets it). Checkpoints from before "best_metric" was stored scored synthetic-blur
    runs by the mean aligned PSNR of the training families."""
    legacy = "psnr" if metric == "psnr" else "train/psnr_aligned"
    return checkpoint["best_val_psnr"] if checkpoint.get("best_metric", legacy) == metric else None


def _to_uint8(x: Tensor) -> Tensor:
    return (x * 255).round().to(torch.uint8).cpu()


def _centre(x: Tensor, size: int) -> Tensor:
    h, w = x.shape[-2:]
    size_h, size_w = min(size, h), min(size, w)
    top, left = (h - size_h) // 2, (w - size_w) // 2
    return x[..., top:top + size_h, left:left + size_w]


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int | None = None

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device_name: str) -> _Dist:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; join the group (NCCL on CUDA, gloo otherwise)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        use_nccl = torch.cuda.is_available() and device_name != "cpu"
        dist.init_process_group("nccl" if use_nccl else "gloo")
    return _Dist(rank, world, local_rank)


def _content_loss(config: TrainConfig, device: torch.device) -> Callable[[Tensor, Tensor], Tensor]:
    if config.content_loss == "perceptual":
        from deblur_cli.vgg import load_vgg19

        return L.PerceptualLoss(load_vgg19(Path(config.vgg_weights) if config.vgg_weights else None)).to(device)
    return {"l1": L.l1_loss, "charbonnier": L.charbonnier_loss, "psnr": L.psnr_loss}[config.content_loss]


class _MetricsLog:
    """JSONL log (rank 0), trimmed on resume to the checkpoint's step; TensorBoard when installed."""

    def __init__(self, run_dir: Path, resume_step: int | None) -> None:
        self.path = run_dir / METRICS
        if resume_step is not None and self.path.is_file():
            keep = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            atomic_write_bytes(self.path, ("\n".join(keep) + "\n" if keep else "").encode())
        elif self.path.exists():
            self.path.unlink()
        self.file = self.path.open("a")
        self.tb = None
        with contextlib.suppress(Exception):
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tensorboard"))

    def write(self, record: dict[str, Any]) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tb is not None:
            for key, value in record.items():
                if key not in ("step", "event") and isinstance(value, (int, float)):
                    self.tb.add_scalar(f"{record['event']}/{key}", value, record["step"])

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()


def _batches(loader: DataLoader, sampler: D.EpochSampler, start: int, total: int) -> Iterator[tuple[int, dict]]:
    """(step, batch) from `start` to `total`, entering each epoch at the right batch."""
    step = start
    while step < total:
        epoch, skip = divmod(step, sampler.steps_per_epoch)
        sampler.set_epoch(epoch, skip)
        for batch in loader:
            yield step, batch
            step += 1
            if step >= total:
                return


def _pairs(loader: DataLoader | None, sampler: D.EpochSampler, bank: S.PhotoBank | None, config: TrainConfig,
           device: torch.device, start: int, total: int, rank: int,
           channels_last: bool) -> Iterator[tuple[int, Tensor, Tensor]]:
    """(step, blurred, sharp) float batches on the device: from the in-memory photo bank
    (synthetic blur), else from the loader (pairs on disk, fixed crops)."""
    if bank is None:
        assert loader is not None
        for step, batch in _batches(loader, sampler, start, total):
            yield step, *_make_pair(batch, config, device, channels_last)
        return
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    for step in range(start, total):
        blurred, sharp = S.training_pair(bank, config.batch_size, config.crop, config.blur_families,
                                         config.blur_strength, config.realism, D.mix_seed(config.seed, rank), step,
                                         config.crop_scales, config.crop_tries)
        yield (step, blurred.to(device).contiguous(memory_format=memory_format),
               sharp.to(device).contiguous(memory_format=memory_format))


def train(config: TrainConfig | None, model_config: MSDNConfig | None = None, *, resume: Path | None = None,
          overrides: Mapping[str, Any] | None = None, model_overrides: Mapping[str, Any] | None = None,
          recipe: tuple[str, Mapping[str, Any]] | None = None, callback: Callback | None = None,
          overwrite: bool = False) -> TrainResult:
    """Train (or resume training) a generator; `callback(event)` receives progress on rank 0.

    Events are dicts with "event": "notice" | "start" | "step" | "val" | "checkpoint" | "time_limit" |
    "end". A resumed run trains with its stored settings and `overrides`, the options given again
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
        if not overwrite and (Path(config.checkpoint_dir) / CHECKPOINT).is_file():
            raise MsdnError(f"{config.checkpoint_dir} already holds a training run: continue it with --resume "
                            f"{config.checkpoint_dir}, choose another --checkpoint-dir, or pass --overwrite")
    if config.export and config.export != own_export and not overwrite:  # the export and the config written beside it
        for target in (Path(config.export), side_files(Path(config.export))[0]):
            if target.exists():
                raise MsdnError(f"{target} already exists (pass --overwrite to replace it)")
    model_config = model_config or MSDNConfig()
    ddp = _init_distributed(config.device)
    try:
        return _train(config, model_config, checkpoint, ddp, callback if ddp.main else None, notices, resume)
    finally:
        if ddp.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _stored_config(checkpoint: Mapping[str, Any], path: Path) -> TrainConfig:
    """The TrainConfig a checkpoint stores; a damaged one is one line."""
    try:
        return TrainConfig.from_dict(dict(checkpoint["train_config"]))
    except (TypeError, ValueError) as exc:
        raise MsdnError(f"{path} holds an invalid train_config ({first_line(exc)})") from None


def _train(config: TrainConfig, model_config: MSDNConfig, checkpoint: dict[str, Any] | None, ddp: _Dist,
           callback: Callback | None, notices: tuple[str, ...] = (), source: Path | None = None) -> TrainResult:
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
    content_fn = _content_loss(config, device) if config.content_weight > 0 else None

    torch.manual_seed(D.mix_seed(config.seed, ddp.rank))
    random.seed(D.mix_seed(config.seed, ddp.rank, 1))
    generator = MSDN(model_config).to(device)
    critic = L.PatchCritic(config.critic_channels).to(device) if config.adv_weight > 0 else None
    if channels_last:
        generator = generator.to(memory_format=torch.channels_last)
        critic = critic.to(memory_format=torch.channels_last) if critic is not None else None

    sampler = D.EpochSampler(len(split.train), config.batch_size, config.seed, ddp.rank, ddp.world,
                             fixed=config.fixed_crops)
    total = config.steps or config.epochs * sampler.steps_per_epoch
    val_every = config.val_every or (max(1, total // 10) if config.steps else sampler.steps_per_epoch)
    final = config.lr_final / config.lr
    factor = ((lambda step: lr_factor(step, total, config.constant_fraction, final)) if config.schedule == "paper"
              else (lambda step: cosine_factor(step, total, config.warmup_steps, final)))
    opt_g = torch.optim.Adam(generator.parameters(), lr=config.lr, betas=config.betas)
    sched_g = torch.optim.lr_scheduler.LambdaLR(opt_g, factor)
    opt_d = torch.optim.Adam(critic.parameters(), lr=config.lr, betas=config.betas) if critic else None
    sched_d = torch.optim.lr_scheduler.LambdaLR(opt_d, factor) if opt_d else None
    use_scaler = amp_name == "fp16"
    scaler_g = torch.amp.GradScaler(device.type, enabled=use_scaler)
    scaler_d = torch.amp.GradScaler(device.type, enabled=use_scaler)

    step, best = 0, None
    if checkpoint is not None:
        critic_parts = {"critic": critic, "opt_d": opt_d, "sched_d": sched_d, "scaler_d": scaler_d} if critic else {}
        _restore(checkpoint, source, {"generator": generator, "opt_g": opt_g, "sched_g": sched_g,
                                      "scaler_g": scaler_g, **critic_parts}, ddp.rank)
        step, best = int(checkpoint["step"]), checkpoint["best_val_psnr"]

    g_train: nn.Module = generator
    d_train: nn.Module | None = critic
    if ddp.world > 1:
        ids = [device.index] if device.type == "cuda" else None
        g_train = nn.parallel.DistributedDataParallel(generator, device_ids=ids)
        d_train = nn.parallel.DistributedDataParallel(critic, device_ids=ids) if critic is not None else None
    g_forward = torch.compile(g_train) if config.compile else g_train

    # EMA of the generator: what validation scores and export ships (steadier than the last step)
    ema = AveragedModel(generator, avg_fn=ema_update(config.ema_decay), use_buffers=True) \
        if config.ema_decay > 0 else None
    if ema is not None and checkpoint is not None and checkpoint.get("ema"):
        _restore(checkpoint, source, {"ema": ema}, None)
    shipped = ema.module if ema is not None else generator
    bank = S.PhotoBank(split.train) if config.synthetic_blur and not config.fixed_crops else None
    loader = None if bank is not None else DataLoader(
        D.CropDataset(split.train, config.crop, config.seed, flips=True),
        batch_size=config.batch_size, sampler=sampler, num_workers=config.workers,
        pin_memory=device.type == "cuda", persistent_workers=config.workers > 0,
        generator=torch.Generator(),  # keeps the loader off the global RNG (exact resume)
    )
    run_dir = Path(config.checkpoint_dir)
    validation = (SyntheticValidation if config.synthetic_blur and not config.fixed_crops else Validation)(
        config, split, device)
    if checkpoint is not None:
        best = _best_so_far(checkpoint, validation.metric)
    log = None
    if ddp.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        for folder in {run_dir, *([Path(config.export).parent] if config.export else [])}:
            remove_stale_temps(folder)  # left by a run killed mid-write (SIGKILL, power loss)
        log = _MetricsLog(run_dir, step if checkpoint is not None else None)
    emit({"event": "start", "step": step, "total_steps": total, "train_files": len(split.train),
          "val_files": len(validation), "skipped": split.skipped, "device": str(device),
          "amp": amp_name or "none", "parameters": count_parameters(generator), "world_size": ddp.world,
          "steps_per_epoch": sampler.steps_per_epoch, "run_dir": str(run_dir)})

    def save(step: int) -> Path:
        state = {
            "generator": generator.state_dict(), "opt_g": opt_g.state_dict(), "sched_g": sched_g.state_dict(),
            "ema": ema.state_dict() if ema is not None else {},
            "scaler_g": scaler_g.state_dict(),
            "critic": critic.state_dict() if critic is not None else {},
            "opt_d": opt_d.state_dict() if opt_d else {}, "sched_d": sched_d.state_dict() if sched_d else {},
            "scaler_d": scaler_d.state_dict(),
            "rng": rngs, "step": step, "total_steps": total, "best_val_psnr": best,
            "best_metric": validation.metric, "val_pending": val_pending,
            "model_config": model_config.to_dict(), "train_config": config.to_dict(),
        }
        path = run_dir / CHECKPOINT
        save_checkpoint(path, state)
        return path

    last_checkpoint: Path | None = None
    samples = config.batch_size * ddp.world
    tick = started = time.perf_counter()
    val_seconds, val_pending = 0.0, bool(checkpoint and checkpoint.get("val_pending"))

    def validate(step: int) -> None:
        nonlocal best, tick, val_seconds
        if len(validation) and ddp.main:
            val_start = time.perf_counter()
            scores = validation.run(shipped, amp_name)
            scores["seconds"] = val_seconds = time.perf_counter() - val_start
            val_psnr = scores["psnr"]
            if best is None or val_psnr > best:
                best = val_psnr
                _export(run_dir / BEST, shipped, model_config, step, val_psnr)
            val_record = {"event": "val", "step": step, **scores, "best_psnr": best}
            if log is not None:
                log.write(val_record)
            emit(val_record)
        if ddp.world > 1:
            best = _broadcast(best)
            dist.barrier()
        tick = time.perf_counter()

    if val_pending:  # the validation a time limit postponed, then a checkpoint that no longer waits for it
        validate(step)
        val_pending, rngs = False, _gather_rng(ddp)
        if ddp.main:
            last_checkpoint = save(step)
    timed_critic = config.max_minutes is not None and critic is not None
    for step, blurred, sharp in _pairs(loader, sampler, bank, config, device, step, total, ddp.rank, channels_last):
        record: dict[str, Any] = {"event": "step", "step": step + 1, "lr": opt_g.param_groups[0]["lr"]}
        began = StepStart({"critic": critic, "opt_d": opt_d, "scaler_d": scaler_d}, rng_state) if timed_critic \
            else None
        with autocast(amp_name, device):
            fake = g_forward(blurred)

        if d_train is not None and critic is not None and opt_d is not None:
            abandoned = False
            for _ in range(config.critic_updates):
                if began is not None and _out_of_time(started, config.max_minutes, ddp):
                    abandoned = True
                    break
                opt_d.zero_grad(set_to_none=True)
                alpha = torch.rand(sharp.shape[0], 1, 1, 1, device=device)
                x_hat = L.interpolate(sharp, fake.float(), alpha)
                # one critic pass over real, fake and interpolates (one DDP forward per backward)
                with autocast(amp_name, device):
                    scores = d_train(torch.cat([sharp, fake.detach().to(sharp.dtype), x_hat]))
                real_s, fake_s, hat_s = scores.float().chunk(3)
                gp = L.gradient_penalty(hat_s, x_hat, config.gp_weight)
                loss_d = L.critic_loss(real_s, fake_s) + gp
                scaler_d.scale(loss_d).backward()
                scaler_d.step(opt_d)
                scaler_d.update()
            if abandoned and began is not None:  # out of time mid-step: back to the last finished step
                began.restore(set_rng_state)
                rngs = _gather_rng(ddp)
                if ddp.main:
                    last_checkpoint = save(step)
                    emit({"event": "checkpoint", "step": step, "path": str(last_checkpoint)})
                emit({"event": "time_limit", "step": step, "minutes": config.max_minutes})
                break
            record.update(loss_d=loss_d.item(), gp=gp.item(), wasserstein=(real_s.mean() - fake_s.mean()).item())

        opt_g.zero_grad(set_to_none=True)
        loss_g = torch.zeros((), device=device)
        with autocast(amp_name, device):
            if content_fn is not None:
                content = content_fn(fake.float(), sharp)
                loss_g = loss_g + config.content_weight * content
                record["content"] = content.item()
            if critic is not None:
                critic.requires_grad_(False)  # the critic only scores here; its DDP hooks stay quiet
                adv = L.adversarial_loss(critic(fake).float())
                critic.requires_grad_(True)
                loss_g = loss_g + config.adv_weight * adv
                record["adv"] = adv.item()
        if config.fft_weight > 0:
            fft = L.fft_l1_loss(fake, sharp)
            loss_g = loss_g + config.fft_weight * fft
            record["fft"] = fft.item()
        scaler_g.scale(loss_g).backward()
        scaler_g.step(opt_g)
        scaler_g.update()
        sched_g.step()
        if ema is not None:
            ema.update_parameters(generator)
        if sched_d is not None:
            sched_d.step()
        step += 1
        record["loss_g"] = loss_g.item()
        now = time.perf_counter()
        record["samples_per_s"] = samples / max(now - tick, 1e-9)
        tick = now
        if log is not None:
            log.write(record)
        emit(record)

        if step % val_every == 0 or step == total:
            # a validation expected to overrun the budget waits for the resumed run (the checkpoint says so)
            val_pending = _out_of_time(started, config.max_minutes, ddp, ahead=val_seconds)
            if not val_pending:
                validate(step)
        out_of_time = val_pending or _out_of_time(started, config.max_minutes, ddp)
        if step % config.checkpoint_every == 0 or step == total or out_of_time:
            rngs = _gather_rng(ddp)
            if ddp.main:
                last_checkpoint = save(step)
                emit({"event": "checkpoint", "step": step, "path": str(last_checkpoint)})
            tick = time.perf_counter()
        if out_of_time and (step < total or val_pending):
            emit({"event": "time_limit", "step": step, "minutes": config.max_minutes})
            break

    exported = None
    if ddp.main:
        if not (run_dir / BEST).is_file():  # no validation ran: the last generator is the result
            _export(run_dir / BEST, shipped, model_config, step, None)
        if config.export and step == total and not val_pending:  # a slice cut by --max-minutes exports at the end
            exported = Path(config.export)
            exported.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(exported, (run_dir / BEST).read_bytes())
            atomic_write_bytes(side_files(exported)[0], config_json(model_config))
        if log is not None:
            log.close()
        emit({"event": "end", "step": step, "best_val_psnr": best, "exported": str(exported) if exported else None})
    return TrainResult(step=step, best_val_psnr=best, checkpoint=last_checkpoint, exported=exported, run_dir=run_dir,
                       generator=generator)


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


def _out_of_time(started: float, max_minutes: float | None, ddp: _Dist, ahead: float = 0.0) -> bool:
    """Whether the wall-time budget is spent (or would be by `ahead` more seconds of work); rank 0's
    clock decides so every rank stops together."""
    if max_minutes is None:
        return False
    over = float(over_budget(started, max_minutes, ahead))
    return bool(_broadcast(over)) if ddp.world > 1 else bool(over)


def _gather_rng(ddp: _Dist) -> dict[str, Any] | list[dict[str, Any]]:
    """RNG states of every rank (each rank's dropout stream differs), gathered on rank 0."""
    state = rng_state()
    if ddp.world == 1:
        return state
    states: list[Any] = [None] * ddp.world
    dist.all_gather_object(states, state)
    return states


def _broadcast(value: float | None) -> float | None:
    """Rank 0's value on every rank."""
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _export(path: Path, generator: MSDN, model_config: MSDNConfig, step: int, val_psnr: float | None) -> None:
    """The generator as a weight file `msdn deblur --weights` loads, with config.json beside it."""
    metadata = {"step": str(step)}
    if val_psnr is not None and math.isfinite(val_psnr):
        metadata["val_psnr"] = f"{val_psnr:.4f}"
    save_weights(path, generator.state_dict(), model_config, metadata=metadata)
    atomic_write_bytes(path.with_name("config.json"), config_json(model_config))
