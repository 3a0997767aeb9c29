"""What a run folder holds beside the checkpoint: the metrics log and the best generator's weights.

The log is JSON lines that survive a crash (a damaged line is dropped on resume, not fatal) and are
trimmed to the checkpoint's step when a run resumes, so a resumed run's log reads as one run.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Any

from deblur_cli.errors import MsdnError
from deblur_cli.files import atomic_write_bytes
from deblur_cli.nets.model import MSDN, MSDNConfig
from deblur_cli.weights.checkpoint import first_non_finite
from deblur_cli.weights.configfile import config_json
from deblur_cli.weights.weightfile import save_weights

BEST = "best.safetensors"
METRICS = "metrics.jsonl"


class MetricsLog:
    """JSONL log (rank 0), trimmed on resume to the checkpoint's step; TensorBoard when installed."""

    def __init__(self, run_dir: Path, resume_step: int | None) -> None:
        self.path = run_dir / METRICS
        if resume_step is not None and self.path.is_file():
            keep = [line for line in records(self.path.read_bytes()) if json.loads(line).get("step", 0) <= resume_step]
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


def records(log: bytes) -> list[str]:
    """The whole JSON records of a metrics log: a line damaged by a crash or an editor (bad UTF-8, cut
    JSON) is dropped, not a reason to refuse the resume."""
    kept = []
    for raw in log.splitlines():
        with contextlib.suppress(UnicodeDecodeError, ValueError):
            line = raw.decode()
            if isinstance(json.loads(line), dict):
                kept.append(line)
    return kept


def export_generator(path: Path, generator: MSDN, model_config: MSDNConfig, step: int, val_psnr: float | None) -> None:
    """The generator as a weight file `msdn deblur --weights` loads, with config.json beside it."""
    bad = first_non_finite(generator.state_dict())
    if bad is not None:
        raise MsdnError(f"training diverged by step {step} ({bad} holds NaN or infinite values); {path} was "
                        "not written: resume with a lower --lr")
    metadata = {"step": str(step)}
    if val_psnr is not None and math.isfinite(val_psnr):
        metadata["val_psnr"] = f"{val_psnr:.4f}"
    save_weights(path, generator.state_dict(), model_config, metadata=metadata)
    atomic_write_bytes(path.with_name("config.json"), config_json(model_config))
