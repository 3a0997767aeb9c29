"""Benchmark tiled inference on CPU: 1280x720 time, tiling overhead, peak RSS of a huge photo.

    python bench/bench_inference.py                 # all three figures, RSS with the tiny config
    python bench/bench_inference.py --quick         # one repeat each, RSS on a 4000x3000 image
    python bench/bench_inference.py --rss-config default   # the 8000x6000 run on the default model (minutes)
    python bench/bench_inference.py --rss-config none      # skip the RSS subprocess

The networks are randomly initialised: fine for timing and memory, never saved anywhere.
Peak RSS is `ru_maxrss` of a fresh child process that builds an 8-bit HxWx3 array (what a PIL
decode leaves behind), views it as the (1, 3, H, W) uint8 tensor the CLI passes (`LoadedImage.pixels`),
and deblurs it to uint8 levels: tiles and a band of rows are the only float. `--float-input` measures
the float32 (1, 3, H, W) in / out path of the Python API instead.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np
import torch

from deblur_cli.inference.engine import deblur, prepare_model
from deblur_cli.nets.model import MSDN, MSDNConfig
from deblur_cli.inference.tiling import plan_axis

CONFIGS = {
    "default": MSDNConfig(),
    "tiny": MSDNConfig(stem_channels=8, growth_rate=4, encoder_layers=(1, 1), bottleneck_layers=1,
                       decoder_layers=(1, 1), pyramid_pools=(2, 4)),
}


def build_model(name: str) -> MSDN:
    torch.manual_seed(0)
    model = MSDN(CONFIGS[name])
    with torch.no_grad():  # zero head = identity net; random head makes the timing honest either way
        model.head.weight.normal_(0, 0.01)
    return prepare_model(model, torch.device("cpu"))


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def max_rss_mb() -> float:
    """ru_maxrss (Linux: KiB). It survives exec, so the parent runs this child before loading anything."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def vm_hwm_mb() -> float:
    """Cross-check: the kernel's high-water RSS of this process's own address space (reset by exec)."""
    try:
        with open("/proc/self/status") as status:
            line = next(row for row in status if row.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024
    except (OSError, StopIteration):
        return float("nan")


def child(config: str, height: int, width: int, tile: int, overlap: int, threads: int, float_input: bool) -> None:
    torch.set_num_threads(threads)
    model = build_model(config)
    # warm-up with a full batch of tiles: allocator, oneDNN kernels and the activations are in the baseline
    deblur(model, torch.rand(1, 3, 2 * tile, 2 * tile), tile=tile, overlap=overlap, batch_size=4)
    base = max_rss_mb()
    decoded = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    image = torch.from_numpy(decoded).permute(2, 0, 1).unsqueeze(0)
    if float_input:
        image = image.contiguous().float().div_(255)
        del decoded
    start = time.perf_counter()
    out = deblur(model, image, tile=tile, overlap=overlap, batch_size=4)
    seconds = time.perf_counter() - start
    tiles = len(plan_axis(height, tile, overlap)) * len(plan_axis(width, tile, overlap))
    peak = max_rss_mb()
    print(json.dumps({"base_mb": base, "peak_mb": peak, "hwm_mb": vm_hwm_mb(), "seconds": seconds, "tiles": tiles,
                      "image_mb": image.numel() * image.element_size() / 2**20, "dtype": str(out.dtype).split(".")[-1],
                      "bytes_per_pixel": (peak - base) * 2**20 / (height * width)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one repeat, RSS on 4000x3000 unless --rss-size")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--amp", default="none", help="none, bf16 or auto: the precision of timing (1)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--rss-config", choices=["tiny", "default", "none"], default="tiny")
    parser.add_argument("--rss-size", default=None, help="HxW of the RSS image (default 8000x6000 -> W x H)")
    parser.add_argument("--skip-timing", action="store_true", help="only the RSS subprocess")
    parser.add_argument("--float-input", action="store_true", help="RSS of the float32 in / out API path")
    parser.add_argument("--child", nargs=3, metavar=("CONFIG", "H", "W"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        child(args.child[0], int(args.child[1]), int(args.child[2]), args.tile, args.overlap, args.threads,
              args.float_input)
        return

    torch.set_num_threads(args.threads)
    repeats = 1 if args.quick else args.repeats
    print(f"torch {torch.__version__}, {args.threads} threads, tile {args.tile}, overlap {args.overlap}")
    # The RSS child runs first: ru_maxrss is inherited across fork/exec, so it must start from a small parent.
    if args.rss_config != "none":
        size = args.rss_size or ("3000x4000" if args.quick else "6000x8000")
        height, width = (int(v) for v in size.lower().split("x"))
        cmd = [sys.executable, __file__, "--child", args.rss_config, str(height), str(width),
               "--tile", str(args.tile), "--overlap", str(args.overlap), "--threads", str(args.threads),
               *(["--float-input"] if args.float_input else [])]
        result = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
        print(f"(3) peak RSS deblurring {width}x{height} ({result['tiles']} tiles, {args.rss_config} config): "
              f"{result['peak_mb']:.0f} MB (VmHWM {result['hwm_mb']:.0f} MB; "
              f"before the image: {result['base_mb']:.0f} MB, so {result['bytes_per_pixel']:.1f} bytes a pixel; "
              f"{result['dtype']} input and output {result['image_mb']:.0f} MB each; {result['seconds']:.1f} s)")

    if not args.skip_timing:
        model = build_model("default")
        image = torch.rand(1, 3, 720, 1280, generator=torch.Generator().manual_seed(0))
        tiles = len(plan_axis(720, args.tile, args.overlap)) * len(plan_axis(1280, args.tile, args.overlap))
        deblur(model, image[..., :256, :256], tile=args.tile, overlap=args.overlap, amp=args.amp)  # warm-up
        tiled = best_time(lambda: deblur(model, image, tile=args.tile, overlap=args.overlap, amp=args.amp), repeats)
        print(f"(1) 1280x720, default MSDN, fused + channels_last, amp {args.amp}: {tiled:.2f} s "
              f"({tiles} tiles, {tiled / tiles:.3f} s/tile)")

        x = image.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            model(x[..., :256, :256])
            whole = best_time(lambda: model(x), repeats)
        print(f"(2) whole-image pass: {whole:.2f} s -> tiling overhead x{tiled / whole:.2f}")


if __name__ == "__main__":
    main()
