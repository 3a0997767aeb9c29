"""Synthetic camera shake: trajectory families, PSF rendering, realism and determinism."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from deblur_cli.training import shake

from conftest import gen
from conftest import photo_crop as photo

NO_EFFECTS = shake.Realism(noise=0.0, shot_noise=0.0, highlights=0.0, jpeg=0.0)


def high_freq_energy(x: torch.Tensor) -> float:
    lap = torch.tensor([[0.0, 1, 0], [1, -4, 1], [0, 1, 0]]).view(1, 1, 3, 3).repeat(3, 1, 1, 1)
    return float(F.conv2d(x, lap, groups=3).pow(2).mean())


@pytest.mark.parametrize("family", ["poly", "walk", "line", "tremor"])
def test_trajectories_have_the_asked_length_and_zero_mean(family: str) -> None:
    lengths = torch.tensor([3.0, 17.5, 60.0])
    path = shake.trajectories(family, 3, lengths, gen(1))
    assert path.shape == (3, shake.PATH_POINTS, 2)
    arc = (path[:, 1:] - path[:, :-1]).norm(dim=-1).sum(dim=1)
    torch.testing.assert_close(arc, lengths, rtol=1e-4, atol=1e-4)
    assert path.mean(dim=1).abs().max() < 1e-4  # centred on the time average (the blur's centroid)
    assert path.abs().max() <= 60.0  # within the margin a 60 px path is given


def test_path_lengths_span_the_range() -> None:
    lengths = shake.path_lengths(4000, (2.0, 60.0), gen(0))
    assert lengths.min() >= 2.0 and lengths.max() <= 60.0
    assert (lengths > 30).float().mean() > 0.15 and (lengths < 8).float().mean() > 0.2  # long and short both common


def test_psf_splat_is_normalised_and_centred() -> None:
    kernel = shake.psf(torch.zeros(1, 10, 2), 7)[0]
    assert kernel[3, 3] == pytest.approx(1.0) and kernel.sum() == pytest.approx(1.0)
    half = shake.psf(torch.tensor([[[0.5, 0.0]]]), 7)[0]  # half a pixel right: shared by two taps
    assert half[3, 3] == pytest.approx(0.5) and half[3, 4] == pytest.approx(0.5)
    line = shake.psf(shake.trajectories("line", 4, torch.full((4,), 20.0), gen(3)), 2 * 22 + 1)
    torch.testing.assert_close(line.sum(dim=(1, 2)), torch.ones(4))
    ys, xs = torch.meshgrid(torch.arange(45.0), torch.arange(45.0), indexing="ij")
    for k in line:  # the kernel's centre of mass is its centre: the target is not shifted
        assert float((k * xs).sum()) == pytest.approx(22.0, abs=1e-3)
        assert float((k * ys).sum()) == pytest.approx(22.0, abs=1e-3)


def test_convolve_valid_matches_conv2d() -> None:
    images = torch.rand(2, 3, 30, 34, generator=gen(4))
    kernels = torch.rand(2, 7, 7, generator=gen(5))
    out = shake.convolve_valid(images, kernels)
    for i in range(2):  # conv2d is a correlation: flip the kernel for a convolution
        ref = F.conv2d(images[i:i + 1].transpose(0, 1), kernels[i].flip(-1, -2)[None, None]).transpose(0, 1)
        torch.testing.assert_close(out[i:i + 1], ref, atol=1e-4, rtol=1e-4)


def test_srgb_round_trip() -> None:
    x = torch.rand(1000, generator=gen(6))
    torch.testing.assert_close(shake.linear_to_srgb(shake.srgb_to_linear(x)), x, atol=1e-6, rtol=0)


@pytest.mark.parametrize("family", shake.FAMILIES)
def test_every_family_blurs_and_keeps_the_target(family: str) -> None:
    m = shake.margin_for(20.0)
    sharp = photo(64 + 2 * m, n=3)
    blurred, target = shake.blur(sharp, (family,), (12.0, 20.0), gen(7), NO_EFFECTS)
    assert blurred.shape == target.shape == (3, 3, 64, 64)
    assert blurred.min() >= 0 and blurred.max() <= 1
    torch.testing.assert_close(target, sharp[..., m:-m, m:-m], atol=1e-5, rtol=0)
    for i in range(3):
        assert high_freq_energy(blurred[i:i + 1]) < 0.6 * high_freq_energy(target[i:i + 1])


@pytest.mark.parametrize("family", ["line", "rotate"])
def test_zero_length_without_effects_is_identity(family: str) -> None:
    m = shake.margin_for(0.0)
    sharp = photo(32 + 2 * m)
    blurred, target = shake.blur(sharp, (family,), (0.0, 0.0), gen(8), NO_EFFECTS)
    # a 0.5 px streak (the shortest path) and the sRGB round trip: nearly unchanged, and not shifted
    error = (blurred - target).abs().mean()
    assert error < 0.01
    shifted = shake.blur(sharp.roll(m, -1), (family,), (0.0, 0.0), gen(8), NO_EFFECTS)[0]
    assert error < 0.5 * (shifted - target).abs().mean()  # a margin-sized shift would show


def test_still_share_leaves_that_share_sharp_and_zero_draws_nothing() -> None:
    plain = shake.path_lengths(4000, (2.0, 60.0), gen(0))
    assert torch.equal(shake.path_lengths(4000, (2.0, 60.0), gen(0), still=0.0), plain)  # old runs unchanged
    mixed = shake.path_lengths(4000, (2.0, 60.0), gen(0), still=0.25)
    assert float((mixed == 0).float().mean()) == pytest.approx(0.25, abs=0.03)
    assert torch.equal(mixed[mixed > 0], plain[mixed > 0])  # the others keep their lengths


@pytest.mark.parametrize("family", shake.FAMILIES)
def test_still_inputs_are_the_target_itself(family: str) -> None:
    m = shake.margin_for(20.0)
    sharp = photo(48 + 2 * m, n=2)
    blurred, target = shake.blur(sharp, (family,), (12.0, 20.0), gen(12), NO_EFFECTS, still=1.0)
    torch.testing.assert_close(blurred, target, atol=1e-4, rtol=0)  # only the sRGB round trip


def test_uint8_crops_blur_exactly_as_their_float_values() -> None:
    sharp = (photo(96, n=4) * 255).round().to(torch.uint8)
    a = shake.blur(sharp, shake.TRAIN_FAMILIES, (2.0, 30.0), gen(11))
    b = shake.blur(sharp.float() / 255.0, shake.TRAIN_FAMILIES, (2.0, 30.0), gen(11))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_blur_is_deterministic_given_the_generator() -> None:
    sharp = photo(96, n=4)
    a = shake.blur(sharp, shake.TRAIN_FAMILIES, (2.0, 12.0), gen(9))[0]
    b = shake.blur(sharp, shake.TRAIN_FAMILIES, (2.0, 12.0), gen(9))[0]
    c = shake.blur(sharp, shake.TRAIN_FAMILIES, (2.0, 12.0), gen(10))[0]
    assert torch.equal(a, b) and (a - c).abs().mean() > 1e-3


def test_highlight_boost_makes_clipped_streaks() -> None:
    """A lamp brighter than the sensor holds smears into a streak that stays saturated."""
    m = shake.margin_for(10.0)
    sharp = torch.full((1, 3, 40 + 2 * m, 40 + 2 * m), 0.2)
    sharp[..., 20 + m - 2:20 + m + 2, 20 + m - 2:20 + m + 2] = 1.0
    plain = shake.blur(sharp, ("line",), (10.0, 10.0), gen(11), NO_EFFECTS)[0]
    boosted = shake.blur(sharp, ("line",), (10.0, 10.0), gen(11), shake.Realism(0, 0, 1.0, 0))[0]
    assert (boosted >= 0.999).sum() > (plain >= 0.999).sum()
    assert float(boosted.max()) == pytest.approx(1.0, abs=1e-6)


def test_jpeg_matches_pillow() -> None:
    image = photo(48)[0]
    out = shake.jpeg(image, 70)
    array = (image.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "JPEG", quality=70)
    expected = np.asarray(Image.open(buffer).convert("RGB"), dtype=np.float32) / 255
    torch.testing.assert_close(out.permute(1, 2, 0), torch.from_numpy(expected))


def test_small_crops_are_refused() -> None:
    with pytest.raises(ValueError, match="too small"):
        shake.blur(torch.rand(1, 3, 40, 40), ("line",), (2.0, 30.0), gen(0))


def test_unknown_family() -> None:
    with pytest.raises(ValueError, match="unknown blur family"):
        shake.trajectories("zigzag", 1, torch.ones(1), gen(0))
