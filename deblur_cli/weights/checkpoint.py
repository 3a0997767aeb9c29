"""Training checkpoints: the one reader (and writer) of the `.pt` files `msdn train` saves.

A checkpoint is `torch.save` of plain containers: `generator`, `ema` (an `AveragedModel` state,
keys under "module."), optimizer and scheduler states, `rng`, `step`, `best_val_psnr`,
`model_config` and `train_config`. Everything here loads with `weights_only=True`, so no pickled
code ever runs; `vgg.py` reads its torchvision files through the same `torch_load`.
"""

from __future__ import annotations

from collections.abc import Mapping
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from deblur_cli.weights.configfile import config_from, sibling_config
from deblur_cli.errors import MsdnError, first_line
from deblur_cli.files import atomic_path
from deblur_cli.nets.model import MSDNConfig

CHECKPOINT = "last.pt"  # in a run folder: the checkpoint `--resume RUN` continues from
MAX_STEP = 10**9
LEARNED_KEYS = ("generator", "ema", "critic", "opt_g", "opt_d")  # the states a diverged run fills with NaN
# What `--resume` restores besides the critic's states (present when the run has a critic).
TRAINING_KEYS = ("generator", "opt_g", "sched_g", "scaler_g", "rng", "step", "best_val_psnr", "model_config",
                 "train_config")


def torch_load(path: Path, what: str = "PyTorch checkpoint") -> Any:
    """`torch.load(weights_only=True)` onto the CPU (no pickle code runs); a failure is one short MsdnError."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise MsdnError(f"cannot read {path}: {exc.strerror or first_line(exc)}") from None
    if not head:
        raise MsdnError(f"{path} is empty (0 bytes), not a {what}")
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):  # torch's zip format, or a legacy pickle
        raise MsdnError(f"{path} is not a {what}: it is not a PyTorch file at all")
    try:
        with warnings.catch_warnings():  # torch warns about a legacy pickle's protocol before refusing it
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types here (UnpicklingError, RuntimeError, EOFError...)
        if str(exc).strip().startswith("Weights only load failed"):  # torch's text is a paragraph about pickle
            reason = "it is not a torch file of plain tensors; files that run code on load are refused"
        else:
            reason = first_line(exc)
        raise MsdnError(f"{path} is not a loadable {what} ({reason})") from None


def save_checkpoint(path: Path, checkpoint: dict[str, Any]) -> None:
    """Write a training checkpoint atomically (a kill mid-write leaves the previous one)."""
    with atomic_path(Path(path)) as tmp:
        torch.save(checkpoint, tmp)


def load_training_checkpoint(path: Path) -> dict[str, Any]:
    """Everything `--resume` needs (a file, or a run folder holding last.pt), loaded weights_only."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file():
        raise MsdnError(f"checkpoint not found: {path}")
    checkpoint = torch_load(path, "training checkpoint")
    if not isinstance(checkpoint, dict) or "generator" not in checkpoint or "train_config" not in checkpoint:
        raise MsdnError(f"{path} is not an msdn training checkpoint")
    missing = [key for key in TRAINING_KEYS if key not in checkpoint]
    if missing:
        raise MsdnError(f"{path} is a damaged training checkpoint (no {missing[0]!r}); resume from another "
                        "checkpoint or start a new run")
    if _step(checkpoint, path) is None:
        raise MsdnError(f"{path} records no training step (a whole number)")
    bad = first_non_finite({key: checkpoint.get(key) for key in LEARNED_KEYS})
    if bad is not None:
        raise MsdnError(f"{path} is a damaged training checkpoint ({bad} holds NaN or infinite values); resume "
                        "from another checkpoint or start a new run")
    return checkpoint


def first_non_finite(state: Any, at: str = "") -> str | None:
    """Where the first floating-point tensor of a nested state holds NaN or infinity (None: nowhere).
    Resuming from such a state, or saving one, trains nothing and replaces a good checkpoint."""
    if isinstance(state, torch.Tensor):
        finite = not state.is_floating_point() or bool(torch.isfinite(state).all())
        return None if finite else at
    items = state.items() if isinstance(state, Mapping) else enumerate(state) if isinstance(state, list | tuple) \
        else ()
    for key, value in items:
        bad = first_non_finite(value, f"{at}.{key}" if at else str(key))
        if bad is not None:
            return bad
    return None


def state_error(exc: BaseException) -> str:
    """What is wrong with a saved state, in one line: the missing key, or torch's first detail line
    (`size mismatch for stem.weight: ...`) rather than its "Error(s) in loading state_dict" header."""
    if isinstance(exc, KeyError):
        return f"no {exc.args[0]!r}" if exc.args else "a state is missing"
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Error(s) in loading"):
        lines = lines[1:]
    return (lines[0] if lines else type(exc).__name__)[:300]


@dataclass(frozen=True)
class Checkpoint:
    """The generator a checkpoint ships, with its config, step and recorded metrics."""

    config: MSDNConfig
    generator: dict[str, torch.Tensor]
    step: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)


def shipped_state(checkpoint: Mapping[str, Any]) -> Mapping[str, Any]:
    """The generator a training checkpoint ships: its EMA (`torch.optim.swa_utils.AveragedModel`
    state, keys under "module.") when training kept one, else the raw weights."""
    ema = checkpoint.get("ema")
    if isinstance(ema, Mapping) and ema:
        return {k.removeprefix("module."): v for k, v in ema.items() if k.startswith("module.")}
    return checkpoint["generator"]


def _metrics(data: Mapping[str, Any]) -> dict[str, float]:
    """The scores a checkpoint records: top-level scalars, then its `metrics` mapping."""
    metrics = {k: float(data[k]) for k in ("best_val_psnr", "val_psnr", "val_ssim")
               if isinstance(data.get(k), (int, float)) and not isinstance(data.get(k), bool)}
    if isinstance(data.get("metrics"), Mapping):
        metrics.update({str(k): float(v) for k, v in data["metrics"].items() if isinstance(v, (int, float))})
    return metrics


def _step(data: Mapping[str, Any], path: Path) -> int | None:
    step = data.get("step")
    step = int(step) if isinstance(step, int) and not isinstance(step, bool) else None
    if step is not None and not 0 <= step <= MAX_STEP:
        raise MsdnError(f"{path} records an impossible training step {step}")
    return step


def load_checkpoint(path: Path) -> Checkpoint:
    """The generator of a `.pt/.pth`, read with `weights_only=True` (no pickle code runs).

    Accepts a training checkpoint (`generator` + `model_config` keys) or a bare state dict whose
    config sits in a sibling config.json.
    """
    path = Path(path)
    if not path.is_file():
        raise MsdnError(f"checkpoint not found: {path}")
    data = torch_load(path)
    if not isinstance(data, Mapping):
        raise MsdnError(f"{path} holds a {type(data).__name__}, not a state dict or training checkpoint")
    if "generator" in data:
        if "model_config" not in data:
            raise MsdnError(f"{path} is a training checkpoint without 'model_config'")
        config = config_from(data["model_config"], f"{path} model_config")
        state, metrics, step = shipped_state(data), _metrics(data), _step(data, path)
    else:
        config = sibling_config(path)
        if config is None:
            raise MsdnError(f"{path} is a bare state dict and has no config.json beside it "
                            "(expected a training checkpoint with 'generator' and 'model_config')")
        state, metrics, step = data, {}, None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise MsdnError(f"{path}: the generator state dict must map names to tensors")
    return Checkpoint(config=config, generator=dict(state), step=step, metrics=metrics)
