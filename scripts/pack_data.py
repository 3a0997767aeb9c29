#!/usr/bin/env python
"""Pack the train/val photos as resized JPEGs under a size budget, for carrying to a GPU machine.

Why: the device machine has no network, and what travels with a command is capped (64 MiB in
all, shared with any checkpoint being carried back and forth), so the photos go as JPEGs whose
long side and quality are lowered step by step until the whole folder fits `--budget-mib`.
The layout mirrors `data/photos`: OUT/{train,val}/NAME.jpg plus OUT/manifest.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from get_photos import encode_jpeg  # noqa: E402

from deblur_cli.files import atomic_path, atomic_write_bytes  # noqa: E402

# (long side, JPEG quality) tried in order; 4:4:4 chroma keeps colour edges sharp for training
SETTINGS: tuple[tuple[int, int], ...] = ((1600, 92), (1600, 88), (1440, 90), (1280, 92), (1280, 88), (1280, 84),
                                         (1152, 85), (1024, 85))
MIB = 1 << 20


def encode(path: Path, long_side: int, quality: int) -> bytes:
    with Image.open(path) as im:
        im = im.convert("RGB")
        scale = min(1.0, long_side / max(im.size))
        if scale < 1.0:
            im = im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.LANCZOS,
                           reducing_gap=3.0)
        return encode_jpeg(im, quality)


def _is_pack(folder: Path) -> bool:
    """Whether `folder` is an earlier output of this script (its manifest records the packing)."""
    try:
        return "packed" in json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError, TypeError):
        return False


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", type=Path, default=REPO / "data" / "photos", help="output of get_photos.py")
    ap.add_argument("--out", type=Path, default=REPO / ".gpu_data" / "photos")
    ap.add_argument("--budget-mib", type=float, default=28.0,
                    help="total size cap (default 28 MiB: leaves room in the 64 MiB carry for a checkpoint)")
    args = ap.parse_args(argv)

    manifest_path = args.photos / "manifest.json"
    if not manifest_path.is_file():
        print(f"error: {manifest_path} not found (run scripts/get_photos.py first)", file=sys.stderr)
        return 1
    if args.out.exists() and any(args.out.iterdir()) and not _is_pack(args.out):
        print(f"error: {args.out} holds files that are not a previous pack; choose another --out", file=sys.stderr)
        return 1
    manifest = json.loads(manifest_path.read_text())
    photos = manifest["photos"]
    budget = int(args.budget_mib * MIB)
    chosen, blobs = None, {}
    for setting in SETTINGS:
        blobs = {p["file"]: encode(args.photos / p["file"], *setting) for p in photos}
        total = sum(len(b) for b in blobs.values()) + len(manifest_path.read_bytes())
        print(f"long side {setting[0]}, quality {setting[1]}: {total / MIB:.1f} MiB", file=sys.stderr)
        if total <= budget:
            chosen = setting
            break
    if chosen is None:
        print(f"error: cannot fit {len(photos)} photos in {args.budget_mib} MiB", file=sys.stderr)
        return 1
    if args.out.exists():  # an empty folder or an earlier pack (checked above): replaced whole
        shutil.rmtree(args.out)
    for split in ("train", "val"):
        (args.out / split).mkdir(parents=True, exist_ok=True)
    for name, data in blobs.items():
        atomic_write_bytes(args.out / name, data)
    packed = {**manifest, "packed": {"long_side": chosen[0], "jpeg_quality": chosen[1]}}
    with atomic_path(args.out / "manifest.json") as tmp:
        tmp.write_text(json.dumps(packed, indent=1) + "\n")
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    counts = {s: sum(1 for p in photos if p["split"] == s) for s in ("train", "val")}
    print(f"packed {counts['train']} train + {counts['val']} val photos into {args.out}: {size / MIB:.1f} MiB "
          f"(long side {chosen[0]}, q{chosen[1]})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
