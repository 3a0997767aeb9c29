#!/usr/bin/env python
"""Build the fixed blurred validation set from the held-out photos, at three blur levels.

Why fixed: comparing models (or a model with the blurred input) needs the same blur on the same
photos every time, so the blur is synthesised once, with a seed per (photo, level) that depends
only on the photo's name, and written as PNG in the GOPRO layout

    OUT/test/{mild,medium,strong}/{blur,sharp}/NAME.png

so `msdn eval OUT --baseline identity` reports PSNR/SSIM per level. The photos are resized to a
long side of 1280 px first, because the blur lengths (path length in pixels of the camera-shake
model in `deblur_cli.data.synthesize_blur`) are defined at 1280x720.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import torch
from PIL import Image, ImageOps

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from deblur_cli.data import mix_seed, synthesize_blur  # noqa: E402
from deblur_cli.images import save_rgb, to_tensor  # noqa: E402

LEVELS: dict[str, tuple[float, float]] = {"mild": (3.0, 8.0), "medium": (8.0, 16.0), "strong": (16.0, 30.0)}
LONG_SIDE = 1280
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")


def photo_seed(seed: int, name: str, level: str) -> int:
    """Seed for one (photo, level): stable when photos are added or removed."""
    digest = hashlib.sha256(f"{name}:{level}".encode()).digest()
    return mix_seed(seed, int.from_bytes(digest[:8], "big"))


def load_resized(path: Path, long_side: int = LONG_SIDE) -> torch.Tensor:
    """(1, 3, H, W) float in [0, 1], downscaled (never upscaled) to `long_side`."""
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
        scale = min(1.0, long_side / max(im.size))
        if scale < 1.0:
            size = (round(im.width * scale), round(im.height * scale))
            im = im.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
        return to_tensor(im)


def blur_photo(sharp: torch.Tensor, seed: int, strength: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    blurred, target = synthesize_blur(sharp, generator, strength=strength)
    return blurred.clamp(0, 1), target.clamp(0, 1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", type=Path, default=REPO / "data" / "photos" / "val", help="held-out sharp photos")
    ap.add_argument("--out", type=Path, default=REPO / "data" / "eval", help="output root (GOPRO layout)")
    ap.add_argument("--seed", type=int, default=2019)
    ap.add_argument("--long-side", type=int, default=LONG_SIDE)
    ap.add_argument("--levels", default=",".join(LEVELS), help="comma-separated subset of mild,medium,strong")
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
        for level in levels:
            blur_path = args.out / "test" / level / "blur" / f"{path.stem}.png"
            sharp_path = args.out / "test" / level / "sharp" / f"{path.stem}.png"
            if blur_path.is_file() and sharp_path.is_file() and not args.overwrite:
                continue
            sharp = load_resized(path, args.long_side) if sharp is None else sharp
            blurred, target = blur_photo(sharp, photo_seed(args.seed, path.stem, level), LEVELS[level])
            for p, img in ((blur_path, blurred), (sharp_path, target)):
                p.parent.mkdir(parents=True, exist_ok=True)
                save_rgb(p, img)
            written += 1
    print(f"{len(photos)} photos x {len(levels)} levels in {args.out / 'test'} ({written} pairs written)",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
