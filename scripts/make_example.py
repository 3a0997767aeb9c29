#!/usr/bin/env python
"""Make the bundled example: one training photo (never a validation one) with medium synthetic blur.

Why a script: the example in `examples/` must be reproducible and provably outside the held-out
validation split, so the photo is looked up in `data/photos/manifest.json` and refused if its
split is 'val'. The blur is `deblur_cli.training.shake`'s smooth-path (poly) camera shake at the eval set's medium
level (8-16 px path length at 1280 px), seeded.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from make_eval_set import LEVELS, REPO, blur_photo, load_resized

from deblur_cli.files import atomic_path
from deblur_cli.imaging.images import to_pil

DEFAULT_PHOTO = "palapeli-data__citrus-fruits"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", type=Path, default=REPO / "data" / "photos")
    ap.add_argument("--id", default=DEFAULT_PHOTO, help="photo id from the manifest")
    ap.add_argument("--name", default="citrus", help="examples/{blurred,sharp}_NAME.jpg")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", type=Path, default=REPO / "examples")
    args = ap.parse_args(argv)
    photos = {p["id"]: p for p in json.loads((args.photos / "manifest.json").read_text())["photos"]}
    photo = photos.get(args.id)
    if photo is None:
        print(f"error: {args.id} is not in {args.photos / 'manifest.json'}", file=sys.stderr)
        return 1
    if photo["split"] != "train":
        print(f"error: {args.id} is in the {photo['split']} split; the example must not be a validation photo",
              file=sys.stderr)
        return 1
    sharp = load_resized(args.photos / photo["file"], 1280)
    blurred, target = blur_photo(sharp, args.seed, LEVELS["medium"], ("poly",))
    for kind, img in (("blurred", blurred), ("sharp", target)):
        path = args.out / f"{kind}_{args.name}.jpg"
        with atomic_path(path) as tmp:
            to_pil(img).save(tmp, "JPEG", quality=92, subsampling=0, optimize=True)
        print(f"{path} {path.stat().st_size // 1024} KB {img.shape[-1]}x{img.shape[-2]}", file=sys.stderr)
    print(f"source: {photo['source']} {photo['package_version']} {photo['original_path']} ({photo['licence']})",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
