"""`msdn eval`: options in, `evaluate` scores, tables out (the report's lines come from the library)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from deblur_cli.commands.common import console, fail, friendly_errors
from deblur_cli.commands.deblur import AMP_OPTION, RUNTIME_OPTION


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None or value != value else ("inf" if value == float("inf") else f"{value:.{digits}f}")


def _eval_table(title: str, labels: list[str], rows: list[tuple[str, int | None, dict[str, Any]]],
                gain_over: str | None, aligned: bool = False) -> Any:
    """One line per entry, one PSNR/SSIM/gradient-ratio/seconds column group per model (+ dB gain over
    the baseline; + aligned PSNR/SSIM and their gain with --align)."""
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    number = {"justify": "right", "no_wrap": True, "min_width": 6}  # never squash a score into "3…"
    table.add_column("", no_wrap=True)
    table.add_column("images", **number)
    for label in labels:
        table.add_column(f"{label}\nPSNR", **number)
        table.add_column("SSIM", **number)
        table.add_column("grad\nratio", **number)
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
            cells += [_fmt(s.psnr, 2), _fmt(s.ssim, 4), _fmt(s.grad_ratio, 3)]
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
    runtime: str = RUNTIME_OPTION,
    tile: int | None = typer.Option(None, "--tile", show_default=False,
                                    help="Tile size for inference (default: each model's, else 256)."),
    overlap: int | None = typer.Option(None, "--overlap", show_default=False,
                                       help="Overlap between tiles (default: each model's, else 32)."),
    batch_size: int = typer.Option(4, "--batch-size", help="Tiles per model call."),
    amp: str = AMP_OPTION,
    offline: bool = typer.Option(False, "--offline", help="Never download weights."),
) -> None:
    """Score models by PSNR / SSIM (8-bit, scikit-image conventions) on a benchmark folder."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from deblur_cli.evaluation import evaluate as ev
    from deblur_cli.evaluation.datasets import discover
    from deblur_cli.inference.engine import choose_runtime, describe_runtime
    from deblur_cli.inference.pipeline import parse_amp

    if baseline not in (None, ev.IDENTITY):
        raise fail(f"unknown baseline '{baseline}': the only baseline is '{ev.IDENTITY}'")
    amp_mode = parse_amp(amp)  # "none" as in msdn deblur
    ev.check_options(protocol, crop_border, align)  # before the data and the models are read
    dataset = discover(root, layout, split=split, blur_folder=blur_folder)
    chosen, target = choose_runtime(runtime, device)  # both checked before the data is read
    contenders = ev.load_contenders(model, weights, target, identity=baseline is not None, offline=offline,
                                    runtime=chosen)
    ev.check_outputs(dataset, contenders, save_images, [json_path, csv_path], overwrite)
    n = len(dataset.pairs) if limit is None else min(limit, len(dataset.pairs))
    runs = [f", runtime {describe_runtime(c.model, amp_mode)}" for c in contenders[-1:] if c.model is not None]
    console.print(f"{dataset.layout} layout, {n} image pairs in {len({p.group for p in dataset.pairs[:n]})} "
                  f"groups, protocol {protocol}" + (f", crop border {crop_border}" if crop_border else "")
                  + "".join(runs), highlight=False)
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
    if per_image:
        for group in report.groups:
            out.print(_eval_table(f"{group or dataset.root.name}", report.models, report.image_lines(group),
                                  gain_over, align > 0))
    title = f"{dataset.root} ({report.layout}, {report.protocol}" + (f", aligned within {align} px" if align else "")
    out.print(_eval_table(title + ")", report.models, report.group_lines(), gain_over, align > 0))
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
