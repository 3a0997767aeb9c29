#!/usr/bin/env python
"""The paper's Table 1 as one command: MSDN, DN and DeblurGAN's generator, trained on one CPU budget.

    python scripts/table1.py 60                 # 60 minutes of one thread per network -> docs/TABLE1.md
    python scripts/table1.py 60 --recipe paper  # the paper's loss (WGAN-GP + perceptual) instead

Why equal time, not equal steps: on a CPU the networks cost very different amounts per step (DeblurGAN's
generator does about 10x MSDN's work per pixel), and a user with a CPU has minutes, not steps. Each
network trains from scratch with the same photos, blur, recipe and seed, one after another on one
thread (under the same load), for MINUTES of wall time; its schedule is sized to the steps a short
probe says fit the budget, so every learning rate decays to its end. Then each is scored with
`msdn eval --baseline identity --align 4` on the eval set's three groups (the paper's centre 256x256
protocol, and whole photos unless --no-full) and on the real-blur pairs, and docs/TABLE1.md gets
parameters, GMACs per 256x256 tile, CPU seconds per 1280x720 photo, steps reached and the scores,
beside the paper's published Tables 1 and 2.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from deblur_cli.nets.architectures import ARCHES, build, default_config
from deblur_cli.weights.checkpoint import load_training_checkpoint
from deblur_cli.inference.engine import deblur, prepare_model

REPO = Path(__file__).resolve().parents[1]
GROUPS = {"train": "data/eval/train", "heldout": "data/eval/heldout", "frames-heldout": "data/eval/frames-heldout"}
REAL = REPO.parent / "shared" / "data" / "real-blur"
PROBE_STEPS = 3
IDENTITY = "identity"
# The paper's Tables 1 (GOPRO, centre 256x256, PSNR / SSIM) and 2 (Köhler, PSNR), as published.
PAPER = {"deblurgan-wild": ("26.82 / 0.894", "26.10"), "deblurgan": ("28.31 / 0.888", "25.35"),
         "dn": ("28.42 / 0.892", "25.72"), "msdn": ("28.64 / 0.895", "26.12")}


def gmacs_per_tile(arch: str) -> float:
    with FlopCounterMode(display=False) as counter:
        build(default_config(arch)).eval()(torch.rand(1, 3, 256, 256))
    return counter.get_total_flops() / 2 / 1e9


def seconds_per_photo(arch: str) -> float:
    """One 1280x720 photo through the tiled path on this thread (untrained weights: same arithmetic)."""
    model = prepare_model(build(default_config(arch)), torch.device("cpu"))
    photo = torch.rand(1, 3, 720, 1280)
    deblur(model, photo[..., :256, :256])  # warm-up
    start = time.perf_counter()
    deblur(model, photo)
    return time.perf_counter() - start


def train_command(arch: str, run: Path, args: argparse.Namespace, steps: int, minutes: float) -> list[str]:
    return [sys.executable, "-m", "deblur_cli", "train", "--data", str(args.data), "--val-data", str(args.val_data),
            "--synthetic-blur", "--arch", arch, "--recipe", args.recipe, "--steps", str(steps), "--seed", "0",
            "--threads", "1", "--max-minutes", str(minutes), "--checkpoint-dir", str(run), "--workers", "0",
            "--val-every", str(10**9), "--checkpoint-every", str(10**9), "--export", str(run / f"{arch}.safetensors"),
            "--overwrite"]


def train(arch: str, args: argparse.Namespace) -> dict:
    """Probe the seconds per step, then train for the budget with the schedule sized to fit it."""
    probe = args.out / f"probe-{arch}"
    subprocess.run(train_command(arch, probe, args, PROBE_STEPS, 60.0), check=True, capture_output=True)
    events = [json.loads(line) for line in (probe / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rates = sorted(e["samples_per_s"] for e in events if e["event"] == "step" and e.get("samples_per_s"))
    batch = load_training_checkpoint(probe)["train_config"]["batch_size"]
    per_step = batch / rates[len(rates) // 2] * 1.05  # the median step, plus validation and checkpoint time
    steps = max(int(args.minutes * 60 / per_step), 1)
    run = args.out / arch
    with open(args.out / f"{arch}.log", "w") as log:
        subprocess.run(train_command(arch, run, args, steps, args.minutes), check=True, stdout=log,
                       stderr=subprocess.STDOUT)
    reached = max((json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
                   if '"step"' in line), default=0)
    return {"planned_steps": steps, "steps": reached, "weights": run / f"{arch}.safetensors"}


def score(weights: dict[str, Path], folder: Path, protocol: str, report: Path) -> dict:
    command = [sys.executable, "-m", "deblur_cli", "eval", str(folder), "--baseline", "identity", "--align", "4",
               "--protocol", protocol, "--json", str(report), "--overwrite"]
    for path in weights.values():
        command += ["--weights", str(path)]
    subprocess.run(command, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return json.loads(report.read_text())


def rows(report: dict, arches: list[str]) -> dict[tuple[str, str], tuple[float, float]]:
    """(arch or 'blurred', level or 'overall') -> aligned (PSNR, SSIM); columns in the order given."""
    labels = [m for m in report["models"] if m != IDENTITY]
    names = dict(zip(labels, arches)) | {IDENTITY: "blurred"}
    return {(names[s["model"]], s["group"] or "overall"): (s["psnr_aligned"], s["ssim_aligned"])
            for s in report["summary"] if s["model"] in names and s["psnr_aligned"] is not None}


def markdown(args: argparse.Namespace, facts: dict[str, dict], tables: dict[str, dict]) -> str:
    arches = list(facts)
    lines = ["# Table 1, reproduced on one CPU budget", "",
             f"Generated by `python scripts/table1.py {args.minutes:g} --recipe {args.recipe}`: each network trained "
             f"from scratch for {args.minutes:g} minutes of one CPU thread, one after another, same photos, blur, "
             "recipe and seed; scored with `msdn eval --baseline identity --align 4` (aligned PSNR / SSIM).", "",
             "| network | parameters | GMACs per 256x256 tile | CPU s per 1280x720 photo | steps in the budget |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for arch in arches:
        f = facts[arch]
        lines.append(f"| {arch} | {f['parameters'] / 1e6:.2f} M | {f['gmacs']:.1f} | {f['seconds']:.2f} | "
                     f"{f['steps']:,} of {f['planned_steps']:,} |")
    for name, table in tables.items():
        levels = sorted({lv for _, lv in table}, key=lambda lv: (lv == "overall", lv))
        lines += ["", f"**{name}**", "", "| level | blurred | " + " | ".join(arches) + " |",
                  "| --- |" + " ---: |" * (len(arches) + 1)]
        for level in levels:
            cells = [f"{table[(a, level)][0]:.2f} / {table[(a, level)][1]:.4f}" if (a, level) in table else "-"
                     for a in ["blurred", *arches]]
            lines.append(f"| {level} | " + " | ".join(cells) + " |")
    lines += ["", "**The paper, as published** (GPU-trained on GOPRO for hundreds of epochs; not comparable in "
              "absolute terms with a CPU budget on synthetic blur):", "",
              "| network | Table 1: GOPRO PSNR / SSIM | Table 2: Köhler PSNR |", "| --- | ---: | ---: |"]
    lines += [f"| {name} | {t1} | {t2} |" for name, (t1, t2) in PAPER.items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("minutes", type=float, help="training wall time per network (one thread)")
    ap.add_argument("--recipe", default="cpu", choices=("cpu", "paper"))
    ap.add_argument("--arch", action="append", choices=ARCHES, help="networks (default: all three)")
    ap.add_argument("--data", type=Path, default=REPO / "data" / "photos" / "train")
    ap.add_argument("--val-data", type=Path, default=REPO / "data" / "photos" / "val")
    ap.add_argument("--eval-root", type=Path, default=REPO)
    ap.add_argument("--real", type=Path, default=REAL, help="paired real-blur folder (skipped if absent)")
    ap.add_argument("--no-full", action="store_true", help="score the centre-256 protocol only")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "table1")
    ap.add_argument("--doc", type=Path, default=REPO / "docs" / "TABLE1.md")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    facts = {}
    for arch in args.arch or ARCHES:
        trained = train(arch, args)
        facts[arch] = {**trained, "parameters": sum(p.numel() for p in build(default_config(arch)).parameters()),
                       "gmacs": gmacs_per_tile(arch), "seconds": seconds_per_photo(arch)}
    weights = {arch: f["weights"] for arch, f in facts.items()}
    folders = {f"{group}, {protocol}": (args.eval_root / path, protocol) for group, path in GROUPS.items()
               for protocol in (("center256",) if args.no_full else ("center256", "full"))}
    if (args.real / "blur").is_dir():
        folders["real blur (REDS), full"] = (args.real, "full")
    tables = {name: rows(score(weights, folder, protocol, args.out / f"{name.replace(', ', '-')}.json"), list(facts))
              for name, (folder, protocol) in folders.items()}
    args.doc.write_text(markdown(args, facts, tables))
    print(f"wrote {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
