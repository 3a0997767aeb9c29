"""The weights manifest: the schema of `weights_manifest.json` and its strict parsing.

Each entry pins a Hub repository at a full commit hash together with the file's sha256 and size, so
what runs is exactly what was published, and carries the model's config and tiling defaults (the
one place a named model's defaults live). A malformed manifest is one error naming the field.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deblur_cli.errors import MsdnError
from deblur_cli.nets.architectures import GeneratorConfig, config_from_dict

MANIFEST_SCHEMA_VERSION = 1
# Read at call time (a module attribute) so tests can point it at a temporary copy.
MANIFEST_PATH = Path(__file__).resolve().parent.parent / "weights_manifest.json"

COMMIT_HASH = re.compile(r"[0-9a-f]{40}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")


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
    config: GeneratorConfig
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
                    "the weights manifest names no default model: pick one with --model NAME (`msdn weights "
                    "list` shows them) or pass --weights PATH to a generator file (train one with `msdn train`, "
                    "export it with `msdn weights export`)")
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
    if repo_id is not None and not REPO_ID.fullmatch(repo_id):
        raise _Invalid(f"{where}.repo_id must look like 'owner/name', got '{data['repo_id']}'")
    if revision is not None and not COMMIT_HASH.fullmatch(revision):
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
        config = config_from_dict(data["config"])
    except (ValueError, TypeError) as exc:
        raise _Invalid(f"{where}.config does not build a generator config: {exc}") from None
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
