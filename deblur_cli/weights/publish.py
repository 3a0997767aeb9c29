"""Publishing: a training checkpoint -> a self-describing weight file, its model card, and a Hub commit.

`export_checkpoint` writes `X.safetensors` with `X.config.json` and `X.md` beside it (all atomic)
and returns the manifest entry for it; `push_weights` uploads the three in one commit and returns
the entry pinned to that commit, ready to paste into `weights_manifest.json`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from deblur_cli.weights.checkpoint import Checkpoint, load_checkpoint
from deblur_cli.weights.configfile import config_json, side_files
from deblur_cli.errors import MsdnError, first_line
from deblur_cli.files import atomic_write_bytes, remove_stale_temps
from deblur_cli.weights.hub import HubSettings, hub_settings, quiet_hub
from deblur_cli.weights.manifest import COMMIT_HASH, REPO_ID
from deblur_cli.nets.architectures import GeneratorConfig, arch_of, build
from deblur_cli.inference.tiling import model_tiling
from deblur_cli.weights.weightfile import check_state, load_weights_file, read_config, read_metadata, save_weights, sha256_file

NETWORK_NAMES = {"msdn": "MSDN (Multi-Scale Dense Network, Song & Wu 2019)",
                 "dn": "DN (MSDN without its multi-scale module, Song & Wu 2019)",
                 "deblurgan": "DeblurGAN's (Kupyn et al. 2018)"}


def model_card(name: str, config: GeneratorConfig, metrics: Mapping[str, float], *, filename: str,
               step: int | None = None, license: str = "mit", training_data: str = "") -> str:
    """A Hub model card (README.md) so the repository documents itself."""
    rows = "\n".join(f"| {k} | {v:.4g} |" for k, v in metrics.items()) or "| (none recorded) | |"
    return f"""---
license: {license}
library_name: msdn-deblur
tags:
- image-deblurring
- motion-blur
- msdn
---

# {name}

{NETWORK_NAMES[arch_of(config)]} generator for removing motion blur from photographs,
for the `msdn` command line tool.

- File: `{filename}` (safetensors; the model config is in its metadata and in `config.json`)
- Parameters: {sum(p.numel() for p in build(config).parameters()):,}
- Training step: {step if step is not None else "unknown"}
- Training data: {training_data or "not recorded"}

## Metrics

| metric | value |
|---|---|
{rows}

## Usage

```
msdn deblur photo.jpg -o sharp.png --weights {filename}
```

## Config

```json
{json.dumps(config.to_dict(), indent=2, sort_keys=True)}
```
"""


def entry_template(name: str, config: GeneratorConfig, path: Path, metrics: Mapping[str, float], *,
                   repo_id: str = "OWNER/REPO", revision: str = "<commit hash>", description: str = "",
                   license: str = "mit", training_data: str = "") -> dict[str, Any]:
    """The manifest entry for a weight file (revision filled in once pushed)."""
    tile, overlap = model_tiling(config.size_multiple)
    return {
        "name": name, "description": description or f"MSDN generator '{name}'", "repo_id": repo_id,
        "revision": revision, "filename": Path(path).name, "format": "safetensors",
        "sha256": sha256_file(path), "size_bytes": Path(path).stat().st_size, "config": config.to_dict(),
        "tile": tile, "overlap": overlap, "license": license,
        "training_data": training_data, "metrics": dict(metrics),
    }


def _metadata_metrics(meta: Mapping[str, str]) -> tuple[dict[str, float], int | None]:
    """Metrics and step recorded in a weight file's metadata (by `export` or by `msdn train`)."""
    metrics: dict[str, float] = {}
    for key in ("best_val_psnr", "val_psnr", "val_ssim"):
        try:
            metrics[key] = float(meta[key])
        except (KeyError, ValueError):
            pass
    try:
        metrics.update({str(k): float(v) for k, v in json.loads(meta.get("metrics", "{}")).items()})
    except (ValueError, TypeError, AttributeError):
        pass
    step = int(meta["step"]) if meta.get("step", "").isdigit() else None
    return metrics, step


@dataclass(frozen=True)
class ExportResult:
    weights: Path
    config_json: Path
    readme: Path
    entry: dict[str, Any]


def export_checkpoint(checkpoint: Path, output: Path, *, dtype: torch.dtype = torch.float32,
                      name: str | None = None, overwrite: bool = False) -> ExportResult:
    """Training checkpoint -> X.safetensors + X.config.json + X.md model card beside it (all atomic)."""
    output = Path(output)
    if output.suffix != ".safetensors":
        raise MsdnError(f"the exported file must end in .safetensors: {output}")
    targets = [output, *side_files(output)]
    if not output.parent.is_dir():
        raise MsdnError(f"output folder does not exist: {output.parent}")
    existing = [str(t) for t in targets if t.exists()]
    if existing and not overwrite:
        raise MsdnError(f"{', '.join(existing)} already exist{'s' if len(existing) == 1 else ''} "
                        "(pass --overwrite to replace)")
    if Path(checkpoint).suffix == ".safetensors":
        config, state = load_weights_file(Path(checkpoint))
        metrics, step = _metadata_metrics(read_metadata(Path(checkpoint)))
        ckpt = Checkpoint(config, state, step, metrics)
    else:
        ckpt = load_checkpoint(Path(checkpoint))
    check_state(ckpt.config, ckpt.generator)  # refuse a checkpoint that does not fit its own config
    remove_stale_temps(output.parent)
    name = name or output.stem
    metadata = {"name": name, **({"step": str(ckpt.step)} if ckpt.step is not None else {}),
                **({"metrics": json.dumps(ckpt.metrics)} if ckpt.metrics else {})}
    save_weights(output, ckpt.generator, ckpt.config, metadata=metadata, dtype=dtype)
    atomic_write_bytes(targets[1], config_json(ckpt.config))
    atomic_write_bytes(targets[2], model_card(name, ckpt.config, ckpt.metrics, filename=output.name,
                                              step=ckpt.step).encode())
    return ExportResult(output, targets[1], targets[2], entry_template(name, ckpt.config, output, ckpt.metrics))


def _push_error(exc: BaseException, repo_id: str, revision: str | None, settings: HubSettings) -> MsdnError:
    from huggingface_hub.errors import (HfHubHTTPError, LocalTokenNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    where = f"{repo_id} on {settings.endpoint}"
    if isinstance(exc, LocalTokenNotFoundError):
        return MsdnError("no Hugging Face token: pass --token or log in with `hf auth login`")
    if isinstance(exc, RevisionNotFoundError):
        return MsdnError(f"branch '{revision}' does not exist in {where}")
    if isinstance(exc, RepositoryNotFoundError):
        return MsdnError(f"repository {where} not found, or the token cannot write to it")
    if isinstance(exc, HfHubHTTPError):
        status = getattr(getattr(exc, "response", None), "status_code", None)
        hint = ": check the token and that you own the repository" if status in (401, 403) else ""
        return MsdnError(f"the upload to {where} failed (HTTP {status}){hint}")
    return MsdnError(f"the upload to {where} failed: {first_line(exc)}")


def push_weights(name: str, weights: Path, repo_id: str, *, revision: str | None = None, private: bool = False,
                 token: str | None = None, create: bool = True) -> dict[str, Any]:
    """Upload weights + config.json + README.md in one commit; return the manifest entry pinned to it."""
    from huggingface_hub import CommitOperationAdd, HfApi

    weights = Path(weights)
    if not weights.is_file() or weights.suffix != ".safetensors":
        raise MsdnError(f"not a .safetensors file: {weights} (export a checkpoint with `msdn weights export`)")
    if not REPO_ID.fullmatch(repo_id):
        raise MsdnError(f"--repo-id must look like 'owner/name', got '{repo_id}'")
    config = read_config(weights)
    metrics, step = _metadata_metrics(read_metadata(weights))
    config_file, readme = side_files(weights)  # never a README.md that merely sits in the same folder
    config_bytes = config_file.read_bytes() if config_file.is_file() else config_json(config)
    readme_bytes = (readme.read_bytes() if readme.is_file()
                    else model_card(name, config, metrics, filename=weights.name, step=step).encode())
    settings = hub_settings()
    if settings.offline:
        raise MsdnError("cannot push while offline (--offline or HF_HUB_OFFLINE is set)")
    api = HfApi(endpoint=settings.endpoint, token=token)
    try:
        with quiet_hub():  # its retry lines would come before our one-line error
            if create:
                api.create_repo(repo_id, private=private, exist_ok=True)
            info = api.create_commit(
                repo_id,
                [CommitOperationAdd(weights.name, str(weights)),
                 CommitOperationAdd("config.json", config_bytes),
                 CommitOperationAdd("README.md", readme_bytes)],
                commit_message=f"Add MSDN generator '{name}'", revision=revision,
            )
    except Exception as exc:  # one line for the user, whatever huggingface_hub/httpx raised
        raise _push_error(exc, repo_id, revision, settings) from None
    commit = getattr(info, "oid", None)
    if not isinstance(commit, str) or not COMMIT_HASH.fullmatch(commit):
        raise MsdnError(f"the Hub did not return a commit hash for the upload to {repo_id}")
    return entry_template(name, config, weights, metrics, repo_id=repo_id, revision=commit)
