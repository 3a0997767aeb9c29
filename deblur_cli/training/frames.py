"""Blur as GOPRO and REDS make it: many sharp frames of a moving camera, averaged.

Why a second renderer: every family of `shake.py` shares one construction (a path splatted into a
kernel and applied by FFT, or 25 rotations), one noise model and a target at the blur's centroid.
A model trained on it alone learned that renderer: +0.8 dB on its own blur, +0.2 dB on real camera
blur. Real-blur datasets are made by averaging consecutive frames of a high-speed video; this
module renders the same thing from a still photo:

* a smooth random camera motion: translation, in-plane rotation, zoom and a little perspective,
  one homography per frame, sampled densely in time at uneven speed (`shake.uneven_time`);
* every frame a sub-pixel (bilinear) warp of the photo, averaged in linear light, or, for a share
  of the samples, in gamma-encoded sRGB as GOPRO's plain `blur` folders were made;
* for a share of the samples a second layer (another crop under a smooth random matte) that moves
  along its own path: objects moving on their own, near things smearing more than far ones;
* the target is the middle frame (GOPRO's convention, scored fairly by `msdn eval --align`) or the
  path's time-average (`target="mean"`): the reference frame is the identity warp, so the target is
  the unwarped crop itself.

Path families: ``glide`` (a cubic sweep of every motion parameter) and ``jitter`` (a random walk
with inertia) train; ``bob`` (a walker's gait: vertical bob, sway, roll and a push forward) is held
out. The post-processing (clipped highlights, noise, JPEG) is `shake.py`'s, drawn in the same order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from deblur_cli.training import shake

TRAIN_FAMILIES = ("glide", "jitter")
HELD_OUT_FAMILIES = ("bob",)
FAMILIES = TRAIN_FAMILIES + HELD_OUT_FAMILIES
TARGETS = ("middle", "mean")
R_REF = 128.0  # rotation, zoom and perspective are in pixels of displacement at this radius
FRAME_SPACING = 2.0  # px between frames along the longest path: bilinear warps and sensor noise hide the steps
MIN_FRAMES, MAX_FRAMES = 9, 41
# (tx, ty, rotation, zoom, perspective x, perspective y): how much of the motion each part carries
WEIGHTS = torch.tensor([1.0, 1.0, 0.35, 0.2, 0.1, 0.1])


@dataclass(frozen=True)
class FrameMix:
    """How much of each training batch this renderer makes, and how."""

    share: float = 0.0  # of each batch (the rest: shake.py's families)
    families: tuple[str, ...] = TRAIN_FAMILIES
    layers: float = 0.3  # share of samples with a second, independently moving layer
    gamma: float = 0.5  # share of samples averaged in gamma-encoded sRGB instead of linear light
    target: str = "middle"  # or "mean": the time-average of the path is the sharp reference


def frame_count(max_length: float) -> int:
    """An odd number of frames (a middle frame exists) about FRAME_SPACING px apart on the longest path."""
    count = int(math.ceil(max_length / FRAME_SPACING)) + 1
    count = min(max(count, MIN_FRAMES), MAX_FRAMES)
    return count + 1 - count % 2


def _glide(n: int, s: Tensor, g: torch.Generator) -> Tensor:
    t = (s - 0.5)[..., None]  # (n, F, 1)
    coeffs = torch.randn(n, 3, 6, generator=g)
    return t * coeffs[:, None, 0] + t**2 * coeffs[:, None, 1] + t**3 * coeffs[:, None, 2]


def _jitter(n: int, s: Tensor, g: torch.Generator) -> Tensor:
    """A random walk with inertia per parameter, read at the uneven times `s`."""
    steps = 32
    velocity = torch.randn(n, 6, generator=g)
    points = [torch.zeros(n, 6)]
    for _ in range(steps - 1):
        velocity = 0.8 * velocity + 0.45 * torch.randn(n, 6, generator=g)
        points.append(points[-1] + velocity)
    walk = torch.stack(points, dim=1)  # (n, steps, 6)
    idx = s * (steps - 1)
    lo = idx.floor().long().clamp(max=steps - 2)
    frac = (idx - lo)[..., None]
    gather = lambda i: torch.gather(walk, 1, i[..., None].expand(-1, -1, 6))  # noqa: E731
    return gather(lo) * (1 - frac) + gather(lo + 1) * frac


def _bob(n: int, s: Tensor, g: torch.Generator) -> Tensor:
    """A walker's camera: 1-2.5 steps of vertical bob, sway and roll at half that rate, a push forward."""
    steps = shake.uniform(n, 1.0, 2.5, g)[:, None]
    phase = shake.uniform(n, 0, 2 * math.pi, g)[:, None]
    bob = torch.sin(2 * math.pi * steps * s + phase) * shake.uniform(n, 0.5, 1.5, g)[:, None]
    sway = torch.sin(math.pi * steps * s + phase / 2) * shake.uniform(n, 0.2, 1.0, g)[:, None]
    roll = sway * shake.uniform(n, -1.0, 1.0, g)[:, None]
    push = s * shake.uniform(n, 0.0, 1.5, g)[:, None]
    drift = s[..., None] * torch.randn(n, 1, 2, generator=g) * 0.5
    zeros = torch.zeros_like(s)
    return torch.stack([sway + drift[..., 0], bob + drift[..., 1], roll, push, zeros, zeros], dim=-1)


PATHS = {"glide": _glide, "jitter": _jitter, "bob": _bob}


def homographies(params: Tensor) -> Tensor:
    """(..., 6) motion parameters -> (..., 3, 3) maps from output to source pixel offsets about the centre."""
    tx, ty, rot, zoom, px, py = params.unbind(-1)
    angle, scale = rot / R_REF, 1 + zoom / R_REF
    cos, sin = scale * torch.cos(angle), scale * torch.sin(angle)
    rows = [torch.stack([cos, -sin, tx], -1), torch.stack([sin, cos, ty], -1),
            torch.stack([px / R_REF**2, py / R_REF**2, torch.ones_like(tx)], -1)]
    return torch.stack(rows, dim=-2)


def _apply(h: Tensor, points: Tensor) -> Tensor:
    """(..., 3, 3) homographies applied to (P, 2) points -> (..., P, 2)."""
    xyz = torch.cat([points, torch.ones(points.shape[0], 1)], dim=-1)  # (P, 3)
    out = xyz @ h.transpose(-1, -2)
    return out[..., :2] / out[..., 2:].clamp_min(1e-3)


def motion(family: str, n: int, frames: int, lengths: Tensor, radius: float, target: str,
           g: torch.Generator) -> Tensor:
    """(n, frames, 6) motion parameters whose longest probe path (the centre and four points at
    `radius`) is `lengths` px, with the reference frame (middle, or the mean) at the identity."""
    if family not in PATHS:
        raise ValueError(f"unknown frame family {family!r}; use {', '.join(FAMILIES)}")
    s = shake.uneven_time(n, frames, g)
    share = torch.ones(n, 1, 6)
    share[..., 2:] = shake.uniform(n, 0.3, 1.0, g)[:, None, None]  # each sample its own share of rotation etc.
    params = PATHS[family](n, s, g) * WEIGHTS * share
    params = params - (params[:, frames // 2 : frames // 2 + 1] if target == "middle" else params.mean(1, keepdim=True))
    r = radius / math.sqrt(2)
    probes = torch.tensor([[0.0, 0.0], [r, r], [-r, r], [r, -r], [-r, -r]])
    track = _apply(homographies(params), probes)  # (n, F, 5, 2)
    arc = (track[:, 1:] - track[:, :-1]).norm(dim=-1).sum(dim=1).amax(dim=-1).clamp_min(1e-6)  # (n,)
    return params * (lengths / arc)[:, None, None]


def _grids(h: Tensor, size: tuple[int, int], margin: int) -> Tensor:
    """(n, 3, 3) homographies -> (n, H-2m, W-2m, 2) grid_sample grids over the kept region."""
    hh, ww = size
    cy, cx = (hh - 1) / 2, (ww - 1) / 2
    ys = torch.arange(margin, hh - margin, dtype=torch.float32) - cy
    xs = torch.arange(margin, ww - margin, dtype=torch.float32) - cx
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    points = torch.stack([xx.flatten(), yy.flatten()], dim=-1)
    src = _apply(h, points)  # (n, P, 2)
    norm = torch.stack([(src[..., 0] + cx) / (ww - 1) * 2 - 1, (src[..., 1] + cy) / (hh - 1) * 2 - 1], dim=-1)
    return norm.view(h.shape[0], len(ys), len(xs), 2)


def _warp(image: Tensor, h: Tensor, margin: int) -> Tensor:
    grid = _grids(h, image.shape[-2:], margin)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="reflection", align_corners=True)


def _matte(n: int, size: tuple[int, int], g: torch.Generator) -> Tensor:
    """(n, 1, H, W) smooth random masks covering roughly 15-50% of the frame, soft to hard edged."""
    field = F.interpolate(torch.randn(n, 1, 4, 4, generator=g), size=size, mode="bicubic", align_corners=False)
    level = shake.uniform(n, 0.0, 1.0, g)[:, None, None, None]
    sharpness = shake.uniform(n, 3.0, 20.0, g)[:, None, None, None]
    return torch.sigmoid(sharpness * (field - level))


def render(scene: Tensor, families: tuple[str, ...], lengths: Tensor, margin: int, g: torch.Generator,
           layers: float = 0.3, gamma: float = 0.5, target: str = "middle") -> tuple[Tensor, Tensor]:
    """(n, 3, H+2m, W+2m) linear-light scene -> (blurred, target) linear (n, 3, H, W): frames averaged."""
    n, _, hh, ww = scene.shape
    kept = (hh - 2 * margin, ww - 2 * margin)
    frames = frame_count(float(lengths.max()))
    radius = min(min(kept) / 2, R_REF)
    pick = torch.randint(len(families), (n,), generator=g)
    params = torch.empty(n, frames, 6)
    for f, family in enumerate(families):
        idx = (pick == f).nonzero().flatten()
        if len(idx):
            params[idx] = motion(family, len(idx), frames, lengths[idx], radius, target, g)
    layered = torch.rand(n, generator=g) < layers
    in_srgb = (torch.rand(n, generator=g) < gamma)[:, None, None, None]
    fg_params = torch.empty(n, frames, 6)
    fg_lengths = shake.uniform(n, 0.0, 1.0, g) * lengths
    for f, family in enumerate(families):
        idx = (pick == f).nonzero().flatten()
        if len(idx):
            fg_params[idx] = motion(family, len(idx), frames, fg_lengths[idx], radius, target, g)
    matte = _matte(n, (hh, ww), g) * layered[:, None, None, None]
    foreground = scene.flip(0) if n > 1 else scene.flip(-1)
    sharp = matte * foreground + (1 - matte) * scene  # the reference frame: both layers at the identity
    cam, obj = homographies(params), homographies(fg_params)
    total = torch.zeros(n, 3, *kept)
    for i in range(frames):
        background = _warp(scene, cam[:, i], margin)
        if layered.any():
            moved = _warp(torch.cat([foreground, matte], dim=1), obj[:, i], margin)
            alpha = moved[:, 3:]
            background = alpha * moved[:, :3] + (1 - alpha) * background
        total += torch.where(in_srgb, shake.linear_to_srgb(background), background)
    mean = total / frames
    blurred = torch.where(in_srgb, shake.srgb_to_linear(mean), mean)
    return blurred, sharp[..., margin:margin + kept[0], margin:margin + kept[1]]


def blur(sharp: Tensor, families: tuple[str, ...], lengths: tuple[float, float], g: torch.Generator,
         realism: shake.Realism = shake.Realism(), layers: float = 0.3, gamma: float = 0.5,
         target: str = "middle", still: float = 0.0) -> tuple[Tensor, Tensor]:
    """`shake.blur`'s contract (sRGB crops with a margin in, sRGB (blurred, target) out), frames averaged."""
    margin, _, _ = shake.inner_size(sharp, lengths[1])
    length = shake.path_lengths(sharp.shape[0], lengths, g, still)
    scene = shake.expose(sharp, realism, g)
    out, reference = render(scene, families, length, margin, g, layers, gamma, target)
    return shake.finish(out, reference, realism, g)
