"""Benchmark training throughput on CPU: the full `msdn train` loop beside the bare step it wraps.

    python bench/bench_train.py                       # 1 and 2 threads, fp32 and bf16
    python bench/bench_train.py --threads 1 --amp none --steps 12

The bare step is forward, Charbonnier + 0.1 FFT loss, backward and Adam on random tensors of the
training shape: what the model costs. The loop is `deblur_cli.training.train.train` with the CLI's default
(CPU) recipe on real photos (`data/photos/train`, else scikit-image's), no validation: what a run
gets, including crops from the in-memory photo bank, blur synthesis and the EMA update. The ratio
loop / bare is the loop's efficiency (issue #12 asks >= 0.8). Also printed: the blur synthesis and
validation costs. Each figure runs in a fresh subprocess so thread settings do not leak.
bf16 autocast is only fast where the CPU has native bf16 (AMX / AVX512-BF16); elsewhere it is
emulated and ~10x slower, which is why `--amp auto` picks it only there.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def bare_step(threads: int, amp: str, crop: int, batch: int, steps: int) -> float:
    import torch

    from deblur_cli.training import losses as L
    from deblur_cli.inference.engine import autocast
    from deblur_cli.nets.model import MSDN

    torch.set_num_threads(threads)
    model = MSDN().to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), 5e-4)
    x = torch.rand(batch, 3, crop, crop).contiguous(memory_format=torch.channels_last)
    y = torch.rand(batch, 3, crop, crop)
    amp_name = None if amp == "none" else amp
    times = []
    for i in range(steps + 2):
        start = time.perf_counter()
        with autocast(amp_name, torch.device("cpu")):
            out = model(x)
        loss = L.charbonnier_loss(out.float(), y) + 0.1 * L.fft_l1_loss(out.float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= 2:  # the first steps pick kernels
            times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def photos_folder() -> Path:
    train = REPO / "data" / "photos" / "train"
    if train.is_dir() and any(train.iterdir()):
        return train
    import numpy as np
    from PIL import Image
    from skimage import data as skdata

    folder = Path(tempfile.mkdtemp()) / "photos"
    folder.mkdir()
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        Image.fromarray(np.asarray(getattr(skdata, name)())).convert("RGB").save(folder / f"{name}.png")
    return folder


def loop(threads: int, amp: str, crop: int, batch: int, steps: int) -> float:
    from deblur_cli.training import train as T

    rates: list[float] = []
    config = T.TrainConfig(data=str(photos_folder()), synthetic_blur=True, val_fraction=0.0, steps=steps + 2,
                           crop=crop, batch_size=batch, amp=amp, threads=threads, device="cpu",
                           checkpoint_dir=tempfile.mkdtemp(), checkpoint_every=10**6, val_every=10**6)
    T.train(config, callback=lambda e: rates.append(e["samples_per_s"]) if e["event"] == "step" else None)
    return statistics.median(rates[2:])


def blur_cost(crop: int, batch: int) -> float:
    """Seconds to cut and blur one batch (part of the loop figure)."""
    import torch

    from deblur_cli.training import shake
    from deblur_cli.training.data import find_samples
    from deblur_cli.training.synthetic import PhotoBank, training_pair

    torch.set_num_threads(1)
    bank = PhotoBank(find_samples(photos_folder(), synthetic=True).samples[:8])
    start = time.perf_counter()
    for step in range(5):
        training_pair(bank, batch, crop, shake.TRAIN_FAMILIES, (2.0, 60.0), shake.Realism(), 0, step)
    return (time.perf_counter() - start) / 5


def child(call: str, threads: int) -> float:
    """Run one measurement (`call`, e.g. "loop(1, 'none', 128, 16, 8)") in a fresh interpreter: OpenMP
    reads its thread count at start-up."""
    code = f"import bench_train as b; print(b.{call})"  # `-c` puts the working folder, bench/, on the path
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True,
                         cwd=Path(__file__).resolve().parent)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--amp", default="none,bf16")
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args()
    import torch

    from deblur_cli.inference.engine import cpu_has_native_bf16

    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, native bf16: "
          f"{cpu_has_native_bf16()}; batch {args.batch} of {args.crop}px crops")
    rows = []
    for threads in (int(t) for t in args.threads.split(",")):
        for amp in args.amp.split(","):
            steps = args.steps if amp == "none" or cpu_has_native_bf16() else 3  # emulated bf16 is slow
            shape = f"({threads}, {amp!r}, {args.crop}, {args.batch}, {steps})"
            bare, full = child(f"bare_step{shape}", threads), child(f"loop{shape}", threads)
            rows.append({"threads": threads, "amp": amp, "bare": bare, "loop": full, "ratio": full / bare})
            print(f"threads {threads}  amp {amp:4}  bare step {bare:6.2f} samples/s  loop {full:6.2f} samples/s  "
                  f"loop/bare {full / bare:.2f}", flush=True)
    cost = child(f"blur_cost({args.crop}, {args.batch})", 1)
    print(f"crops + blur synthesis: {cost:.3f} s per batch of {args.batch} (1 thread)")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
