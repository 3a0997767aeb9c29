"""Training losses and the PatchGAN critic, each small and separate (DeblurGAN recipe).

- Critic: DeblurGAN's 70x70 PatchGAN (`NLayerDiscriminator`, 3 strided layers, 4x4 kernels,
  LeakyReLU 0.2) with instance norm instead of batch norm: WGAN-GP penalises each sample's
  gradient on its own, which batch norm would couple across the batch. Instance norm keeps
  samples independent, so the penalty stays valid.
- WGAN-GP: critic loss D(fake) - D(real) + 10 * (||grad D(x_hat)|| - 1)^2, generator loss -D(G(x)).
- Content: MSE between VGG-19 conv5_4 features (pre-activation, see vgg.py), weight 100 in train.py;
  L1, Charbonnier or PSNR (per-image log MSE) on pixels for PSNR-oriented training without VGG
  weights; an optional L1 on the 2-D spectrum, which punishes the missing high frequencies that
  pixel losses forgive, and an optional L1 on the image gradients, which punishes a smoothed edge
  or texture in place.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deblur_cli.training.vgg import VGG19Features


class PatchCritic(nn.Module):
    """(B, 3, H, W) in [0, 1] -> (B, 1, h, w) unbounded patch scores (no sigmoid: Wasserstein critic)."""

    def __init__(self, channels: int = 64, layers: int = 3, norm: str = "instance") -> None:
        super().__init__()
        if norm not in ("instance", "none"):
            raise ValueError(f"unknown critic norm {norm!r}")

        def block(c_in: int, c_out: int, stride: int, normed: bool) -> list[nn.Module]:
            mods: list[nn.Module] = [nn.Conv2d(c_in, c_out, 4, stride=stride, padding=2)]
            if normed and norm == "instance":
                mods.append(nn.InstanceNorm2d(c_out, affine=True))
            return mods + [nn.LeakyReLU(0.2, inplace=True)]

        mods = block(3, channels, 2, normed=False)
        c = channels
        for i in range(1, layers):
            c_next = channels * min(2**i, 8)
            mods += block(c, c_next, 2, normed=True)
            c = c_next
        c_next = channels * min(2**layers, 8)
        mods += block(c, c_next, 1, normed=True)
        mods.append(nn.Conv2d(c_next, 1, 4, stride=1, padding=2))
        self.net = nn.Sequential(*mods)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x * 2.0 - 1.0)  # DeblurGAN's critic saw [-1, 1] images


def critic_loss(real_scores: Tensor, fake_scores: Tensor) -> Tensor:
    """Wasserstein critic loss: push real scores up and fake scores down (means over patches and images)."""
    return fake_scores.mean() - real_scores.mean()


def adversarial_loss(fake_scores: Tensor) -> Tensor:
    """The generator's WGAN loss -D(G(x)), the mean patch score negated."""
    return -fake_scores.mean()


def patch_scores(scores: Tensor) -> Tensor:
    """(B, 1, h, w) patch map -> (B,) per-image critic value: the mean, as the Wasserstein estimate uses."""
    return scores.flatten(1).mean(dim=1)


def gradient_penalty(scores: Tensor, x_hat: Tensor, weight: float = 10.0) -> Tensor:
    """WGAN-GP: weight * mean over images of (||d score / d x_hat||_2 - 1)^2.

    `scores` is the critic's output on `x_hat` (points on real-fake lines, requires_grad), passed
    in so the caller can score real, fake and interpolated images in one critic pass. Each image's
    score is its mean patch score and the norm is over the whole image, the textbook penalty
    (Gulrajani et al. 2017). DeblurGAN instead took per-pixel norms over channels of the gradient
    of the *summed* patch map, which penalises a different, resolution-dependent quantity.
    Summing per-image scores before differentiating gives every per-image gradient at once, since
    each score depends only on its own image (the critic has no batch norm).
    """
    (grad,) = torch.autograd.grad(patch_scores(scores).sum(), x_hat, create_graph=True)
    norms = grad.flatten(1).norm(2, dim=1)
    return weight * ((norms - 1.0) ** 2).mean()


def interpolate(real: Tensor, fake: Tensor, alpha: Tensor) -> Tensor:
    """Random points between real and fake images ((B, 1, 1, 1) alpha), ready to differentiate."""
    return (alpha * real.detach() + (1 - alpha) * fake.detach()).requires_grad_(True)


class PerceptualLoss(nn.Module):
    """MSE between VGG-19 conv5_4 features of the prediction and the (gradient-free) target."""

    def __init__(self, vgg: VGG19Features) -> None:
        super().__init__()
        self.vgg = vgg

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        with torch.no_grad():
            target_features = self.vgg(target)
        return F.mse_loss(self.vgg(pred), target_features)


def l1_loss(pred: Tensor, target: Tensor) -> Tensor:
    return (pred - target).abs().mean()


def charbonnier_loss(pred: Tensor, target: Tensor, eps: float = 1e-3) -> Tensor:
    """A differentiable L1: sqrt(d^2 + eps^2), robust like L1 but smooth at zero."""
    return torch.sqrt((pred - target) ** 2 + eps * eps).mean()


def psnr_loss(pred: Tensor, target: Tensor, eps: float = 1e-8) -> Tensor:
    """Mean over images of 10 log10(MSE) (NAFNet's PSNR loss): every image counts in dB.

    A pixel loss averaged over a batch is ruled by its worst-blurred images, where a small net
    gains least; in dB a mild blur's 1 dB counts as much as an extreme blur's, as validation does.
    """
    mse = ((pred.float() - target.float()) ** 2).flatten(1).mean(dim=1)
    return 10.0 * torch.log10(mse + eps).mean()


def fft_l1_loss(pred: Tensor, target: Tensor) -> Tensor:
    """L1 between the real and imaginary parts of the 2-D spectra (MIMO-UNet's frequency loss)."""
    diff = torch.fft.rfft2(pred.float()) - torch.fft.rfft2(target.float())
    return torch.view_as_real(diff).abs().mean()


def gradient_l1_loss(pred: Tensor, target: Tensor) -> Tensor:
    """L1 between forward-difference gradients (kornia's): a smoothed output's edges cost here where
    a pixel loss, averaged over the flat areas, barely notices them."""
    from kornia.filters import spatial_gradient  # kornia is a training extra

    return (spatial_gradient(pred.float(), mode="diff") - spatial_gradient(target.float(), mode="diff")).abs().mean()
