"""Weight files: file -> state dict -> model, and the safetensors writer.

A weight file is safetensors with the model config in its metadata (`configfile.CONFIG_KEY`), so it
rebuilds alone; a `.pt/.pth` given by path is read through `checkpoint`. Weights are checked
against their config on a storage-less model before any real one is built, so a bad file is one
line naming the first misfit, never a traceback or an absurd allocation.
"""

from __future__ import annotations

import errno
import hashlib
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open
from safetensors.torch import save as safetensors_bytes

from deblur_cli.weights.checkpoint import load_checkpoint
from deblur_cli.weights.configfile import CONFIG_KEY, config_from, sibling_config
from deblur_cli.errors import MsdnError, first_line
from deblur_cli.files import atomic_write_bytes
from deblur_cli.nets.architectures import GeneratorConfig, build
from deblur_cli.nets.model import MSDNConfig

MAX_LEVELS = 8  # bounds on a config read from a file, far above any MSDN worth running
MAX_DENSE_LAYERS = 256
READABLE_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)  # float8 has no kernels to run in


def save_weights(path: Path, state_dict: dict[str, torch.Tensor], config: GeneratorConfig,
                 metadata: dict[str, str] | None = None, dtype: torch.dtype | None = None) -> None:
    """Write a safetensors file atomically, with the config in its metadata so it rebuilds alone."""
    tensors = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().cpu().contiguous()
               for k, v in state_dict.items()}
    meta = {CONFIG_KEY: config.to_json(), "format": "pt", **(metadata or {})}
    atomic_write_bytes(Path(path), safetensors_bytes(tensors, metadata=meta),
                       verify=lambda tmp: _check_written(tmp, len(tensors)))


def _check_written(tmp: Path, count: int) -> None:
    """A written weight file must parse back with every tensor (the encoder really finished)."""
    try:
        with safe_open(str(tmp), framework="pt") as f:
            found = len(list(f.keys()))
    except (SafetensorError, OSError, ValueError) as exc:
        raise OSError(errno.EIO, f"the written file does not read back ({first_line(exc)})") from None
    if found != count:
        raise OSError(errno.EIO, f"the written file reads back with {found} of {count} tensors")


def read_metadata(path: Path) -> dict[str, str]:
    """A safetensors file's metadata (its header only; no tensor is read)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise MsdnError(f"{path} is not a readable safetensors file ({exc})") from None


def read_config(path: Path) -> GeneratorConfig:
    """The config from a file's metadata, else from a sibling config.json."""
    path = Path(path)
    meta = read_metadata(path)
    if CONFIG_KEY in meta:
        return config_from(meta[CONFIG_KEY], f"{path} metadata")
    config = sibling_config(path)
    if config is None:
        raise MsdnError(f"{path} carries no model config (no '{CONFIG_KEY}' metadata and no config.json beside it)")
    return config


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise MsdnError(f"{path} is not a readable safetensors file ({exc})") from None


def is_torch_file(path: Path) -> bool:
    """`.pt/.pth`: read as a checkpoint; anything else is read as safetensors."""
    return Path(path).suffix.lower() in (".pt", ".pth")


def require_weights_file(path: Path) -> None:
    """A one-line error unless `path` is a regular file: a folder or a device is named for what it is."""
    if path.is_file():
        return
    if not path.exists():
        raise MsdnError(f"weights file not found: {path}")
    from deblur_cli.imaging.images import file_kind

    raise MsdnError(f"--weights {path} is {file_kind(path)}, not a weights file")


def load_weights_file(path: Path) -> tuple[GeneratorConfig, dict[str, torch.Tensor]]:
    """Config and state dict from a safetensors file, or a `.pt/.pth` read with weights_only."""
    path = Path(path)
    require_weights_file(path)
    if is_torch_file(path):
        ckpt = load_checkpoint(path)
        return ckpt.config, ckpt.generator
    config = read_config(path)
    return config, load_safetensors(path)


def build_generator(config: GeneratorConfig, state_dict: dict[str, torch.Tensor]) -> torch.nn.Module:
    """The network of `config` with these weights (strict: a missing or misshapen key names itself).

    The shapes are checked on a storage-less ("meta") model first, so a config that would build an
    absurdly large network is refused before any memory is allocated for it; weights that are not
    finite floating-point numbers (which would turn every photo black) are refused too.
    """
    check_state(config, state_dict)
    model = build(config)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()}
    model.load_state_dict(state, strict=True)
    return model


def _first(keys: list[str], what: str) -> str:
    return f"{what} '{keys[0]}'" + (f" (+{len(keys) - 1} more)" if len(keys) > 1 else "")


def check_state(config: GeneratorConfig, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Refuse weights that do not fit `config`, or are not finite floats, without building the model."""
    if isinstance(config, MSDNConfig):  # DeblurGAN's config bounds itself
        layers = sum(config.encoder_layers) + sum(config.decoder_layers) + config.bottleneck_layers
        if config.levels > MAX_LEVELS or layers > MAX_DENSE_LAYERS or len(config.pyramid_pools) > MAX_LEVELS:
            raise MsdnError(f"the model config asks for {config.levels} levels and {layers} dense layers; "
                            f"an MSDN has at most {MAX_LEVELS} levels and {MAX_DENSE_LAYERS} dense layers")
    try:
        with torch.device("meta"):
            expected = build(config).state_dict()
    except (ValueError, TypeError, RuntimeError) as exc:
        raise MsdnError(f"the model config does not build an MSDN: {first_line(exc)}") from None
    for key, want in expected.items():  # network order, so the first misfit named is the earliest layer
        if key in state_dict and state_dict[key].shape != want.shape:
            raise MsdnError(f"weights do not fit the model: '{key}' has shape {tuple(state_dict[key].shape)}, "
                            f"the config expects {tuple(want.shape)}")
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        parts = ([_first(missing, "missing key")] if missing else []) + \
                ([_first(unexpected, "unexpected key")] if unexpected else [])
        raise MsdnError(f"weights do not fit the model: {', '.join(parts)}")
    for key, value in state_dict.items():
        if not value.is_floating_point():
            raise MsdnError(f"weights are not floating-point: '{key}' is {str(value.dtype).removeprefix('torch.')}")
        if value.dtype not in READABLE_DTYPES:
            raise MsdnError(f"weights are stored as {str(value.dtype).removeprefix('torch.')} ('{key}'), which msdn "
                            "does not compute in: use float32, float16 or bfloat16 weights")
        if not bool(torch.isfinite(value).all()):
            raise MsdnError(f"weights are broken: '{key}' holds NaN or infinite values (a diverged training run?)")


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    """The hex sha256 of a file, read in chunks (weight files can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()
