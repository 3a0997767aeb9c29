"""Datasets on disk: the usual blurred/sharp layouts, and the one rule for which files are images.

Layouts (`discover`):

* ``gopro``  -- ``ROOT/test/SEQ/{blur,sharp}/NAME.png`` (``--blur-folder blur_gamma``, ``--split``);
  ROOT may also be the split folder itself. One group per sequence.
* ``paired`` -- ``ROOT/{blur,sharp}/NAME.*`` matched by file stem. One group.
* ``kohler`` -- several blurred images per sharp one: ``ROOT/sharp/NAME.png`` with
  ``ROOT/blur/NAME_*.png``, or one folder per sharp image (``ROOT/NAME/sharp.png`` beside the
  blurred images, or with them in ``ROOT/NAME/blur/``). One group per sharp image.

A file that cannot be paired becomes a `Problem` and discovery goes on; only an empty set is an
error. `list_images` is shared with training (`data.find_samples`), so evaluation and training
agree on what counts as an image.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from deblur_cli.errors import MsdnError
from deblur_cli.imaging.images import IMAGE_EXTENSIONS

LAYOUTS = ("auto", "gopro", "paired", "kohler")
SHARP_STEM = "sharp"  # the sharp image's name in a one-folder-per-sharp-image Kohler layout


@dataclass(frozen=True)
class Pair:
    """A blurred image and its sharp reference; `group` is the sequence (GOPRO) or sharp image (Kohler)."""

    group: str
    name: str
    blurred: Path
    sharp: Path


@dataclass(frozen=True)
class Problem:
    """A file that could not be used, and why (reported; the run goes on)."""

    path: str
    reason: str


@dataclass(frozen=True)
class Dataset:
    """What `discover` found: the pairs, sorted by (group, name), and the files it could not pair."""

    root: Path
    layout: str
    pairs: tuple[Pair, ...]
    problems: tuple[Problem, ...] = ()


def list_images(folder: Path, recursive: bool = False) -> list[Path]:
    """The images in `folder` (and below it, if `recursive`), sorted; the one rule for every dataset.

    Hidden files and folders are never images of a dataset: they are AppleDouble `._x.jpg`
    shadows, editors' and msdn's own temporary files (`.x.tmp-PID-....png`), or version control.
    """
    folder = Path(folder)
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in found if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def relative(path: Path, root: Path) -> str:
    """`path` as reports show it: relative to the dataset root where it lies inside it."""
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _by_stem(files: Iterable[Path], root: Path, problems: list[Problem]) -> dict[str, Path]:
    """Index files by stem; two files with one stem (a.png, a.jpg) are ambiguous and both dropped."""
    index: dict[str, Path] = {}
    clashes: set[str] = set()
    for f in files:
        if f.stem in index:
            clashes.add(f.stem)
            problems.append(Problem(relative(f, root), f"another image has the same name: {index[f.stem].name}"))
        else:
            index[f.stem] = f
    for stem in clashes:
        index.pop(stem)
    return index


def _match_exact(blur_dir: Path, sharp_dir: Path, group: str, root: Path, problems: list[Problem]) -> list[Pair]:
    blurred = _by_stem(list_images(blur_dir), root, problems)
    sharp = _by_stem(list_images(sharp_dir), root, problems)
    pairs = [Pair(group, stem, b, sharp[stem]) for stem, b in blurred.items() if stem in sharp]
    problems += [Problem(relative(b, root), "no sharp image with this name") for s, b in blurred.items() if s not in sharp]
    problems += [Problem(relative(p, root), "no blurred image with this name") for s, p in sharp.items() if s not in blurred]
    return pairs


def _sharp_for(blurred_stem: str, sharp_stems: Iterable[str]) -> str | None:
    """The sharp image a Kohler-style blurred name belongs to: NAME for NAME_anything (longest wins)."""
    hits = [s for s in sharp_stems if blurred_stem == s or blurred_stem.startswith(s + "_")]
    return max(hits, key=len) if hits else None


def _match_kohler(blur_dir: Path, sharp_dir: Path, root: Path, problems: list[Problem]) -> list[Pair]:
    sharp = _by_stem(list_images(sharp_dir), root, problems)
    pairs, used = [], set()
    for b in list_images(blur_dir):
        owner = _sharp_for(b.stem, sharp)
        if owner is None:
            problems.append(Problem(relative(b, root), "no sharp image NAME for this NAME_* blurred image"))
        else:
            pairs.append(Pair(owner, b.stem, b, sharp[owner]))
            used.add(owner)
    problems += [Problem(relative(p, root), "no blurred image for this sharp image") for s, p in sharp.items()
                 if s not in used]
    return pairs


def _kohler_folders(root: Path, blur_folder: str, problems: list[Problem]) -> list[Pair]:
    """One folder per sharp image: ROOT/NAME/sharp.* with the blurred images beside it or in blur/."""
    pairs = []
    for folder in _subdirs(root):
        sharp = [p for p in list_images(folder) if p.stem.lower() == SHARP_STEM]
        if len(sharp) != 1:
            problems.append(Problem(relative(folder, root), f"expected one '{SHARP_STEM}.*' image, found {len(sharp)}"))
            continue
        blur_dir = folder / blur_folder
        blurred = list_images(blur_dir) if blur_dir.is_dir() else [p for p in list_images(folder) if p != sharp[0]]
        if not blurred:
            problems.append(Problem(relative(sharp[0], root), "no blurred image for this sharp image"))
        pairs += [Pair(folder.name, b.stem, b, sharp[0]) for b in blurred]
    return pairs


def _is_kohler_folder(folder: Path) -> bool:
    return any(p.stem.lower() == SHARP_STEM for p in list_images(folder))


def _gopro_base(root: Path, split: str, blur_folder: str) -> Path | None:
    """ROOT/SPLIT if it holds sequences, else ROOT itself if it does (ROOT is the split folder)."""
    for base in (root / split, root):
        if base.is_dir() and any((s / "sharp").is_dir() and (s / blur_folder).is_dir() for s in _subdirs(base)):
            return base
    return None


def _gopro(base: Path, root: Path, blur_folder: str, problems: list[Problem]) -> list[Pair]:
    pairs = []
    for seq in _subdirs(base):
        missing = [d for d in ("sharp", blur_folder) if not (seq / d).is_dir()]
        if missing:
            problems.append(Problem(relative(seq, root), f"sequence has no {' or '.join(missing)} folder"))
            continue
        pairs += _match_exact(seq / blur_folder, seq / "sharp", seq.name, root, problems)
    return pairs


def _flat_is_kohler(blur_dir: Path, sharp_dir: Path) -> bool:
    """Paired when most blurred stems equal a sharp stem; Kohler when most only extend one with _*."""
    sharp = {p.stem for p in list_images(sharp_dir)}
    blurred = [p.stem for p in list_images(blur_dir)]
    exact = sum(s in sharp for s in blurred)
    prefixed = sum(s not in sharp and _sharp_for(s, sharp) is not None for s in blurred)
    return prefixed > exact


def discover(root: Path, layout: str = "auto", *, split: str = "test", blur_folder: str = "blur") -> Dataset:
    """The blurred/sharp pairs under `root`, sorted, with every file that could not be paired."""
    root = Path(root)
    if not root.is_dir():
        raise MsdnError(f"dataset folder not found: {root}" if not root.exists() else f"{root} is not a folder")
    if layout not in LAYOUTS:
        raise MsdnError(f"unknown layout '{layout}': choose one of {', '.join(LAYOUTS)}")
    flat = (root / blur_folder).is_dir() and (root / "sharp").is_dir()
    gopro_base = _gopro_base(root, split, blur_folder)
    if layout == "auto":
        if flat:
            layout = "kohler" if _flat_is_kohler(root / blur_folder, root / "sharp") else "paired"
        elif gopro_base is not None:
            layout = "gopro"
        elif any(_is_kohler_folder(d) for d in _subdirs(root)):
            layout = "kohler"
        else:
            raise MsdnError(
                f"cannot tell the layout of {root}: expected {split}/SEQ/{{{blur_folder},sharp}}/ (GOPRO), "
                f"{{{blur_folder},sharp}}/ (paired or Kohler) or NAME/{SHARP_STEM}.png folders (Kohler)")
    problems: list[Problem] = []
    if layout == "gopro":
        if gopro_base is None:
            raise MsdnError(f"{root} is not a GOPRO folder: expected {root}/{split}/SEQ/{blur_folder}/ and "
                            f"{root}/{split}/SEQ/sharp/ (or SEQ folders directly in {root})")
        pairs = _gopro(gopro_base, root, blur_folder, problems)
    elif layout == "paired":
        if not flat:
            raise MsdnError(f"{root} is not a paired folder: expected {root}/{blur_folder}/ and {root}/sharp/")
        pairs = _match_exact(root / blur_folder, root / "sharp", "", root, problems)
    elif flat:
        pairs = _match_kohler(root / blur_folder, root / "sharp", root, problems)
    elif any(_is_kohler_folder(d) for d in _subdirs(root)):
        pairs = _kohler_folders(root, blur_folder, problems)
    else:
        raise MsdnError(f"{root} is not a Kohler-style folder: expected {root}/sharp/NAME.png with "
                        f"{root}/{blur_folder}/NAME_*.png, or {root}/NAME/{SHARP_STEM}.png folders")
    if not pairs:
        detail = f" ({len(problems)} files could not be paired, e.g. {problems[0].path}: {problems[0].reason})" \
            if problems else ""
        raise MsdnError(f"no blurred/sharp pairs found in {root} (layout {layout}){detail}")
    pairs.sort(key=lambda p: (p.group, p.name))
    return Dataset(root, layout, tuple(pairs), tuple(problems))
