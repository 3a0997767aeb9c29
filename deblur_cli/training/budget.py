"""The wall-time budget of `msdn train --max-minutes`: stop in time, with a checkpoint of a finished step.

A budget checked only between steps does not bound wall time: one step of the paper's recipe (five
critic updates and a VGG-19 loss on 256 px crops) takes minutes on a small CPU, and a validation
pass can take longer. So the loop also checks the clock between critic updates, and before a
validation pass it expects to last as long as the previous one. A step abandoned half-way is
rolled back with `StepStart` (the critic, its optimizer and scaler, and the RNG streams as they
were when the step began), so the checkpoint written is exactly that of the last finished step
and the resumed run matches an uninterrupted one.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping
from typing import Any


def over_budget(started: float, max_minutes: float | None, ahead: float = 0.0) -> bool:
    """Whether the budget is spent, or would be by work expected to take `ahead` more seconds."""
    return max_minutes is not None and time.perf_counter() - started + ahead >= 60 * max_minutes


class StepStart:
    """Copies of the states a step changes before its generator update, taken as the step begins."""

    def __init__(self, parts: Mapping[str, Any], rng: Callable[[], Any]) -> None:
        self.parts = {name: part for name, part in parts.items() if part is not None}
        self.states = {name: copy.deepcopy(part.state_dict()) for name, part in self.parts.items()}
        self.rng = rng()

    def restore(self, set_rng: Callable[[Any], None]) -> None:
        """Put every part (and the RNG streams) back as they were when the step began."""
        for name, part in self.parts.items():
            part.load_state_dict(self.states[name])
        set_rng(self.rng)
