"""Generator weights: files, the pinned manifest, and where a named model is found.

A weight file is safetensors with the model config in its metadata, so it rebuilds alone.
Named models come from `weights_manifest.json` (shipped inside the package): each entry pins a
Hub repository at a full commit hash together with the file's sha256 and size, so what runs is
exactly what was published. `resolve_weights` is the one place that decides where weights come
from: an explicit path, then a file bundled in the package, then the Hugging Face cache, then a
download; every named file is verified before use and a mismatch is refused, never used.

huggingface_hub reads some settings at import time, so the endpoint, cache and offline flag are
read from the environment at call time (`hub_settings`) and passed explicitly.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open
from safetensors.torch import save as safetensors_bytes

from deblur_cli.errors import MsdnError, first_line
from deblur_cli.files import atomic_write_bytes, remove_stale_temps
from deblur_cli.model import MSDN, MSDNConfig

CONFIG_KEY = "msdn_config"
MAX_LEVELS = 8  # bounds on a config read from a file, far above any MSDN worth running
MAX_DENSE_LAYERS = 256
MAX_STEP = 10**9
MANIFEST_SCHEMA_VERSION = 1
PACKAGE_DIR = Path(__file__).resolve().parent
# Module attributes (read at call time) so tests can point them at temporary copies.
MANIFEST_PATH = PACKAGE_DIR / "weights_manifest.json"
BUNDLED_DIR = PACKAGE_DIR / "weights"
DEFAULT_ENDPOINT = "https://huggingface.co"

Progress = Callable[[int, int], None]
"""progress(done_bytes, total_bytes) while a file downloads."""


# ---------------------------------------------------------------------------------------------
# Weight files
# ---------------------------------------------------------------------------------------------


def save_weights(path: Path, state_dict: dict[str, torch.Tensor], config: MSDNConfig,
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


def side_files(weights: Path) -> tuple[Path, Path]:
    """The config and model card written beside an exported `X.safetensors`: `X.config.json` and `X.md`.

    Named after X so an export never replaces someone else's `config.json` or `README.md`; `weights
    push` uploads them as the repository's `config.json` and `README.md`.
    """
    weights = Path(weights)
    return weights.with_name(f"{weights.stem}.config.json"), weights.with_name(f"{weights.stem}.md")


def _config_from(data: Any, source: str) -> MSDNConfig:
    try:
        if isinstance(data, str):
            return MSDNConfig.from_json(data)
        if isinstance(data, Mapping):
            return MSDNConfig.from_dict(dict(data.get(CONFIG_KEY, data)))
    except (ValueError, TypeError) as exc:
        raise MsdnError(f"{source} holds an invalid model config: {exc}") from None
    raise MsdnError(f"{source} holds no model config")


def config_json(config: MSDNConfig) -> bytes:
    """The config.json written beside a weight file (what `_sibling_config` reads back)."""
    return (json.dumps({CONFIG_KEY: config.to_dict()}, indent=2, sort_keys=True) + "\n").encode()


def _sibling_config(path: Path) -> MSDNConfig | None:
    """`X.config.json` (as `export` writes it), else a `config.json` as in a Hub repository."""
    sibling = next((p for p in (side_files(path)[0], path.with_name("config.json")) if p.is_file()), None)
    if sibling is None:
        return None
    try:
        data = json.loads(sibling.read_text())
    except (OSError, ValueError) as exc:
        raise MsdnError(f"{sibling} is not valid JSON ({exc})") from None
    return _config_from(data, str(sibling))


def read_config(path: Path) -> MSDNConfig:
    """The config from a file's metadata, else from a sibling config.json."""
    path = Path(path)
    meta = read_metadata(path)
    if CONFIG_KEY in meta:
        return _config_from(meta[CONFIG_KEY], f"{path} metadata")
    config = _sibling_config(path)
    if config is None:
        raise MsdnError(f"{path} carries no model config (no '{CONFIG_KEY}' metadata and no config.json beside it)")
    return config


def read_metadata(path: Path) -> dict[str, str]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise MsdnError(f"{path} is not a readable safetensors file ({exc})") from None


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise MsdnError(f"{path} is not a readable safetensors file ({exc})") from None


def torch_load(path: Path, what: str = "PyTorch checkpoint") -> Any:
    """`torch.load(weights_only=True)` onto the CPU (no pickle code runs); a failure is one short MsdnError."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise MsdnError(f"cannot read {path}: {exc.strerror or first_line(exc)}") from None
    if not head:
        raise MsdnError(f"{path} is empty (0 bytes), not a {what}")
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):  # torch's zip format, or a legacy pickle
        raise MsdnError(f"{path} is not a {what}: it is not a PyTorch file at all")
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types here (UnpicklingError, RuntimeError, EOFError...)
        if str(exc).strip().startswith("Weights only load failed"):  # torch's text is a paragraph about pickle
            reason = "it is not a torch file of plain tensors; files that run code on load are refused"
        else:
            reason = first_line(exc)
        raise MsdnError(f"{path} is not a loadable {what} ({reason})") from None


@dataclass(frozen=True)
class Checkpoint:
    """A training checkpoint as `msdn train` writes it (`torch.save` of plain containers)."""

    config: MSDNConfig
    generator: dict[str, torch.Tensor]
    step: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)


def shipped_state(checkpoint: Mapping[str, Any]) -> Mapping[str, Any]:
    """The generator a training checkpoint ships: its EMA (`torch.optim.swa_utils.AveragedModel`
    state, keys under "module.") when training kept one, else the raw weights."""
    ema = checkpoint.get("ema")
    if isinstance(ema, Mapping) and ema:
        return {k.removeprefix("module."): v for k, v in ema.items() if k.startswith("module.")}
    return checkpoint["generator"]


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a `.pt/.pth` with `weights_only=True` (no pickle code runs).

    Accepts a training checkpoint (`generator` + `model_config` keys) or a bare state dict whose
    config sits in a sibling config.json.
    """
    path = Path(path)
    if not path.is_file():
        raise MsdnError(f"checkpoint not found: {path}")
    data = torch_load(path)
    if not isinstance(data, Mapping):
        raise MsdnError(f"{path} holds a {type(data).__name__}, not a state dict or training checkpoint")
    if "generator" in data:
        if "model_config" not in data:
            raise MsdnError(f"{path} is a training checkpoint without 'model_config'")
        config = _config_from(data["model_config"], f"{path} model_config")
        state = shipped_state(data)
        metrics = {k: float(data[k]) for k in ("best_val_psnr", "val_psnr", "val_ssim")
                   if isinstance(data.get(k), (int, float)) and not isinstance(data.get(k), bool)}
        if isinstance(data.get("metrics"), Mapping):
            metrics.update({str(k): float(v) for k, v in data["metrics"].items() if isinstance(v, (int, float))})
        step = data.get("step")
        step = int(step) if isinstance(step, int) and not isinstance(step, bool) else None
        if step is not None and not 0 <= step <= MAX_STEP:
            raise MsdnError(f"{path} records an impossible training step {step}")
    else:
        config = _sibling_config(path)
        if config is None:
            raise MsdnError(f"{path} is a bare state dict and has no config.json beside it "
                            "(expected a training checkpoint with 'generator' and 'model_config')")
        state, metrics, step = data, {}, None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise MsdnError(f"{path}: the generator state dict must map names to tensors")
    return Checkpoint(config=config, generator=dict(state), step=step, metrics=metrics)


def load_weights_file(path: Path) -> tuple[MSDNConfig, dict[str, torch.Tensor]]:
    """Config and state dict from a safetensors file, or a `.pt/.pth` read with weights_only."""
    path = Path(path)
    if not path.is_file():
        raise MsdnError(f"weights file not found: {path}")
    if path.suffix.lower() in (".pt", ".pth"):
        ckpt = load_checkpoint(path)
        return ckpt.config, ckpt.generator
    config = read_config(path)
    return config, _load_safetensors(path)


def build_generator(config: MSDNConfig, state_dict: dict[str, torch.Tensor]) -> MSDN:
    """An MSDN with these weights (strict: a missing or misshapen key names itself).

    The shapes are checked on a storage-less ("meta") model first, so a config that would build an
    absurdly large network is refused before any memory is allocated for it; weights that are not
    finite floating-point numbers (which would turn every photo black) are refused too.
    """
    check_state(config, state_dict)
    model = MSDN(config)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()}
    model.load_state_dict(state, strict=True)
    return model


def check_state(config: MSDNConfig, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Refuse weights that do not fit `config`, or are not finite floats, without building the model."""
    layers = sum(config.encoder_layers) + sum(config.decoder_layers) + config.bottleneck_layers
    if config.levels > MAX_LEVELS or layers > MAX_DENSE_LAYERS or len(config.pyramid_pools) > MAX_LEVELS:
        raise MsdnError(f"the model config asks for {config.levels} levels and {layers} dense layers; "
                        f"an MSDN has at most {MAX_LEVELS} levels and {MAX_DENSE_LAYERS} dense layers")
    try:
        with torch.device("meta"):
            expected = MSDN(config).state_dict()
    except (ValueError, TypeError, RuntimeError) as exc:
        raise MsdnError(f"the model config does not build an MSDN: {first_line(exc)}") from None
    for key, want in expected.items():  # network order, so the first misfit named is the earliest layer
        if key in state_dict and state_dict[key].shape != want.shape:
            raise MsdnError(f"weights do not fit the model: '{key}' has shape {tuple(state_dict[key].shape)}, "
                            f"the config expects {tuple(want.shape)}")
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing key '{missing[0]}'" + (f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""))
        if unexpected:
            parts.append(f"unexpected key '{unexpected[0]}'"
                         + (f" (+{len(unexpected) - 1} more)" if len(unexpected) > 1 else ""))
        raise MsdnError(f"weights do not fit the model: {', '.join(parts)}")
    for key, value in state_dict.items():
        if not value.is_floating_point():
            raise MsdnError(f"weights are not floating-point: '{key}' is {str(value.dtype).removeprefix('torch.')}")
        if not bool(torch.isfinite(value).all()):
            raise MsdnError(f"weights are broken: '{key}' holds NaN or infinite values (a diverged training run?)")


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# Manifest
# ---------------------------------------------------------------------------------------------

_HEX40 = re.compile(r"[0-9a-f]{40}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class ModelEntry:
    """One published generator, pinned by commit and content hash."""

    name: str
    description: str
    repo_id: str | None  # None: bundled only (the package's sha256 pins it; no Hub copy)
    revision: str | None
    filename: str
    format: str
    sha256: str
    size_bytes: int
    config: MSDNConfig
    tile: int
    overlap: int
    license: str
    training_data: str
    metrics: dict[str, float]
    bundled: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name, "description": self.description, "repo_id": self.repo_id,
            "revision": self.revision, "filename": self.filename, "format": self.format,
            "sha256": self.sha256, "size_bytes": self.size_bytes, "config": self.config.to_dict(),
            "tile": self.tile, "overlap": self.overlap, "license": self.license,
            "training_data": self.training_data, "metrics": dict(self.metrics), "bundled": self.bundled,
        }
        return {k: v for k, v in data.items() if v is not None or k not in _OPTIONAL_FIELDS}


@dataclass(frozen=True)
class Manifest:
    schema_version: int
    default: str | None
    models: tuple[ModelEntry, ...]

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.models]

    def entry(self, name: str | None = None) -> ModelEntry:
        """The named entry, or the default one; unknown names list the known ones."""
        if name is None:
            if self.default is None:
                raise MsdnError(
                    "no trained MSDN weights are published yet (the weights manifest lists no default model): "
                    "pass --weights PATH to a generator file (train one with `msdn train` and export it "
                    "with `msdn weights export`)")
            name = self.default
        for m in self.models:
            if m.name == name:
                return m
        known = ", ".join(self.names) if self.models else "none yet"
        raise MsdnError(f"unknown model '{name}' (known models: {known})")


_ENTRY_FIELDS = {
    "name": str, "description": str, "filename": str, "format": str,
    "sha256": str, "size_bytes": int, "config": dict, "tile": int, "overlap": int, "license": str,
    "training_data": str, "metrics": dict,
}
# A model is bundled in the package, published on the Hub (repo_id + pinned revision), or both.
_OPTIONAL_FIELDS = {"bundled": str, "repo_id": str, "revision": str}


class _Invalid(Exception):
    pass


def _type_name(t: type) -> str:
    return {str: "a string", int: "an integer", dict: "an object", list: "a list"}.get(t, t.__name__)


def _check_type(value: Any, expected: type, where: str) -> None:
    ok = isinstance(value, expected) and not (expected is int and isinstance(value, bool))
    if not ok:
        raise _Invalid(f"{where} must be {_type_name(expected)}, got {json.dumps(value)[:60]}")


def _parse_entry(data: Any, where: str) -> ModelEntry:
    _check_type(data, dict, where)
    name = data.get("name")
    if isinstance(name, str):
        where = f"{where} ('{name}')"
    unknown = sorted(set(data) - set(_ENTRY_FIELDS) - set(_OPTIONAL_FIELDS))
    if unknown:
        raise _Invalid(f"{where} has unknown field '{unknown[0]}'")
    for key, typ in _ENTRY_FIELDS.items():
        if key not in data:
            raise _Invalid(f"{where} is missing the field '{key}'")
        _check_type(data[key], typ, f"{where}.{key}")
    for key, typ in _OPTIONAL_FIELDS.items():
        if data.get(key) is not None:
            _check_type(data[key], typ, f"{where}.{key}")

    if not _NAME.fullmatch(data["name"]):
        raise _Invalid(f"{where}.name must be letters, digits, '.', '_' or '-'")
    repo_id, revision = data.get("repo_id"), data.get("revision")
    if data.get("bundled") is None and (repo_id is None or revision is None):
        raise _Invalid(f"{where} needs a Hub repo_id and revision, or a bundled file")
    if (repo_id is None) != (revision is None):
        raise _Invalid(f"{where} needs both repo_id and revision, or neither (a bundled-only model)")
    if repo_id is not None and not _REPO_ID.fullmatch(repo_id):
        raise _Invalid(f"{where}.repo_id must look like 'owner/name', got '{data['repo_id']}'")
    if revision is not None and not _HEX40.fullmatch(revision):
        raise _Invalid(f"{where}.revision must be a full 40-character lowercase commit hash "
                       f"(never a branch or tag), got '{data['revision']}'")
    if data["format"] != "safetensors":
        raise _Invalid(f"{where}.format must be 'safetensors' (named models never load pickles), "
                       f"got '{data['format']}'")
    if not data["filename"].endswith(".safetensors") or data["filename"].startswith("/") or ".." in data["filename"]:
        raise _Invalid(f"{where}.filename must be a relative path ending in .safetensors, got '{data['filename']}'")
    if not _HEX64.fullmatch(data["sha256"]):
        raise _Invalid(f"{where}.sha256 must be 64 lowercase hex digits, got '{data['sha256']}'")
    if data["size_bytes"] <= 0:
        raise _Invalid(f"{where}.size_bytes must be positive")
    try:
        config = MSDNConfig.from_dict(data["config"])
    except (ValueError, TypeError) as exc:
        raise _Invalid(f"{where}.config does not build an MSDNConfig: {exc}") from None
    tile, overlap = data["tile"], data["overlap"]
    if tile <= 0 or tile % config.size_multiple:
        raise _Invalid(f"{where}.tile must be a positive multiple of {config.size_multiple}, got {tile}")
    if not 0 <= overlap < tile // 2:
        raise _Invalid(f"{where}.overlap must be at least 0 and less than half the tile, got {overlap}")
    for key, value in data["metrics"].items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _Invalid(f"{where}.metrics.{key} must be a number, got {json.dumps(value)[:60]}")
    bundled = data.get("bundled")
    if bundled is not None and (not bundled.endswith(".safetensors") or "/" in bundled or "\\" in bundled):
        raise _Invalid(f"{where}.bundled must be a plain .safetensors file name inside deblur_cli/weights/")
    return ModelEntry(
        name=data["name"], description=data["description"], repo_id=repo_id, revision=revision,
        filename=data["filename"], format=data["format"], sha256=data["sha256"], size_bytes=data["size_bytes"],
        config=config, tile=tile, overlap=overlap, license=data["license"], training_data=data["training_data"],
        metrics={str(k): float(v) for k, v in data["metrics"].items()}, bundled=bundled,
    )


def parse_manifest(data: Any, source: str = "weights manifest") -> Manifest:
    """Validate a decoded manifest; the error names the offending field."""
    try:
        _check_type(data, dict, "the manifest")
        unknown = sorted(set(data) - {"schema_version", "default", "models"})
        if unknown:
            raise _Invalid(f"unknown top-level field '{unknown[0]}'")
        for key in ("schema_version", "default", "models"):
            if key not in data:
                raise _Invalid(f"missing the field '{key}'")
        _check_type(data["schema_version"], int, "schema_version")
        if data["schema_version"] != MANIFEST_SCHEMA_VERSION:
            raise _Invalid(f"schema_version {data['schema_version']} is not supported "
                           f"(this msdn reads version {MANIFEST_SCHEMA_VERSION})")
        _check_type(data["models"], list, "models")
        models = tuple(_parse_entry(m, f"models[{i}]") for i, m in enumerate(data["models"]))
        names = [m.name for m in models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise _Invalid(f"model name '{dupes[0]}' appears more than once")
        default = data["default"]
        if default is not None:
            _check_type(default, str, "default")
            if default not in names:
                raise _Invalid(f"default '{default}' names no entry in models "
                               f"(known: {', '.join(names) if names else 'none'})")
    except _Invalid as exc:
        raise MsdnError(f"{source} is malformed: {exc}") from None
    return Manifest(schema_version=data["schema_version"], default=default, models=models)


def load_manifest(path: Path | None = None) -> Manifest:
    path = Path(path) if path is not None else MANIFEST_PATH
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise MsdnError(f"cannot read the weights manifest {path} ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise MsdnError(f"{path} is not a text file, so not a weights manifest") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MsdnError(f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    return parse_manifest(data, str(path))


# ---------------------------------------------------------------------------------------------
# Verification
# ---------------------------------------------------------------------------------------------


def file_problem(path: Path, entry: ModelEntry) -> str | None:
    """Why this file is not the one the manifest pins (size first: it is free), or None if it is."""
    size = Path(path).stat().st_size
    if size != entry.size_bytes:
        return f"size {size} bytes, the manifest pins {entry.size_bytes}"
    digest = sha256_file(path)
    if digest != entry.sha256:
        return f"sha256 {digest[:12]}..., the manifest pins {entry.sha256[:12]}..."
    return None


def verify_file(path: Path, entry: ModelEntry, what: str = "file") -> Path:
    problem = file_problem(path, entry)
    if problem is not None:
        raise MsdnError(f"refusing {what} {path} for model '{entry.name}': {problem}")
    return Path(path)


# ---------------------------------------------------------------------------------------------
# Hub
# ---------------------------------------------------------------------------------------------


_TRUE = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class HubSettings:
    endpoint: str
    cache_dir: Path
    offline: bool


def hub_settings(offline: bool = False) -> HubSettings:
    """HF_ENDPOINT, HF_HUB_CACHE / HF_HOME and HF_HUB_OFFLINE as they are now (not at import)."""
    env = os.environ
    endpoint = (env.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
    if env.get("HF_HUB_CACHE"):
        cache = Path(env["HF_HUB_CACHE"])
    else:
        home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                                                   "huggingface")
        cache = Path(home) / "hub"
    env_offline = env.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE
    return HubSettings(endpoint=endpoint, cache_dir=cache.expanduser(), offline=offline or env_offline)


def _tqdm_for(progress: Progress) -> type:
    """A silent tqdm class that forwards byte counts to `progress` (huggingface_hub's only hook)."""
    from tqdm.std import tqdm

    class _CallbackBar(tqdm):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)
            self._done = int(kwargs.get("initial") or 0)
            self._size = int(kwargs.get("total") or 0)
            progress(self._done, self._size)

        def update(self, n: float | None = 1) -> bool | None:
            self._done += int(n or 0)
            progress(self._done, max(self._size, self._done))
            return None

    return _CallbackBar


def _hub_error(exc: BaseException, entry: ModelEntry, settings: HubSettings) -> MsdnError:
    from huggingface_hub.errors import (EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    where = f"{entry.repo_id} on {settings.endpoint}"
    if isinstance(exc, RevisionNotFoundError):
        return MsdnError(f"revision {entry.revision} of model '{entry.name}' does not exist in {where} "
                         "(the manifest pins a commit the repository does not have)")
    if isinstance(exc, RepositoryNotFoundError):
        return MsdnError(f"repository {where} not found, or private/gated (model '{entry.name}')")
    if isinstance(exc, LocalEntryNotFoundError):
        return MsdnError(f"model '{entry.name}' could not be downloaded from {where} and is not in the Hub cache "
                         f"{settings.cache_dir}: check the network, or run `msdn weights download {entry.name}` on "
                         "a connected machine, or pass --weights PATH")
    if isinstance(exc, EntryNotFoundError):
        return MsdnError(f"file {entry.filename} not found in {where} at revision {entry.revision[:12]}")
    if isinstance(exc, HfHubHTTPError):
        status = getattr(getattr(exc, "response", None), "status_code", None)
        return MsdnError(f"downloading model '{entry.name}' from {where} failed (HTTP {status})")
    return MsdnError(f"downloading model '{entry.name}' from {where} failed: {first_line(exc)}")


def cached_file(entry: ModelEntry, settings: HubSettings | None = None) -> Path | None:
    """The file in the Hub cache for this pinned revision (unverified), or None. Never touches the network."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    if entry.repo_id is None:
        return None
    settings = settings or hub_settings()
    try:
        path = hf_hub_download(entry.repo_id, entry.filename, revision=entry.revision, cache_dir=settings.cache_dir,
                               endpoint=settings.endpoint, local_files_only=True, token=False)
    except (EntryNotFoundError, OSError, ValueError):
        return None
    return Path(path)


def download_file(entry: ModelEntry, settings: HubSettings | None = None, *, force: bool = False,
                  progress: Progress | None = None) -> Path:
    """Fetch the pinned file into the Hub cache and verify it (a cached copy is reused unless `force`).

    Manifest models are public, so no token is sent (none leaks to a mirror or test endpoint).
    """
    from huggingface_hub import hf_hub_download

    settings = settings or hub_settings()
    if settings.offline:
        raise MsdnError(f"model '{entry.name}' is not in the Hub cache {settings.cache_dir} and downloads are off "
                        "(--offline or HF_HUB_OFFLINE): run `msdn weights download "
                        f"{entry.name}` on a connected machine and copy its cache, or pass --weights PATH")
    try:
        path = hf_hub_download(entry.repo_id, entry.filename, revision=entry.revision, cache_dir=settings.cache_dir,
                               endpoint=settings.endpoint, force_download=force, token=False,
                               tqdm_class=_tqdm_for(progress) if progress is not None else None)
    except Exception as exc:  # huggingface_hub and httpx raise many types; all become one line
        raise _hub_error(exc, entry, settings) from None
    return verify_file(Path(path), entry, "downloaded file")


def bundled_file(entry: ModelEntry) -> Path | None:
    if entry.bundled is None:
        return None
    path = BUNDLED_DIR / entry.bundled
    return path if path.is_file() else None


@dataclass(frozen=True)
class ResolvedWeights:
    path: Path
    config: MSDNConfig
    source: str  # "path" | "bundled" | "cache" | "download"
    entry: ModelEntry | None = None


def fetch_model(entry: ModelEntry, *, offline: bool = False, force: bool = False,
                progress: Progress | None = None) -> ResolvedWeights:
    """A verified local file for a manifest entry: bundled > Hub cache > download.

    A tampered cached copy is never used: online it is downloaded again, offline it is refused.
    """
    bundled = bundled_file(entry)
    if bundled is not None and (not force or entry.repo_id is None):
        return ResolvedWeights(verify_file(bundled, entry, "bundled file"), entry.config, "bundled", entry)
    if entry.repo_id is None:
        raise MsdnError(f"model '{entry.name}' ships inside the package, but {BUNDLED_DIR / str(entry.bundled)} "
                        "is missing: reinstall msdn-deblur")
    settings = hub_settings(offline)
    cached = cached_file(entry, settings)
    if cached is not None and not force:
        problem = file_problem(cached, entry)
        if problem is None:
            return ResolvedWeights(cached, entry.config, "cache", entry)
        if settings.offline:
            raise MsdnError(f"refusing cached file {cached} for model '{entry.name}': {problem}; "
                            f"run `msdn weights download {entry.name} --force` on a connected machine")
        force = True
    path = download_file(entry, settings, force=force, progress=progress)
    return ResolvedWeights(path, entry.config, "download", entry)


def resolve_weights(model: str | None = None, weights: Path | None = None, offline: bool = False,
                    progress: Progress | None = None) -> ResolvedWeights:
    """Where the generator comes from: --weights PATH > bundled > Hub cache > download > a clear error."""
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise MsdnError(f"weights file not found: {path}")
        return ResolvedWeights(path, load_weights_file(path)[0] if path.suffix.lower() in (".pt", ".pth")
                               else read_config(path), "path")
    entry = load_manifest().entry(model)
    return fetch_model(entry, offline=offline, progress=progress)


def load_resolved(resolved: ResolvedWeights) -> MSDN:
    if resolved.entry is None:
        return build_generator(*load_weights_file(resolved.path))
    meta = read_metadata(resolved.path)
    if CONFIG_KEY in meta and _config_from(meta[CONFIG_KEY], str(resolved.path)) != resolved.config:
        raise MsdnError(f"{resolved.path}: the config in the file differs from the manifest entry "
                        f"'{resolved.entry.name}'")
    return build_generator(resolved.config, _load_safetensors(resolved.path))


def load_generator(model: str | None = None, weights: Path | None = None, offline: bool = False,
                   progress: Progress | None = None) -> MSDN:
    """The generator to deblur with (training-form weights; callers fuse them for inference)."""
    return load_resolved(resolve_weights(model, weights, offline, progress))


# ---------------------------------------------------------------------------------------------
# Local status (for `weights list/verify`)
# ---------------------------------------------------------------------------------------------


def local_copies(entry: ModelEntry, settings: HubSettings | None = None) -> dict[str, Path]:
    """Which local copies exist ("bundled", "cache"), unverified."""
    found: dict[str, Path] = {}
    if (b := bundled_file(entry)) is not None:
        found["bundled"] = b
    if (c := cached_file(entry, settings or hub_settings())) is not None:
        found["cache"] = c
    return found


# ---------------------------------------------------------------------------------------------
# Publishing: export a training checkpoint, push it to the Hub
# ---------------------------------------------------------------------------------------------


def model_card(name: str, config: MSDNConfig, metrics: Mapping[str, float], *, filename: str,
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

MSDN (Multi-Scale Dense Network, Song & Wu 2019) generator for removing motion blur from photographs,
for the `msdn` command line tool.

- File: `{filename}` (safetensors; the model config is in its metadata and in `config.json`)
- Parameters: {sum(p.numel() for p in MSDN(config).parameters()):,}
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


def entry_template(name: str, config: MSDNConfig, path: Path, metrics: Mapping[str, float], *,
                   repo_id: str = "OWNER/REPO", revision: str = "<commit hash>", description: str = "",
                   license: str = "mit", training_data: str = "") -> dict[str, Any]:
    """The manifest entry for a weight file (revision filled in once pushed)."""
    tile = 256 if 256 % config.size_multiple == 0 else config.size_multiple * max(1, 256 // config.size_multiple)
    return {
        "name": name, "description": description or f"MSDN generator '{name}'", "repo_id": repo_id,
        "revision": revision, "filename": Path(path).name, "format": "safetensors",
        "sha256": sha256_file(path), "size_bytes": Path(path).stat().st_size, "config": config.to_dict(),
        "tile": tile, "overlap": 32 if tile > 64 else tile // 4, "license": license,
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
    if not _REPO_ID.fullmatch(repo_id):
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
    if not isinstance(commit, str) or not _HEX40.fullmatch(commit):
        raise MsdnError(f"the Hub did not return a commit hash for the upload to {repo_id}")
    return entry_template(name, config, weights, metrics, repo_id=repo_id, revision=commit)
