#!/usr/bin/env python
"""Build the fixed blurred evaluation set from the held-out photos, per blur level and family group.

Why fixed: comparing models (or a model with the blurred input) needs the same blur on the same
photos every time, so the blur is synthesised once, with a seed per (photo, level, group) that
depends only on the photo's name, and written as PNG in the GOPRO layout

    OUT/{train,heldout,frames-heldout}/test/{mild,medium,strong,extreme}/{blur,sharp}/NAME.png

so `msdn eval OUT/heldout --baseline identity --align 4` reports PSNR/SSIM per level. Beside them,
`OUT/still/{blur,sharp}/NAME.png` holds the same photos unblurred, with only read noise of sigma
`STILL_NOISE` (input about 46 dB): what a model does to a photo that is already sharp, whose ideal
is the identity. `train` uses
the PSF trajectory families training uses, `heldout` the PSF family it never sees
(`deblur_cli.training.shake`), `frames-heldout` averaged frames along a camera path family training never
sees (`deblur_cli.training.frames`, GOPRO's construction).
The photos are resized to a long side of 1280 px first, because the levels (path length in
pixels, `deblur_cli.training.synthetic.LEVELS`) are defined at 1280x720.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from deblur_cli.training import shake
from deblur_cli.training import synthetic as S
from deblur_cli.imaging.images import save_rgb, to_tensor
from deblur_cli.training.synthetic import GROUPS, LEVELS, VAL_REALISM, name_seed

LONG_SIDE = 1280
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")
REPO = Path(__file__).resolve().parents[1]
FOLDERS = {"train": "train", "held-out": "heldout", "frames-held-out": "frames-heldout"}  # group -> folder name
STILL = "still"  # the folder of unblurred photos (paired layout, no levels)


def load_resized(path: Path, long_side: int = LONG_SIDE) -> torch.Tensor:
    """(1, 3, H, W) float in [0, 1], downscaled (never upscaled) to `long_side`."""
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
        scale = min(1.0, long_side / max(im.size))
        if scale < 1.0:
            size = (round(im.width * scale), round(im.height * scale))
            im = im.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
        return to_tensor(im)


def blur_photo(sharp: torch.Tensor, seed: int, lengths: tuple[float, float], families: tuple[str, ...],
               renderer: str = "shake") -> tuple[torch.Tensor, torch.Tensor]:
    """A whole photo blurred by one path of `families`; the border is reflected in for the margin."""
    m = shake.margin_for(lengths[1])
    padded = F.pad(sharp, (m, m, m, m), mode="reflect")
    return S.render(renderer, padded, families, lengths, torch.Generator().manual_seed(seed), VAL_REALISM)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", type=Path, default=REPO / "data" / "photos" / "val", help="held-out sharp photos")
    ap.add_argument("--out", type=Path, default=REPO / "data" / "eval", help="output root (GOPRO layout)")
    ap.add_argument("--seed", type=int, default=2019)
    ap.add_argument("--long-side", type=int, default=LONG_SIDE)
    ap.add_argument("--levels", default=",".join(LEVELS), help=f"comma-separated subset of {','.join(LEVELS)}")
    ap.add_argument("--overwrite", action="store_true", help="rebuild files that already exist")
    args = ap.parse_args(argv)

    torch.set_num_threads(min(2, torch.get_num_threads()))
    photos = sorted(p for p in args.photos.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES) \
        if args.photos.is_dir() else []
    if not photos:
        print(f"error: no photos in {args.photos} (run scripts/get_photos.py first)", file=sys.stderr)
        return 1
    levels = [lv.strip() for lv in args.levels.split(",") if lv.strip()]
    if bad := [lv for lv in levels if lv not in LEVELS]:
        print(f"error: unknown level(s) {bad}; use {', '.join(LEVELS)}", file=sys.stderr)
        return 2
    written = 0
    for path in photos:
        sharp = None
        still_blur, still_sharp = args.out / STILL / "blur" / f"{path.stem}.png", args.out / STILL / "sharp" / f"{path.stem}.png"
        if args.overwrite or not (still_blur.is_file() and still_sharp.is_file()):
            sharp = load_resized(path, args.long_side)
            noisy = S.still_input(sharp, name_seed(args.seed, path.name, STILL))
            for p, img in ((still_blur, noisy), (still_sharp, sharp)):
                p.parent.mkdir(parents=True, exist_ok=True)
                save_rgb(p, img)
            written += 1
        for level in levels:
            for group, (renderer, families) in GROUPS.items():
                folder = args.out / FOLDERS[group] / "test" / level
                blur_path, sharp_path = folder / "blur" / f"{path.stem}.png", folder / "sharp" / f"{path.stem}.png"
                if blur_path.is_file() and sharp_path.is_file() and not args.overwrite:
                    continue
                sharp = load_resized(path, args.long_side) if sharp is None else sharp
                seed = name_seed(args.seed, path.name, level, group)
                blurred, target = blur_photo(sharp, seed, LEVELS[level], families, renderer)
                for p, img in ((blur_path, blurred), (sharp_path, target)):
                    p.parent.mkdir(parents=True, exist_ok=True)
                    save_rgb(p, img)
                written += 1
    print(f"{len(photos)} photos x ({len(levels)} levels x {len(GROUPS)} groups + {STILL}) in {args.out} "
          f"({written} pairs written)",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
