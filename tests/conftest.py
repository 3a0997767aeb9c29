"""Shared test fixtures: the tiny generator config and its weights file, and the input guard.

The input guard: every `CliRunner.invoke` of the tests hashes the files it is given as inputs
(every existing path among its arguments, files under a folder included) and fails the test if any
of them changed, disappeared or was replaced by the command. Output options (-o, --export, ...)
are not inputs: their files may be written, and an input folder's files under them are skipped.
It also hashes every other file beside the inputs and outputs (issue #20): none of them may change,
except msdn's own (`.msdn-*`, run folders) and, with --overwrite, the outputs named.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from deblur_cli.nets.model import MSDN, MSDNConfig
from deblur_cli.weights.weightfile import save_weights

# The CLI's --runtime default is auto, which is OpenVINO on a CPU where the extra is installed (as with
# the test extra). The suite pins torch so its exact comparisons with torch references hold; the
# OpenVINO tests (test_openvino_runtime.py) pass --runtime themselves. Subprocesses inherit it.
os.environ["MSDN_RUNTIME"] = "torch"

def photo_crop(size: int, n: int = 1) -> torch.Tensor:
    """A real photo crop (n, 3, size, size) in [0, 1] (the blur renderers' tests share it)."""
    from skimage import data as skdata

    img = skdata.astronaut()[40:40 + size, 100:100 + size]
    return (torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255.0).repeat(n, 1, 1, 1)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


TINY = MSDNConfig(stem_channels=8, growth_rate=4, encoder_layers=(1, 1), bottleneck_layers=1, decoder_layers=(1, 1),
                  pyramid_pools=(2, 4))


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random (tests only, never committed) generator whose head is not the zero-initialised identity."""
    torch.manual_seed(0)
    model = MSDN(TINY)
    with torch.no_grad():
        model.head.weight.normal_(0, 0.3)
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    save_weights(path, model.state_dict(), TINY)
    return path

OUTPUT_OPTIONS = frozenset({"-o", "--output", "--export", "--json", "--csv", "--save-images", "--checkpoint-dir",
                            "--resume", "--onnx"})
MAX_GUARDED_FILES = 2000  # a folder argument bigger than this is a test's data tree, not worth hashing


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _split(args: Sequence[Any]) -> tuple[list[Path], list[Path]]:
    """(existing input paths, output paths) named on a command line."""
    words = [str(a) for a in args]
    inputs: list[Path] = []
    outputs: list[Path] = []
    for i, word in enumerate(words):
        if word.startswith("--") and "=" in word:
            option, value = word.split("=", 1)
            (outputs if option in OUTPUT_OPTIONS else inputs).append(Path(value))
        elif i > 0 and words[i - 1] in OUTPUT_OPTIONS:
            outputs.append(Path(word))
        elif not word.startswith("-"):
            inputs.append(Path(word))
    return [p for p in inputs if _exists(p)], outputs


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # a name over 255 bytes: no such file
        return False


RUN_OPTIONS = frozenset({"--checkpoint-dir", "--resume"})  # run folders: msdn's own files, changed on resume


def neighbour_hashes(args: Sequence[Any]) -> dict[Path, str]:
    """sha256 of the files beside a command's inputs and outputs (and in an output folder) that the
    command may not change: everything but msdn's own record and temporaries, its run folders, and,
    with --overwrite only, the outputs it names."""
    words = [str(a) for a in args]
    inputs, outputs = _split(words)
    folders = {p.resolve().parent for p in [*inputs, *outputs]} | {p.resolve() for p in [*inputs, *outputs]
                                                                    if _exists(p) and p.is_dir()}
    runs = [Path(words[i + 1]).resolve() for i, w in enumerate(words[:-1]) if w in RUN_OPTIONS]
    replaceable = [o.resolve() for o in outputs] if "--overwrite" in words else []
    hashes: dict[Path, str] = {}
    for folder in folders:
        entries = sorted(folder.iterdir()) if folder.is_dir() else []
        for f in entries[:MAX_GUARDED_FILES]:
            if not f.is_file() or f.is_symlink() or f.name.startswith(".msdn-"):
                continue
            resolved = f.resolve()
            if not any(resolved == o or resolved.is_relative_to(o) for o in [*runs, *replaceable]):
                hashes[resolved] = sha256(resolved)
    return hashes


def input_hashes(args: Sequence[Any]) -> dict[Path, str]:
    """sha256 of every input file a command line names (see the module docstring)."""
    inputs, outputs = _split(args)
    skip = [o.resolve() for o in outputs]
    hashes: dict[Path, str] = {}
    for path in inputs:
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        if len(files) > MAX_GUARDED_FILES:
            continue
        for f in files:
            resolved = f.resolve()
            if not any(resolved == o or resolved.is_relative_to(o) for o in skip):
                hashes[resolved] = sha256(resolved)
    return hashes


@pytest.fixture(autouse=True)
def input_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any test whose CLI invocation changed one of its input files."""
    invoke = CliRunner.invoke

    def guarded(self: CliRunner, cli: Any, args: Any = None, *rest: Any, **kwargs: Any) -> Any:
        words = [] if args is None else ([args] if isinstance(args, str) else list(args))
        before, beside = input_hashes(words), neighbour_hashes(words)
        result = invoke(self, cli, args, *rest, **kwargs)
        changed = [str(p) for p, digest in before.items() if not p.is_file() or sha256(p) != digest]
        assert not changed, f"msdn {' '.join(map(str, words))} changed its input file(s): {', '.join(changed)}"
        touched = [str(p) for p, digest in beside.items() if not p.is_file() or sha256(p) != digest]
        assert not touched, f"msdn {' '.join(map(str, words))} changed file(s) it does not own: {', '.join(touched)}"
        return result

    monkeypatch.setattr(CliRunner, "invoke", guarded)
