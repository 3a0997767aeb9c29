"""Where a weight file keeps its model config: the `msdn_config` metadata key, else a JSON file beside it.

Both file formats need it (a safetensors file without metadata, a bare `.pt` state dict), so it sits
below `checkpoint` and `weightfile`, which both import it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from deblur_cli.errors import MsdnError
from deblur_cli.nets.architectures import GeneratorConfig, config_from_dict

CONFIG_KEY = "msdn_config"


def config_from(data: Any, source: str) -> GeneratorConfig:
    """A config from JSON text or a mapping (bare, or under CONFIG_KEY); `source` names it in errors."""
    try:
        if isinstance(data, str):
            data = json.loads(data)
        if isinstance(data, Mapping):
            return config_from_dict(dict(data.get(CONFIG_KEY, data)))
    except (ValueError, TypeError) as exc:
        raise MsdnError(f"{source} holds an invalid model config: {exc}") from None
    raise MsdnError(f"{source} holds no model config")


def config_json(config: GeneratorConfig) -> bytes:
    """The config.json written beside a weight file (what `sibling_config` reads back)."""
    return (json.dumps({CONFIG_KEY: config.to_dict()}, indent=2, sort_keys=True) + "\n").encode()


def side_files(weights: Path) -> tuple[Path, Path]:
    """The config and model card written beside an exported `X.safetensors`: `X.config.json` and `X.md`.

    Named after X so an export never replaces someone else's `config.json` or `README.md`; `weights
    push` uploads them as the repository's `config.json` and `README.md`.
    """
    weights = Path(weights)
    return weights.with_name(f"{weights.stem}.config.json"), weights.with_name(f"{weights.stem}.md")


def sibling_config(path: Path) -> GeneratorConfig | None:
    """`X.config.json` (as `export` writes it), else a `config.json` as in a Hub repository."""
    sibling = next((p for p in (side_files(path)[0], path.with_name("config.json")) if p.is_file()), None)
    if sibling is None:
        return None
    try:
        data = json.loads(sibling.read_text())
    except (OSError, ValueError) as exc:
        raise MsdnError(f"{sibling} is not valid JSON ({exc})") from None
    return config_from(data, str(sibling))
