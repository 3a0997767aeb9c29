"""Seconds per 1280x720 photo for each runtime (torch, OpenVINO), precision and thread count, the ratio
to DeblurGAN's generator forward, and the whole CLI (start-up included) with a cold and a warm cache.

    python bench/bench_runtimes.py --threads 1                 # on a machine whose cores are shared
    python bench/bench_runtimes.py --threads 1,2 --repeats 5
    python bench/bench_runtimes.py --skip-deblurgan --skip-cli  # the networks only, quickly

Networks: the default MSDN, randomly initialised (timing only, never saved), run through
`inference.deblur` exactly as `msdn deblur` runs it (tile 256, overlap 32: 24 tiles of 224x256); DeblurGAN's
generator (11.4 M parameters) as one whole-image forward, the paper's baseline. Each figure is the best of
`--repeats` timings, the configurations taken in turn within each repeat so that a load that comes and
goes hits them alike; conversion and compilation happen before timing and are printed on their own.

bf16 on a CPU without native bf16 (AVX2 only): torch emulates it, about 10x slower than fp32, and is
timed only with `--emulated-bf16`; OpenVINO runs such a request in fp32 (it says so, and so does this).

CLI: `msdn deblur` on a 1280x720 JPEG (the bundled example photo, cropped) in a fresh process, PNG out:
torch; OpenVINO with an empty cache (cold: trace, convert, compile, store); OpenVINO again (warm: import the
compiled network), each with `--amp auto` (bf16 on a CPU with native bf16, else fp32).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from deblur_cli.inference import openvino_runtime as ovr
from deblur_cli.nets.deblurgan import DeblurGAN
from deblur_cli.inference.engine import autocast, cpu_has_native_bf16, deblur, prepare_model, resolve_amp
from deblur_cli.nets.model import MSDN, MSDNConfig

ROOT = Path(__file__).resolve().parent.parent
PRECISIONS = {"fp32": None, "bf16": "bf16"}  # --amp spelling
TILE, OVERLAP = 256, 32


def cpu_summary() -> str:
    """What the CPU computes natively: the line that says whether a bf16 figure means anything."""
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    shown = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "unknown CPU") if Path("/proc/cpuinfo").exists() else "?"
    ov_caps = ",".join(ovr._core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")) if ovr.openvino_available() \
        else "openvino not installed"
    return (f"CPU: {model}, {os.cpu_count()} logical cores; flags {' '.join(shown) or 'none of avx2/avx512/amx'}; "
            f"torch native bf16: {cpu_has_native_bf16()}; OpenVINO capabilities: {ov_caps}")


def msdn_network() -> torch.nn.Module:
    torch.manual_seed(0)
    model = MSDN(MSDNConfig())
    with torch.no_grad():  # zero head = identity network; a random head keeps the timing honest
        model.head.weight.normal_(0, 0.01)
    return prepare_model(model, torch.device("cpu"))


def deblurgan_network() -> torch.nn.Module:
    torch.manual_seed(0)
    model = DeblurGAN()
    with torch.no_grad():
        model.head[1].weight.normal_(0, 0.01)
    return model.eval().requires_grad_(False).to(memory_format=torch.channels_last)


def openvino(network: torch.nn.Module, name: str, threads: int, cache: Path) -> ovr.OpenVinoNetwork:
    return ovr.OpenVinoNetwork(f"bench-{name}".ljust(64, "0"), network.size_multiple, lambda: network,
                               threads=threads, cache_dir=cache)


def photo_job(network: object, amp: str | None, image: torch.Tensor) -> Callable[[], object]:
    """One 1280x720 photo through the one tiled path, whatever runs the network."""
    return lambda: deblur(network, image, tile=TILE, overlap=OVERLAP, batch_size=4, amp=amp)


def forward_job(network: object, amp: str | None, image: torch.Tensor) -> Callable[[], object]:
    """One whole-image generator forward (no tiling): DeblurGAN as its paper runs it."""
    if isinstance(network, torch.nn.Module):
        context = autocast(resolve_amp(amp, torch.device("cpu")), torch.device("cpu"))
        x = image.contiguous(memory_format=torch.channels_last)

        def run() -> object:
            with torch.inference_mode(), context:
                return network(x)

        return run
    return lambda: network.tile_forward(amp).run(image)


def best_of(jobs: dict[str, Callable[[], object]], repeats: int) -> dict[str, tuple[float, float]]:
    """(best, median) seconds per job; each repeat runs every job once, in turn."""
    times: dict[str, list[float]] = {name: [] for name in jobs}
    for _ in range(repeats):
        for name, job in jobs.items():
            start = time.perf_counter()
            job()
            times[name].append(time.perf_counter() - start)
    return {name: (min(t), statistics.median(t)) for name, t in times.items()}


def bench_networks(threads: int, args: argparse.Namespace, cache: Path) -> list[tuple[str, str, float, float | None]]:
    """Rows (runtime, precision, MSDN photo s, DeblurGAN forward s or None) at one thread count."""
    torch.set_num_threads(threads)
    image = torch.rand(1, 3, 720, 1280, generator=torch.Generator().manual_seed(0))
    runtimes = [r for r in args.runtimes if r == "torch" or ovr.openvino_available()]
    nets = {"msdn": msdn_network()} | ({} if args.skip_deblurgan else {"deblurgan": deblurgan_network()})
    jobs: dict[str, Callable[[], object]] = {}
    heavy: dict[str, Callable[[], object]] = {}  # emulated bf16: once, not --repeats times
    for runtime in runtimes:
        for precision in args.precisions:
            amp = PRECISIONS[precision]
            emulated = runtime == "torch" and precision == "bf16" and not cpu_has_native_bf16()
            if emulated and not args.emulated_bf16:
                continue
            for name, net in nets.items():
                network = net if runtime == "torch" else openvino(net, name, threads, cache)
                job = (photo_job if name == "msdn" else forward_job)(network, amp, image)
                start = time.perf_counter()
                job()  # warm-up: kernels chosen, OpenVINO converted and compiled
                print(f"  set-up {runtime} {precision} {name}: {time.perf_counter() - start:.1f} s "
                      f"(conversion and compile included for openvino)", flush=True)
                (heavy if emulated else jobs)[f"{runtime}|{precision}|{name}"] = job
    timed = best_of(jobs, args.repeats) | best_of(heavy, 1)
    rows = []
    for runtime in runtimes:
        for precision in args.precisions:
            if f"{runtime}|{precision}|msdn" not in timed:
                continue
            msdn = timed[f"{runtime}|{precision}|msdn"][0]
            gan = timed.get(f"{runtime}|{precision}|deblurgan", (None,))[0]
            rows.append((runtime, precision, msdn, gan))
    return rows


def precision_note(runtime: str, precision: str) -> str:
    if precision != "bf16":
        return precision
    if runtime == "openvino" and not ovr.cpu_has_native_bf16():
        return "bf16 (runs fp32: no native bf16)"
    return precision if cpu_has_native_bf16() else "bf16 (emulated)"


def cli_photo(folder: Path) -> Path:
    """The bundled example photo cropped to 1280x720, as a JPEG (what a camera gives)."""
    from PIL import Image

    path = folder / "photo_1280x720.jpg"
    with Image.open(ROOT / "examples" / "blurred_citrus.jpg") as im:
        im.convert("RGB").crop((0, 62, 1280, 782)).save(path, quality=92)
    return path


def run_cli(photo: Path, runtime: str, threads: int, cache: Path) -> tuple[float, float]:
    """(wall seconds of the whole process, the seconds it reports for deblurring)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MSDN_OPENVINO_CACHE=str(cache), HF_HUB_OFFLINE="1")
    env.pop("MSDN_RUNTIME", None)
    cmd = [sys.executable, "-m", "deblur_cli", "deblur", str(photo), "-o", str(photo.with_suffix(".out.png")),
           "--overwrite", "--runtime", runtime]
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"msdn deblur failed: {done.stderr.strip()}")
    match = re.search(r" in ([0-9.]+) s with ", done.stdout)
    return wall, float(match.group(1)) if match else float("nan")


def bench_cli(threads: int, repeats: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        photo = cli_photo(folder)
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        imports = []
        for _ in range(repeats):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", "import torch"], env=env, check=True)
            imports.append(time.perf_counter() - start)
        print(f"  python -c 'import torch': {min(imports):.2f} s (best of {repeats})")
        results: dict[str, list[tuple[float, float]]] = {"torch": [], "openvino cold": [], "openvino warm": []}
        for r in range(repeats):
            cache = folder / f"cache{r}"
            results["torch"].append(run_cli(photo, "torch", threads, cache))
            results["openvino cold"].append(run_cli(photo, "openvino", threads, cache))
            results["openvino warm"].append(run_cli(photo, "openvino", threads, cache))
        best = {name: min(runs) for name, runs in results.items()}
        for name, (wall, inner) in best.items():
            print(f"  msdn deblur 1280x720 JPEG -> PNG, {name}: {wall:.2f} s wall "
                  f"(deblurring {inner:.2f} s, the rest start-up, load, save; best of {repeats})")
        print(f"  whole process, openvino warm against torch (both --amp auto): "
              f"{best['torch'][0] / best['openvino warm'][0]:.2f}x faster")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--runtimes", default="torch,openvino")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--emulated-bf16", action="store_true", help="also time torch bf16 on a CPU that emulates it")
    parser.add_argument("--skip-deblurgan", action="store_true")
    parser.add_argument("--skip-cli", action="store_true")
    args = parser.parse_args()
    args.runtimes = args.runtimes.split(",")
    args.precisions = args.precisions.split(",")

    print(cpu_summary())
    print(f"torch {torch.__version__}; openvino "
          f"{ovr.openvino_version() if ovr.openvino_available() else 'not installed'}; 1280x720, tile {TILE}, "
          f"overlap {OVERLAP}; best of {args.repeats}")
    table = ["| runtime | precision | threads | MSDN, 1280x720 photo (s) | DeblurGAN forward (s) | MSDN / DeblurGAN |",
             "| --- | --- | --- | --- | --- | --- |"]
    with tempfile.TemporaryDirectory() as cache:
        for threads in (int(t) for t in args.threads.split(",")):
            print(f"{threads} thread(s):", flush=True)
            for runtime, precision, msdn, gan in bench_networks(threads, args, Path(cache)):
                gan_cell, ratio = ("-", "-") if gan is None else (f"{gan:.2f}", f"{msdn / gan:.2f}")
                table.append(f"| {runtime} | {precision_note(runtime, precision)} | {threads} | {msdn:.2f} | "
                             f"{gan_cell} | {ratio} |")
            if not args.skip_cli and ovr.openvino_available():
                bench_cli(threads, args.repeats)
    print("\n".join(table))


if __name__ == "__main__":
    main()
