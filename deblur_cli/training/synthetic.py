"""Synthetic-blur training data at model speed: photos decoded once, crops cut from memory.

Decoding a 1600 px JPEG costs more than a training step's share of a crop, so each training photo
is decoded once into a uint8 tensor (about 5 MB each; 200 photos fit in 1 GB) and every batch is
cut from memory. A batch is a pure function of (seed, step): crops, flips, blur family, path and
noise all come from a generator seeded with them, so `--resume` replays exactly.

Validation pairs are fixed: the centre of each held-out photo, blurred once per (photo, level,
family group) with seeds from the photo's name, so scores compare across runs and sessions.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from deblur_cli.training import frames
from deblur_cli.evaluation import metrics
from deblur_cli.training import shake
from deblur_cli.training.data import Sample, mix_seed, read_rgb

# Path length in pixels per level, at a 1280 px long side (as `scripts/make_eval_set.py` writes).
LEVELS: dict[str, tuple[float, float]] = {
    "mild": (3.0, 8.0), "medium": (8.0, 16.0), "strong": (16.0, 30.0), "extreme": (30.0, 60.0),
}
# Validation groups, (renderer, families): the PSF families training uses, a PSF family it never
# sees, and frame averaging (GOPRO's construction) along a camera path family it never sees.
GROUPS: dict[str, tuple[str, tuple[str, ...]]] = {
    "train": ("shake", shake.TRAIN_FAMILIES), "held-out": ("shake", shake.HELD_OUT_FAMILIES),
    "frames-held-out": ("frames", frames.HELD_OUT_FAMILIES),
}
RENDERERS = ("shake", "frames")
# Validation measures deblurring: light sensor noise as in the eval set, no JPEG or highlight boost,
# so a gain is not bought by denoising or de-blocking alone.
VAL_REALISM = shake.Realism(noise=0.01, shot_noise=0.0, highlights=0.0, jpeg=0.0)


class PhotoBank:
    """Sharp training photos held in memory as uint8 (3, H, W) tensors."""

    def __init__(self, samples: Sequence[Sample]) -> None:
        self.photos = [read_rgb(s.sharp) for s in samples]

    def __len__(self) -> int:
        return len(self.photos)

    def batch(self, n: int, size: int, generator: torch.Generator,
              scales: tuple[float, float] = (1.0, 1.0), tries: int = 1) -> Tensor:
        """(n, 3, size, size) uint8 random crops with random flips and 90-degree turns.

        Each crop is taken at a random scale in `scales` (area-downsampled from a size/scale
        window): few photos then give many different images, and downsampling sharpens what
        little blur the originals have, so the target is sharper than the photo. With `tries` > 1
        the most textured of that many windows is kept: a photo's PSNR is ruled by its textured
        parts, and a flat crop teaches denoising, not deblurring.
        """
        out = torch.empty(n, 3, size, size, dtype=torch.uint8)
        picks = torch.randint(len(self.photos), (n,), generator=generator).tolist()
        lo, hi = scales
        for i, p in enumerate(picks):
            photo = self.photos[p]
            h, w = photo.shape[-2:]
            scale = lo + (hi - lo) * float(torch.rand(1, generator=generator))
            window = min(int(round(size / scale)), h, w)
            crops = [_window(photo, window, generator) for _ in range(tries)]
            crop = max(crops, key=texture) if tries > 1 else crops[0]
            if window != size:
                crop = F.interpolate(crop[None].float(), size=(size, size), mode="area" if window > size
                                     else "bilinear")[0].round_().clamp_(0, 255).to(torch.uint8)
            hflip, vflip = torch.randint(0, 2, (2,), generator=generator).tolist()
            crop = crop.flip(-1) if hflip else crop
            crop = crop.flip(-2) if vflip else crop
            out[i] = torch.rot90(crop, int(torch.randint(0, 4, (1,), generator=generator)), dims=(-2, -1))
        return out


def _window(photo: Tensor, window: int, generator: torch.Generator) -> Tensor:
    h, w = photo.shape[-2:]
    top = int(torch.randint(0, max(h - window, 0) + 1, (1,), generator=generator))
    left = int(torch.randint(0, max(w - window, 0) + 1, (1,), generator=generator))
    return photo[:, top:top + window, left:left + window]


def texture(crop: Tensor) -> float:
    """Mean absolute difference of neighbouring pixels (every other row and column: cheap)."""
    x = crop[:, ::2, ::2].float()
    return float((x[:, 1:] - x[:, :-1]).abs().mean() + (x[:, :, 1:] - x[:, :, :-1]).abs().mean())


def render(renderer: str, sharp: Tensor, families: tuple[str, ...], lengths: tuple[float, float],
           g: torch.Generator, realism: shake.Realism) -> tuple[Tensor, Tensor]:
    """Crops with a blur margin -> (blurred, sharp) by `renderer` ("shake": PSF families, "frames": averaged frames)."""
    if renderer == "frames":
        return frames.blur(sharp, families, lengths, g, realism)
    return shake.blur(sharp, families, lengths, g, realism)


def training_pair(bank: PhotoBank, batch_size: int, crop: int, families: tuple[str, ...],
                  lengths: tuple[float, float], realism: shake.Realism, seed: int, step: int,
                  scales: tuple[float, float] = (1.0, 1.0), tries: int = 1,
                  mix: frames.FrameMix = frames.FrameMix(), still: float = 0.0) -> tuple[Tensor, Tensor]:
    """(blurred, sharp) float CPU batch of `crop` px for `step`; the crops carry a blur margin.

    The last `mix.share` of the batch is rendered by averaging frames, the rest by `shake.py`
    (with no share, the batch is exactly what runs before the frame renderer drew); a `still` share of
    each part is left unblurred."""
    generator = torch.Generator().manual_seed(mix_seed(seed, 0xB4, step))
    big = bank.batch(batch_size, crop + 2 * shake.margin_for(lengths[1]), generator, scales, tries)
    k = round(batch_size * mix.share)
    if k == 0:
        return shake.blur(big, families, lengths, generator, realism, still)
    parts = [shake.blur(big[:batch_size - k], families, lengths, generator, realism, still)] if k < batch_size else []
    parts.append(frames.blur(big[batch_size - k:], mix.families, lengths, generator, realism, mix.layers, mix.gamma,
                             mix.target, still))
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def name_seed(seed: int, *parts: str) -> int:
    """Seed from names only: stable when photos are added or removed."""
    digest = hashlib.sha256(":".join(parts).encode()).digest()
    return mix_seed(seed, int.from_bytes(digest[:8], "big"))


@dataclass(frozen=True)
class ValPair:
    group: str
    level: str
    name: str
    blurred: Tensor  # (1, 3, S, S) uint8, as a saved photo would be
    sharp: Tensor


def validation_pairs(samples: Sequence[Sample], size: int, seed: int,
                     levels: dict[str, tuple[float, float]] = LEVELS,
                     groups: dict[str, tuple[str, tuple[str, ...]]] = GROUPS) -> list[ValPair]:
    """Fixed (blurred, sharp) centre crops of `size` px per photo, level and family group."""
    pairs = []
    for sample in samples:
        photo = read_rgb(sample.sharp)
        for level, lengths in levels.items():
            big = size + 2 * shake.margin_for(lengths[1])
            crop = centre(photo, big).float()[None] / 255.0
            for group, (renderer, families) in groups.items():
                generator = torch.Generator().manual_seed(name_seed(seed, Path(sample.sharp).name, level, group))
                blurred, sharp = render(renderer, crop, families, lengths, generator, VAL_REALISM)
                pairs.append(ValPair(group, level, Path(sample.sharp).stem, _to_uint8(blurred), _to_uint8(sharp)))
    return pairs


STILL_NOISE = VAL_REALISM.noise / 2  # the still group's read noise: the mean of validation's draws, never 0


def still_pairs(samples: Sequence[Sample], size: int, seed: int) -> list[ValPair]:
    """Centre crops with no blur, only read noise of sigma `STILL_NOISE` (group "still", level "all").

    Why: a network that only ever saw blur sharpens whatever it is given; on a sharp photo that is pure
    loss, and on whole photos with large smooth areas it is what a mean of per-photo dB punishes most
    (docs/TRAINING.md, session 10). The mean aligned gain here is that cost, measured at every validation.
    The noise is fixed, not drawn from 0 up, so that no input equals its target (an infinite PSNR).
    """
    pairs = []
    for sample in samples:
        sharp = centre(read_rgb(sample.sharp), size).float()[None] / 255.0
        noisy = still_input(sharp, name_seed(seed, Path(sample.sharp).name, "still"))
        pairs.append(ValPair("still", "all", Path(sample.sharp).stem, _to_uint8(noisy), _to_uint8(sharp)))
    return pairs


def still_input(sharp: Tensor, seed: int) -> Tensor:
    """A sharp float image with only read noise of sigma `STILL_NOISE`: the input of a still pair (validation
    crops here, whole photos in the eval set's `still` folder)."""
    generator = torch.Generator().manual_seed(seed)
    return (sharp + STILL_NOISE * torch.randn(sharp.shape, generator=generator)).clamp(0, 1)


def centre(photo: Tensor, size: int) -> Tensor:
    """The centre `size` square, reflected out where the photo is smaller."""
    h, w = photo.shape[-2:]
    if h < size or w < size:
        pad_h, pad_w = max(size - h, 0), max(size - w, 0)
        mode = "reflect" if pad_h < h and pad_w < w else "replicate"
        padding = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)
        photo = F.pad(photo[None].float(), padding, mode=mode)[0].to(photo.dtype)
        h, w = photo.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return photo[:, top:top + size, left:left + size]


def _to_uint8(x: Tensor) -> Tensor:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def score(run: Callable[[Tensor], Tensor] | None, pairs: Sequence[ValPair], radius: int) -> dict[str, float]:
    """Mean PSNR, aligned PSNR (best shift within `radius`) and SSIM per group/level and overall,
    plus "psnr_pooled": the aligned PSNR of the level's summed squared error, and "grad_ratio": the
    output's mean gradient magnitude over the sharp target's (below the blurred input's: smoothing).

    Why pooled: a mean of per-crop dB is ruled by flat crops, where denoising alone gains 5-7 dB,
    while a whole photo's PSNR is ruled by its textured parts, where deblurring is the job. Pooling
    the squared error over the crops of a level scores them as one big photo (measured: +1.4 dB
    mean-of-crops against +0.4 dB on the same photos whole, for one model). A group's pooled value
    is the mean over its levels, like the per-level eval set.

    `run` maps a (1, 3, S, S) float batch to its deblurred float batch; None scores the blurred
    input itself (the identity baseline every gain is measured against).
    """
    sums: dict[str, list[float]] = {}
    squared: dict[tuple[str, str], list[float]] = {}
    gradients: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for pair in pairs:
        blurred, sharp = pair.blurred.float() / 255.0, pair.sharp.float() / 255.0
        out = blurred if run is None else run(blurred).float().cpu()
        aligned = metrics.align(out, sharp, radius) if radius > 0 else (out, sharp)
        values = (float(metrics.psnr(out, sharp)[0]), float(metrics.psnr(*aligned)[0]),
                  float(metrics.ssim(*aligned)[0]))
        for key in (f"{pair.group}/{pair.level}", pair.group):
            sums.setdefault(key, []).extend(values)
        squared.setdefault((pair.group, pair.level), []).append(float(metrics.mse(*aligned)[0]))
        gradients.setdefault((pair.group, pair.level), []).append(
            (float(metrics.gradient(out)[0]), float(metrics.gradient(sharp)[0])))
    result = {}
    for key, values in sums.items():
        for i, name in enumerate(("psnr", "psnr_aligned", "ssim_aligned")):
            column = values[i::3]
            result[f"{key}/{name}"] = sum(column) / len(column)
    pooled: dict[str, list[float]] = {}
    for (group, level), errors in squared.items():
        value = metrics.psnr_of_mse(sum(errors) / len(errors))
        result[f"{group}/{level}/psnr_pooled"] = value
        pooled.setdefault(group, []).append(value)
    for group, values in pooled.items():
        result[f"{group}/psnr_pooled"] = sum(values) / len(values)
    for (group, level), values in gradients.items():
        result[f"{group}/{level}/grad_ratio"] = sum(o for o, _ in values) / max(sum(t for _, t in values), 1e-8)
    return result
