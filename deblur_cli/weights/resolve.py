"""Where a generator comes from: the one place that resolves a model name or a file to weights.

An explicit path wins, then a file bundled in the package, then the Hugging Face cache, then a
download; every named file is verified against the manifest before use and a mismatch is refused,
never used. A name is looked up in the manifest once (`select_weights`): the resulting `Selection`
carries both where the weights come from and the model's tiling defaults, so the tiling a command
uses and the weights it loads cannot come from two different look-ups.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from deblur_cli.weights.configfile import CONFIG_KEY, config_from
from deblur_cli.errors import MsdnError
from deblur_cli.weights.hub import HubSettings, Progress, cached_file, download_file, file_problem, hub_settings, verify_file
from deblur_cli.inference.engine import Network, choose_runtime, prepare_model
from deblur_cli.weights.manifest import ModelEntry, load_manifest
from deblur_cli.nets.model import MSDN, MSDNConfig
from deblur_cli.inference.tiling import DEFAULT_OVERLAP, DEFAULT_TILE
from deblur_cli.weights.weightfile import (build_generator, is_torch_file, load_safetensors, load_weights_file, read_config,
                                   read_metadata, require_weights_file, sha256_file)

# Read at call time (a module attribute) so tests can point it at a temporary folder.
BUNDLED_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Selection:
    """What the user asked for: a manifest entry (by name, or the default) or a file given by path."""

    entry: ModelEntry | None = None
    path: Path | None = None

    @property
    def tiling(self) -> tuple[int, int]:
        """(tile, overlap): the manifest entry's for a named model, the tool's defaults for a file."""
        return (self.entry.tile, self.entry.overlap) if self.entry is not None else (DEFAULT_TILE, DEFAULT_OVERLAP)

    @property
    def label(self) -> str:
        """How reports name it: the model's name, else the file with its folder ("campaign-1/best.safetensors":
        a bare stem such as "best" read like a verdict)."""
        if self.entry is not None:
            return self.entry.name
        path = Path(self.path or "")
        return f"{path.parent.name}/{path.name}" if path.parent.name else path.name


def select_weights(model: str | None = None, weights: Path | None = None) -> Selection:
    """--weights PATH, else the named (or default) manifest entry; no file is read, nothing downloaded."""
    if weights is not None:
        return Selection(path=Path(weights).expanduser())
    return Selection(entry=load_manifest().entry(model))


def recommended_tiling(model: str | None = None, weights: Path | None = None) -> tuple[int, int]:
    """The manifest entry's tile and overlap for a named model; the tool's defaults for a file given by path."""
    return select_weights(model, weights).tiling


@dataclass(frozen=True)
class ResolvedWeights:
    path: Path
    config: MSDNConfig
    source: str  # "path" | "bundled" | "cache" | "download"
    entry: ModelEntry | None = None


def bundled_file(entry: ModelEntry) -> Path | None:
    """The copy shipped inside the package (unverified), if the entry has one and it is there."""
    if entry.bundled is None:
        return None
    path = BUNDLED_DIR / entry.bundled
    return path if path.is_file() else None


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


def resolve(selection: Selection, offline: bool = False, progress: Progress | None = None) -> ResolvedWeights:
    """A local, verified file for a selection (a download only for a named model not found locally)."""
    if selection.entry is not None:
        return fetch_model(selection.entry, offline=offline, progress=progress)
    path = Path(selection.path or "")
    require_weights_file(path)
    return ResolvedWeights(path, load_weights_file(path)[0] if is_torch_file(path) else read_config(path), "path")


def resolve_weights(model: str | None = None, weights: Path | None = None, offline: bool = False,
                    progress: Progress | None = None) -> ResolvedWeights:
    """Where the generator comes from: --weights PATH > bundled > Hub cache > download > a clear error."""
    return resolve(select_weights(model, weights), offline, progress)


def load_resolved(resolved: ResolvedWeights) -> MSDN:
    """The generator in a resolved file; a named file's own config must agree with its manifest entry."""
    if resolved.entry is None:
        return build_generator(*load_weights_file(resolved.path))
    meta = read_metadata(resolved.path)
    if CONFIG_KEY in meta and config_from(meta[CONFIG_KEY], str(resolved.path)) != resolved.config:
        raise MsdnError(f"{resolved.path}: the config in the file differs from the manifest entry "
                        f"'{resolved.entry.name}'")
    return build_generator(resolved.config, load_safetensors(resolved.path))


def load_generator(model: str | None = None, weights: Path | None = None, offline: bool = False,
                   progress: Progress | None = None) -> MSDN:
    """The generator to deblur with (training-form weights; callers fuse them for inference)."""
    return load_resolved(resolve_weights(model, weights, offline, progress))


@dataclass(frozen=True)
class ReadyModel:
    """A generator ready to run (fused, frozen, on its device; or an OpenVINO runtime) with the tiling it
    was published for."""

    model: Network
    tile: int
    overlap: int
    label: str


def ready_model(selection: Selection, device: str | torch.device = "auto", *, offline: bool = False,
                progress: Progress | None = None, runtime: str = "torch") -> ReadyModel:
    """Load a selection for inference with `runtime` (auto, torch, openvino; see `choose_runtime`); the
    device and runtime are checked first so a typo fails before a download."""
    chosen, target = choose_runtime(runtime, device)
    resolved = resolve(selection, offline, progress)
    if chosen == "openvino":
        return ReadyModel(_openvino_network(resolved), *selection.tiling, selection.label)
    return ReadyModel(prepare_model(load_resolved(resolved), target), *selection.tiling, selection.label)


def _openvino_network(resolved: ResolvedWeights) -> Network:
    """The OpenVINO runtime for a resolved file, keyed by its sha256 (the manifest's, already checked, for a
    named model); the torch network is built only if a tile shape must be converted."""
    from deblur_cli.inference.openvino_runtime import open_network

    digest = resolved.entry.sha256 if resolved.entry is not None else sha256_file(resolved.path)
    build = lambda: prepare_model(load_resolved(resolved), torch.device("cpu"), channels_last=False)  # noqa: E731
    return open_network(digest, resolved.config.size_multiple, build)


def local_copies(entry: ModelEntry, settings: HubSettings | None = None) -> dict[str, Path]:
    """Which local copies exist ("bundled", "cache"), unverified (for `weights list/verify`)."""
    found: dict[str, Path] = {}
    if (b := bundled_file(entry)) is not None:
        found["bundled"] = b
    if (c := cached_file(entry, settings or hub_settings())) is not None:
        found["cache"] = c
    return found
