"""`msdn` command line: parses options, calls the library, draws output. No model logic here."""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console

from deblur_cli import __version__
from deblur_cli.errors import MsdnError

app = typer.Typer(
    name="msdn",
    help="Remove motion blur from photographs with a Multi-Scale Dense Network (MSDN).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
weights_app = typer.Typer(help="List, fetch, verify, export and publish generator weights.", no_args_is_help=True)
app.add_typer(weights_app, name="weights")

console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print a one-line error and return the Exit to raise."""
    console.print(f"[bold red]Error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def friendly_errors(func: F) -> F:
    """Turn the errors a user can cause into one line and a non-zero exit, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except MsdnError as exc:
            raise fail(str(exc)) from None
        except KeyboardInterrupt:
            raise fail("interrupted", code=130) from None

    return wrapper  # type: ignore[return-value]


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


# --- weights ---


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def _metrics_text(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()) or "-"


@contextlib.contextmanager
def _byte_progress(label: str) -> Iterator[Callable[[int, int], None]]:
    """A rich download bar bound to the library's progress(done, total) callback."""
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                               TransferSpeedColumn)

    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=console) as bar:
        task = bar.add_task(label, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total or None)


@weights_app.command("list")
@friendly_errors
def weights_list() -> None:
    """List the models in the weights manifest and whether they are on this machine."""
    from rich.table import Table

    from deblur_cli import weights as w

    manifest = w.load_manifest()
    if not manifest.models:
        console.print("No published models in the weights manifest yet. Use --weights PATH with a file from "
                      "`msdn train` + `msdn weights export`.")
        return
    settings = w.hub_settings()
    table = Table(title="MSDN generator weights")
    for column in ("name", "default", "size", "local", "metrics", "description"):
        table.add_column(column)
    for entry in manifest.models:
        local = ", ".join(w.local_copies(entry, settings)) or "-"
        table.add_row(entry.name, "*" if entry.name == manifest.default else "", _size(entry.size_bytes), local,
                      _metrics_text(entry.metrics), entry.description)
    Console().print(table)


@weights_app.command("info")
@friendly_errors
def weights_info(name: str = typer.Argument(..., help="Model name from `msdn weights list`.")) -> None:
    """Show everything the manifest records about one model, and where it is on this machine."""
    import json

    from rich.table import Table

    from deblur_cli import weights as w

    manifest = w.load_manifest()
    entry = manifest.entry(name)
    table = Table(show_header=False, title=f"model '{entry.name}'")
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    copies = w.local_copies(entry)
    rows = [("description", entry.description), ("default", "yes" if entry.name == manifest.default else "no"),
            ("repository", f"{entry.repo_id} @ {entry.revision}"), ("file", entry.filename),
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
    from deblur_cli import weights as w

    entry = w.load_manifest().entry(name)
    with _byte_progress(f"{entry.name}") as progress:
        resolved = w.fetch_model(entry, force=force, progress=progress)
    console.print(f"[green]ok[/] {entry.name}: {resolved.source}, sha256 verified", highlight=False)
    typer.echo(str(resolved.path))


@weights_app.command("verify")
@friendly_errors
def weights_verify(
    name: str | None = typer.Argument(None, help="Model name (default: every model in the manifest)."),
    weights: Path | None = typer.Option(None, "--weights", help="Check that this file loads as an MSDN instead."),
) -> None:
    """Check local copies against the manifest's sha256 and size (exit 1 on any mismatch)."""
    from deblur_cli import weights as w

    if weights is not None:
        model = w.load_generator(weights=weights)
        params = sum(p.numel() for p in model.parameters())
        console.print(f"[green]ok[/] {weights}: loads strictly as an MSDN with {params:,} parameters; "
                      f"sha256 {w.sha256_file(weights)}, {weights.stat().st_size} bytes", highlight=False)
        return
    manifest = w.load_manifest()
    entries = [manifest.entry(name)] if name is not None else list(manifest.models)
    if not entries:
        console.print("No published models in the weights manifest yet; nothing to verify.")
        return
    bad = 0
    for entry in entries:
        copies = w.local_copies(entry)
        if not copies:
            console.print(f"[yellow]-[/] {entry.name}: not downloaded (`msdn weights download {entry.name}`)",
                          highlight=False)
        for kind, path in copies.items():
            problem = w.file_problem(path, entry)
            if problem is None:
                console.print(f"[green]ok[/] {entry.name} ({kind}): {path}", highlight=False)
            else:
                bad += 1
                console.print(f"[bold red]MISMATCH[/] {entry.name} ({kind}): {path}: {problem}", highlight=False)
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

    from deblur_cli import weights as w

    dtypes = {"fp32": torch.float32, "fp16": torch.float16}
    if dtype not in dtypes:
        raise fail(f"--dtype must be fp32 or fp16, got '{dtype}'")
    result = w.export_checkpoint(checkpoint, output, dtype=dtypes[dtype], name=name, overwrite=overwrite)
    console.print(f"[green]wrote[/] {result.weights}, {result.config_json}, {result.readme}", highlight=False)
    console.print("Manifest entry (fill in repo_id/revision, or use `msdn weights push`):", highlight=False)
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

    from deblur_cli import weights as w

    path = weights if weights is not None else Path(f"{name}.safetensors")
    if not path.is_file():
        raise fail(f"weights file not found: {path} (export one with `msdn weights export`, or pass --weights)")
    entry = w.push_weights(name, path, repo_id, revision=revision, private=private, token=token)
    console.print(f"[green]pushed[/] {path.name}, config.json, README.md to {repo_id} @ {entry['revision']}",
                  highlight=False)
    console.print("Manifest entry to add to deblur_cli/weights_manifest.json:", highlight=False)
    typer.echo(json.dumps(entry, indent=2))


# --- eval ---


def _fmt(value: float, digits: int) -> str:
    return "-" if value != value else ("inf" if value == float("inf") else f"{value:.{digits}f}")


def _eval_table(title: str, labels: list[str], rows: list[tuple[str, int | None, dict[str, Any]]],
                gain_over: str | None) -> Any:
    """One line per entry, one PSNR/SSIM/seconds column group per model (+ dB gain over the baseline)."""
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.add_column("")
    table.add_column("images", justify="right")
    for label in labels:
        table.add_column(f"{label}\nPSNR", justify="right")
        table.add_column("SSIM", justify="right")
        if gain_over is not None and label != gain_over:
            table.add_column("gain dB", justify="right")
        if label != gain_over:
            table.add_column("s/img", justify="right")
    for i, (name, count, scores) in enumerate(rows):
        cells = [name, "" if count is None else str(count)]
        base = scores.get(gain_over)
        for label in labels:
            s = scores[label]
            cells += [_fmt(s.psnr, 2), _fmt(s.ssim, 4)]
            if gain_over is not None and label != gain_over:
                cells.append(_fmt(s.psnr - base.psnr, 2) if base is not None else "-")
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
    limit: int | None = typer.Option(None, "--limit", min=1, help="Only the first N pairs (sorted by group, name)."),
    json_path: Path | None = typer.Option(None, "--json", help="Write per-image rows and means as JSON."),
    csv_path: Path | None = typer.Option(None, "--csv", help="Write per-image rows as CSV."),
    save_images: Path | None = typer.Option(None, "--save-images", help="Write each output and a blurred | "
                                            "deblurred | sharp strip under DIR/MODEL/GROUP/."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing report and image files."),
    per_image: bool = typer.Option(False, "--per-image", help="Also print a table of every image per group."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N | mps."),
    tile: int = typer.Option(256, "--tile", help="Tile size for inference."),
    overlap: int = typer.Option(32, "--overlap", help="Overlap between tiles."),
    batch_size: int = typer.Option(4, "--batch-size", help="Tiles per model call."),
    amp: str | None = typer.Option(None, "--amp", help="bf16 | fp16 mixed precision (GPU)."),
    offline: bool = typer.Option(False, "--offline", help="Never download weights."),
) -> None:
    """Score models by PSNR / SSIM (8-bit, scikit-image conventions) on a benchmark folder."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from deblur_cli import evaluate as ev
    from deblur_cli.inference import select_device

    if baseline not in (None, ev.IDENTITY):
        raise fail(f"unknown baseline '{baseline}': the only baseline is '{ev.IDENTITY}'")
    dataset = ev.discover(root, layout, split=split, blur_folder=blur_folder)
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
                             overlap=overlap, batch_size=batch_size, amp=amp, limit=limit, save_dir=save_images,
                             progress=lambda done, total: bar.update(task, completed=done, total=total))
    out = Console()
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
            out.print(_eval_table(f"{group or dataset.root.name}", report.models, lines, gain_over))
    lines = [(g or "all", summaries[(report.models[0], g)].count, {m: summaries[(m, g)] for m in report.models})
             for g in report.groups]
    lines.append(("overall", summaries[(report.models[0], None)].count,
                  {m: summaries[(m, None)] for m in report.models}))
    out.print(_eval_table(f"{dataset.root} ({report.layout}, {report.protocol})", report.models, lines, gain_over))
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


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
