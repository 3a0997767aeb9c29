"""`msdn deblur` and `msdn deblur-dir`: one photo or a folder, with one shared set of model and tiling options."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from deblur_cli.commands.common import console, friendly_errors, gathered, option, plain_progress, progress, warn

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
) -> None:
    """Remove motion blur from every photo in a folder; bad files are reported and skipped."""
    import time

    from deblur_cli.inference.engine import describe_runtime
    from deblur_cli.inference.pipeline import deblur_directory, default_output_dir, parse_extensions, plan_directory

    out_dir = output if output is not None else default_output_dir(directory)
    jobs = plan_directory(directory, out_dir, recursive=recursive, extensions=parse_extensions(ext), fmt=fmt,
                          overwrite=overwrite)
    selection, settings = _prepare(run)
    generator = _load_model(selection, run)
    start = time.perf_counter()
    current = [0]
    with _tile_bar(len(jobs)) as (bar, task):
        def on_file(index: int, job: Any) -> None:
            current[0] = index
            bar.update(task, completed=index, description=job.source.name, count=f"{index + 1}/{len(jobs)}")

        def on_tiles(done: int, total: int) -> None:
            bar.update(task, completed=current[0] + done / max(total, 1))

        report = deblur_directory(generator, jobs, settings, on_file=on_file, progress=on_tiles,
                                  on_written=lambda job: typer.echo(f"Wrote {job.target}"))  # stdout, one a file
    seconds = time.perf_counter() - start
    for _, note in report.notes:
        warn(note)
    _print_summary(f"msdn deblur-dir {directory} -> {out_dir} ({seconds:.1f} s with "
                   f"{describe_runtime(generator, settings.amp)})", report)
    if report.failed:
        raise typer.Exit(1)


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
