"""Generator weight files: safetensors with the model config in their metadata.

(Minimal core for now: save/load a file. Manifest, Hub resolution and verification come next.)
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from deblur_cli.errors import MsdnError
from deblur_cli.files import atomic_path
from deblur_cli.model import MSDN, MSDNConfig

CONFIG_KEY = "msdn_config"


def save_weights(path: Path, state_dict: dict[str, torch.Tensor], config: MSDNConfig,
                 metadata: dict[str, str] | None = None, dtype: torch.dtype | None = None) -> None:
    """Write a safetensors file atomically, with the config in its metadata so it rebuilds alone."""
    tensors = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().cpu().contiguous()
               for k, v in state_dict.items()}
    meta = {CONFIG_KEY: config.to_json(), "format": "pt", **(metadata or {})}
    with atomic_path(Path(path)) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def read_config(path: Path) -> MSDNConfig:
    """The config from a file's metadata, else from a sibling config.json."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise MsdnError(f"{path} is not a readable safetensors file ({exc})") from None
    if CONFIG_KEY in meta:
        return MSDNConfig.from_json(meta[CONFIG_KEY])
    sibling = path.with_name("config.json")
    if sibling.is_file():
        data = json.loads(sibling.read_text())
        return MSDNConfig.from_dict(data.get(CONFIG_KEY, data))
    raise MsdnError(f"{path} carries no model config (no '{CONFIG_KEY}' metadata and no config.json beside it)")


def load_weights_file(path: Path) -> tuple[MSDNConfig, dict[str, torch.Tensor]]:
    path = Path(path)
    if not path.is_file():
        raise MsdnError(f"weights file not found: {path}")
    config = read_config(path)
    return config, load_file(str(path))


def build_generator(config: MSDNConfig, state_dict: dict[str, torch.Tensor]) -> MSDN:
    """An MSDN with these weights (strict: a missing or misshapen key names itself)."""
    model = MSDN(config)
    expected = model.state_dict()
    for key, value in state_dict.items():
        if key in expected and expected[key].shape != value.shape:
            raise MsdnError(f"weights do not fit the model: '{key}' has shape {tuple(value.shape)}, "
                            f"the config expects {tuple(expected[key].shape)}")
    state = {k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise MsdnError(f"weights do not fit the model: {str(exc).splitlines()[0]}") from None
    return model


def load_generator(model: str | None = None, weights: Path | None = None, offline: bool = False) -> MSDN:
    """The generator to deblur with (training-form weights; callers fuse them for inference).

    Interim version: only `weights` paths. The manifest / Hub resolution replaces the error below.
    """
    if weights is not None:
        return build_generator(*load_weights_file(Path(weights)))
    raise MsdnError(
        "no trained MSDN weights are available yet: pass --weights PATH to a generator file "
        "(train one with `msdn train` and export it with `msdn weights export`)"
    )
