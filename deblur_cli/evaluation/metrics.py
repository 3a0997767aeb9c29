"""Image quality metrics as published deblurring tables compute them.

Both metrics score images *as saved*: inputs are quantised to 8 bits first (`quantize`) and
compared with data range 255, so a number printed here is the number a reader gets from the PNG
files. SSIM follows Wang et al. 2004 exactly as scikit-image implements it (Gaussian window 11x11,
sigma 1.5, K1 0.01, K2 0.03, population covariance, mean of each channel's map after cropping
the 5-pixel border the reflected filter distorts), so results compare with tables made with
`skimage.metrics.structural_similarity`. It is a small float64 conv2d rather than kornia so that
`msdn eval` needs no optional dependency and the sums match scikit-image to ~1e-12.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

DATA_RANGE = 255.0
SSIM_SIGMA = 1.5
SSIM_RADIUS = 5  # int(3.5 * sigma + 0.5), the truncation scikit-image uses for an 11-tap window
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def quantize(x: Tensor) -> Tensor:
    """The 8-bit values an image would be saved with, as float64 in [0, 255]."""
    return torch.round(x.detach().to(torch.float64).clamp(0.0, 1.0) * DATA_RANGE)


def _check_pair(pred: Tensor, target: Tensor) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"pred and target differ in shape: {tuple(pred.shape)} vs {tuple(target.shape)}")
    if pred.dim() != 4:
        raise ValueError(f"expected (B, C, H, W) tensors, got shape {tuple(pred.shape)}")


def crop_border(x: Tensor, border: int) -> Tensor:
    """Drop `border` pixels on every side (the `--crop-border` option of benchmark protocols)."""
    if border <= 0:
        return x
    if x.shape[-1] <= 2 * border or x.shape[-2] <= 2 * border:
        raise ValueError(f"cannot crop {border} pixels from each side of a {x.shape[-1]}x{x.shape[-2]} image")
    return x[..., border:-border, border:-border]


def center_crop(x: Tensor, size: int) -> Tensor:
    """The centre `size` x `size` window (the MSDN paper's Table 1 protocol uses 256)."""
    h, w = x.shape[-2:]
    if h < size or w < size:
        raise ValueError(f"a {w}x{h} image is smaller than the {size}x{size} centre crop")
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top:top + size, left:left + size]


def mse(pred: Tensor, target: Tensor) -> Tensor:
    """Per-image mean squared error (shape (B,)) of the 8-bit-quantised images, in [0, 255] units."""
    _check_pair(pred, target)
    return (quantize(pred) - quantize(target)).pow(2).flatten(1).mean(dim=1)


def gradient(x: Tensor) -> Tensor:
    """(N,) mean absolute horizontal + vertical difference of 8-bit-quantised images, in 8-bit units.

    Why: PSNR alone hides smoothing; an output whose gradient is below the blurred input's
    removed texture rather than blur, one near the sharp image's restored it.
    """
    q = quantize(x)
    return ((q[..., :, 1:] - q[..., :, :-1]).abs().mean(dim=(1, 2, 3))
            + (q[..., 1:, :] - q[..., :-1, :]).abs().mean(dim=(1, 2, 3)))


def psnr_of_mse(mse: float) -> float:
    """PSNR in dB of a mean squared error in [0, 255] units; inf for zero error."""
    return math.inf if mse == 0 else 10.0 * math.log10(DATA_RANGE**2 / mse)


def psnr(pred: Tensor, target: Tensor) -> Tensor:
    """Per-image PSNR in dB (shape (B,)) of 8-bit-quantised (B,C,H,W) images in [0, 1]; inf if identical."""
    return 10.0 * torch.log10(DATA_RANGE**2 / mse(pred, target))


def _gaussian_taps() -> list[float]:
    r = torch.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (r / SSIM_SIGMA) ** 2)
    return (g / g.sum()).tolist()


def _filter_valid(x: Tensor, taps: list[float], dim: int) -> Tensor:
    """1-D filter along `dim`, keeping only outputs whose window lies inside the image.

    In-place shifted sums: ~10x faster than a float64 conv2d on CPU for an 11-tap kernel.
    """
    n = x.shape[dim] - len(taps) + 1
    out = x.narrow(dim, 0, n) * taps[0]
    for i, t in enumerate(taps[1:], start=1):
        out.add_(x.narrow(dim, i, n), alpha=t)
    return out


def _blur_valid(x: Tensor, taps: list[float]) -> Tensor:
    """Separable Gaussian over (..., H, W) without padding.

    scikit-image filters with reflected borders and then crops the radius on each side before
    averaging, which leaves exactly the pixels this unpadded ("valid") filter produces.
    """
    return _filter_valid(_filter_valid(x, taps, -2), taps, -1)


def ssim(pred: Tensor, target: Tensor) -> Tensor:
    """Per-image SSIM (shape (B,)) of 8-bit-quantised (B,C,H,W) images in [0, 1], mean over channels."""
    _check_pair(pred, target)
    b, c, h, w = pred.shape
    win = 2 * SSIM_RADIUS + 1
    if h < win or w < win:
        raise ValueError(f"SSIM needs images of at least {win}x{win} pixels, got {w}x{h}")
    x = quantize(pred).reshape(b * c, 1, h, w)
    y = quantize(target).reshape(b * c, 1, h, w)
    # quantize() detaches, so nothing below records autograd history
    stacked = _blur_valid(torch.cat([x, y, x * x, y * y, x * y]), _gaussian_taps())
    ux, uy, uxx, uyy, uxy = stacked.chunk(5)
    vx, vy, vxy = uxx - ux * ux, uyy - uy * uy, uxy - ux * uy
    c1, c2 = (SSIM_K1 * DATA_RANGE) ** 2, (SSIM_K2 * DATA_RANGE) ** 2
    s_map = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s_map.flatten(1).mean(dim=1).view(b, c).mean(dim=1)



def best_shift(pred: Tensor, target: Tensor, radius: int) -> tuple[int, int]:
    """The integer (dy, dx) within `radius` that maximises PSNR of `pred` shifted onto `target`.

    Köhler et al.'s benchmark (the MSDN paper's Table 2) scores a deblurred image after its best
    alignment, because a blurred photo does not say where in its exposure the "sharp" instant was;
    GOPRO's middle-frame target is one guess of it. Both images are cut to the common interior so
    every candidate shift is scored on the same number of pixels.
    """
    _check_pair(pred, target)
    h, w = pred.shape[-2:]
    if radius < 0 or h <= 2 * radius or w <= 2 * radius:
        raise ValueError(f"cannot align a {w}x{h} image within {radius} pixels")
    p, t = quantize(pred), quantize(target)[..., radius:h - radius, radius:w - radius]
    best, best_mse = (0, 0), None
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            window = p[..., radius + dy:h - radius + dy, radius + dx:w - radius + dx]
            mse = float((window - t).pow(2).mean())
            if best_mse is None or mse < best_mse - 1e-12:
                best, best_mse = (dy, dx), mse
    return best


def align(pred: Tensor, target: Tensor, radius: int) -> tuple[Tensor, Tensor]:
    """`pred` shifted by its best integer offset onto `target`, both cut to the common interior."""
    dy, dx = best_shift(pred, target, radius)
    h, w = pred.shape[-2:]
    r = radius
    return pred[..., r + dy:h - r + dy, r + dx:w - r + dx], target[..., r:h - r, r:w - r]
