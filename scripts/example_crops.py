#!/usr/bin/env python
"""The README's before/after picture: 100% crops of blurred | deblurred | sharp, side by side.

    msdn deblur examples/blurred_citrus.jpg -o /tmp/citrus.png
    python scripts/example_crops.py /tmp/citrus.png            # -> docs/example_crops.png

Crops are at 100% (no resampling), so seams, ringing or colour shifts show as they are.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from deblur_cli.evaluation.evaluate import side_by_side
from deblur_cli.imaging.images import load_image, save_rgb

REPO = Path(__file__).resolve().parents[1]
CORNERS = ((380, 230), (760, 480))  # (left, top) of each crop in the 1280x844 example
SIZE = (300, 220)  # (width, height) of every crop


def strips(blurred: torch.Tensor, deblurred: torch.Tensor, sharp: torch.Tensor,
           corners: tuple[tuple[int, int], ...] = CORNERS, size: tuple[int, int] = SIZE,
           gap: int = 4) -> torch.Tensor:
    """One blurred | deblurred | sharp row per crop, rows stacked with a white gap."""
    width, height = size
    rows = [side_by_side(*(img[..., top:top + height, left:left + width] for img in (blurred, deblurred, sharp)),
                         gap=gap) for left, top in corners]
    spacer = torch.ones_like(rows[0][..., :gap, :])
    return torch.cat([part for row in rows for part in (row, spacer)][:-1], dim=-2)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("deblurred", type=Path, help="msdn deblur's output for the example")
    ap.add_argument("--blurred", type=Path, default=REPO / "examples" / "blurred_citrus.jpg")
    ap.add_argument("--sharp", type=Path, default=REPO / "examples" / "sharp_citrus.jpg")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "example_crops.png")
    args = ap.parse_args(argv)
    images = [load_image(p).rgb for p in (args.blurred, args.deblurred, args.sharp)]
    if len({tuple(i.shape) for i in images}) != 1:
        print("error: the three images differ in size", file=sys.stderr)
        return 1
    save_rgb(args.out, strips(*images))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
