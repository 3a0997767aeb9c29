"""Tiling geometry for bounded-memory inference: pure integer plans plus the blend window.

Per axis an image of length n is covered by tiles of `tile` pixels that overlap by at least
`overlap`. The image is reflect-padded by `border_pad(overlap)` pixels at both ends (per tile,
never as a whole image), so border pixels get real context just as interior pixels do.

Blending: where two tiles overlap, the left tile's weight falls and the right tile's rises along a
raised-cosine crossfade of `crossfade_length(overlap)` pixels centred in the overlap. The outer
quarter of the overlap on each side is a guard band where a tile's weight is exactly zero: a
tile's outputs near its cut edges were computed without their true context, so they are not used
at all. The two ramps are mirror images (sin^2 + cos^2 = 1), so the per-axis windows form a
partition of unity; `axis_windows` also divides by their per-axis sum to make that exact. Because
the 2-D weight is the outer product of two 1-D windows on a regular grid, the 2-D normaliser is the
product of the 1-D ones, so no full-image weight accumulator is needed. Every image pixel gets a
total weight of 1 (never 0), and a model whose receptive-field radius is at most `overlap // 4`
gives exactly the same output tiled as on the whole reflect-padded image.

Axes no longer than `tile` are a single tile of length n + 2 * pad, so small images (down to 1x1)
run in one model call; the model itself pads to its size multiple. An axis thinner than the overlap
is padded only up to that multiple (`thin_pad`), so the exactness above holds for axes at least
`overlap` long.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from deblur_cli.errors import MsdnError

# The tool's tiling when nothing else says: a file given by path, `deblur()` called without sizes.
# A named model's own tiling lives in its manifest entry.
DEFAULT_TILE = 256
DEFAULT_OVERLAP = 32


@dataclass(frozen=True)
class AxisTile:
    """One tile along one axis, all in image coordinates (outside [0, n) means reflect padding).

    The weight is 0 before `fade_in[0]`, rises over `fade_in`, is 1 until `fade_out[0]`, falls over
    `fade_out` and is 0 from `fade_out[1]` on. Only `keep` (non-zero weight, clipped to the image)
    is ever accumulated.
    """

    start: int
    stop: int
    fade_in: tuple[int, int]
    fade_out: tuple[int, int]
    keep: tuple[int, int]

    @property
    def size(self) -> int:
        return self.stop - self.start


def validate_tiling(tile: int, overlap: int) -> None:
    """Reject sizes that cannot tile an image (user-supplied, so a one-line MsdnError)."""
    if tile < 1:
        raise MsdnError(f"tile size must be a positive number of pixels, got {tile}")
    if overlap < 0:
        raise MsdnError(f"tile overlap cannot be negative, got {overlap}")
    if overlap >= tile:
        raise MsdnError(f"tile overlap ({overlap}) must be smaller than the tile size ({tile})")


def model_tiling(multiple: int) -> tuple[int, int]:
    """The defaults fitted to a model's size multiple: the largest multiple up to DEFAULT_TILE (at
    least one), with DEFAULT_OVERLAP, or a quarter of a tile too small to hold it."""
    tile = DEFAULT_TILE if DEFAULT_TILE % multiple == 0 else multiple * max(1, DEFAULT_TILE // multiple)
    return tile, DEFAULT_OVERLAP if tile > 64 else tile // 4


def border_pad(overlap: int) -> int:
    """Reflect padding at the image borders: half the overlap, i.e. at least the guard band."""
    return overlap // 2


def crossfade_length(overlap: int) -> int:
    """Length of the ramp between two tiles: the overlap minus a guard of overlap // 4 per side."""
    return overlap - 2 * (overlap // 4)


def reflect_index(i: int, n: int) -> int:
    """Map any integer coordinate into [0, n) by repeated mirror reflection (edge not repeated).

    Equals torch's "reflect" padding where that is defined (pad < n) and keeps reflecting beyond
    it, so pads larger than the image work; a 1-pixel axis degenerates to replication.
    """
    if n == 1:
        return 0
    period = 2 * (n - 1)
    i %= period
    return i if i < n else period - i


def axis_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Tile starts in padded coordinates [0, length): as few tiles as the overlap allows, spread
    evenly so every neighbouring pair overlaps by at least `overlap` (integers only)."""
    if length <= tile:
        return [0]
    count = -(-(length - overlap) // (tile - overlap))  # ceil
    span = length - tile
    return [(i * span + (count - 1) // 2) // (count - 1) for i in range(count)]


def fitted_tile(length: int, tile: int, overlap: int, multiple: int = 1) -> int:
    """The smallest tile (a multiple of `multiple`, at most `tile`) that covers `length` padded
    pixels with as few tiles as `tile` would need: a 720-pixel axis takes four 208-pixel tiles
    rather than four 256-pixel ones, cutting the redundant work of the overlaps by a fifth."""
    if length <= tile:
        return tile
    count = -(-(length - overlap) // (tile - overlap))
    needed = -(-(length + (count - 1) * overlap) // count)
    return min(-(-needed // multiple) * multiple, tile)


def plan_axis(length: int, tile: int, overlap: int, multiple: int = 1) -> list[AxisTile]:
    """Tiles covering one image axis of `length` pixels (see the module docstring).

    Tiles are shrunk to `fitted_tile` (rounded up to the model's size `multiple`, so the model
    pads nothing) when the image does not fill whole `tile`-sized steps.
    """
    validate_tiling(tile, overlap)
    return _plan_axis(length, tile, overlap, multiple)


def plan_image(height: int, width: int, tile: int, overlap: int,
               multiple: int = 1) -> tuple[list[AxisTile], list[AxisTile]]:
    """(row tiles, column tiles) of an image, with the sizes checked once for both axes."""
    validate_tiling(tile, overlap)
    return _plan_axis(height, tile, overlap, multiple), _plan_axis(width, tile, overlap, multiple)


def thin_pad(length: int, overlap: int, multiple: int) -> int:
    """The border pad of an axis one tile covers: `border_pad`, except that an axis thinner than the
    overlap (a 1-pixel strip) is padded only within its size multiple. The full pad made a 100000x1
    strip compute 48 rows for each one kept (20 s, 3x what 16 rows take); the price is that such a
    strip's borders see the model's own padding rather than reflected context."""
    if length >= overlap:
        return border_pad(overlap)
    return min(border_pad(overlap), (-(-length // multiple) * multiple - length) // 2)


def _plan_axis(length: int, tile: int, overlap: int, multiple: int) -> list[AxisTile]:
    if length < 1:
        raise ValueError(f"cannot tile an empty axis (length {length})")
    if length <= tile:
        pad = thin_pad(length, overlap, multiple)
        return [AxisTile(-pad, length + pad, (-pad, -pad), (length + pad, length + pad), (0, length))]
    pad = border_pad(overlap)

    tile = max(fitted_tile(length + 2 * pad, tile, overlap, multiple), overlap + 1)
    starts = [s - pad for s in axis_starts(length + 2 * pad, tile, overlap)]
    fade = crossfade_length(overlap)
    # Crossfade between tile i and i+1, centred in their actual overlap [starts[i+1], starts[i] + tile).
    fades = []
    for left, right in zip(starts, starts[1:]):
        lo = right + (left + tile - right - fade) // 2
        fades.append((lo, lo + fade))
    tiles = []
    for i, start in enumerate(starts):
        stop = start + tile
        fade_in = fades[i - 1] if i > 0 else (start, start)
        fade_out = fades[i] if i < len(fades) else (stop, stop)
        keep = (max(fade_in[0], 0), min(fade_out[1], length))
        tiles.append(AxisTile(start, stop, fade_in, fade_out, keep))
    return tiles


def raised_cosine(length: int) -> list[float]:
    """Rising ramp sampled at pixel centres: strictly inside (0, 1), mirror pairs sum to 1."""
    return [math.sin(0.5 * math.pi * (k + 0.5) / length) ** 2 for k in range(length)]


def axis_windows(tiles: list[AxisTile]) -> list[Tensor]:
    """Per tile, float64 weights over its `keep` range, normalised so they sum to 1 at every pixel."""
    raw = []
    for t in tiles:
        lo, hi = t.keep
        rise = raised_cosine(t.fade_in[1] - t.fade_in[0])
        fall = raised_cosine(t.fade_out[1] - t.fade_out[0])[::-1]
        w = torch.ones(t.stop - t.start, dtype=torch.float64)
        # Multiply rather than assign: with a huge overlap and a short stride the two ramps of one
        # tile can overlap each other, and the product stays smooth and positive there.
        if rise:
            w[t.fade_in[0] - t.start : t.fade_in[1] - t.start] *= torch.tensor(rise, dtype=torch.float64)
        if fall:
            w[t.fade_out[0] - t.start : t.fade_out[1] - t.start] *= torch.tensor(fall, dtype=torch.float64)
        raw.append(w[lo - t.start : hi - t.start])
    length = tiles[-1].keep[1]
    total = torch.zeros(length, dtype=torch.float64)
    for t, w in zip(tiles, raw):
        total[t.keep[0] : t.keep[1]] += w
    return [w / total[t.keep[0] : t.keep[1]] for t, w in zip(tiles, raw)]


def source_indices(tile: AxisTile, length: int) -> Tensor:
    """Image rows/columns that feed `tile` (reflect padding as index arithmetic, no padded copy)."""
    return torch.tensor([reflect_index(i, length) for i in range(tile.start, tile.stop)], dtype=torch.long)
