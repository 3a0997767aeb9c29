"""What defines a training run: `TrainConfig` (saved in every checkpoint) and the recipes over its defaults.

Kept apart from the loop so the CLI, resume.py and the tests can read and build configs without
the loop's imports (torch.distributed, the data pipeline, kornia's blur synthesis).
"""

from __future__ import annotations

import math

import json
from dataclasses import asdict, dataclass, fields
from typing import Any

from deblur_cli.training import frames
from deblur_cli.training import shake
from deblur_cli.errors import MsdnError
from deblur_cli.inference.engine import AMP_CHOICES

CONTENT_LOSSES = ("perceptual", "l1", "charbonnier", "psnr")
SCHEDULES = ("paper", "cosine")
# The paper's recipe (DeblurGAN's training): `--recipe paper` sets these over the CPU defaults.
PAPER_RECIPE: dict[str, Any] = {
    "content_loss": "perceptual", "content_weight": 100.0, "fft_weight": 0.0, "grad_weight": 0.0,
    "adv_weight": 1.0, "lr": 1e-4, "betas": (0.5, 0.999), "schedule": "paper", "crop": 256, "ema_decay": 0.0,
    "warmup_steps": 0,
}
# The generator each recipe trains (MSDNConfig fields over its defaults). The paper's dropout 0.2
# (Tiramisu's, from classification) slowed learning threefold on CPU budgets (docs/TRAINING.md
# section 3), so the CPU recipe trains without it; dropout is off at inference either way.
CPU_NETWORK: dict[str, Any] = {"dropout": 0.0}
PAPER_NETWORK: dict[str, Any] = {"dropout": 0.2}


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
    lr: float = 1e-3
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
    grad_weight: float = 0.0  # L1 on image gradients (texture: against the smoothing of pixel losses)
    deep_supervision: float = 0.0  # scales > 1: weight of the content loss of every coarser pass's output
    critic_channels: int = 64
    blur_strength: tuple[float, float] = (2.0, 60.0)  # path length in pixels
    blur_families: tuple[str, ...] = shake.TRAIN_FAMILIES
    still_share: float = 0.0  # synthetic blur: share of inputs left sharp (camera effects only)
    crop_scales: tuple[float, float] = (0.5, 1.0)  # synthetic blur: crops taken at a random scale in this range
    crop_tries: int = 1  # synthetic blur: keep the most textured of this many random windows
    # frame-averaging renderer (frames.py, GOPRO's construction): its share of each batch and options
    frame_share: float = frames.FrameMix.share
    frame_families: tuple[str, ...] = frames.TRAIN_FAMILIES
    frame_layers: float = frames.FrameMix.layers
    frame_gamma: float = frames.FrameMix.gamma
    frame_target: str = frames.FrameMix.target
    noise: float = shake.Realism.noise  # camera effects on the blurred input (shake.Realism)
    shot_noise: float = shake.Realism.shot_noise
    highlights: float = shake.Realism.highlights
    jpeg: float = shake.Realism.jpeg
    val_real: str | None = None  # paired real-blur folder also scored at each validation (never trained on)
    val_align: int = 4  # validation also scores the best integer shift within this many pixels
    vgg_weights: str | None = None
    seed: int = 0
    amp: str = "auto"
    channels_last: bool | None = None  # None: on for CUDA
    device: str = "auto"
    compile: bool = False
    workers: int = 2
    render_workers: int = 0  # synthetic blur: processes rendering batches ahead (0: the training process)
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
        unknown = sorted(set(self.frame_families) - set(frames.FAMILIES))
        if unknown or not self.frame_families:
            problems.append(f"unknown frame families {', '.join(unknown) or '(none)'}; use {', '.join(frames.FAMILIES)}")
        for name in ("frame_share", "frame_layers", "frame_gamma"):
            if not 0 <= getattr(self, name) <= 1:
                problems.append(f"{name.replace('_', '-')} must be in [0, 1], got {getattr(self, name)}")
        if self.frame_target not in frames.TARGETS:
            problems.append(f"unknown frame target {self.frame_target!r}; use {', '.join(frames.TARGETS)}")
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
        if not 0 <= self.still_share <= 1:
            problems.append(f"still-share must be in [0, 1], got {self.still_share:g}")
        for name in ("crop", "batch_size", "epochs", "critic_updates", "checkpoint_every"):
            if getattr(self, name) < 1:
                problems.append(f"{name.replace('_', '-')} must be at least 1")
        if self.steps is not None and self.steps < 1:
            problems.append("steps must be at least 1")
        if self.val_every is not None and self.val_every < 1:
            problems.append("val-every must be at least 1")
        if self.max_minutes is not None and not 0 < self.max_minutes < math.inf:  # NaN fails both
            problems.append(f"max-minutes must be a positive number of minutes, got {self.max_minutes:g}")
        for name in ("deep_supervision", "fft_weight", "grad_weight"):
            if not 0 <= getattr(self, name) < math.inf:
                problems.append(f"{name.replace('_', '-')} must be a weight of 0 or more, got {getattr(self, name):g}")
        if self.workers < 0 or self.render_workers < 0:
            problems.append("workers cannot be negative")
        if not (0 < self.lr < math.inf and 0 <= self.lr_final < math.inf):  # NaN fails every comparison
            problems.append(f"learning rates must be positive and finite, got --lr {self.lr:g}")
        if problems:
            raise MsdnError(problems[0])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def realism(self) -> shake.Realism:
        return shake.Realism(self.noise, self.shot_noise, self.highlights, self.jpeg)

    @property
    def frame_mix(self) -> frames.FrameMix:
        return frames.FrameMix(self.frame_share, self.frame_families, self.frame_layers, self.frame_gamma,
                               self.frame_target)

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
