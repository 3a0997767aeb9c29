"""scripts/plot_curve.py and scripts/example_crops.py: the figures docs and the README show."""

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
    assert plot_curve.table(points, "psnr_pooled").count("\n") == 1  # no validation scored it: header only
    assert text.splitlines()[0] == "| step | hours | held-out mild | train mean | held-out mean |"  # groups it scored
    points.append({"step": 4, "hours": 1.0, "frames-held-out/psnr_aligned_gain": 0.3,
                   "real/all/psnr_aligned_gain": 0.1, "real/psnr_aligned_gain": 0.1})
    assert plot_curve.table(points).splitlines()[0] == ("| step | hours | held-out mild | real all | train mean | "
                                                       "held-out mean | frames-held-out mean | real mean |")


def test_missing_log_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert plot_curve.main([str(tmp_path / "none.jsonl")]) == 1
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'none.jsonl'} not found"
    log = tmp_path / "run" / "metrics.jsonl"
    log.parent.mkdir()
    log.write_text("")
    assert plot_curve.main([str(log), "--compare", str(tmp_path / "old.jsonl")]) == 1
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'old.jsonl'} not found"


def test_compared_runs_are_drawn_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("matplotlib")
    run = [{"step": 2, "hours": 0.1, "train/psnr_pooled_gain": 0.5, "held-out/psnr_pooled_gain": 0.4}]
    older = [{"step": 3, "hours": 0.9, "train/psnr_pooled_gain": 0.3, "held-out/psnr_pooled_gain": 0.2}]
    import matplotlib.pyplot as plt

    drawn: list = []
    monkeypatch.setattr(plt.Figure, "savefig", lambda fig, *a, **k: drawn.append(fig))  # keep it to read its lines
    plot_curve.plot(run, tmp_path / "c.png", {"campaign-1": older})
    held_out = drawn[0].axes[1]
    lines = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in held_out.lines}
    assert lines["pooled (as whole photos), campaign-1"] == ([3], [0.2])
    assert lines["pooled (as whole photos), this run"] == ([2], [0.4])


def test_example_crops_are_unresampled_windows() -> None:
    import torch

    example_crops = importlib.import_module("example_crops")
    a, b, c = (torch.rand(1, 3, 50, 60, generator=torch.Generator().manual_seed(i)) for i in range(3))
    out = example_crops.strips(a, b, c, corners=((5, 10), (30, 30)), size=(20, 15), gap=2)
    assert out.shape == (1, 3, 15 + 2 + 15, 3 * 20 + 4)
    assert torch.equal(out[..., :15, :20], a[..., 10:25, 5:25])
    assert torch.equal(out[..., :15, 22:42], b[..., 10:25, 5:25])
    assert torch.equal(out[..., 17:, 44:64], c[..., 30:45, 30:50])
    assert bool((out[..., 15:17, :] == 1).all()) and bool((out[..., :, 20:22] == 1).all())  # white gaps
