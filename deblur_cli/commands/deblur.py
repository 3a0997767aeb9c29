"""`msdn deblur` and `msdn deblur-dir`: one photo or a folder, with one shared set of model and tiling options."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from typer.core import TyperCommand

from deblur_cli.commands.common import console, friendly_errors, gathered, option, plain_progress, progress, warn
from deblur_cli.errors import MsdnError

if TYPE_CHECKING:
    from deblur_cli.inference.pipeline import DeblurSettings
    from deblur_cli.weights.resolve import Selection

AMP_OPTION = typer.Option("auto", "--amp", help="Mixed precision: auto (bf16 where the GPU or CPU runs it "
                          "natively, else float32), none, bf16 or fp16 (CUDA).")
RUNTIME_OPTION = typer.Option("auto", "--runtime", envvar="MSDN_RUNTIME", help="What runs the network: auto "
                              "(OpenVINO when it is installed and the device is a CPU, else torch), torch or "
                              "openvino (CPU only; the extra: pip install 'msdn-deblur\\[openvino]').")
# The options deblur and deblur-dir share, in the order their help lists them.
RUN_OPTIONS = [
    option("weights", Path | None, typer.Option(None, "--weights", help="Generator weights file (.safetensors); "
                                                "overrides --model.")),
    option("model", str | None, typer.Option(None, "--model", help="Model name from `msdn weights list` "
                                             "(default: the manifest's).")),
    option("offline", bool, typer.Option(False, "--offline", help="Never download; use bundled or cached weights "
                                         "only.")),
    option("device", str, typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps.")),
    option("runtime", str, RUNTIME_OPTION),
    option("tile", int | None, typer.Option(None, "--tile", show_default=False, help="Tile size in pixels; smaller "
                                            "uses less memory (default: the model's, else 256).")),
    option("overlap", int | None, typer.Option(None, "--overlap", show_default=False, help="Pixels shared by "
                                               "neighbouring tiles, blended to hide seams (default: the model's, "
                                               "else 32).")),
    option("batch_size", int, typer.Option(4, "--batch-size", help="Tiles per forward pass.")),
    option("amp", str, AMP_OPTION),
    option("quality", int, typer.Option(95, "--quality", min=1, max=100, help="JPEG / WebP quality of the output.")),
    option("max_pixels", int | None, typer.Option(None, "--max-pixels", help="Refuse larger images, checked before "
                                                  "decoding (default: 100,000,000).", show_default=False)),
]


def _settings(run: dict[str, Any], selection: Selection) -> DeblurSettings:
    """Options given win; the model's recommended tiling fills the rest (one manifest look-up)."""
    from deblur_cli.imaging.images import DEFAULT_MAX_PIXELS
    from deblur_cli.inference.pipeline import DeblurSettings, parse_amp

    rec_tile, rec_overlap = selection.tiling
    return DeblurSettings(tile=rec_tile if run["tile"] is None else run["tile"],
                          overlap=rec_overlap if run["overlap"] is None else run["overlap"],
                          batch_size=run["batch_size"], amp=parse_amp(run["amp"]), quality=run["quality"],
                          max_pixels=DEFAULT_MAX_PIXELS if run["max_pixels"] is None else run["max_pixels"])


def _prepare(run: dict[str, Any]) -> tuple[Selection, DeblurSettings]:
    from deblur_cli.weights.resolve import select_weights

    selection = select_weights(run["model"], run["weights"])  # the manifest is read once, for tiling and weights
    return selection, _settings(run, selection)


def _load_model(selection: Selection, run: dict[str, Any]) -> Any:
    """The generator, with a download bar that appears only if weights are actually fetched."""
    from rich.progress import BarColumn, DownloadColumn, TextColumn, TransferSpeedColumn

    from deblur_cli.weights.resolve import ready_model

    with progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  transient=True) as bar:
        task = bar.add_task("Downloading weights", total=None, visible=False)
        return ready_model(selection, run["device"], offline=run["offline"], runtime=run["runtime"],
                           progress=lambda done, total: bar.update(task, completed=done, total=total or None,
                                                                   visible=True)).model


@contextlib.contextmanager
def _tile_bar(total_files: int | None = None) -> Iterator[Any]:
    """One rich bar. Single file: over tiles, shown once an image needs more than one. Folder: over
    files, advancing by fractions of a file as its tiles finish."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = [TextColumn("{task.description}"), BarColumn()]
    columns += [TextColumn("{task.fields[count]}")] if total_files else [MofNCompleteColumn()]
    with progress(*columns, TimeElapsedColumn(), TimeRemainingColumn(), transient=True) as bar:
        task = bar.add_task("Deblurring", total=total_files, visible=bool(total_files), count="")
        yield bar, task


@friendly_errors
@gathered(RUN_OPTIONS, into="run")
def deblur_command(
    image: Path = typer.Argument(..., help="The blurred photo (JPEG, PNG, WebP, TIFF, BMP, HEIC, AVIF).",
                                show_default=False),
    output: Path | None = typer.Option(None, "-o", "--output", show_default=False,
                                       help="Output file; its extension picks the format (default: IMAGE_deblurred.png)."),
    run: dict[str, Any] = None,  # type: ignore[assignment]  # RUN_OPTIONS
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output (never the input)."),
) -> None:
    """Remove motion blur from one photo."""
    import time

    from deblur_cli.files import remove_stale_temps
    from deblur_cli.imaging.images import DEFAULT_MAX_PIXELS, probe_image
    from deblur_cli.inference.engine import describe_runtime
    from deblur_cli.inference.pipeline import check_output, deblur_file, default_output

    limit = DEFAULT_MAX_PIXELS if run["max_pixels"] is None else run["max_pixels"]
    if limit >= 1:  # (a bad --max-pixels is reported with the other options just below)
        probe_image(image, limit)  # a bad photo is reported before any weights are looked for
    selection, settings = _prepare(run)
    target = output if output is not None else default_output(image)
    check_output(image, target, overwrite=overwrite)
    generator = _load_model(selection, run)
    remove_stale_temps(target.parent)
    start = time.perf_counter()
    plain = None if console.is_terminal else plain_progress(f"Deblurring {image.name}")
    with _tile_bar() as (bar, task):
        def on_tiles(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total, visible=total > 1)
            if plain is not None:
                plain(done, total)

        result = deblur_file(generator, image, target, settings, progress=on_tiles, replace=overwrite)
    seconds = time.perf_counter() - start
    for note in result.notes:
        warn(note)
    width, height = result.size
    typer.echo(f"Wrote {target} ({width}x{height}) in {seconds:.1f} s with "
               f"{describe_runtime(generator, settings.amp)}")


@friendly_errors
@gathered(RUN_OPTIONS, into="run")
def deblur_dir_command(
    directory: Path = typer.Argument(..., help="Folder of blurred photos.", show_default=False),
    output: Path | None = typer.Option(None, "-o", "--output", show_default=False,
                                       help="Output folder, mirroring DIR (default: DIR_deblurred beside DIR)."),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Include subfolders."),
    ext: str | None = typer.Option(None, "--ext", help="Only these extensions, e.g. jpg,png (default: all images)."),
    fmt: str | None = typer.Option(None, "--format", help="Output format, e.g. png (default: same as each input)."),
    run: dict[str, Any] = None,  # type: ignore[assignment]  # RUN_OPTIONS
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo outputs that already exist."),
    ray_address: str | None = typer.Option(None, "--ray", metavar="[ADDRESS]", show_default=False,
                                           help="Deblur on a Ray cluster: alone, the one RAY_ADDRESS names or a new "
                                           "local one; or auto, ray://HOST:10001. Paths must be on a filesystem "
                                           "every node sees (the extra: pip install 'msdn-deblur\\[ray]')."),
    ray_workers: int | None = typer.Option(None, "--ray-workers", min=1, show_default=False,
                                           help="Ray workers, each loading the model once (default: as many as "
                                           "the cluster's CPUs hold)."),
    ray_cpus: int = typer.Option(1, "--ray-cpus-per-worker", min=1, help="CPUs (torch threads) per Ray worker."),
    ray_gpus: float = typer.Option(0.0, "--ray-gpus-per-worker", min=0.0, help="GPUs per Ray worker (GPU nodes; "
                                   "with --device auto a worker given one runs on it)."),
) -> None:
    """Remove motion blur from every photo in a folder; bad files are reported and skipped."""
    import time

    from deblur_cli.inference.engine import describe_runtime
    from deblur_cli.inference.pipeline import deblur_directory, default_output_dir, parse_extensions, plan_directory

    out_dir = output if output is not None else default_output_dir(directory)
    jobs = plan_directory(directory, out_dir, recursive=recursive, extensions=parse_extensions(ext), fmt=fmt,
                          overwrite=overwrite)
    selection, settings = _prepare(run)
    cluster = _cluster_options(ray_address, ray_workers, ray_cpus, ray_gpus)
    generator = _load_model(selection, run) if cluster is None else None  # on Ray each worker loads its own
    start = time.perf_counter()
    current = [0]
    with _tile_bar(len(jobs)) as (bar, task):
        def on_file(index: int, job: Any) -> None:
            current[0] = index
            bar.update(task, completed=index, description=job.source.name, count=f"{index + 1}/{len(jobs)}")

        def on_tiles(done: int, total: int) -> None:
            bar.update(task, completed=current[0] + done / max(total, 1))

        wrote = lambda job: typer.echo(f"Wrote {job.target}")  # noqa: E731  # stdout, one a file
        if cluster is None:
            report = deblur_directory(generator, jobs, settings, on_file=on_file, progress=on_tiles, on_written=wrote)
            described = describe_runtime(generator, settings.amp)
        else:
            report, described = _deblur_on_ray(cluster, selection, run, jobs, settings, on_file, on_tiles, wrote)
    seconds = time.perf_counter() - start
    for _, note in report.notes:
        warn(note)
    _print_summary(f"msdn deblur-dir {directory} -> {out_dir} ({seconds:.1f} s with {described})", report)
    if report.failed:
        raise typer.Exit(1)


RAY_EXTRA = "pip install 'msdn-deblur[ray]'"
_RAY_ADDRESS = re.compile(r"(auto|local|ray://\S+|[\w.\-\[\]:]+:\d+)")  # what `--ray` takes as its value


class RayAddressCommand(TyperCommand):
    """deblur-dir's command: `--ray` takes a value only when the next word is a Ray address (auto, local,
    ray://..., host:port), so `--ray` alone, last or before a folder, means "RAY_ADDRESS or a local cluster"."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        return super().parse_args(ctx, optional_ray_address(args))


def optional_ray_address(args: list[str]) -> list[str]:
    """`--ray` followed by no address becomes `--ray=` (click options take no optional values)."""
    words = list(args)
    for i, word in enumerate(words):
        if word == "--":
            break
        if word == "--ray" and (i + 1 == len(words) or not _RAY_ADDRESS.fullmatch(words[i + 1])):
            words[i] = "--ray="
    return words


def _cluster_options(address: str | None, workers: int | None, cpus: int, gpus: float) -> Any:
    """The Ray options, or None for a local run; Ray options without --ray, or --ray without the extra,
    are refused in one line before any work."""
    if address is None:
        if workers is not None or cpus != 1 or gpus != 0:
            raise MsdnError("--ray-workers, --ray-cpus-per-worker and --ray-gpus-per-worker need --ray")
        return None
    try:
        from deblur_cli.inference.ray_runner import ClusterOptions
    except ImportError as exc:
        if (exc.name or "").split(".")[0] != "ray":
            raise
        raise MsdnError(f"--ray needs Ray: {RAY_EXTRA}") from None
    return ClusterOptions(address=address or None, workers=workers, cpus_per_worker=cpus, gpus_per_worker=gpus)


def _deblur_on_ray(cluster: Any, selection: Selection, run: dict[str, Any], jobs: Any, settings: DeblurSettings,
                   on_file: Any, on_tiles: Any, wrote: Any) -> tuple[Any, str]:
    """The folder's photos on Ray workers that each load the model once (the same callbacks as a local run)."""
    from deblur_cli.inference.ray_runner import WorkerSpec, deblur_directory_on_ray, require_ray_runtime, worker_runtime

    require_ray_runtime(run["runtime"])
    spec = WorkerSpec(selection, device=run["device"], runtime=worker_runtime(run["runtime"]), offline=run["offline"],
                      threads=cluster.cpus_per_worker, amp=settings.amp)
    return deblur_directory_on_ray(spec, jobs, settings, cluster, on_file=on_file, progress=on_tiles, on_written=wrote)


LEFT_OUT_SHOWN = 20  # a folder of sidecar files would otherwise bury the failures


def _print_summary(title: str, report: Any) -> None:
    """Counts, then a table of the failures (if any) with their reasons (plain text: a reason's
    `pip install 'msdn-deblur[formats]'` or a path's [brackets] are not rich markup)."""
    from rich.markup import escape
    from rich.table import Table

    summary = Table(title=title)
    summary.add_column("processed", justify="right", style="green")
    summary.add_column("skipped (exist)", justify="right", style="yellow")
    summary.add_column("left out", justify="right", style="dim")
    summary.add_column("failed", justify="right", style="red")
    summary.add_row(*(str(len(part)) for part in (report.processed, report.skipped, report.left_out, report.failed)))
    console.print(summary)
    if report.left_out:
        shown = report.left_out[:LEFT_OUT_SHOWN]
        left = Table(title="Left out" + (f" (first {LEFT_OUT_SHOWN})" if len(report.left_out) > LEFT_OUT_SHOWN else ""))
        left.add_column("file", overflow="fold")
        left.add_column("why", overflow="fold")
        for path, reason in shown:
            left.add_row(escape(str(path)), escape(reason))
        console.print(left)
    if report.failed:
        failures = Table(title="Failures", show_lines=False)
        failures.add_column("file", overflow="fold")
        failures.add_column("reason", overflow="fold")
        for path, reason in report.failed:
            failures.add_row(escape(str(path)), escape(reason))
        console.print(failures)
