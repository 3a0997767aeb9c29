#!/usr/bin/env python
"""The campaign's learning curve: validation gain per blur level against steps and training hours.

    python scripts/plot_curve.py                      # table to stdout, docs/learning_curve.png
    python scripts/plot_curve.py campaign/metrics.jsonl --png out.png --batch 16
    python scripts/plot_curve.py --compare campaign-1/metrics.jsonl   # overlay an earlier run's pooled gain

Reads the run's metrics.jsonl (`msdn train` writes it). Hours are training wall time on the
campaign's one CPU thread: each step's batch / samples-per-second plus each validation's seconds,
so pauses between sessions do not count. The plot is against steps, so runs trained on different
CPUs (fp32 on AVX2, bf16 on AVX512-BF16) compare fairly; the tables carry the hours. The PNG needs matplotlib (`pip install matplotlib`); the
table does not.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GROUPS = ("train", "held-out", "frames-held-out", "real", "still")  # validation's; runs before 2026-12 have two
LEVELS = ("mild", "medium", "strong", "extreme", "all")  # "all": the real-blur pairs have one level


def shown_groups(points: list[dict[str, float]]) -> list[str]:
    """The groups some validation of the run scored (a run predating a group leaves it out)."""
    return [g for g in GROUPS if any(k.startswith(g + "/") for p in points for k in p)]


def read_curve(lines: list[str], batch: int) -> list[dict[str, float]]:
    """One point per validation: step, hours, and every `GROUP[/LEVEL]/psnr_aligned_gain`."""
    hours, points = 0.0, []
    for line in lines:
        if not line.strip():
            continue
        record = json.loads(line)
        if record["event"] == "step" and record.get("samples_per_s"):
            hours += batch / record["samples_per_s"] / 3600
        elif record["event"] == "val":
            hours += record.get("seconds", 0.0) / 3600
            gains = {k: v for k, v in record.items() if k.endswith("_gain")}
            if gains:
                points.append({"step": record["step"], "hours": hours, **gains})
    return points


def table(points: list[dict[str, float]], metric: str = "psnr_aligned") -> str:
    """Markdown: `metric`'s gain (dB) per level, training families then the held-out family; only
    the validations that scored it (psnr_pooled exists from session 3 on)."""
    groups = shown_groups(points)
    levels = [(g, lv) for g in groups for lv in LEVELS if any(f"{g}/{lv}/{metric}_gain" in p for p in points)]
    head = ["step", "hours"] + [f"{g} {lv}" for g, lv in levels] + [f"{g} mean" for g in groups]
    keys = [f"{g}/{lv}/{metric}_gain" for g, lv in levels] + [f"{g}/{metric}_gain" for g in groups]
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for p in (p for p in points if any(k in p for k in keys)):
        cells = [str(p["step"]), f"{p['hours']:.2f}"] + [f"{p[k]:+.2f}" if k in p else "" for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(points: list[dict[str, float]], path: Path, others: dict[str, list[dict[str, float]]] | None = None) -> None:
    """Per group: this run's pooled gain per level and on average (the statistic that tracks whole
    photos), its mean of crops for reference, and each of `others` (by name) as its pooled mean."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def line(ax, run: list[dict[str, float]], key: str, *style: str, **kwargs) -> None:
        shown = [p for p in run if key in p]
        ax.plot([p["step"] for p in shown], [p[key] for p in shown], *style, **kwargs)

    groups = shown_groups(points)
    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 4.6), sharey=True, squeeze=False)
    axes = axes[0]
    for ax, group in zip(axes, groups):
        for level in LEVELS:
            line(ax, points, f"{group}/{level}/psnr_pooled_gain", linewidth=1, label=f"{level}, pooled")
        line(ax, points, f"{group}/psnr_aligned_gain", "-", color="grey", linewidth=1, label="mean of crops")
        styles = ("k:", "k-.", "k--")  # one per compared run, so several stay apart
        compared = [(n, r, styles[i % len(styles)]) for i, (n, r) in enumerate((others or {}).items())]
        for name, run, style in [("this run", points, "k-"), *compared]:
            line(ax, run, f"{group}/psnr_pooled_gain", style, linewidth=2, label=f"pooled (as whole photos), {name}")
        ax.axhline(0, color="grey", linewidth=0.5)
        titles = {"real": "real camera blur (REDS)", "still": "no blur (sharp + noise)"}
        ax.set_title(titles.get(group, f"{group} blur families"))
        ax.set_xlabel("training step (batch 16)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("aligned PSNR gain over the blurred input (dB)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize="small", frameon=False)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("metrics", type=Path, nargs="?", default=REPO / "campaign" / "metrics.jsonl")
    ap.add_argument("--png", type=Path, default=REPO / "docs" / "learning_curve.png")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--compare", type=Path, action="append", default=[],
                    help="another run's metrics.jsonl, drawn as its pooled gain (repeatable)")
    args = ap.parse_args(argv)
    missing = [str(f) for f in (args.metrics, *args.compare) if not f.is_file()]
    if missing:
        print(f"error: {', '.join(missing)} not found", file=sys.stderr)
        return 1
    points = read_curve(args.metrics.read_text().splitlines(), args.batch)
    others = {f.parent.name: read_curve(f.read_text().splitlines(), args.batch) for f in args.compare}
    print("Mean of per-crop aligned gains:\n\n" + table(points))
    print("\nPooled aligned gains (each level's crops scored as one photo):\n\n" + table(points, "psnr_pooled"))
    if points:
        try:
            plot(points, args.png, others)
        except ImportError:
            print("matplotlib is not installed: no plot (pip install matplotlib)", file=sys.stderr)
            return 0
        print(f"wrote {args.png}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
