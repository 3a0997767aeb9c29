"""MSDN generator: a multi-scale dense encoder-decoder for motion deblurring (Song & Wu 2019).

The network follows the paper's blocks, read top to bottom:

* dense layer  = conv3x3 s1 -> weight norm -> PReLU -> dropout 0.2, fed the concatenation of the
  block input and every earlier layer output of its block (growth rate k new channels each);
* down layer   = conv1x1 -> weight norm -> PReLU -> dropout 0.2 -> max-pool 2;
* up layer     = transposed conv3x3 s2 -> weight norm -> PReLU;
* skip connections concatenate each encoder level's output with the matching decoder level
  (FC-DenseNet "Tiramisu" style: the decoder upsamples only the *new* features of the block below);
* at the bottleneck, the multi-scale receptive-field module (PSPNet / DCPDN): 4 parallel average
  poolings, each reduced by a 1x1 conv and upsampled back, concatenated with the bottleneck
  features. `pyramid=False` gives the paper's "DN" ablation;
* a global residual as in DeblurGAN: output = clamp(input + predicted residual, 0, 1).

One departure from the paper, for speed: a space-to-depth stem. The image enters through
`pixel_unshuffle(2)` (3xHxW -> 12xH/2xW/2) and leaves through `pixel_shuffle(2)`, so the first
and last dense blocks run on a quarter of the pixels. On 2 CPU cores that is what makes a
1280x720 photo take a few seconds instead of ~16 s; it loses no information (the shuffle is a
lossless reshape) and the full-resolution residual is still predicted per pixel.

Default widths (`MSDNConfig()`): stem 32 channels, growth rate 16, encoder blocks of 4/4/4
layers, bottleneck 4, decoder 4/4/4 (28 dense layers, 3 levels + bottleneck as in the paper):
1.45 M parameters and 4.9 GMACs per 256x256 tile (`torch.utils.flop_counter`, pinned in
tests/test_model.py). Measured on 2 CPU cores with channels_last: ~0.08 s per tile, ~2 s for
the 24 overlapping tiles of a 1280x720 photo. Growth 12 was no faster (oneDNN prefers channel
counts that are multiples of 16) and growth 16 with a 48-channel stem cost 35% more time for
10% more parameters, so growth 16 / stem 32 is the default.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm
from torch.nn.utils.parametrize import remove_parametrizations


@dataclass(frozen=True)
class MSDNConfig:
    """Everything needed to rebuild the generator; saved with every checkpoint and weight file."""

    in_channels: int = 3
    space_to_depth: int = 2  # pixel-unshuffle factor of the stem; 1 = the paper's full-resolution stem
    stem_channels: int = 32
    growth_rate: int = 16
    encoder_layers: tuple[int, ...] = (4, 4, 4)  # dense layers per encoder level, top level first
    bottleneck_layers: int = 4
    decoder_layers: tuple[int, ...] = (4, 4, 4)  # dense layers per decoder level, deepest level first
    pyramid: bool = True  # False = the paper's "DN" ablation
    pyramid_pools: tuple[int, ...] = (2, 4, 8, 16)  # average-pool kernel sizes at the bottleneck
    dropout: float = 0.2
    scales: int = 1  # coarse-to-fine passes of the same weights (SRN-DeblurNet): 1/2^(scales-1) .. full

    def __post_init__(self) -> None:
        if len(self.encoder_layers) != len(self.decoder_layers):
            raise ValueError("encoder_layers and decoder_layers must have one entry per level")
        if self.pyramid and len(self.pyramid_pools) == 0:
            raise ValueError("pyramid=True needs at least one pooling scale")
        if self.space_to_depth < 1 or self.growth_rate < 1 or self.stem_channels < 1:
            raise ValueError("space_to_depth, growth_rate and stem_channels must be positive")
        if not 1 <= self.scales <= 4:
            raise ValueError("scales must be 1..4")

    @property
    def levels(self) -> int:
        return len(self.encoder_layers)

    @property
    def size_multiple(self) -> int:
        """Inputs are padded to a multiple of this so every pooling and upsampling is exact (at every scale)."""
        return self.space_to_depth * 2**self.levels * 2**(self.scales - 1)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MSDNConfig:
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"unknown MSDN config keys: {', '.join(unknown)}")
        # JSON has no tuples: turn lists back into tuples so equality and hashing hold.
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**typed_values(cls(), values))

    @classmethod
    def from_json(cls, text: str) -> MSDNConfig:
        return cls.from_dict(json.loads(text))


def typed_values(defaults: Any, values: dict[str, Any]) -> dict[str, Any]:
    """`values` when each has its default's type (a whole number where the default is one, a tuple of
    them where it is a tuple); else a ValueError naming the key, so a hand-edited config is one clear line."""
    def fits(value: Any, default: Any) -> bool:
        if isinstance(default, bool):
            return isinstance(value, bool)
        if isinstance(default, int):
            return isinstance(value, int) and not isinstance(value, bool)
        if isinstance(default, float):
            return isinstance(value, (int, float)) and not isinstance(value, bool)
        if isinstance(default, tuple):
            return isinstance(value, tuple) and all(fits(v, default[0]) for v in value) if default else True
        return isinstance(value, type(default))

    for key, value in values.items():
        default = getattr(defaults, key)
        if default is not None and not fits(value, default):
            kind = {bool: "true or false", int: "a whole number", float: "a number",
                    tuple: "a list of whole numbers"}.get(type(default), type(default).__name__)
            shown = json.dumps(value) if _jsonable(value) else repr(value)
            raise ValueError(f"{key} is {shown}, expected {kind}")
    return values


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


# ---------------------------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------------------------


class DenseLayer(nn.Sequential):
    """conv3x3 -> WN -> PReLU -> dropout: (B, c_in, H, W) -> (B, k, H, W)."""

    def __init__(self, c_in: int, growth: int, dropout: float) -> None:
        super().__init__(
            weight_norm(nn.Conv2d(c_in, growth, 3, padding=1)),
            nn.PReLU(growth),
            nn.Dropout2d(dropout) if dropout > 0 else nn.Identity(),
        )


class DenseBlock(nn.Module):
    """n dense layers, each fed everything before it: (B, c, H, W) -> (B, c + n*k, H, W).

    With `new_only=True` only the n*k new channels are returned (Tiramisu's up path, which keeps
    the decoder from growing quadratically).
    """

    def __init__(self, c_in: int, n_layers: int, growth: int, dropout: float, new_only: bool = False) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DenseLayer(c_in + i * growth, growth, dropout) for i in range(n_layers))
        self.new_only = new_only
        self.out_channels = n_layers * growth if new_only else c_in + n_layers * growth

    def forward(self, x: Tensor) -> Tensor:
        features = [x]
        for layer in self.layers:
            features.append(layer(torch.cat(features, dim=1)))
        return torch.cat(features[1:] if self.new_only else features, dim=1)


class DownLayer(nn.Sequential):
    """conv1x1 -> WN -> PReLU -> dropout -> max-pool 2: (B, c, H, W) -> (B, c, H/2, W/2)."""

    def __init__(self, channels: int, dropout: float) -> None:
        super().__init__(
            weight_norm(nn.Conv2d(channels, channels, 1)),
            nn.PReLU(channels),
            nn.Dropout2d(dropout) if dropout > 0 else nn.Identity(),
            nn.MaxPool2d(2),
        )


class UpLayer(nn.Sequential):
    """transposed conv3x3 s2 -> WN -> PReLU: (B, c_in, H, W) -> (B, c_out, 2H, 2W)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(
            weight_norm(nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=1)),
            nn.PReLU(c_out),
        )


class PyramidPooling(nn.Module):
    """Multi-scale receptive-field module: (B, c, h, w) -> (B, c + len(pools)*c//4, h, w).

    Pooling uses fixed kernel sizes (not adaptive bins) so a tile and a whole image see the same
    context per pixel, which keeps tiled and whole-image inference consistent.
    """

    def __init__(self, channels: int, pools: tuple[int, ...]) -> None:
        super().__init__()
        self.pools = pools
        reduced = max(channels // 4, 1)
        self.branches = nn.ModuleList(
            nn.Sequential(weight_norm(nn.Conv2d(channels, reduced, 1)), nn.PReLU(reduced)) for _ in pools
        )
        self.out_channels = channels + len(pools) * reduced

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        outs = [x]
        for kernel, branch in zip(self.pools, self.branches):
            pooled = F.avg_pool2d(x, kernel, ceil_mode=True)  # (B, c, h/kernel, w/kernel)
            outs.append(F.interpolate(branch(pooled), size=size, mode="bilinear", align_corners=False))
        return torch.cat(outs, dim=1)


# ---------------------------------------------------------------------------------------------
# Network
# ---------------------------------------------------------------------------------------------


class MSDN(nn.Module):
    """(B, 3, H, W) in [0, 1] -> (B, 3, H, W) in [0, 1], for any H, W.

    `size_multiple` is its size requirement as plain data (spandrel's `size_requirements`): inputs
    whose sides are multiples of it run without internal padding, which is what tilers ask for.
    """

    def __init__(self, config: MSDNConfig | None = None) -> None:
        super().__init__()
        cfg = self.config = config or MSDNConfig()
        self.size_multiple = cfg.size_multiple
        s, k, p = cfg.space_to_depth, cfg.growth_rate, cfg.dropout
        c = cfg.stem_channels

        # stem: (B, 3, H, W) -> unshuffle (B, 3s^2, H/s, W/s) -> conv (B, c, H/s, W/s)
        self.stem = nn.Conv2d(cfg.in_channels * s * s, c, 3, padding=1)

        # encoder: per level a dense block (its output is the skip) then a down layer
        self.encoder = nn.ModuleList()
        self.down = nn.ModuleList()
        skip_channels = []
        for n in cfg.encoder_layers:
            block = DenseBlock(c, n, k, p)
            c = block.out_channels
            self.encoder.append(block)
            self.down.append(DownLayer(c, p))
            skip_channels.append(c)

        # bottleneck at (H/s/2^L, W/s/2^L): dense block of new features, then the pyramid
        self.bottleneck = DenseBlock(c, cfg.bottleneck_layers, k, p, new_only=True)
        c = self.bottleneck.out_channels
        self.pyramid = PyramidPooling(c, cfg.pyramid_pools) if cfg.pyramid else nn.Identity()
        c = self.pyramid.out_channels if cfg.pyramid else c

        # decoder: per level up layer -> concat skip -> dense block (new features, except the last)
        self.up = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for i, (n, skip) in enumerate(zip(cfg.decoder_layers, reversed(skip_channels))):
            last = i == cfg.levels - 1
            self.up.append(UpLayer(c, skip))
            block = DenseBlock(2 * skip, n, k, p, new_only=not last)
            self.decoder.append(block)
            c = block.out_channels

        # head: (B, c, H/s, W/s) -> conv1x1 (B, 3s^2, H/s, W/s) -> shuffle (B, 3, H, W) residual.
        # Zero init so the untrained network starts as the identity (a blurred image is a
        # far better first guess than noise).
        self.head = nn.Conv2d(c, cfg.in_channels * s * s, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: Tensor, all_scales: bool = False) -> Tensor | list[Tensor]:
        """The restored image; with `all_scales`, every pass's output, coarsest first (deep supervision
        scores each against the sharp image averaged to its scale)."""
        cfg = self.config
        h, w = x.shape[-2:]
        padded = pad_to_multiple(x, cfg.size_multiple)

        # coarse to fine (SRN-DeblurNet; Nah et al.): the same weights at 1/2^(scales-1) .. full
        # scale. Each finer pass starts from its blurred input plus the coarser pass's correction,
        # upsampled: a 60 px blur is 15 px at quarter scale, where the network does well.
        out = coarse = None
        outputs = []
        for level in reversed(range(cfg.scales)):
            blurred = F.avg_pool2d(padded, 2**level) if level else padded  # (B, 3, H/2^l, W/2^l)
            start = blurred if out is None else blurred + F.interpolate(
                out - coarse, scale_factor=2, mode="bilinear", align_corners=False)
            out, coarse = self.restore(start), blurred
            outputs.append(out[..., :-(-h // 2**level), :-(-w // 2**level)].clamp(0.0, 1.0))
        return outputs if all_scales else outputs[-1]

    def restore(self, x: Tensor) -> Tensor:
        """One pass at one scale: (B, 3, h, w), sides multiples of the one-scale multiple -> x + residual."""
        cfg = self.config
        y = self.stem(F.pixel_unshuffle(x, cfg.space_to_depth))
        skips = []
        for block, down in zip(self.encoder, self.down):
            y = block(y)
            skips.append(y)
            y = down(y)
        y = self.pyramid(self.bottleneck(y))
        for up, block, skip in zip(self.up, self.decoder, reversed(skips)):
            y = block(torch.cat([up(y), skip], dim=1))
        return x + F.pixel_shuffle(self.head(y), cfg.space_to_depth)


def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Pad bottom/right to a multiple of `multiple` (reflect where the image allows, else replicate)."""
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    if ph == 0 and pw == 0:
        return x
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


def fuse_for_inference(model: MSDN) -> MSDN:
    """Fold weight normalisation into plain weights (same outputs, fewer ops per call) and eval()."""
    for module in model.modules():
        if hasattr(module, "parametrizations") and "weight" in module.parametrizations:
            remove_parametrizations(module, "weight", leave_parametrized=True)
    return model.eval()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
