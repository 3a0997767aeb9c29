"""scripts/plot_curve.py: the learning curve read from a run's metrics log."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
plot_curve = importlib.import_module("plot_curve")


def test_curve_counts_training_and_validation_time() -> None:
    lines = [json.dumps({"event": "step", "step": s, "samples_per_s": 4.0}) for s in (1, 2)]
    lines.append(json.dumps({"event": "val", "step": 2, "seconds": 36.0, "psnr": 30.0,
                             "train/psnr_aligned_gain": 0.5, "held-out/mild/psnr_aligned_gain": 0.25}))
    lines += ["", json.dumps({"event": "step", "step": 3, "samples_per_s": 8.0})]
    lines.append(json.dumps({"event": "val", "step": 3, "seconds": 0.0, "train/psnr_aligned_gain": 0.75}))
    points = plot_curve.read_curve(lines, batch=16)
    assert [p["step"] for p in points] == [2, 3]
    assert points[0]["hours"] == pytest.approx((4 + 4 + 36) / 3600)  # 16 samples at 4/s twice, then validation
    assert points[1]["hours"] == pytest.approx((4 + 4 + 36 + 2) / 3600)
    text = plot_curve.table(points)
    assert text.splitlines()[2].startswith("| 2 | 0.01 |") and "+0.25" in text and "+0.50" in text
    assert "| 3 |" in text and "+0.75" in text


def test_missing_log_is_an_error(tmp_path: Path) -> None:
    assert plot_curve.main([str(tmp_path / "none.jsonl")]) == 1
