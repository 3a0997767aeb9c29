"""Benchmark evaluation: deblur the blurred/sharp pairs `datasets.discover` finds, and score them.

A broken pair (no partner, sizes differ, unreadable file, too small for the protocol) becomes a
`Problem` in the report and the run goes on: one bad file in a thousand must not cost the other
999 scores. Only an empty set is an error.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from deblur_cli.evaluation import metrics
from deblur_cli.evaluation.datasets import Dataset, Pair, Problem, relative
from deblur_cli.errors import MsdnError
from deblur_cli.files import atomic_write_bytes
from deblur_cli.imaging.images import check_output_dir, load_image, save_rgb
from deblur_cli.inference.engine import Network, deblur
from deblur_cli.inference.tiling import DEFAULT_OVERLAP, DEFAULT_TILE, validate_tiling
from deblur_cli.weights.resolve import ready_model, select_weights

PROTOCOLS = ("full", "center256")
CENTER_SIZE = 256
IDENTITY = "identity"


@dataclass(frozen=True)
class Contender:
    """A column of the results: a prepared model, or None for the identity baseline (the blurred input),
    with the tiling its manifest entry recommends (the tool's defaults for a file given by path)."""

    label: str
    model: Network | None
    tile: int = DEFAULT_TILE
    overlap: int = DEFAULT_OVERLAP


@dataclass(frozen=True)
class Row:
    model: str
    group: str
    name: str
    psnr: float
    ssim: float
    seconds: float
    psnr_aligned: float | None = None  # after the best integer shift within --align pixels
    ssim_aligned: float | None = None
    grad_ratio: float = math.nan  # mean gradient over the sharp image's: below the input's = texture removed


@dataclass(frozen=True)
class Summary:
    model: str
    group: str | None  # None: every image of the run
    count: int
    psnr: float
    ssim: float
    seconds: float
    psnr_aligned: float | None = None
    ssim_aligned: float | None = None
    grad_ratio: float = math.nan


# A table line: its label, the image count (None on per-image lines), and each model's scores.
Line = tuple[str, int | None, dict[str, Row | Summary]]


@dataclass
class Report:
    root: Path
    layout: str
    protocol: str
    crop_border: int
    models: list[str]
    groups: list[str]
    rows: list[Row] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    total_seconds: float = 0.0
    align: int = 0

    @property
    def scored_images(self) -> int:
        return len({(r.group, r.name) for r in self.rows})

    def summaries(self) -> list[Summary]:
        """Mean per (model, group), then per model over all images (the figure GOPRO tables quote)."""
        out = []
        for model in self.models:
            mine = [r for r in self.rows if r.model == model]
            out += [_summarise(model, g, [r for r in mine if r.group == g]) for g in self.groups]
            out.append(_summarise(model, None, mine))
        return out

    def summary(self, model: str, group: str | None = None) -> Summary:
        return next(s for s in self.summaries() if s.model == model and s.group == group)

    def image_lines(self, group: str) -> list[Line]:
        """A group's table: one line per image, each model's row side by side, then the group's mean."""
        summaries = {(s.model, s.group): s for s in self.summaries()}
        by_name: dict[str, dict[str, Row | Summary]] = {}
        for r in self.rows:
            if r.group == group:
                by_name.setdefault(r.name, {})[r.model] = r
        lines: list[Line] = [(name, None, scores) for name, scores in by_name.items()]
        lines.append(("mean", len(by_name), {m: summaries[(m, group)] for m in self.models}))
        return lines

    def group_lines(self) -> list[Line]:
        """The summary table: one line per group with its image count, then the overall means."""
        summaries = {(s.model, s.group): s for s in self.summaries()}
        groups: list[str | None] = [*self.groups, None]
        return [(("overall" if g is None else g or "all"), summaries[(self.models[0], g)].count,
                 {m: summaries[(m, g)] for m in self.models}) for g in groups]


def _summarise(model: str, group: str | None, rows: Sequence[Row]) -> Summary:
    n = len(rows)
    if n == 0:
        return Summary(model, group, 0, math.nan, math.nan, math.nan)
    aligned = [r for r in rows if r.psnr_aligned is not None and r.ssim_aligned is not None]
    mean = (lambda values: sum(values) / n) if len(aligned) == n else (lambda values: None)  # noqa: E731
    return Summary(model, group, n, sum(r.psnr for r in rows) / n, sum(r.ssim for r in rows) / n,
                   sum(r.seconds for r in rows) / n, mean([r.psnr_aligned for r in aligned]),
                   mean([r.ssim_aligned for r in aligned]), sum(r.grad_ratio for r in rows) / n)


# --- evaluation ----------------------------------------------------------------------------------


def unique_labels(names: Sequence[str]) -> list[str]:
    """Column labels for models, made distinct (two weights files both called best.safetensors)."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return out


def load_contenders(models: Sequence[str], weights: Sequence[Path], device: str | torch.device, *,
                    identity: bool = False, offline: bool = False, runtime: str = "torch") -> list[Contender]:
    """The columns of a run: identity baseline first (so gains read left to right), then each model,
    each run by `runtime` (see `inference.choose_runtime`).

    With no model and no weights, the default model of the manifest is evaluated (beside the baseline:
    `--baseline` asks for the blurred input *also*, so that a gain shows).
    """
    sources: list[tuple[str | None, Path | None]] = [(m, None) for m in models] + [(None, Path(w)) for w in weights]
    if not sources:
        sources = [(None, None)]
    ready = [ready_model(select_weights(m, w), device, offline=offline, runtime=runtime) for m, w in sources]
    labels = unique_labels(([IDENTITY] if identity else []) + [r.label for r in ready])
    out = [Contender(IDENTITY, None)] if identity else []
    for label, r in zip(labels[len(out):], ready):
        out.append(Contender(label, r.model, r.tile, r.overlap))
    return out


def output_paths(save_dir: Path, label: str, pair: Pair) -> tuple[Path, Path]:
    """Where --save-images puts a model's output and the blurred | deblurred | sharp strip."""
    folder = Path(save_dir) / label.replace("/", "_") / pair.group
    return folder / f"{pair.name}.png", folder / f"{pair.name}_strip.png"


def check_outputs(dataset: Dataset, contenders: Sequence[Contender], save_dir: Path | None,
                  reports: Sequence[Path | None] = (), overwrite: bool = False) -> None:
    """Refuse, before any work, to replace an existing file without --overwrite, or an input ever,
    and report files that could not be written at the end of the run."""
    targets = [Path(p) for p in reports if p is not None]
    for report in targets:
        check_output_dir(report)
    if save_dir is not None:
        targets += [p for c in contenders if c.model is not None for pair in dataset.pairs
                    for p in output_paths(save_dir, c.label, pair)]
    inputs = {p.resolve() for pair in dataset.pairs for p in (pair.blurred, pair.sharp)}
    for target in targets:
        if target.resolve() in inputs:
            raise MsdnError(f"refusing to write {target}: it is one of the dataset's images")
        if target.exists() and not overwrite:
            raise MsdnError(f"{target} already exists; pass --overwrite to replace it")


def _protocol_view(x: Tensor, protocol: str) -> Tensor:
    if protocol == "full":
        return x
    if protocol == "center256":
        return metrics.center_crop(x, CENTER_SIZE)
    raise MsdnError(f"unknown protocol '{protocol}': choose one of {', '.join(PROTOCOLS)}")


def _load_pair(pair: Pair, root: Path, protocol: str, border: int) -> tuple[Tensor, Tensor] | Problem:
    try:
        blurred, sharp = load_image(pair.blurred).rgb, load_image(pair.sharp).rgb
    except MsdnError as exc:
        return Problem(relative(pair.blurred, root), f"unreadable: {exc}")
    if blurred.shape != sharp.shape:
        return Problem(relative(pair.blurred, root), f"size {blurred.shape[-1]}x{blurred.shape[-2]} differs from the "
                                                  f"sharp image's {sharp.shape[-1]}x{sharp.shape[-2]}")
    try:
        blurred, sharp = _protocol_view(blurred, protocol), _protocol_view(sharp, protocol)
    except ValueError as exc:
        return Problem(relative(pair.blurred, root), str(exc))
    need = 2 * metrics.SSIM_RADIUS + 1 + 2 * border
    if min(sharp.shape[-2:]) < need:
        why = f"the SSIM window plus --crop-border {border}" if border else "the SSIM window"
        return Problem(relative(pair.blurred, root), f"a {sharp.shape[-1]}x{sharp.shape[-2]} image is too small: "
                                                  f"{why} needs at least {need}x{need} pixels")
    return blurred, sharp


def check_options(protocol: str, crop_border: int, align: int) -> None:
    """Refuse bad scoring options before anything is read (loading a model can take a minute)."""
    if protocol not in PROTOCOLS:
        raise MsdnError(f"unknown protocol '{protocol}': choose one of {', '.join(PROTOCOLS)}")
    if crop_border < 0:
        raise MsdnError(f"--crop-border must be 0 or more, got {crop_border}")
    if align < 0:
        raise MsdnError(f"--align must be 0 or more, got {align}")


def evaluate(
    dataset: Dataset,
    contenders: Sequence[Contender],
    *,
    protocol: str = "full",
    crop_border: int = 0,
    tile: int | None = None,
    overlap: int | None = None,
    batch_size: int = 4,
    amp: str | None = None,
    limit: int | None = None,
    save_dir: Path | None = None,
    align: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> Report:
    """Score every contender on every pair; `progress(done, total)` counts (pair, contender) steps.

    `align` > 0 also scores each output after its best integer shift within that many pixels
    (`metrics.align`, Köhler et al.'s protocol), beside the raw numbers.

    Each image is loaded once and shown to all contenders, so models are compared on identical
    inputs. `seconds` is the wall time of the tiled inference alone (0 for the identity baseline).
    `tile` / `overlap` override every contender's own tiling (its manifest entry's, else the defaults).
    """
    check_options(protocol, crop_border, align)
    if not contenders:
        raise MsdnError("nothing to evaluate: give a model, weights, or --baseline identity")
    tiling = {c.label: _tiling(c, tile, overlap) for c in contenders if c.model is not None}
    pairs = dataset.pairs[:limit] if limit is not None else dataset.pairs
    report = Report(dataset.root, dataset.layout, protocol, crop_border, [c.label for c in contenders],
                    sorted({p.group for p in pairs}), problems=list(dataset.problems), align=align)
    start = time.perf_counter()
    for contender in contenders:  # the first call pays for kernel selection; keep that out of image 1's time
        if isinstance(contender.model, torch.nn.Module):  # (other runtimes report their set-up time instead)
            chosen_tile, chosen_overlap = tiling[contender.label]
            side = min(chosen_tile, 512) + 1
            deblur(contender.model, torch.zeros(1, 3, side, side), tile=chosen_tile, overlap=chosen_overlap,
                   batch_size=batch_size, amp=amp)
    total, done = len(pairs) * len(contenders), 0
    if progress is not None:
        progress(0, total)
    for pair in pairs:
        loaded = _load_pair(pair, dataset.root, protocol, crop_border)
        if isinstance(loaded, Problem):
            report.problems.append(loaded)
            done += len(contenders)
            if progress is not None:
                progress(done, total)
            continue
        blurred, sharp = loaded
        target = metrics.crop_border(sharp, crop_border)
        for contender in contenders:
            t0 = time.perf_counter()
            if contender.model is None:
                output, seconds = blurred, 0.0
            else:
                chosen_tile, chosen_overlap = tiling[contender.label]
                setup = getattr(contender.model, "setup_seconds", 0.0)
                output = deblur(contender.model, blurred, tile=chosen_tile, overlap=chosen_overlap,
                                batch_size=batch_size, amp=amp)
                # a runtime's conversion / compilation for a new tile shape is set-up, not inference
                seconds = time.perf_counter() - t0 - (getattr(contender.model, "setup_seconds", 0.0) - setup)
            scored = metrics.crop_border(output, crop_border)
            aligned: tuple[float | None, float | None] = (None, None)
            if align > 0:
                pred, ref = metrics.align(scored, target, align)
                aligned = metrics.psnr(pred, ref).item(), metrics.ssim(pred, ref).item()
            grad = (metrics.gradient(scored) / metrics.gradient(target).clamp_min(1e-6)).item()
            report.rows.append(Row(contender.label, pair.group, pair.name, metrics.psnr(scored, target).item(),
                                   metrics.ssim(scored, target).item(), seconds, *aligned, grad))
            if save_dir is not None and contender.model is not None:
                out_path, strip_path = output_paths(save_dir, contender.label, pair)
                try:
                    out_path.parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise MsdnError(f"cannot create {out_path.parent}: {exc.strerror or exc}") from None
                save_rgb(out_path, output)
                save_rgb(strip_path, side_by_side(blurred, output, sharp))
            done += 1
            if progress is not None:
                progress(done, total)
    report.total_seconds = time.perf_counter() - start
    return report


def _tiling(contender: Contender, tile: int | None, overlap: int | None) -> tuple[int, int]:
    """The contender's (tile, overlap) with the user's overrides, checked once for the whole run."""
    chosen = (contender.tile if tile is None else tile, contender.overlap if overlap is None else overlap)
    validate_tiling(*chosen)
    return chosen


def side_by_side(*images: Tensor, gap: int = 4) -> Tensor:
    """Images left to right with a white gap, for eyeballing blurred | deblurred | sharp."""
    spacer = images[0].new_ones((*images[0].shape[:-1], gap))
    parts = [part for img in images for part in (img, spacer)][:-1]
    return torch.cat(parts, dim=-1)


# --- reports -------------------------------------------------------------------------------------


def _finite(value: float) -> float | None:
    """JSON has no inf/nan: identical images (PSNR inf) and empty groups become null."""
    return value if math.isfinite(value) else None


def _finite_values(record: dict) -> dict:
    return {k: _finite(v) if isinstance(v, float) else v for k, v in record.items()}


def report_dict(report: Report) -> dict:
    return {
        "root": str(report.root),
        "layout": report.layout,
        "protocol": report.protocol,
        "crop_border": report.crop_border,
        "align": report.align,
        "models": report.models,
        "total_seconds": report.total_seconds,
        "rows": [_finite_values(asdict(r)) for r in report.rows],
        "summary": [_finite_values(asdict(s)) for s in report.summaries()],
        "problems": [asdict(p) for p in report.problems],
    }


def write_json(report: Report, path: Path) -> None:
    atomic_write_bytes(Path(path), (json.dumps(report_dict(report), indent=2, allow_nan=False) + "\n").encode())


CSV_COLUMNS = ("model", "group", "name", "psnr", "ssim", "seconds", "psnr_aligned", "ssim_aligned", "grad_ratio")


def write_csv(report: Report, path: Path) -> None:
    """One row per (model, image); floats at full precision so the numbers can be re-averaged."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in report.rows:
        writer.writerow([r.model, r.group, r.name, repr(r.psnr), repr(r.ssim), f"{r.seconds:.4f}",
                         "" if r.psnr_aligned is None else repr(r.psnr_aligned),
                         "" if r.ssim_aligned is None else repr(r.ssim_aligned), repr(r.grad_ratio)])
    atomic_write_bytes(Path(path), buf.getvalue().encode())
