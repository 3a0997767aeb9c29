#!/usr/bin/env python
"""Print the loss comparison: per blur level, PSNR/SSIM of the blurred input and of each run's model.

Why: the issue asks to compare the paper's loss (WGAN-GP + perceptual) with a PSNR-oriented
content loss on equal budgets and to record the choice; this turns the `msdn eval --json` reports
(`RUN/eval.json`, written by `scripts/train_gpu.sh compare`) and the runs' step counts into one
table and names the better run by mean PSNR gain over the blurred input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

IDENTITY = "identity"


def level_table(report: dict) -> dict[str, dict[str, float]]:
    """{level or 'overall': {'blur_psnr', 'blur_ssim', 'psnr', 'ssim', 'gain_db', 'seconds'}} from one eval report.

    The report holds the identity baseline and exactly one model.
    """
    models = [m for m in report["models"] if m != IDENTITY]
    if len(models) != 1 or IDENTITY not in report["models"]:
        raise ValueError(f"expected one model plus the identity baseline, got {report['models']}")
    by = {(s["model"], s["group"] or "overall"): s for s in report["summary"]}
    table = {}
    for level in sorted({g for _, g in by}, key=lambda g: (g == "overall", g)):
        base, out = by[(IDENTITY, level)], by[(models[0], level)]
        table[level] = {"blur_psnr": base["psnr"], "blur_ssim": base["ssim"], "psnr": out["psnr"],
                        "ssim": out["ssim"], "gain_db": out["psnr"] - base["psnr"], "seconds": out["seconds"]}
    return table


def run_steps(run: Path) -> int | None:
    """Steps the run reached, from its metrics log."""
    steps = [json.loads(line).get("step", 0) for line in (run / "metrics.jsonl").read_text().splitlines()
             if line.strip()] if (run / "metrics.jsonl").is_file() else []
    return max(steps, default=None)


def steps_per_minute(run: Path, batch_size: int) -> float | None:
    """Median training speed of a run (validation pauses excluded), from its metrics log."""
    rates = sorted(json.loads(line)["samples_per_s"] for line in (run / "metrics.jsonl").read_text().splitlines()
                   if '"samples_per_s"' in line) if (run / "metrics.jsonl").is_file() else []
    return 60 * rates[len(rates) // 2] / batch_size if rates else None


def suggest_steps(per_minute: float, minutes: float, margin: float = 0.85) -> int:
    """Total --steps for a run that must finish (LR decay included) within `minutes` of training."""
    return max(1, int(per_minute * minutes * margin) // 100 * 100)


def format_comparison(tables: dict[str, dict[str, dict[str, float]]], steps: dict[str, int | None]) -> str:
    lines = [f"{'run':14} {'level':8} {'blur PSNR':>9} {'PSNR':>7} {'gain dB':>8} {'blur SSIM':>9} {'SSIM':>7} {'steps':>6}"]
    for run, table in tables.items():
        for level, t in table.items():
            lines.append(f"{run:14} {level:8} {t['blur_psnr']:9.2f} {t['psnr']:7.2f} {t['gain_db']:+8.2f} "
                         f"{t['blur_ssim']:9.4f} {t['ssim']:7.4f} {steps.get(run) or 0:6d}")
    best = max(tables, key=lambda r: tables[r]["overall"]["gain_db"])
    lines.append(f"better: {best} (mean gain {tables[best]['overall']['gain_db']:+.2f} dB over the blurred input)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="run folders holding eval.json (and metrics.jsonl)")
    ap.add_argument("--budget-minutes", type=float, default=None,
                    help="also print the --steps that fit this many minutes of training with the better loss")
    ap.add_argument("--batch-size", type=int, default=16, help="the runs' --batch-size (for steps per minute)")
    args = ap.parse_args(argv)
    tables, steps = {}, {}
    for run in args.runs:
        report = run / "eval.json" if run.is_dir() else run
        if not report.is_file():
            print(f"error: {report} not found (run `scripts/train_gpu.sh eval WEIGHTS {report}`)", file=sys.stderr)
            return 1
        name = run.name if run.is_dir() else run.parent.name
        tables[name] = level_table(json.loads(report.read_text()))
        steps[name] = run_steps(run if run.is_dir() else run.parent)
    print(format_comparison(tables, steps))
    if args.budget_minutes:
        best = max(tables, key=lambda r: tables[r]["overall"]["gain_db"])
        run = next(r for r in args.runs if (r.name if r.is_dir() else r.parent.name) == best)
        rate = steps_per_minute(run if run.is_dir() else run.parent, args.batch_size)
        if rate:
            print(f"{best}: {rate:.0f} steps/min; STEPS={suggest_steps(rate, args.budget_minutes)} "
                  f"fits {args.budget_minutes:g} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
