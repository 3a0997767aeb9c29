"""Photos as integer pixel planes, and the colour math from the network's float RGB to a file's planes.

A decoded photo stays in its own levels -- uint8, or torch.uint16 for 16-bit files -- as a
(1, C, H, W) tensor viewing the (H, W, C) array the decoder made: 3 bytes a pixel for an 8-bit RGB
photo where float32 needs 12. Only tiles and a band of rows are ever float (see
`inference.engine.deblur`).

`Encoding` is what `images.save_image` does to the network's output (grayscale mix, JPEG's white
backdrop for transparency, alpha, rounding to 8 or 16 bits), written so it runs on any band of
rows: `deblur` applies it to each band as the band is finished, so the output is never held as
float either. Every step is per pixel, so a band gives exactly the bytes the whole image would.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

PIXEL_DTYPES: dict[int, torch.dtype] = {8: torch.uint8, 16: torch.uint16}  # bit depth -> pixel dtype
GRAY_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)[:, None]  # Pillow's L weights

# Conversions run in row strips: a 48 MP photo is 576 MB per float32 copy, so full-size
# temporaries would set the peak memory of the whole run.
STRIP = 256


def bit_depth(dtype: torch.dtype) -> int:
    """8 or 16 for msdn's pixel dtypes; a ValueError names them for any other."""
    for bits, known in PIXEL_DTYPES.items():
        if dtype == known:
            return bits
    raise ValueError(f"integer pixels must be torch.uint8 or torch.uint16, got {dtype}")


def pixels_tensor(planes: np.ndarray) -> Tensor:
    """(H, W, C) unsigned integer planes -> a (1, C, H, W) tensor viewing them (no copy)."""
    return torch.from_numpy(planes).permute(2, 0, 1)[None]


def to_float(pixels: Tensor) -> Tensor:
    """Integer levels -> float32 in [0, 1]: the one conversion tiles, alpha and the float API share,
    so every path sees the same float values."""
    return pixels.to(torch.float32).div_(2 ** bit_depth(pixels.dtype) - 1)


def hwc(t: Tensor) -> np.ndarray:
    """A (1, C, H, W) or (C, H, W) CPU tensor as an (H, W, C) numpy view."""
    t = t.detach().cpu()
    if t.dim() == 4:
        if t.shape[0] != 1:
            raise ValueError(f"expected one image, got a batch of {t.shape[0]}")
        t = t[0]
    return t.permute(1, 2, 0).numpy()


def quantize(planes: np.ndarray, bits: int) -> np.ndarray:
    """Float [0, 1] (H, W, C) planes -> unsigned integers of `bits`, rounding half to even."""
    top = 2**bits - 1
    out = np.empty(planes.shape, np.uint8 if bits == 8 else np.uint16)
    for r in range(0, planes.shape[0], STRIP):
        strip = np.multiply(planes[r : r + STRIP], np.float32(top), dtype=np.float32)
        np.rint(strip, out=strip)
        out[r : r + STRIP] = np.clip(strip, 0, top, out=strip)
    return out


@dataclass(frozen=True)
class Encoding:
    """How float RGB rows in [0, 1] become the planes of an output file.

    `alpha` ((1, 1, H, W) integer levels) is written as the last plane, or with `composite` (JPEG
    has no alpha) used to put the colour on white as a viewer would show it, then dropped.
    """

    bits: int  # 8 or 16: what the output format holds
    gray: bool = False  # one plane, mixed with Pillow's L weights
    alpha: Tensor | None = None
    composite: bool = False

    @property
    def channels(self) -> int:
        return (1 if self.gray else 3) + (self.alpha is not None and not self.composite)

    def rows(self, band: Tensor, first: int) -> Tensor:
        """The output planes of image rows [first, first + h) from their (1, 3, h, W) float RGB."""
        color = hwc(band)
        if self.gray:
            color = color @ GRAY_WEIGHTS
        if self.alpha is not None:
            alpha = hwc(to_float(self.alpha[:, :, first : first + band.shape[2]]))
            if self.composite:
                color = color * alpha + (1.0 - alpha)  # what a viewer shows on a white page
            else:
                color = np.concatenate([color, alpha], axis=2)
        return pixels_tensor(quantize(color, self.bits))

    def encode(self, rgb: Tensor) -> Tensor:
        """`rows` over a whole (1, 3, H, W) image, float [0, 1] or integer levels, a strip at a time."""
        height = rgb.shape[2]
        out: Tensor | None = None
        for first in range(0, height, STRIP):
            strip = rgb[:, :, first : first + STRIP]
            rows = self.rows(strip.float() if strip.is_floating_point() else to_float(strip), first)
            if out is None:
                out = new_planes(rows, height)
            out[:, :, first : first + rows.shape[2]] = rows
        assert out is not None
        return out


def new_planes(rows: Tensor, height: int) -> Tensor:
    """An empty (1, C, height, W) output like `rows`; integer planes are laid out (H, W, C) in memory,
    so `hwc` of them is the contiguous array encoders want, without a copy."""
    shape = (1, rows.shape[1], height, rows.shape[3])
    layout = torch.contiguous_format if rows.is_floating_point() else torch.channels_last
    return torch.empty(shape, dtype=rows.dtype, memory_format=layout)
