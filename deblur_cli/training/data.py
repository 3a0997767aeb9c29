"""Training data: folder layouts, resumable sampling, crops and augmentation.

Layouts (`find_samples`):
- GOPRO: `ROOT/train/SEQ/{blur,sharp}/*.png` (or ROOT pointing at a split: `ROOT/SEQ/{blur,sharp}`),
  with `blur_folder` choosing `blur` or `blur_gamma`;
- paired: `ROOT/{blur,sharp}/` matched by file name (extension ignored);
- sharp photos only (`synthetic=True`): every image under ROOT, recursively; the blurred input is
  made per batch by `deblur_cli.training.shake` (see `deblur_cli.training.synthetic`).
Which files are images is `datasets.list_images`'s rule, the same as `msdn eval`'s (hidden files
and folders never are).

Photos smaller than the crop are *skipped and counted*, never upscaled: an upscaled photo is soft,
and teaching the network that soft is "sharp" is the opposite of what it should learn.

Reproducibility and exact resume: every random choice is a pure function of (seed, sample key) or
(seed, step). The sampler's key for a sample is `epoch * n_files + file_index`, and the crop, flips
and rotation are drawn from a generator seeded with it; synthetic blur per batch uses a generator
seeded with the step. Nothing depends on DataLoader worker state, so resuming at step k replays
exactly what an uninterrupted run would have seen.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from deblur_cli.evaluation.datasets import list_images
from deblur_cli.errors import MsdnError

_MASK64 = (1 << 64) - 1


def mix_seed(*values: int) -> int:
    """Combine integers into one well-spread 63-bit seed (splitmix64 rounds)."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) & _MASK64)) & _MASK64
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK64
        h ^= h >> 31
    return h & ((1 << 63) - 1)


# ---------------------------------------------------------------------------------------------
# Files and layouts
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    sharp: Path
    blur: Path | None = None  # None: synthetic blur


@dataclass
class Scan:
    """What a folder held: usable samples and how many files were skipped, and why."""

    samples: list[Sample]
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


def _match(blur_dir: Path, sharp_dir: Path, scan: Scan, skip_bad: bool) -> None:
    blurs = {p.stem: p for p in list_images(blur_dir)}
    sharps = {p.stem: p for p in list_images(sharp_dir)}
    for stem in sorted(set(blurs) ^ set(sharps)):
        lonely = blurs.get(stem) or sharps[stem]
        if not skip_bad:
            other = sharp_dir if stem in blurs else blur_dir
            raise MsdnError(f"unmatched pair: {lonely} has no partner with the same name in {other} "
                            "(use --skip-bad to skip such files)")
        scan.skip("unmatched")
    scan.samples += [Sample(sharp=sharps[s], blur=blurs[s]) for s in sorted(set(blurs) & set(sharps))]


def find_samples(root: Path, *, synthetic: bool = False, blur_folder: str = "blur", skip_bad: bool = False) -> Scan:
    """List the training samples under `root` in a stable order (see the module docstring)."""
    root = Path(root)
    if not root.is_dir():
        raise MsdnError(f"data folder not found: {root}")
    scan = Scan(samples=[])
    if synthetic:
        scan.samples = [Sample(sharp=p) for p in list_images(root, recursive=True)
                        if blur_folder not in p.parts[len(root.parts):]]
    elif (root / blur_folder).is_dir() and (root / "sharp").is_dir():
        _match(root / blur_folder, root / "sharp", scan, skip_bad)
    else:
        base = root / "train" if (root / "train").is_dir() else root
        sequences = sorted(d for d in base.iterdir() if d.is_dir() and (d / "sharp").is_dir())
        if not sequences:
            raise MsdnError(f"{root} has no training images: expected ROOT/train/SEQ/{{{blur_folder},sharp}} (GOPRO), "
                            f"ROOT/{{{blur_folder},sharp}} (pairs), or sharp photos with --synthetic-blur")
        for seq in sequences:
            if not (seq / blur_folder).is_dir():
                raise MsdnError(f"{seq} has a sharp/ folder but no {blur_folder}/ folder")
            _match(seq / blur_folder, seq / "sharp", scan, skip_bad)
    if not scan.samples:
        raise MsdnError(f"no images found in {root}")
    return scan


def _size(path: Path) -> tuple[int, int]:
    """(width, height) from the header only, after EXIF orientation."""
    with Image.open(path) as im:
        w, h = im.size
        orientation = im.getexif().get(0x0112, 1)
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def check_samples(scan: Scan, min_size: int, skip_bad: bool = False) -> Scan:
    """Drop (and count) files that are unreadable, mismatched or smaller than `min_size`.

    Unreadable files and size mismatches are errors unless `skip_bad`; photos smaller than the
    crop are always skipped and counted (see the module docstring).
    """
    kept = Scan(samples=[], skipped=dict(scan.skipped))
    for sample in scan.samples:
        try:
            size = _size(sample.sharp)
            blur_size = _size(sample.blur) if sample.blur is not None else size
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            if not skip_bad:
                raise MsdnError(f"cannot read image: {exc} (use --skip-bad to skip unreadable files)") from None
            kept.skip("unreadable")
            continue
        if blur_size != size:
            if not skip_bad:
                raise MsdnError(f"size mismatch: {sample.blur} is {blur_size[0]}x{blur_size[1]} but "
                                f"{sample.sharp} is {size[0]}x{size[1]} (use --skip-bad to skip such pairs)")
            kept.skip("size mismatch")
            continue
        if min(size) < min_size:
            kept.skip(f"smaller than {min_size} px")
            continue
        kept.samples.append(sample)
    return kept


def split_by_file(samples: Sequence[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Hold out whole files (never crops of a training file) for validation, reproducibly."""
    if not 0.0 <= fraction < 1.0:
        raise MsdnError("the validation fraction must be in [0, 1)")
    n_val = int(round(len(samples) * fraction))
    if fraction > 0 and n_val == 0 and len(samples) > 1:
        n_val = 1
    order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(mix_seed(seed, 0x5A11))).tolist()
    val = sorted(order[:n_val])
    train = sorted(order[n_val:])
    return [samples[i] for i in train], [samples[i] for i in val]


def read_rgb(path: Path) -> Tensor:
    """(3, H, W) uint8, EXIF-oriented; uint8 keeps DataLoader transfers 4x smaller than float."""
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im).convert("RGB")
            array = np.asarray(im, dtype=np.uint8).copy()
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise MsdnError(f"cannot read image {path}: {exc}") from None
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


# ---------------------------------------------------------------------------------------------
# Datasets and sampler
# ---------------------------------------------------------------------------------------------


def augment(images: list[Tensor], crop: int, generator: torch.Generator, flips: bool = True) -> list[Tensor]:
    """The same random crop, flips and 90-degree rotation applied to every image of a pair."""
    _, h, w = images[0].shape
    top = int(torch.randint(0, h - crop + 1, (1,), generator=generator))
    left = int(torch.randint(0, w - crop + 1, (1,), generator=generator))
    hflip, vflip, rot = torch.randint(0, 2, (3,), generator=generator).tolist()
    k = int(torch.randint(0, 4, (1,), generator=generator)) if flips else 0
    out = []
    for img in images:
        x = img[:, top:top + crop, left:left + crop]
        if flips:
            x = x.flip(-1) if hflip else x
            x = x.flip(-2) if vflip else x
            x = torch.rot90(x, k, dims=(-2, -1))
        out.append(x.contiguous())
    return out


def _read_sample(sample: Sample) -> list[Tensor]:
    """[sharp] or [sharp, blur] as uint8 (3, H, W) tensors of the same size."""
    images = [read_rgb(sample.sharp)] + ([read_rgb(sample.blur)] if sample.blur is not None else [])
    if len(images) == 2 and images[0].shape != images[1].shape:
        raise MsdnError(f"size mismatch between {sample.blur} and {sample.sharp}")
    return images


def _item(images: list[Tensor], key: int) -> dict[str, Tensor | int]:
    item: dict[str, Tensor | int] = {"sharp": images[0], "key": key}
    if len(images) == 2:
        item["blur"] = images[1]
    return item


class CropDataset(Dataset):
    """key -> {"sharp", ["blur"], "key"}: uint8 (3, crop, crop) crops of file `key % n`.

    The key (from `EpochSampler`) seeds the crop and augmentation, so the item is a pure function
    of it: workers, restarts and resumes all see the same data.
    """

    def __init__(self, samples: Sequence[Sample], crop: int, seed: int, flips: bool = True) -> None:
        self.samples, self.crop, self.seed, self.flips = list(samples), crop, seed, flips

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int) -> dict[str, Tensor | int]:
        images = _read_sample(self.samples[key % len(self.samples)])
        generator = torch.Generator().manual_seed(mix_seed(self.seed, key))
        return _item(augment(images, self.crop, generator, self.flips), key)


class WholeDataset(Dataset):
    """index -> {"sharp", ["blur"], "key"}: whole uint8 photos for validation (batch size 1)."""

    def __init__(self, samples: Sequence[Sample]) -> None:
        self.samples = list(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Tensor | int]:
        return _item(_read_sample(self.samples[index]), index)


class EpochSampler(Sampler[int]):
    """DistributedSampler's semantics plus mid-epoch resume and whole global batches.

    Each epoch is a seeded permutation of the files, wrapped around to a whole number of global
    batches (so a handful of photos still fills a batch), dealt to ranks round-robin. It yields
    sample keys `epoch * n + file_index` (or just `file_index` with `fixed=True`, the overfit check
    where every photo gives the same crop every time). `set_epoch(epoch, skip_batches)` starts an
    epoch part-way, which is how `--resume` lands on the exact next batch.
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1, fixed: bool = False) -> None:
        self.n, self.batch_size, self.seed, self.rank, self.world, self.fixed = n, batch_size, seed, rank, world, fixed
        self.epoch, self.skip = 0, 0

    @property
    def steps_per_epoch(self) -> int:
        return max(1, math.ceil(self.n / (self.batch_size * self.world)))

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch, self.skip = epoch, skip_batches

    def _mine(self) -> list[int]:
        total = self.steps_per_epoch * self.batch_size * self.world
        perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(mix_seed(self.seed, self.epoch)))
        order = perm.repeat(math.ceil(total / self.n))[:total]
        return order[self.rank::self.world].tolist()[self.skip * self.batch_size:]

    def __len__(self) -> int:
        return len(self._mine())

    def __iter__(self) -> Iterator[int]:
        offset = 0 if self.fixed else self.epoch * self.n
        return iter([offset + i for i in self._mine()])
