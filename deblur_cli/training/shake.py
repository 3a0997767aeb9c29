"""Camera-shake blur for training and validation: several trajectory families, rendered as real
sensors integrate light.

Why several families: a model trained on one trajectory generator learns that generator, not
deblurring (a model trained on smooth cubic paths gained +1.0 dB on them but +0.14 dB on another
generator's blur). So training mixes structurally different paths, and one family is held out
for validation only, to measure the gain users will see:

* ``poly``   smooth polynomial path (cubic in time), the project's original generator;
* ``walk``   random walk with inertia and sudden jerks (Boracchi & Foi's model, as DeblurGAN's
             generator);
* ``line``   a short straight streak;
* ``rotate`` in-plane rotation about a random centre plus a little drift (spatially varying);
* ``tremor`` held out: hand tremor, half a cycle to two oscillations around a slow drift.

Every path is traversed at uneven speed (the camera dwells where it slows down), has a path
length in pixels drawn from `lengths` (half uniform, half log-uniform, so short blur is common
and long blur present), and is centred on its time-average: the blurred image's centroid sits on
the sharp target, so the network never has to guess a shift (``msdn eval --align`` scores
GOPRO's middle-frame convention fairly).

Rendering: translation-only families become a point-spread function (the path splatted into a
kernel) applied by FFT in linear light; ``rotate`` warps the frame along the path. Then optional
realism: clipped highlights (a random exposure gain before clipping in linear light),
Poisson-Gaussian noise, and JPEG re-compression of the blurred input. All randomness comes from
one `torch.Generator`, so a (seed, step) pair reproduces a batch exactly.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import Tensor

TRAIN_FAMILIES = ("poly", "walk", "line", "rotate")
HELD_OUT_FAMILIES = ("tremor",)
FAMILIES = TRAIN_FAMILIES + HELD_OUT_FAMILIES
PATH_POINTS = 96  # time samples per path: dense enough that a 60 px path splats continuously
ROTATE_FRAMES = 25  # warped frames of the rotation family (warping costs a pass per frame)


@dataclass(frozen=True)
class Realism:
    """Probabilities / ranges of the camera effects added after the blur (0 turns one off)."""

    noise: float = 0.01  # max Gaussian read-noise sigma (sRGB units, per image uniform in [0, noise])
    # max Poisson gain a: variance += a * linear signal. 5e-4 is a high-ISO phone (sigma 0.016 at
    # mid-grey, linear); 1e-2 taught the network to denoise so hard it lost 1 dB on clean photos.
    shot_noise: float = 0.0005
    highlights: float = 0.25  # share of images whose highlights are boosted (gain 1.5-4) before clipping
    jpeg: float = 0.3  # share of images whose blurred input is JPEG re-compressed (quality 60-95)


def uniform(n: int, lo: float, hi: float, g: torch.Generator) -> Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def path_lengths(n: int, lengths: tuple[float, float], g: torch.Generator, still: float = 0.0) -> Tensor:
    """Half uniform, half log-uniform in [lo, hi] pixels; a `still` share of 0 (the photo left sharp).

    Without still samples the network only ever sees blur and sharpens whatever it is given, which
    costs a sharp or nearly sharp photo several dB (docs/TRAINING.md, session 10)."""
    lo, hi = max(lengths[0], 0.5), max(lengths[1], 0.5)
    linear = uniform(n, lo, hi, g)
    log = torch.exp(uniform(n, math.log(lo), math.log(max(hi, lo)), g))
    length = torch.where(torch.rand(n, generator=g) < 0.5, linear, log)
    if still > 0:  # drawn only when asked, so runs without it see exactly the batches they always did
        length = torch.where(torch.rand(n, generator=g) < still, torch.zeros_like(length), length)
    return length


def uneven_time(n: int, t: int, g: torch.Generator) -> Tensor:
    """(n, t) monotone times in [0, 1]: speed varies smoothly (accelerate, decelerate, dwell)."""
    u = torch.linspace(0, 1, t)
    speed = 1 + 0.9 * torch.tanh(torch.randn(n, 3, generator=g) @ torch.stack(
        [torch.sin(math.pi * u), torch.cos(math.pi * u), torch.sin(2 * math.pi * u)]))
    time = torch.cumsum(speed, dim=1)
    return (time - time[:, :1]) / (time[:, -1:] - time[:, :1]).clamp_min(1e-8)


def _poly(n: int, s: Tensor, g: torch.Generator) -> Tensor:
    coeffs = torch.randn(n, 3, 2, generator=g)
    t = s - 0.5
    powers = torch.stack([t, t**2, t**3], dim=-1)  # (n, T, 3)
    return torch.einsum("ntk,nkc->ntc", powers, coeffs)


def _walk(n: int, t: int, g: torch.Generator) -> Tensor:
    """Random walk with inertia: velocity keeps its direction, drifts, and sometimes jerks."""
    velocity = torch.randn(n, 2, generator=g)
    points = [torch.zeros(n, 2)]
    jerk_p = uniform(n, 0.0, 0.08, g)
    for _ in range(t - 1):
        jerk = (torch.rand(n, generator=g) < jerk_p)[:, None] * torch.randn(n, 2, generator=g) * 3
        velocity = 0.85 * velocity + 0.35 * torch.randn(n, 2, generator=g) + jerk
        points.append(points[-1] + velocity)
    return torch.stack(points, dim=1)


def _line(n: int, s: Tensor, g: torch.Generator) -> Tensor:
    angle = uniform(n, 0, math.pi, g)
    direction = torch.stack([torch.cos(angle), torch.sin(angle)], dim=-1)
    return s[..., None] * direction[:, None, :]


def _tremor(n: int, s: Tensor, g: torch.Generator) -> Tensor:
    """Half a cycle to two cycles of oscillation (the path folds back, so its extent is a quarter
    to all of its length) around a slow drift."""
    cycles = uniform(n, 0.5, 2.0, g)[:, None]
    phase = uniform(n, 0, 2 * math.pi, g)[:, None]
    amp = torch.randn(n, 1, 2, generator=g)
    drift = torch.randn(n, 1, 2, generator=g) * uniform(n, 0.2, 1.0, g)[:, None, None]
    wobble = torch.sin(2 * math.pi * cycles * s + phase)[..., None] * amp
    return wobble + s[..., None] * drift


def trajectories(family: str, n: int, lengths: Tensor, g: torch.Generator) -> Tensor:
    """(n, PATH_POINTS, 2) pixel offsets in time order, path length `lengths`, time-average zero."""
    t = PATH_POINTS
    s = uneven_time(n, t, g)
    if family == "poly":
        path = _poly(n, s, g)
    elif family == "walk":  # re-timed by interpolating the walk at uneven times
        walk = _walk(n, t, g)
        idx = s * (t - 1)
        lo = idx.floor().long().clamp(max=t - 2)
        frac = (idx - lo)[..., None]
        path = torch.gather(walk, 1, lo[..., None].expand(-1, -1, 2)) * (1 - frac) + \
            torch.gather(walk, 1, (lo + 1)[..., None].expand(-1, -1, 2)) * frac
    elif family == "line":
        path = _line(n, s, g)
    elif family == "tremor":
        path = _tremor(n, s, g)
    else:
        raise ValueError(f"unknown blur family {family!r}; use {', '.join(FAMILIES)}")
    arc = (path[:, 1:] - path[:, :-1]).norm(dim=-1).sum(dim=1).clamp_min(1e-8)
    path = path * (lengths / arc)[:, None, None]
    return path - path.mean(dim=1, keepdim=True)


def psf(paths: Tensor, size: int) -> Tensor:
    """(n, T, 2) offsets -> (n, size, size) kernels summing to 1, centred at (size-1)/2 (bilinear splat)."""
    n, t, _ = paths.shape
    c = (size - 1) / 2
    xy = (paths + c).clamp(0, size - 1.001)
    x0, y0 = xy[..., 0].floor(), xy[..., 1].floor()
    fx, fy = xy[..., 0] - x0, xy[..., 1] - y0
    kernel = torch.zeros(n, size * size)
    for dx, dy, w in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        index = ((y0 + dy) * size + (x0 + dx)).long()
        kernel.scatter_add_(1, index, w / t)
    return kernel.view(n, size, size)


def convolve_valid(images: Tensor, kernels: Tensor) -> Tensor:
    """(n, C, H, W) * (n, K, K) per image, by FFT, keeping the valid (H-K+1, W-K+1) region."""
    h, w = images.shape[-2:]
    k = kernels.shape[-1]
    spectrum = torch.fft.rfft2(images, s=(h, w)) * torch.fft.rfft2(kernels, s=(h, w))[:, None]
    full = torch.fft.irfft2(spectrum, s=(h, w))
    return full[..., k - 1:, k - 1:]


def _rotate(linear: Tensor, lengths: Tensor, margin: int, g: torch.Generator) -> Tensor:
    """Average of frames rotated about a random centre (with drift); crops the margin away."""
    from kornia.geometry.transform import warp_affine

    n, _, h, w = linear.shape
    s = uneven_time(n, ROTATE_FRAMES, g)  # (n, F)
    centre = torch.stack([uniform(n, -w, 2 * w, g), uniform(n, -h, 2 * h, g)], dim=-1)  # may lie outside
    radius = (torch.stack([torch.tensor([w / 2, h / 2])] * n) - centre).norm(dim=-1).clamp_min(h / 4)
    drift = _line(n, s, g) * uniform(n, 0.0, 0.3, g)[:, None, None] * lengths[:, None, None]
    angle = (s - s.mean(dim=1, keepdim=True)) * (lengths / radius)[:, None]
    drift = drift - drift.mean(dim=1, keepdim=True)
    cos, sin = torch.cos(angle), torch.sin(angle)  # (n, F)
    rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], dim=-2)  # (n, F, 2, 2)
    # only the inner (h - 2m, w - 2m) region is kept, so only it is rendered (3x faster): shift by -m
    offset = centre[:, None] - (rot @ centre[:, None, :, None])[..., 0] + drift - margin  # (n, F, 2)
    matrices = torch.cat([rot, offset[..., None]], dim=-1)  # (n, F, 2, 3)
    kept = (h - 2 * margin, w - 2 * margin)
    total = torch.zeros(n, linear.shape[1], *kept)
    for i in range(ROTATE_FRAMES):  # one frame at a time: a (n x F)-image batch is slower (cache)
        total += warp_affine(linear, matrices[:, i], kept, mode="bilinear", padding_mode="reflection",
                             align_corners=True)
    return total / ROTATE_FRAMES


def srgb_to_linear(x: Tensor) -> Tensor:
    """sRGB [0, 1] -> linear light; 8-bit input by a 256-entry table (10x faster on a batch of crops)."""
    if x.dtype == torch.uint8:
        return _LINEAR_OF_8BIT[x.long()]
    return torch.where(x <= 0.04045, x / 12.92, ((x.clamp_min(0) + 0.055) / 1.055) ** 2.4)


_LINEAR_OF_8BIT = srgb_to_linear(torch.arange(256, dtype=torch.float32) / 255.0)  # the table, built once


def linear_to_srgb(x: Tensor) -> Tensor:
    x = x.clamp(0, 1)
    return torch.where(x <= 0.0031308, 12.92 * x, 1.055 * x.clamp_min(1e-8) ** (1 / 2.4) - 0.055)


def jpeg(image: Tensor, quality: int) -> Tensor:
    """(3, H, W) float [0, 1] through an 8-bit JPEG encode/decode at `quality`."""
    array = (image.permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "JPEG", quality=quality)
    decoded = np.asarray(Image.open(buffer).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(decoded).permute(2, 0, 1)


def margin_for(max_length: float) -> int:
    """Border a crop needs around it so every pixel's blur comes from real image content."""
    return int(math.ceil(max_length)) + 2


def expose(sharp: Tensor, realism: Realism, g: torch.Generator) -> Tensor:
    """sRGB crops -> the linear-light scene, a share of them with highlights brighter than the sensor holds."""
    n = sharp.shape[0]
    linear = srgb_to_linear(sharp if sharp.dtype == torch.uint8 else sharp.float())
    gain = torch.where(torch.rand(n, generator=g) < realism.highlights, uniform(n, 1.5, 4.0, g), torch.ones(n))
    # boost only what is already near white, so a lamp becomes brighter than the sensor can hold
    return linear + (gain[:, None, None, None] - 1) * (linear - 0.7).clamp_min(0) / 0.3


def finish(out: Tensor, target: Tensor, realism: Realism, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """Linear (blurred, target) -> sRGB, the blurred one through the sensor: clipping,
    Poisson-Gaussian noise and a share of JPEG re-compression."""
    n = out.shape[0]
    a = uniform(n, 0, realism.shot_noise, g)[:, None, None, None]
    shot = torch.randn(out.shape, generator=g) * (a * out.clamp(0, 1)).sqrt()
    blurred = linear_to_srgb(out + shot)
    sigma = uniform(n, 0, realism.noise, g)[:, None, None, None]
    blurred = (blurred + sigma * torch.randn(blurred.shape, generator=g)).clamp(0, 1)
    compress = torch.rand(n, generator=g) < realism.jpeg
    quality = torch.randint(60, 96, (n,), generator=g)
    for i in compress.nonzero().flatten().tolist():
        blurred[i] = jpeg(blurred[i], int(quality[i]))
    return blurred, linear_to_srgb(target.clamp(0, 1))


def inner_size(sharp: Tensor, max_length: float) -> tuple[int, int, int]:
    """(margin, H, W) of the region a blur of paths up to `max_length` px leaves of a crop."""
    hh, ww = sharp.shape[-2:]
    m = margin_for(max_length)
    h, w = hh - 2 * m, ww - 2 * m
    if h < 1 or w < 1:
        raise ValueError(f"crops of {hh}x{ww} are too small for a {m} px blur margin")
    return m, h, w


def blur(sharp: Tensor, families: tuple[str, ...], lengths: tuple[float, float], g: torch.Generator,
         realism: Realism = Realism(), still: float = 0.0) -> tuple[Tensor, Tensor]:
    """(n, 3, H+2m, W+2m) sharp sRGB CPU crops ([0, 1] float or uint8) -> (blurred, target), each
    (n, 3, H, W) float.

    m = `margin_for(lengths[1])`; each image gets a family drawn from `families`, and a `still` share
    no blur at all (only the camera effects of `realism`).
    """
    n = sharp.shape[0]
    m, h, w = inner_size(sharp, lengths[1])
    length = path_lengths(n, lengths, g, still)
    pick = torch.randint(len(families), (n,), generator=g)
    scene = expose(sharp, realism, g)
    out = torch.empty(n, 3, h, w)
    for f, family in enumerate(families):
        idx = (pick == f).nonzero().flatten()
        if len(idx) == 0:
            continue
        if family == "rotate":
            out[idx] = _rotate(scene[idx], length[idx], m, g)
        else:
            kernels = psf(trajectories(family, len(idx), length[idx], g), 2 * m + 1)
            out[idx] = convolve_valid(scene[idx], kernels)
    return finish(out, scene[..., m:m + h, m:m + w], realism, g)
