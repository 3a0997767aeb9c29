"""DeblurGAN's generator (Kupyn et al., CVPR 2018): the baseline the MSDN paper improves on.

Read top to bottom as the DeblurGAN paper describes it (a ResNet generator after Johnson et al.):

* a 7x7 convolution to 64 channels at full resolution, instance norm, ReLU;
* two strided 3x3 convolutions down to 256 channels at a quarter of the resolution;
* nine residual blocks: 3x3 conv -> instance norm -> ReLU -> dropout 0.5 -> 3x3 conv -> instance norm,
  added to the block's input;
* two transposed 3x3 convolutions back up to 64 channels at full resolution;
* a 7x7 convolution to 3 channels, tanh, and the global residual ("ResOut"): the network predicts a
  correction of the blurred input.

DeblurGAN works on images in [-1, 1] and clamps input + tanh output there; this module takes and
returns [0, 1] like `MSDN`, which is the same arithmetic: [0, 1] input x, network input 2x - 1,
output clamp(x + tanh(y) / 2, 0, 1). 11.38 M parameters at the defaults (pinned in the tests).
Convolutions carry biases and instance norm has no affine parameters, as in the original code.

One departure: the last convolution starts at zero, so the untrained generator is the identity (as
MSDN's head does). The original initialised it randomly (normal, std 0.02), so its first outputs
were the input plus noise; in a comparison at equal CPU time the zero start keeps the baseline from
spending its first steps undoing that.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn

from deblur_cli.nets.model import pad_to_multiple, typed_values

ARCH = "deblurgan"


@dataclass(frozen=True)
class DeblurGANConfig:
    """Everything needed to rebuild the generator; saved with every checkpoint and weight file."""

    in_channels: int = 3
    channels: int = 64  # after the first convolution; x2 per downsampling
    downsamplings: int = 2
    blocks: int = 9  # residual blocks at the lowest resolution
    dropout: float = 0.5

    def __post_init__(self) -> None:
        if not (1 <= self.channels <= 512 and 0 <= self.downsamplings <= 4 and 1 <= self.blocks <= 64):
            raise ValueError("DeblurGAN needs channels 1..512, downsamplings 0..4 and blocks 1..64")

    @property
    def size_multiple(self) -> int:
        """Sides are padded to a multiple of this so every stride-2 layer is exact."""
        return 2**self.downsamplings

    def to_dict(self) -> dict[str, Any]:
        return {"arch": ARCH, **asdict(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeblurGANConfig:
        values = {k: v for k, v in data.items() if k != "arch"}
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown DeblurGAN config keys: {', '.join(unknown)}")
        return cls(**typed_values(cls(), values))


def conv_norm_relu(c_in: int, c_out: int, kernel: int, stride: int = 1) -> nn.Sequential:
    pad = kernel // 2
    if stride == 1:  # reflection padding at full stride, as the original
        return nn.Sequential(nn.ReflectionPad2d(pad), nn.Conv2d(c_in, c_out, kernel),
                             nn.InstanceNorm2d(c_out), nn.ReLU(inplace=True))
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=pad),
                         nn.InstanceNorm2d(c_out), nn.ReLU(inplace=True))


class ResBlock(nn.Module):
    """(B, c, h, w) -> (B, c, h, w): x + [pad, conv3x3, IN, ReLU, dropout, pad, conv3x3, IN](x)."""

    def __init__(self, channels: int, dropout: float) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), nn.InstanceNorm2d(channels),
            nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), nn.InstanceNorm2d(channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class DeblurGAN(nn.Module):
    """(B, 3, H, W) in [0, 1] -> (B, 3, H, W) in [0, 1], for any H, W (padded to `size_multiple`)."""

    def __init__(self, config: DeblurGANConfig | None = None) -> None:
        super().__init__()
        cfg = self.config = config or DeblurGANConfig()
        self.size_multiple = cfg.size_multiple
        c = cfg.channels
        # (B, 3, H, W) -> (B, 64, H, W)
        layers: list[nn.Module] = [conv_norm_relu(cfg.in_channels, c, 7)]
        # -> (B, 128, H/2, W/2) -> (B, 256, H/4, W/4)
        for _ in range(cfg.downsamplings):
            layers.append(conv_norm_relu(c, 2 * c, 3, stride=2))
            c *= 2
        # nine residual blocks at (B, 256, H/4, W/4)
        layers += [ResBlock(c, cfg.dropout) for _ in range(cfg.blocks)]
        # -> (B, 128, H/2, W/2) -> (B, 64, H, W)
        for _ in range(cfg.downsamplings):
            layers += [nn.ConvTranspose2d(c, c // 2, 3, stride=2, padding=1, output_padding=1),
                       nn.InstanceNorm2d(c // 2), nn.ReLU(inplace=True)]
            c //= 2
        self.body = nn.Sequential(*layers)
        # (B, 64, H, W) -> (B, 3, H, W), tanh; zero start = identity (see the module docstring)
        self.head = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(c, cfg.in_channels, 7))
        nn.init.zeros_(self.head[1].weight)
        nn.init.zeros_(self.head[1].bias)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        padded = pad_to_multiple(x, self.size_multiple)
        residual = torch.tanh(self.head(self.body(2 * padded - 1))) / 2  # DeblurGAN's [-1, 1] residual, halved
        return (padded + residual)[..., :h, :w].clamp(0.0, 1.0)
