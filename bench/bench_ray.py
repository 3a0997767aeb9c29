"""Photos per minute of `deblur-dir` locally and with `--ray` (1 and 2 workers): the cost of scaling out.

    python bench/bench_ray.py                       # 12 photos of 640x360, the default model
    python bench/bench_ray.py --photos 24 --side 720 --workers 1,2,4
    python bench/bench_ray.py --address auto        # on a running cluster (`ray start --head` first)

The photos are crops of the bundled example (`examples/blurred_citrus.jpg`) written as PNGs to a temp
folder; every configuration deblurs the same folder into its own output folder through the library calls
the CLI makes (`deblur_directory`, `deblur_directory_on_ray`), with the default model, fp32, one torch
thread per worker, and the local run pinned to one thread too, so 1 worker against local is the overhead
of Ray alone (dispatch, per-worker model load, results streamed back). The cluster's start (or join) is
timed on its own; each Ray figure includes the workers' start and model load, as a real run does.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from deblur_cli.inference.pipeline import DeblurSettings, deblur_directory, plan_directory  # noqa: E402
from deblur_cli.weights.resolve import ready_model, select_weights  # noqa: E402


def make_photos(folder: Path, count: int, side: int) -> Path:
    """`count` different crops (side x side*9/16) of the example photo, as PNGs (lossless, fast to decode)."""
    example = Image.open(ROOT / "examples" / "blurred_citrus.jpg").convert("RGB")
    width, height = side, side * 9 // 16
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        x = (i * 97) % max(1, example.width - width)
        y = (i * 53) % max(1, example.height - height)
        example.crop((x, y, x + width, y + height)).save(folder / f"photo{i:03d}.png")
    return folder


def per_minute(count: int, seconds: float) -> str:
    return f"{60 * count / seconds:6.1f} photos/min ({seconds:5.1f} s)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=12)
    parser.add_argument("--side", type=int, default=640, help="photo width (height: 9/16 of it)")
    parser.add_argument("--workers", default="1,2", help="Ray worker counts to time, comma-separated")
    parser.add_argument("--address", default=None, help="Ray cluster to join (default: a new local one)")
    parser.add_argument("--skip-local", action="store_true")
    args = parser.parse_args()

    import ray

    from deblur_cli.inference.ray_runner import ClusterOptions, WorkerSpec, deblur_directory_on_ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    torch.set_num_threads(1)
    selection = select_weights()
    settings = DeblurSettings(*selection.tiling, amp=None)
    with tempfile.TemporaryDirectory(prefix="msdnbench") as temp:
        src = make_photos(Path(temp) / "src", args.photos, args.side)
        print(f"{args.photos} photos of {args.side}x{args.side * 9 // 16}, model {selection.label}, fp32, "
              f"{os.cpu_count()} CPUs here")
        if not args.skip_local:
            start = time.perf_counter()
            model = ready_model(selection, "cpu", runtime="torch").model
            report = deblur_directory(model, plan_directory(src, Path(temp) / "local"), settings)
            assert len(report.processed) == args.photos, report.failed
            print(f"local, 1 thread:      {per_minute(args.photos, time.perf_counter() - start)}")
        start = time.perf_counter()
        ray.init(address=args.address, include_dashboard=False if args.address is None else None,
                 logging_level="WARNING", log_to_driver=False)
        print(f"ray cluster start:    {time.perf_counter() - start:5.1f} s "
              f"({ray.cluster_resources().get('CPU', 0):g} CPUs)")
        spec = WorkerSpec(selection, device="cpu", runtime="torch", threads=1, amp=None)
        for workers in (int(w) for w in args.workers.split(",")):
            start = time.perf_counter()
            report, described = deblur_directory_on_ray(spec, plan_directory(src, Path(temp) / f"ray{workers}"),
                                                        settings, ClusterOptions(workers=workers))
            assert len(report.processed) == args.photos, report.failed
            print(f"ray, {workers} worker{'s' if workers > 1 else ' '}:       "
                  f"{per_minute(args.photos, time.perf_counter() - start)}  [{described}]")
        ray.shutdown()


if __name__ == "__main__":
    main()
