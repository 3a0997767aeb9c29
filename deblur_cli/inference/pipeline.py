"""From files to files: output naming, the no-clobber rules, folder plans, and load -> deblur -> save.

Kept apart from the CLI so `msdn deblur` and `msdn deblur-dir` share one set of rules (never write
over an input, never replace an existing file unless asked, never read our own outputs back in)
and so those rules are tested without a terminal.

`deblur-dir` records every output it writes (path, size, mtime) in `OUTDIR/.msdn-outputs.jsonl`.
That record is how it tells its own earlier outputs from a user's photos: `--overwrite` replaces
only recorded, unchanged outputs, and a later run over a tree that contains an output folder does
not take those outputs as new inputs.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from deblur_cli.imaging import heif
from deblur_cli.errors import MsdnError
from deblur_cli.files import remove_stale_temps
from deblur_cli.imaging.images import (DEFAULT_MAX_PIXELS, OUTPUT_FORMATS, READ_EXTENSIONS, check_output_dir, known_outputs,
                               load_image, output_encoding, output_format, save_planes)
from deblur_cli.inference.engine import AMP_CHOICES, AMP_MODES, Network, deblur
from deblur_cli.inference.tiling import DEFAULT_OVERLAP, DEFAULT_TILE, validate_tiling

Progress = Callable[[int, int], None]
RECORD = ".msdn-outputs.jsonl"  # in an output folder: the files deblur-dir wrote there
_AMP_HELP = f"{', '.join(AMP_CHOICES[:-1])} or {AMP_CHOICES[-1]}"  # "auto, none, bf16 or fp16"


@dataclass(frozen=True)
class DeblurSettings:
    """Everything about one file's run except the model and the paths."""

    tile: int = DEFAULT_TILE
    overlap: int = DEFAULT_OVERLAP
    batch_size: int = 4
    amp: str | None = "auto"  # "auto", None, "bf16" or "fp16"
    quality: int = 95
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        validate_tiling(self.tile, self.overlap)
        if self.batch_size < 1:
            raise MsdnError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.amp not in AMP_MODES:
            raise MsdnError(f"unknown --amp {self.amp!r}; use {_AMP_HELP}")
        if not 1 <= self.quality <= 100:
            raise MsdnError(f"--quality must be between 1 and 100, got {self.quality}")
        if self.max_pixels < 1:
            raise MsdnError(f"--max-pixels must be positive, got {self.max_pixels}")


def parse_amp(value: str) -> str | None:
    """The CLI's `auto|none|bf16|fp16` as `deblur`'s amp argument."""
    choice = value.strip().lower()
    if choice not in AMP_CHOICES:
        raise MsdnError(f"unknown --amp {value!r}; use {_AMP_HELP}")
    return None if choice == "none" else choice


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


@dataclass(frozen=True)
class FileResult:
    size: tuple[int, int]  # (width, height)
    notes: list[str] = field(default_factory=list)  # what the output format could not keep


def deblur_file(model: Network, source: Path, target: Path, settings: DeblurSettings = DeblurSettings(),
                progress: Progress | None = None, replace: bool = False) -> FileResult:
    """Load, deblur and save one photo; without `replace`, a file that appears at `target` meanwhile is
    never replaced (the placement itself refuses)."""
    try:
        loaded = load_image(source, max_pixels=settings.max_pixels)
        # the photo stays in its integer levels and each finished band becomes the file's planes at once,
        # so no float copy of the whole photo is ever made (memory grows with its width, not its area)
        planes = deblur(model, loaded.pixels, tile=settings.tile, overlap=settings.overlap,
                        batch_size=settings.batch_size, amp=settings.amp, progress=progress,
                        finish=output_encoding(loaded, target).rows)
        notes = save_planes(target, loaded, planes, quality=settings.quality, replace=replace)
    except MemoryError:
        raise MsdnError(f"{source}: not enough memory for this image; lower --max-pixels to refuse such sizes, "
                        "or free memory") from None
    return FileResult(loaded.size, notes)


# --- a folder ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    source: Path
    target: Path
    exists: bool = False  # the output is already there (skipped unless --overwrite)
    clash: Path | None = None  # an earlier input that maps to the same output
    record: Path | None = None  # the output folder's record of what deblur-dir wrote (see the module docstring)
    replace: bool = False  # --overwrite of an output deblur-dir wrote itself: the one case a file is replaced


class Plan(list[Job]):
    """The jobs of a folder, in order, and the files left out of them with the reason for each."""

    def __init__(self, jobs: Iterable[Job] = (), left_out: Iterable[tuple[Path, str]] = ()) -> None:
        super().__init__(jobs)
        self.left_out = list(left_out)


@dataclass
class BatchReport:
    processed: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    left_out: list[tuple[Path, str]] = field(default_factory=list)  # not photos deblur-dir processes, and why
    failed: list[tuple[Path, str]] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)  # the outputs of `processed`, in the same order
    notes: list[tuple[Path, str]] = field(default_factory=list)


def default_output_dir(directory: Path) -> Path:
    """`photos/` -> `photos_deblurred/` beside it."""
    directory = Path(directory).resolve()
    return directory.with_name(f"{directory.name}_deblurred")


def parse_extensions(text: str | None) -> frozenset[str]:
    """`"jpg,PNG"` -> {".jpg", ".png"}; every extension must be one we read."""
    if not text:
        return READ_EXTENSIONS
    chosen = {"." + part.strip().lower().lstrip(".") for part in text.split(",") if part.strip()}
    unknown = sorted(chosen - READ_EXTENSIONS)
    if unknown or not chosen:
        known = ", ".join(sorted(e.lstrip(".") for e in READ_EXTENSIONS))
        raise MsdnError(f"unknown image extension(s) {', '.join(unknown) or text!r} in --ext; use some of {known}")
    return frozenset(chosen)


def read_record(out_dir: Path) -> dict[str, tuple[int, int]]:
    """What deblur-dir wrote in `out_dir`: relative path -> (size, mtime_ns) when written."""
    record: dict[str, tuple[int, int]] = {}
    try:  # never through a link: a record that is not msdn's own file vouches for nothing
        fd = os.open(Path(out_dir) / RECORD, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return record
            lines = f.read().decode("utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return record
    for line in lines:
        try:
            item = json.loads(line)
            record[str(item["path"])] = (int(item["size"]), int(item["mtime_ns"]))
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by a crash
    return record


def record_output(out_dir: Path, target: Path) -> None:
    """Note in `out_dir`'s record that deblur-dir wrote `target` (as it is now)."""
    st = Path(target).stat()
    line = json.dumps({"path": Path(target).relative_to(out_dir).as_posix(), "size": st.st_size,
                       "mtime_ns": st.st_mtime_ns})
    path = Path(out_dir) / RECORD
    try:  # O_NOFOLLOW: a link planted in a shared folder must not make msdn append to its target
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
    except OSError as exc:
        raise MsdnError(f"{path} is not a regular file msdn can append to ({exc.strerror or exc}); "
                        "the output is written but not recorded") from None
    with os.fdopen(fd, "a", encoding="utf-8") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise MsdnError(f"{path} is not a regular file; the output is written but not recorded")
        f.write(line + "\n")


def _recorded(record: dict[str, tuple[int, int]], out_dir: Path, path: Path) -> bool:
    """True if `path` is an output deblur-dir wrote in `out_dir` and nobody has changed since."""
    try:
        st = path.stat()
        return record.get(path.relative_to(out_dir).as_posix()) == (st.st_size, st.st_mtime_ns)
    except (OSError, ValueError):
        return False


def _own_output(path: Path, names: set[str]) -> bool:
    """`a_deblurred.png` beside `a.jpg`: the default output of `msdn deblur a.jpg`."""
    stem = path.stem.removesuffix("_deblurred")
    return (path.suffix.lower() == ".png" and stem != path.stem
            and any(Path(n).stem == stem and Path(n).suffix.lower() in READ_EXTENSIONS for n in names))


def _walk(directory: Path, recursive: bool, skip_dir: Path | None) -> Iterable[tuple[Path, str | None]]:
    """Every file, with the reason it is no input (None: a candidate): hidden files (msdn's own
    temporaries and record are not even listed), msdn's own earlier outputs."""
    records: dict[Path, dict[str, tuple[int, int]]] = {}  # output folders met so far, with what they hold
    for root, dirs, files in os.walk(directory):
        here = Path(root)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not _inside(here / d, skip_dir))
        if RECORD in files:
            records[here] = read_record(here)
        above = [folder for folder in records if here.is_relative_to(folder)]
        names = {n for n in files if not n.startswith(".")}
        for name in sorted(files):
            path = here / name
            if name.startswith(".msdn-"):
                continue
            if name.startswith("."):
                yield path, "a hidden file"
            elif _own_output(path, names):
                yield path, f"named as msdn deblur's output of {path.stem.removesuffix('_deblurred')}.* beside it " \
                            "(deblur it with msdn deblur)"
            elif any(_recorded(records[f], f, path) for f in above):
                yield path, "an output an earlier msdn deblur-dir wrote"
            else:
                yield path, None
        if not recursive:
            return


def _inside(path: Path, parent: Path | None) -> bool:
    return parent is not None and path.resolve().is_relative_to(parent)


def plan_directory(directory: Path, out_dir: Path | None = None, *, recursive: bool = False,
                   extensions: frozenset[str] = READ_EXTENSIONS, fmt: str | None = None,
                   overwrite: bool = False) -> Plan:
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
        if suffix not in OUTPUT_FORMATS:
            raise MsdnError(f"--format {fmt}: msdn does not write {suffix} images (use one of {known_outputs()})")
        if (why := heif.problem(Path(f"photo{suffix}"), write=True)) is not None:  # HEIC / AVIF without the codec
            raise MsdnError(f"--format {fmt}: {why}")
    skip_dir = out_dir if _inside(out_dir, directory.resolve()) else None
    sources: list[Path] = []
    left_out: list[tuple[Path, str]] = []
    for path, reason in _walk(directory, recursive, skip_dir):
        if reason is None and path.suffix.lower() not in extensions:
            reason = "left out by --ext" if path.suffix.lower() in READ_EXTENSIONS else \
                f"not a photo type deblur-dir reads ({path.suffix or 'no extension'})"
        if reason is None:
            sources.append(path)
        else:
            left_out.append((path, reason))
    inputs = {s.resolve() for s in sources}
    record = read_record(out_dir) if overwrite else {}
    jobs: list[Job] = []
    owners: dict[Path, Path] = {}
    for source in sources:
        relative = source.relative_to(directory)
        target = out_dir / (relative.with_suffix(suffix) if suffix else relative)  # every format read is written
        if target.resolve() in inputs:
            raise MsdnError(f"the output {target} would replace an input image; choose an output folder "
                            f"outside {directory} with -o")
        exists = target.exists()
        if exists and overwrite and not _recorded(record, out_dir, target):
            raise MsdnError(f"{target} exists and is not an unchanged output of an earlier msdn deblur-dir "
                            f"(not in {out_dir / RECORD}); refusing to replace it even with --overwrite: "
                            "move it away or choose another -o")
        key = Path(os.path.normcase(target))
        jobs.append(Job(source, target, exists=exists and not overwrite, clash=owners.get(key),
                        record=out_dir / RECORD, replace=exists and overwrite))
        owners.setdefault(key, source)
    if not jobs:
        kinds = ", ".join(sorted(e.lstrip(".") for e in extensions))
        raise MsdnError(f"no images ({kinds}) found in {directory}"
                        + ("" if recursive else " (use --recursive to look in subfolders)"))
    return Plan(jobs, left_out)


def deblur_directory(model: Network, jobs: list[Job], settings: DeblurSettings = DeblurSettings(), *,
                     on_file: Callable[[int, Job], None] | None = None,
                     progress: Progress | None = None,
                     on_written: Callable[[Job], None] | None = None) -> BatchReport:
    """Run every job; a file that fails is recorded with its one-line reason and the rest go on.

    `on_file(index, job)` is called before each job, `progress(done_tiles, total_tiles)` during it,
    `on_written(job)` once its output is complete on disk.
    """
    report = BatchReport(left_out=list(getattr(jobs, "left_out", [])))
    for folder in dict.fromkeys(job.target.parent for job in jobs):
        remove_stale_temps(folder)  # left by a run that was killed while writing
    for index, job in enumerate(jobs):
        if on_file is not None:
            on_file(index, job)
        if settle_without_work(job, report):
            continue
        try:
            result = run_job(model, job, settings, progress=progress)
        except MsdnError as exc:
            report.failed.append((job.source, str(exc)))
            continue
        settle_written(job, report, result.notes, on_written)
    return report


def settle_without_work(job: Job, report: BatchReport) -> bool:
    """Count a job that needs no deblurring (its output exists, or an earlier input claims it) and say so;
    shared with the Ray runner so both count and word these the same."""
    if job.exists:
        report.skipped.append(job.source)
        return True
    if job.clash is not None:
        report.failed.append((job.source, f"same output {job.target.name} as {job.clash}; use --format "
                                          "only when names differ by more than the extension"))
        return True
    return False


def run_job(model: Network, job: Job, settings: DeblurSettings = DeblurSettings(),
            progress: Progress | None = None) -> FileResult:
    """One planned photo's work (output folder, load, deblur, atomic save): the unit a Ray worker runs."""
    try:
        job.target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MsdnError(f"cannot create {job.target.parent}: {exc.strerror or exc}") from None
    return deblur_file(model, job.source, job.target, settings, progress=progress, replace=job.replace)


def settle_written(job: Job, report: BatchReport, notes: Iterable[str] = (),
                   on_written: Callable[[Job], None] | None = None) -> None:
    """Count a job whose output is complete on disk and record it; run where the record is written (the
    local loop, or the Ray driver as each result streams back), never on a worker."""
    report.processed.append(job.source)
    report.written.append(job.target)
    if on_written is not None:
        on_written(job)
    report.notes += [(job.source, note) for note in notes]
    if job.record is not None:
        try:
            record_output(job.record.parent, job.target)
        except MsdnError as exc:  # an unrecorded output is only protected more: --overwrite keeps it
            report.notes.append((job.source, str(exc)))
        except OSError:
            pass
