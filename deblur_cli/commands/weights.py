"""`msdn weights`: list, inspect, fetch, verify, export and publish generator weights."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import typer
from rich.console import Console

from deblur_cli.commands.common import console, fail, friendly_errors, say

app = typer.Typer(help="List, fetch, verify, export and publish generator weights.", no_args_is_help=True)


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _metrics_text(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()) or "-"


HEADLINE = "_overall_gain_db_aligned"  # scripts/manifest_entry.py's key per eval group


def _headline(metrics: dict[str, float]) -> str:
    """The aligned gain per eval group (the list's one line per model); `weights info` shows the rest."""
    gains = [f"{k.removesuffix(HEADLINE)} {v:+.2f}" for k, v in metrics.items() if k.endswith(HEADLINE)]
    return f"aligned gain dB: {', '.join(gains)}" if gains else _metrics_text(dict(list(metrics.items())[:3]))


@contextlib.contextmanager
def _byte_progress(label: str) -> Iterator[Callable[[int, int], None]]:
    """A rich download bar bound to the library's progress(done, total) callback."""
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                               TransferSpeedColumn)

    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=console) as bar:  # drawn in logs too: its last state says what arrived
        tasks: list = []  # added when the download starts: a refused connection draws no empty bar

        def update(done: int, total: int) -> None:
            if not tasks:
                tasks.append(bar.add_task(label, total=None))
            bar.update(tasks[0], completed=done, total=total or None)

        yield update


@friendly_errors
def weights_list() -> None:
    """List the models in the weights manifest and whether they are on this machine."""
    from rich.table import Table

    from deblur_cli.weights.hub import hub_settings
    from deblur_cli.weights.manifest import load_manifest
    from deblur_cli.weights.resolve import local_copies

    manifest = load_manifest()
    if not manifest.models:
        say("No published models in the weights manifest yet. Use --weights PATH with a file from "
             "`msdn train` + `msdn weights export`.")
        return
    settings = hub_settings()
    table = Table(title="MSDN generator weights")
    for column in ("name", "default", "size", "local", "metrics", "description"):
        table.add_column(column)
    for entry in manifest.models:
        local = ", ".join(local_copies(entry, settings)) or "-"
        table.add_row(entry.name, "*" if entry.name == manifest.default else "", _size(entry.size_bytes), local,
                      _headline(entry.metrics), entry.description)
    Console().print(table)


@friendly_errors
def weights_info(name: str = typer.Argument(..., help="Model name from `msdn weights list`.")) -> None:
    """Show everything the manifest records about one model, and where it is on this machine."""
    import json

    from rich.table import Table

    from deblur_cli.weights.manifest import load_manifest
    from deblur_cli.weights.resolve import local_copies

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


@friendly_errors
def weights_download(
    name: str | None = typer.Argument(None, help="Model name (default: the manifest's default model)."),
    force: bool = typer.Option(False, "--force", help="Download again even if a verified copy is cached."),
) -> None:
    """Fetch a model into the Hugging Face cache (verified) so it works offline later."""
    from deblur_cli.weights.manifest import load_manifest
    from deblur_cli.weights.resolve import fetch_model

    entry = load_manifest().entry(name)
    with _byte_progress(f"{entry.name}") as progress:
        resolved = fetch_model(entry, force=force, progress=progress)
    say(f"[green]ok[/] {entry.name}: {resolved.source}, sha256 verified")
    typer.echo(str(resolved.path))


@friendly_errors
def weights_verify(
    name: str | None = typer.Argument(None, help="Model name (default: every model in the manifest)."),
    weights: Path | None = typer.Option(None, "--weights", help="Check that this file loads as an MSDN instead."),
) -> None:
    """Check local copies against the manifest's sha256 and size (exit 1 on any mismatch)."""
    from deblur_cli.weights.hub import file_problem
    from deblur_cli.weights.manifest import load_manifest
    from deblur_cli.nets.model import count_parameters
    from deblur_cli.weights.weightfile import sha256_file
    from deblur_cli.weights.resolve import load_generator, local_copies

    if weights is not None:
        params = count_parameters(load_generator(weights=weights))
        say(f"[green]ok[/] {weights}: loads strictly as an MSDN with {params:,} parameters; "
             f"sha256 {sha256_file(weights)}, {weights.stat().st_size} bytes")
        return
    manifest = load_manifest()
    entries = [manifest.entry(name)] if name is not None else list(manifest.models)
    if not entries:
        say("No published models in the weights manifest yet; nothing to verify.")
        return
    bad = 0
    for entry in entries:
        copies = local_copies(entry)
        if not copies:
            say(f"[yellow]-[/] {entry.name}: not downloaded (`msdn weights download {entry.name}`)")
        for kind, path in copies.items():
            problem = file_problem(path, entry)
            if problem is None:
                say(f"[green]ok[/] {entry.name} ({kind}): {path}")
            else:
                bad += 1
                say(f"[bold red]MISMATCH[/] {entry.name} ({kind}): {path}: {problem}")
    if bad:
        raise fail(f"{bad} file{'s' if bad > 1 else ''} do not match the manifest and will not be used "
                   "(re-fetch with `msdn weights download NAME --force`)")


@friendly_errors
def weights_export(
    checkpoint: Path = typer.Argument(..., help="Training checkpoint (.pt from `msdn train`) or weight file."),
    output: Path | None = typer.Option(None, "--output", "-o", help="The .safetensors file to write."),
    onnx: Path | None = typer.Option(None, "--onnx", help="An ONNX file to write (float32, dynamic batch/H/W; "
                                     "with -o, of the weights -o writes)."),
    dtype: str = typer.Option("fp32", "--dtype", help="fp32 or fp16 storage of the .safetensors file."),
    name: str | None = typer.Option(None, "--name", help="Model name (default: the output file's stem)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing output files."),
) -> None:
    """Turn a training checkpoint into safetensors + config.json + a model card (print its manifest entry),
    and/or into an ONNX file."""
    import json

    import torch

    from deblur_cli.weights.onnx_export import check_onnx_target, export_onnx, require_onnx
    from deblur_cli.weights.publish import export_checkpoint

    if output is None and onnx is None:
        raise typer.BadParameter("neither given: name a .safetensors file (-o), an .onnx file (--onnx) or both",
                                 param_hint="'-o' / '--onnx'")
    dtypes = {"fp32": torch.float32, "fp16": torch.float16}
    if dtype not in dtypes:
        raise fail(f"--dtype must be fp32 or fp16, got '{dtype}'")
    if onnx is not None:  # refused before -o writes anything
        require_onnx()
        check_onnx_target(onnx, overwrite)
    source = checkpoint
    if output is not None:
        result = export_checkpoint(checkpoint, output, dtype=dtypes[dtype], name=name, overwrite=overwrite)
        say(f"[green]wrote[/] {result.weights}, {result.config_json}, {result.readme}")
        source = result.weights  # the ONNX file then records the sha256 of the manifest entry's file
    if onnx is not None:
        exported = export_onnx(source, onnx, overwrite=overwrite)
        say(f"[green]wrote[/] {exported.path} ({_size(exported.size_bytes)}, ONNX opset {exported.opset}; "
            f"input (N, 3, H, W) RGB in [0, 1], sides >= {exported.size_multiple} px)")
    if output is not None:
        say("Manifest entry (fill in repo_id/revision, or use `msdn weights push`):")
        typer.echo(json.dumps(result.entry, indent=2))
    else:
        typer.echo(str(onnx))


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

    from deblur_cli.weights.publish import push_weights

    path = weights if weights is not None else Path(f"{name}.safetensors")
    if not path.is_file():
        raise fail(f"weights file not found: {path} (export one with `msdn weights export`, or pass --weights)")
    entry = push_weights(name, path, repo_id, revision=revision, private=private, token=token)
    say(f"[green]pushed[/] {path.name}, config.json, README.md to {repo_id} @ {entry['revision']}")
    say("Manifest entry to add to deblur_cli/weights_manifest.json:")
    typer.echo(json.dumps(entry, indent=2))


for _name, _command in [("list", weights_list), ("info", weights_info), ("download", weights_download),
                        ("verify", weights_verify), ("export", weights_export), ("push", weights_push)]:
    app.command(_name)(_command)
