"""Learning-rate and EMA schedules of the training loop: pure functions of the step, so a resumed run
continues them exactly."""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import Tensor


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
