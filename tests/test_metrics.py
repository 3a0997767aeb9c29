"""metrics.psnr / metrics.ssim against scikit-image, the reference published tables use."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage import data
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from deblur_cli.evaluation.metrics import center_crop, crop_border, psnr, quantize, ssim


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(1,3,H,W) [0,1] -> HxWx3 uint8, the way the image would be saved."""
    return np.clip(np.round(x[0].permute(1, 2, 0).double().numpy() * 255), 0, 255).astype(np.uint8)


def ref_psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(peak_signal_noise_ratio(to_uint8(b), to_uint8(a), data_range=255))


def ref_ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(structural_similarity(to_uint8(a), to_uint8(b), gaussian_weights=True, sigma=1.5,
                                       use_sample_covariance=False, data_range=255, channel_axis=-1))


def photo(name: str) -> torch.Tensor:
    return torch.from_numpy(getattr(data, name)()).permute(2, 0, 1)[None].float() / 255


def horizontal_blur(x: torch.Tensor, length: int = 9) -> torch.Tensor:
    k = torch.full((3, 1, 1, length), 1.0 / length)
    return torch.nn.functional.conv2d(torch.nn.functional.pad(x, (length // 2, length // 2, 0, 0), mode="replicate"), k, groups=3)


@pytest.mark.parametrize("name", ["astronaut", "chelsea", "coffee"])
def test_real_photos_match_skimage(name: str) -> None:
    sharp = photo(name)
    blurred = horizontal_blur(sharp)
    assert psnr(blurred, sharp).item() == pytest.approx(ref_psnr(blurred, sharp), abs=1e-4)
    assert ssim(blurred, sharp).item() == pytest.approx(ref_ssim(blurred, sharp), abs=1e-4)
    # a blur this strong must actually cost quality, or the comparison above is vacuous
    assert ssim(blurred, sharp).item() < 0.95


def test_batch_gives_per_image_values() -> None:
    g = torch.Generator().manual_seed(0)
    target = torch.rand(3, 3, 40, 52, generator=g)
    noise = torch.tensor([0.02, 0.1, 0.3]).view(3, 1, 1, 1)
    pred = (target + noise * torch.randn(target.shape, generator=g)).clamp(0, 1)
    p, s = psnr(pred, target), ssim(pred, target)
    assert p.shape == s.shape == (3,)
    for i in range(3):
        assert p[i].item() == pytest.approx(ref_psnr(pred[i:i + 1], target[i:i + 1]), abs=1e-4)
        assert s[i].item() == pytest.approx(ref_ssim(pred[i:i + 1], target[i:i + 1]), abs=1e-4)
    assert p[0] > p[1] > p[2] and s[0] > s[1] > s[2]


def test_identical_images() -> None:
    x = torch.rand(1, 3, 20, 20)
    assert math.isinf(psnr(x, x).item())
    assert ssim(x, x).item() == pytest.approx(1.0, abs=1e-12)


def test_quantisation_is_what_is_scored() -> None:
    """Differences below half an 8-bit step vanish, as they do in the saved PNG."""
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    nudged = (quantize(x) / 255 + 0.4 / 255).float()
    assert math.isinf(psnr(nudged, x).item())
    assert quantize(torch.tensor([-0.5, 0.2, 1.7])).tolist() == [0.0, 51.0, 255.0]  # clamped, rounded


def test_known_psnr_value() -> None:
    a = torch.zeros(1, 3, 8, 8)
    b = torch.full((1, 3, 8, 8), 10 / 255)
    assert psnr(a, b).item() == pytest.approx(10 * math.log10(255**2 / 100), abs=1e-9)


def test_shape_errors() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        psnr(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 9))
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.zeros(1, 3, 10, 30), torch.zeros(1, 3, 10, 30))


def test_crops() -> None:
    x = torch.arange(10 * 12.0).view(1, 1, 10, 12)
    assert torch.equal(crop_border(x, 2), x[..., 2:8, 2:10])
    assert torch.equal(crop_border(x, 0), x)
    assert torch.equal(center_crop(x, 4), x[..., 3:7, 4:8])
    with pytest.raises(ValueError):
        center_crop(x, 11)
    with pytest.raises(ValueError):
        crop_border(x, 5)


@settings(max_examples=25, deadline=None)
@given(h=st.integers(11, 48), w=st.integers(11, 48), seed=st.integers(0, 2**31 - 1),
       noise=st.floats(0.0, 0.5))
def test_random_sizes_match_skimage(h: int, w: int, seed: int, noise: float) -> None:
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(1, 3, h, w, generator=g)
    pred = (target + noise * torch.randn(target.shape, generator=g)).clamp(0, 1)
    assert ssim(pred, target).item() == pytest.approx(ref_ssim(pred, target), abs=1e-4)
    p = psnr(pred, target).item()
    if not math.isinf(p):
        assert p == pytest.approx(ref_psnr(pred, target), abs=1e-4)
