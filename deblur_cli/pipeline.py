"""From files to files: output naming, the no-clobber rules, folder plans, and load -> deblur -> save.

Kept apart from the CLI so `msdn deblur` and `msdn deblur-dir` share one set of rules (never write
over an input, never replace an existing file unless asked, never read our own outputs back in)
and so those rules are tested without a terminal.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from deblur_cli.errors import MsdnError
from deblur_cli.images import (DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, check_output_dir, load_image, output_format,
                               save_image)
from deblur_cli.inference import AMP_CHOICES
from deblur_cli.model import MSDN
from deblur_cli.tiling import validate_tiling

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class DeblurSettings:
    """Everything about one file's run except the model and the paths."""

    tile: int = 256
    overlap: int = 32
    batch_size: int = 4
    amp: str | None = "auto"  # "auto", None, "bf16" or "fp16"
    quality: int = 95
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        validate_tiling(self.tile, self.overlap)
        if self.batch_size < 1:
            raise MsdnError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.amp not in (None, "auto", "bf16", "fp16"):
            raise MsdnError(f"unknown --amp {self.amp!r}; use auto, none, bf16 or fp16")
        if not 1 <= self.quality <= 100:
            raise MsdnError(f"--quality must be between 1 and 100, got {self.quality}")
        if self.max_pixels < 1:
            raise MsdnError(f"--max-pixels must be positive, got {self.max_pixels}")


def parse_amp(value: str) -> str | None:
    """The CLI's `auto|none|bf16|fp16` as `deblur`'s amp argument."""
    choice = value.strip().lower()
    if choice not in AMP_CHOICES:
        raise MsdnError(f"unknown --amp {value!r}; use auto, none, bf16 or fp16")
    return None if choice == "none" else choice


def recommended_tiling(model: str | None = None, weights: Path | None = None) -> tuple[int, int]:
    """The manifest entry's tile and overlap for a named model; 256 / 32 for a file given by path."""
    if weights is not None:
        return DeblurSettings.tile, DeblurSettings.overlap
    from deblur_cli.weights import load_manifest

    entry = load_manifest().entry(model)
    return entry.tile, entry.overlap


def load_model(model: str | None = None, weights: Path | None = None, offline: bool = False,
               device: str = "auto", download_progress: Progress | None = None) -> MSDN:
    """The generator, fused and on its device; the device is checked first so a typo fails before a download."""
    from deblur_cli.inference import prepare_model, select_device
    from deblur_cli.weights import load_generator

    target = select_device(device)
    return prepare_model(load_generator(model=model, weights=weights, offline=offline, progress=download_progress),
                         target)


# --- one file ------------------------------------------------------------------------------------


def default_output(source: Path) -> Path:
    """`photo.jpg` -> `photo_deblurred.png` beside it (PNG: the deblurred pixels are not re-compressed)."""
    source = Path(source)
    return source.with_name(f"{source.stem}_deblurred.png")


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)  # hard links, case-insensitive file systems
    except OSError:
        return False


def check_output(source: Path, target: Path, overwrite: bool = False) -> None:
    """Refuse, before any work, outputs that would replace the input, clobber a file, or cannot be written."""
    source, target = Path(source), Path(target)
    output_format(target)
    if _same_file(source, target):
        raise MsdnError(f"refusing to write over the input {source}; choose another output with -o")
    if target.exists() and not overwrite:
        raise MsdnError(f"{target} already exists; pass --overwrite to replace it")
    check_output_dir(target)


def deblur_file(model: MSDN, source: Path, target: Path, settings: DeblurSettings = DeblurSettings(),
                progress: Progress | None = None) -> tuple[int, int]:
    """Load, deblur and save one photo; returns its (width, height)."""
    from deblur_cli.inference import deblur

    loaded = load_image(source, max_pixels=settings.max_pixels)
    restored = deblur(model, loaded.rgb, tile=settings.tile, overlap=settings.overlap,
                      batch_size=settings.batch_size, amp=settings.amp, progress=progress)
    save_image(target, loaded, restored, quality=settings.quality)
    return loaded.size


# --- a folder ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    source: Path
    target: Path
    exists: bool = False  # the output is already there (skipped unless --overwrite)
    clash: Path | None = None  # an earlier input that maps to the same output


@dataclass
class BatchReport:
    processed: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)


def default_output_dir(directory: Path) -> Path:
    """`photos/` -> `photos_deblurred/` beside it."""
    directory = Path(directory).resolve()
    return directory.with_name(f"{directory.name}_deblurred")


def parse_extensions(text: str | None) -> frozenset[str]:
    """`"jpg,PNG"` -> {".jpg", ".png"}; every extension must be one we read."""
    if not text:
        return IMAGE_EXTENSIONS
    chosen = {"." + part.strip().lower().lstrip(".") for part in text.split(",") if part.strip()}
    unknown = sorted(chosen - IMAGE_EXTENSIONS)
    if unknown or not chosen:
        known = ", ".join(sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS))
        raise MsdnError(f"unknown image extension(s) {', '.join(unknown) or text!r} in --ext; use some of {known}")
    return frozenset(chosen)


def _walk(directory: Path, recursive: bool, skip_dir: Path | None) -> Iterable[Path]:
    for root, dirs, files in os.walk(directory):
        here = Path(root)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not _inside(here / d, skip_dir))
        for name in sorted(files):
            if not name.startswith("."):  # hidden files include our own half-written temporaries
                yield here / name
        if not recursive:
            return


def _inside(path: Path, parent: Path | None) -> bool:
    return parent is not None and path.resolve().is_relative_to(parent)


def plan_directory(directory: Path, out_dir: Path | None = None, *, recursive: bool = False,
                   extensions: frozenset[str] = IMAGE_EXTENSIONS, fmt: str | None = None,
                   overwrite: bool = False) -> list[Job]:
    """The images under `directory` and where each one's output goes, mirrored under `out_dir`.

    Files inside an `out_dir` that lies inside DIR are never inputs, so it does not feed on itself;
    an `out_dir` above DIR (`-o ..`) is fine, unless an output would land on an input.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise MsdnError(f"{directory} is not a directory" if directory.exists() else f"no such directory: {directory}")
    out_dir = (Path(out_dir) if out_dir is not None else default_output_dir(directory)).resolve()
    if out_dir == directory.resolve():
        raise MsdnError("the output directory is the input directory; choose another with -o")
    suffix = None
    if fmt is not None:
        suffix = "." + fmt.strip().lower().lstrip(".")
        output_format(Path("x" + suffix))
    skip_dir = out_dir if _inside(out_dir, directory.resolve()) else None
    sources = [s for s in _walk(directory, recursive, skip_dir)
               if s.suffix.lower() in extensions and not _inside(s, skip_dir)]
    inputs = {s.resolve() for s in sources}
    jobs: list[Job] = []
    owners: dict[Path, Path] = {}
    for source in sources:
        relative = source.relative_to(directory)
        target = out_dir / (relative.with_suffix(suffix) if suffix else relative)
        if target.resolve() in inputs:
            raise MsdnError(f"the output {target} would replace an input image; choose an output folder "
                            f"outside {directory} with -o")
        key = Path(os.path.normcase(target))
        jobs.append(Job(source, target, exists=target.exists() and not overwrite, clash=owners.get(key)))
        owners.setdefault(key, source)
    if not jobs:
        kinds = ", ".join(sorted(e.lstrip(".") for e in extensions))
        raise MsdnError(f"no images ({kinds}) found in {directory}"
                        + ("" if recursive else " (use --recursive to look in subfolders)"))
    return jobs


def deblur_directory(model: MSDN, jobs: list[Job], settings: DeblurSettings = DeblurSettings(), *,
                     on_file: Callable[[int, Job], None] | None = None,
                     progress: Progress | None = None) -> BatchReport:
    """Run every job; a file that fails is recorded with its one-line reason and the rest go on.

    `on_file(index, job)` is called before each job, `progress(done_tiles, total_tiles)` during it.
    """
    report = BatchReport()
    for index, job in enumerate(jobs):
        if on_file is not None:
            on_file(index, job)
        if job.exists:
            report.skipped.append(job.source)
            continue
        if job.clash is not None:
            report.failed.append((job.source, f"same output {job.target.name} as {job.clash}; use --format "
                                              "only when names differ by more than the extension"))
            continue
        try:
            try:
                job.target.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise MsdnError(f"cannot create {job.target.parent}: {exc.strerror or exc}") from None
            deblur_file(model, job.source, job.target, settings, progress=progress)
        except MsdnError as exc:
            report.failed.append((job.source, str(exc)))
        else:
            report.processed.append(job.source)
    return report
